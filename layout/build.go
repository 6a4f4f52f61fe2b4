package layout

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// completeFile marks a layout whose every entry is in place; it is written last.
const completeFile = ".complete"

// tmpfsOptions size a layout: it holds empty files (the mount points of the driver's
// files), links and folders, a few kilobytes.
const tmpfsOptions = "mode=0755,size=1m,nr_inodes=16384"

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
	if Complete(base, p) {
		return nil
	}
	if !CanBuild() {
		return ErrNoPrivilege
	}
	if read == nil {
		read = func(s string) string { return s }
	}
	unlock, err := lock(base)
	if err != nil {
		return err
	}
	defer unlock()
	if Complete(base, p) { // built by another process meanwhile
		return nil
	}
	dir := p.HostPath(base)
	if err := detach(dir); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil { //nolint:gosec // world-readable: every container reads it
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount("nvbind-driver", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpfsOptions); err != nil {
		_ = os.Remove(dir)
		return fmt.Errorf("mount the layout at %s: %w", dir, err)
	}
	if err := fill(dir, p, read); err != nil {
		_ = detach(dir)
		return fmt.Errorf("layout %s: %w", p.ID, err)
	}
	return nil
}

// lockFile serialises the processes that build and detach layouts under one base (the
// CDI refresher, the NRI plugin, the runtime wrapper, nvbind layout build): a layout is
// built by one at a time, and never detached while it is being built.
const lockFile = ".lock"

// lock takes the base's lock, making the base if needed; the returned func releases it.
func lock(base string) (func(), error) {
	if err := os.MkdirAll(base, 0o755); err != nil { //nolint:gosec // the layouts are world-readable
		return nil, fmt.Errorf("create %s: %w", base, err)
	}
	fd, err := unix.Open(filepath.Join(base, lockFile), unix.O_RDONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", base, err)
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", base, err)
	}
	return func() { _ = unix.Close(fd) }, nil
}

// fill lays the entries out in the layout's tmpfs at dir, then marks it complete and
// makes it read-only.
func fill(dir string, p Plan, read func(string) string) error {
	for _, e := range p.Entries {
		dst := filepath.Join(dir, e.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil { //nolint:gosec // world-readable
			return err
		}
		if e.Host == "" {
			if err := os.Symlink(e.Target, dst); err != nil {
				return err
			}
			continue
		}
		if err := bindFile(read(e.Host), dst); err != nil {
			return fmt.Errorf("bind %s: %w", e.Host, err)
		}
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, completeFile), data, 0o444); err != nil { //nolint:gosec // world-readable
		return err
	}
	return unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, tmpfsOptions)
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
	tree, err := unix.OpenTree(sfd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err == nil {
		defer func() { _ = unix.Close(tree) }()
		if err = unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: bindAttrs}); err == nil {
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
	return unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "")
}

// detach takes a layout off the host: its mounts are detached (containers that have it
// keep their own, private, copy) and the empty mount point removed. Nothing under it is
// ever unlinked while mounted: those would be the driver's own files.
func detach(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH)
	for err == nil {
		// a layout mounted twice over (a race of two builders): detach them all
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detach %s: %w", dir, err)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// Collect detaches every layout under base whose ID keep lacks, and returns their IDs.
func Collect(base string, keep map[string]bool) ([]string, error) {
	entries, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	unlock, err := lock(base)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var gone []string
	var errs []error
	for _, e := range entries {
		if keep[e.Name()] || !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
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
