package layout

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/hook"
	"github.com/nvbind/nvbind/internal/ldcache"
)

// completeFile marks a layout whose every entry is in place; it is written last.
const completeFile = ".complete"

// tmpfsOptions size a layout: it holds empty files (the mount points of the driver's
// files), links and folders, a few kilobytes.
const tmpfsOptions = "mode=0755,size=1m,nr_inodes=16384"

// idPattern matches a layout's folder name (Plan.ID): version, set, hash. Nothing else
// under a base is ever detached or removed.
// It is compiled when first used: most commands never need it.
var idPattern = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[0-9A-Za-z._~-]+-(all|[a-z][a-z0-9]*(\+[a-z][a-z0-9]*)*)-[0-9a-f]{12}$`)
})

// IsID reports whether name is a layout's folder name.
func IsID(name string) bool { return idPattern().MatchString(name) }

// checkBase refuses a base reached through a symbolic link: a process that may write
// beside it (a requester asking for a layout) must not be able to point the builder, which
// mounts and unmounts as root, at another folder.
func checkBase(base string) error {
	fd, err := unix.Openat2(unix.AT_FDCWD, base, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if errors.Is(err, unix.ENOSYS) {
		for p := base; p != "/" && p != "."; p = filepath.Dir(p) {
			if fi, err := os.Lstat(p); err != nil || fi.Mode()&fs.ModeSymlink != 0 { //nolint:gosec // checking the operator's --layout-dir is the point
				return fmt.Errorf("layout folder %s: %s is a link or missing", base, p)
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("layout folder %s: %w (a link on the way is refused)", base, err)
	}
	return unix.Close(fd)
}

// ErrNoPrivilege means this process cannot build layouts: it needs root with
// CAP_SYS_ADMIN in the host's mount namespace.
var ErrNoPrivilege = errors.New("building a driver layout needs root with CAP_SYS_ADMIN")

// CanBuild reports whether this process may mount (root with CAP_SYS_ADMIN).
func CanBuild() bool {
	if os.Geteuid() != 0 {
		return false
	}
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_ADMIN) != 0
		}
	}
	return false
}

// Complete reports whether the plan's layout is built under base.
func Complete(base string, p Plan) bool {
	_, err := os.Lstat(filepath.Join(p.HostPath(base), completeFile))
	return err == nil
}

// Ensure builds the plan's layout under base unless it is complete. read maps a host path
// to where this process reads it (nil: the same): a containerised nvbind reads the host's
// driver root elsewhere. A layout left half-built (a crash) is detached and built again;
// one that is complete is never changed.
func Ensure(base string, p Plan, read func(string) string) error {
	_, err := Build(base, p, read)
	return err
}

// Built says what Build did.
type Built struct {
	// Made is set where this call built the layout (not complete before).
	Made bool
	// Whole are the container folders bound whole: one mount of the host's folder each.
	Whole []string
	// PerFile are the driver folders laid out one file at a time, each with why it was
	// not bound whole.
	PerFile []PerFile
}

// Build is Ensure, and says what it did.
func Build(base string, p Plan, read func(string) string) (Built, error) {
	if Complete(base, p) {
		return Built{}, nil
	}
	if !CanBuild() {
		return Built{}, ErrNoPrivilege
	}
	if read == nil {
		read = func(s string) string { return s }
	}
	unlock, err := lock(base)
	if err != nil {
		return Built{}, err
	}
	defer unlock()
	if Complete(base, p) { // built by another process meanwhile
		return Built{}, nil
	}
	dir := p.HostPath(base)
	if err := detach(dir); err != nil {
		return Built{}, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil { //nolint:gosec // world-readable: every container reads it
		return Built{}, fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount("nvbind-driver", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpfsOptions); err != nil {
		_ = os.Remove(dir)
		return Built{}, fmt.Errorf("mount the layout at %s: %w", dir, err)
	}
	b, err := fill(dir, p, read)
	if err != nil {
		_ = detach(dir)
		return Built{}, fmt.Errorf("layout %s: %w", p.ID, err)
	}
	b.Made = true
	return b, nil
}

// lockFile serialises the processes that build and detach layouts under one base (the
// CDI refresher, the NRI plugin, the runtime wrapper, nvbind layout build): a layout is
// built by one at a time, and never detached while it is being built.
const lockFile = ".lock"

// lockWait bounds the wait for another builder: a container create never hangs on one.
const lockWait = 10 * time.Second

// lock takes the base's lock, making the base if needed; the returned func releases it.
func lock(base string) (func(), error) {
	if err := os.MkdirAll(base, 0o755); err != nil { //nolint:gosec // the layouts are world-readable
		return nil, fmt.Errorf("create %s: %w", base, err)
	}
	if err := checkBase(base); err != nil {
		return nil, err
	}
	fd, err := unix.Open(filepath.Join(base, lockFile), unix.O_RDONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", base, err)
	}
	deadline := time.Now().Add(lockWait)
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil || !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", base, err)
	}
	return func() { _ = unix.Close(fd) }, nil
}

// fill lays the entries out in the layout's tmpfs at dir, then marks it complete and
// makes it read-only; it says which driver folders went in whole, and why the others did
// not.
func fill(dir string, p Plan, read func(string) string) (Built, error) {
	whole, notes := wholeFolders(p, read)
	defer closeWhole(whole)
	b := Built{Whole: slices.Sorted(maps.Keys(whole)), PerFile: notes}
	for _, e := range p.Entries {
		if _, ok := whole[DriverFolder(e.Path, "")]; ok {
			continue
		}
		dst := filepath.Join(dir, e.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil { //nolint:gosec // world-readable
			return b, err
		}
		if e.Host == "" {
			if err := os.Symlink(e.Target, dst); err != nil {
				return b, err
			}
			continue
		}
		if err := bindFile(read(e.Host), dst); err != nil {
			return b, fmt.Errorf("bind %s: %w", e.Host, err)
		}
	}
	for _, c := range b.Whole {
		if err := bindFolder(whole[c].fd, filepath.Join(dir, c)); err != nil {
			return b, fmt.Errorf("bind %s: %w", whole[c].host, err)
		}
	}
	if err := writeEntries(dir, p); err != nil {
		return b, err
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return b, err
	}
	if err := os.WriteFile(filepath.Join(dir, completeFile), data, 0o444); err != nil { //nolint:gosec // world-readable
		return b, err
	}
	return b, unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, tmpfsOptions)
}

// writeEntries writes the ld cache entries of the layout's library folders, as the hook
// would find them in a container that mounts the layout, to EntriesFile: the hook merges
// them into the image's cache instead of reading every library at each container start.
func writeEntries(dir string, p Plan) error {
	folders := make([]string, 0, len(p.Folders))
	for _, f := range p.Folders {
		rel, ok := strings.CutPrefix(f, p.Mount()+"/")
		if !ok {
			return fmt.Errorf("library folder %s is not in the layout %s", f, p.Mount())
		}
		folders = append(folders, "/"+rel)
	}
	entries, err := hook.LibraryEntries(dir, p.Mount(), folders)
	if err != nil {
		return fmt.Errorf("ld cache entries: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, EntriesFile), ldcache.Encode(entries), 0o444) //nolint:gosec // world-readable, as the layout
}

// bindAttrs are the attributes of every file of a layout.
const bindAttrs = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV

// bindFile mounts the regular file src, read-only, at dst (an empty file it makes): a
// detached copy of src's mount with its attributes set, moved into place, so the file is
// never visible writable; on kernels before 5.12, a bind and a read-only remount.
func bindFile(src, dst string) error {
	sfd, err := unix.Open(src, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { _ = unix.Close(sfd) }()
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is not a regular file", src)
	}
	// a new, empty file: never one opened for writing that may already be a driver file
	mp, err := unix.Open(dst, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o444)
	if err != nil {
		return &os.PathError{Op: "create", Path: dst, Err: err}
	}
	_ = unix.Close(mp)
	return bindFD(sfd, dst)
}

// bindFD mounts what sfd opens (its own mount's part, nothing mounted under it) at dst,
// read-only: a detached copy with its attributes set, moved into place, so it is never
// visible writable; on kernels before 5.12, a bind and a read-only remount.
func bindFD(sfd int, dst string) error {
	tree, err := unix.OpenTree(sfd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err == nil {
		defer func() { _ = unix.Close(tree) }()
		// private: a mount the host makes later under the source never reaches the layout
		if err = unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: bindAttrs, Propagation: unix.MS_PRIVATE}); err == nil {
			err = unix.MoveMount(tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH)
		}
		if err == nil {
			return nil
		}
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EPERM) {
		return err
	}
	if err := unix.Mount("/proc/self/fd/"+strconv.Itoa(sfd), dst, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return err
	}
	return unix.Mount("", dst, "", unix.MS_PRIVATE, "")
}

// detach takes a layout off the host: its mounts are detached (containers that have it
// keep their own, private, copy) and the empty mount point removed. Nothing under it is
// ever unlinked while mounted: those would be the driver's own files.
func detach(dir string) error {
	if !IsID(filepath.Base(dir)) {
		return fmt.Errorf("%s is no driver layout", dir)
	}
	if fi, err := os.Lstat(dir); err == nil && !fi.IsDir() { //nolint:gosec // a layout's own folder, its name checked above
		return fmt.Errorf("%s is no driver layout (not a folder)", dir)
	}
	err := unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	for err == nil {
		// a layout mounted twice over: detach them all
		err = unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detach %s: %w", dir, err)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) { //nolint:gosec // a layout's emptied mount point
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// Collect detaches every layout under base whose ID keep lacks, and returns their IDs.
func Collect(base string, keep map[string]bool) ([]string, error) {
	if _, err := os.Lstat(base); errors.Is(err, fs.ErrNotExist) { //nolint:gosec // the operator's --layout-dir
		return nil, nil
	}
	unlock, err := lock(base)
	if err != nil {
		return nil, err
	}
	defer unlock()
	entries, err := os.ReadDir(base)
	if err != nil {
		return nil, err
	}
	var gone []string
	var errs []error
	for _, e := range entries {
		if keep[e.Name()] || !e.IsDir() || !IsID(e.Name()) {
			continue
		}
		if err := detach(filepath.Join(base, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, e.Name())
	}
	return gone, errors.Join(errs...)
}

// CollectOtherVersions detaches the layouts under base of other driver versions than
// version that were built more than minAge ago: for a builder without a watch loop (the
// runtime wrapper), when a new driver's layout is built.
func CollectOtherVersions(base, version string, minAge time.Duration) ([]string, error) {
	entries, err := os.ReadDir(base)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	keep := map[string]bool{}
	for _, e := range entries {
		fi, err := os.Stat(filepath.Join(base, e.Name(), completeFile))
		if strings.HasPrefix(e.Name(), VersionOf(version)+"-") || err == nil && time.Since(fi.ModTime()) < minAge {
			keep[e.Name()] = true
		}
	}
	return Collect(base, keep)
}
