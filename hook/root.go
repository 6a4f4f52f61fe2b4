package hook

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/internal/fileio"
)

// ErrReadOnly means the container root cannot be written.
var ErrReadOnly = errors.New("container root is read-only")

// containerRoot does file operations inside a container root: every path is resolved as
// if the root were "/" (links planted in the image cannot lead out of it), and the final
// component is handled with *at calls on the parent's handle, never followed.
type containerRoot struct {
	path string
	fd   *os.File
	// dirs caches O_PATH handles of folders, resolved inside the root: the links of one
	// library folder share one lookup
	dirs map[string]*os.File
}

func openRoot(p string) (*containerRoot, error) {
	fd, err := os.OpenFile(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0) //nolint:gosec // the root path comes from the runtime's bundle
	if err != nil {
		return nil, fmt.Errorf("open container root: %w", err)
	}
	return &containerRoot{path: p, fd: fd, dirs: map[string]*os.File{}}, nil
}

func (r *containerRoot) Close() error {
	for _, h := range r.dirs {
		_ = h.Close()
	}
	return r.fd.Close()
}

// resolveHow resolves paths as if the container root were "/", refusing /proc magic links.
const resolveHow uint64 = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// openat2Retries bounds the retries of a lookup the kernel asks to retry: RESOLVE_IN_ROOT
// through ".." answers EAGAIN whenever a rename or a mount anywhere on the host races it.
const openat2Retries = 128

// openat2 opens p inside the root; it reports ENOSYS on kernels before 5.6.
func (r *containerRoot) openat2(p string, flags uint64) (*os.File, error) {
	how := &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Resolve: resolveHow}
	for range openat2Retries {
		fd, err := unix.Openat2(int(r.fd.Fd()), p, how)
		if err == nil {
			return os.NewFile(uintptr(fd), p), nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			return nil, &fs.PathError{Op: "openat2", Path: p, Err: err}
		}
	}
	return nil, &fs.PathError{Op: "openat2", Path: p, Err: unix.EAGAIN}
}

// cleanAbs checks a container path: absolute, no NUL, and not the root itself.
func cleanAbs(p string) (dir, name string, err error) {
	if !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		return "", "", fmt.Errorf("container path %q is not absolute", p)
	}
	c := path.Clean(p)
	if c == "/" {
		return "", "", fmt.Errorf("container path %q names the root", p)
	}
	return path.Dir(c), path.Base(c), nil
}

func wrapErr(op, p string, err error) error {
	if errors.Is(err, unix.EROFS) {
		return fmt.Errorf("%s %s: %w", op, p, ErrReadOnly)
	}
	return fmt.Errorf("%s %s: %w", op, p, err)
}

// dir returns an O_PATH handle of a folder inside the root, creating it (mode 0755, with
// its parents) when create is set. Handles are cached and owned by the root: callers do
// not close them.
func (r *containerRoot) dir(dir string, create bool) (*os.File, error) {
	dir = path.Clean(dir)
	if h, ok := r.dirs[dir]; ok {
		return h, nil
	}
	h, err := r.openat2(dir, unix.O_PATH|unix.O_DIRECTORY)
	if create && errors.Is(err, fs.ErrNotExist) {
		// the C hook's walk: fewer calls than pathrs' MkdirAllHandle, the same guarantees
		return r.mkdirAll(dir)
	}
	if errors.Is(err, unix.ENOSYS) {
		if create {
			h, err = pathrs.MkdirAllHandle(r.fd, dir, 0o755)
		} else {
			h, err = pathrs.OpenatInRoot(r.fd, dir)
		}
		if err == nil {
			var st unix.Stat_t
			if err = unix.Fstat(int(h.Fd()), &st); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
				_ = h.Close()
				err = &fs.PathError{Op: "open", Path: dir, Err: unix.ENOTDIR}
			}
		}
	}
	if err != nil {
		if create {
			return nil, wrapErr("create folder", dir, err)
		}
		return nil, err
	}
	r.dirs[dir] = h
	return h, nil
}

// mkdirAll makes folder dir (clean, absolute, missing) and the folders above it that are
// missing, as the C hook does: from the deepest folder that is there, resolved inside the
// root, each missing one is made with mkdirat on its parent's handle and opened with
// O_NOFOLLOW|O_DIRECTORY, so whatever the image puts at its name meanwhile (a link, a
// file) is refused, never followed. Each folder's handle is cached.
func (r *containerRoot) mkdirAll(dir string) (*os.File, error) {
	cut := len(dir)
	var parent *os.File
	for {
		cut = strings.LastIndexByte(dir[:cut], '/')
		prefix := dir[:cut]
		if cut == 0 {
			prefix = "/"
		}
		if h, ok := r.dirs[prefix]; ok {
			parent = h
			break
		}
		h, err := r.openat2(prefix, unix.O_PATH|unix.O_DIRECTORY)
		if err == nil {
			r.dirs[prefix] = h
			parent = h
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || cut == 0 {
			return nil, wrapErr("create folder", dir, err)
		}
	}
	for cut < len(dir) {
		next := strings.IndexByte(dir[cut+1:], '/')
		end := len(dir)
		if next >= 0 {
			end = cut + 1 + next
		}
		name := dir[cut+1 : end]
		if err := unix.Mkdirat(int(parent.Fd()), name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, wrapErr("create folder", dir[:end], err)
		}
		fd, err := unix.Openat(int(parent.Fd()), name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, wrapErr("create folder", dir[:end], err)
		}
		parent = os.NewFile(uintptr(fd), dir[:end])
		r.dirs[dir[:end]] = parent
		cut = end
	}
	return parent, nil
}

// What a container path holds where a link is to go.
const (
	atNothing = iota
	atLink    // a link: its target is returned
	atOther   // a file or folder: the image's own
)

// lookLink opens the folder of container path link (making it) and says what is at link.
func (r *containerRoot) lookLink(target, link string) (pfd int, name string, at int, old string, err error) {
	dir, name, err := cleanAbs(link)
	if err != nil {
		return 0, "", 0, "", err
	}
	if target == "" || strings.ContainsRune(target, 0) {
		return 0, "", 0, "", fmt.Errorf("link %s: empty target", link)
	}
	parent, err := r.dir(dir, true)
	if err != nil {
		return 0, "", 0, "", err
	}
	pfd = int(parent.Fd())
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(pfd, name, buf)
	switch {
	case err == nil:
		return pfd, name, atLink, string(buf[:n]), nil
	case errors.Is(err, unix.EINVAL):
		return pfd, name, atOther, "", nil
	case !errors.Is(err, unix.ENOENT):
		return 0, "", 0, "", wrapErr("read link", link, err)
	}
	return pfd, name, atNothing, "", nil
}

// makeLink makes name in folder pfd, container path link, a link to target.
func (r *containerRoot) makeLink(pfd int, name, target, link string) error {
	if err := unix.Symlinkat(target, pfd, name); err != nil {
		return wrapErr("create link", link, err)
	}
	r.forget(link)
	return nil
}

// symlink makes link point to target. An identical link is kept, another link is
// replaced, and anything that is not a link is left alone; note says why something was
// left ("" when link is in place).
func (r *containerRoot) symlink(target, link string) (note string, err error) {
	pfd, name, at, old, err := r.lookLink(target, link)
	switch {
	case err != nil:
		return "", err
	case at == atLink && old == target:
		return "", nil
	case (at == atLink || at == atOther) && inForeignReadOnly(pfd, int(r.fd.Fd())):
		// another layout's folder (linked there by its hook), which holds the driver's
		// files too
		return "is on a read-only mount (a layout's or a volume's)", nil
	case at == atLink:
		if err := unix.Unlinkat(pfd, name, 0); err != nil {
			return "", wrapErr("replace link", link, err)
		}
	case at == atOther:
		return "exists in the image and is not a link", nil // the image's own: never clobber it
	}
	return "", r.makeLink(pfd, name, target, path.Clean(link))
}

// inForeignReadOnly reports whether folder handle pfd is on a read-only mount other than
// the root's (handle root): a layout (another one's, linked there by its hook) or a
// read-only volume, which is not the hook's to change.
func inForeignReadOnly(pfd, root int) bool {
	var sf unix.Statfs_t
	if unix.Fstatfs(pfd, &sf) != nil || sf.Flags&unix.ST_RDONLY == 0 {
		return false
	}
	m, r, ok := mountIDs(pfd, root)
	return ok && m != r
}

// mountIDs are the mounts two handles are on (statx, Linux 5.8); before that kernel, their
// file systems' devices, which tell a layout (a tmpfs of its own) from the root's.
func mountIDs(a, b int) (uint64, uint64, bool) {
	var sa, sb unix.Statx_t
	const ask = unix.STATX_MNT_ID | unix.STATX_BASIC_STATS
	if unix.Statx(a, "", unix.AT_EMPTY_PATH, ask, &sa) != nil || unix.Statx(b, "", unix.AT_EMPTY_PATH, ask, &sb) != nil {
		return 0, 0, false
	}
	// one kernel answers both: mount IDs for both, or devices for both
	am, bm := sa.Mask&unix.STATX_MNT_ID != 0, sb.Mask&unix.STATX_MNT_ID != 0
	switch {
	case am && bm:
		return sa.Mnt_id, sb.Mnt_id, true
	case !am && !bm:
		return unix.Mkdev(sa.Dev_major, sa.Dev_minor), unix.Mkdev(sb.Dev_major, sb.Dev_minor), true
	}
	return 0, 0, false
}

// folderLink makes folder a link to target where the image has nothing at its path, and
// reports whether folder is that link (made now, or already there from an earlier start).
// A folder, file or other link of the image's own is left as it is (false).
func (r *containerRoot) folderLink(target, folder string) (bool, error) {
	pfd, name, at, old, err := r.lookLink(target, folder)
	switch {
	case err != nil:
		return false, err
	case at == atLink && (old == target || !otherLayout(old, target, folder)):
		return old == target, nil
	case at == atLink && r.isLayoutDir(folder):
		return true, nil // another layout's, mounted beside ours
	case at == atLink:
		// another layout's that is not there (an image committed from a container that had
		// it), or a look-alike of the image's: replaced, as a stale link of a file is
		if err := unix.Unlinkat(pfd, name, 0); err != nil {
			return false, wrapErr("replace link", folder, err)
		}
	case at == atOther:
		return false, nil
	}
	if err := r.makeLink(pfd, name, target, path.Clean(folder)); err != nil {
		return false, err
	}
	return true, nil
}

// otherLayout reports whether link target t is folder in another layout mounted beside
// target's (target with its layout's name, the component before folder, changed): another
// hook of the container linked it there, and the spec generator links a folder whole only
// from a layout that holds all the driver has in it, so ours are there too.
func otherLayout(t, target, folder string) bool {
	base, ok := strings.CutSuffix(target, folder)
	i := strings.LastIndexByte(base, '/')
	if !ok || i < 0 || i == len(base)-1 {
		return false
	}
	x, ok := strings.CutPrefix(t, base[:i+1])
	if !ok {
		return false
	}
	x, ok = strings.CutSuffix(x, folder)
	return ok && x != "" && x != "." && x != ".." && !strings.Contains(x, "/")
}

// forget drops the folder handles of p and of everything under it: a link made at p
// points elsewhere than what was looked up there.
func (r *containerRoot) forget(p string) {
	for d, h := range r.dirs {
		if d == p || strings.HasPrefix(d, p+"/") {
			_ = h.Close()
			delete(r.dirs, d)
		}
	}
}

// writeFile replaces p with data (mode 0644): a new file made with O_EXCL|O_NOFOLLOW
// beside it, then renamed over it, so a link, FIFO or device planted at p is replaced,
// never opened.
func (r *containerRoot) writeFile(p string, data []byte) error {
	dir, name, err := cleanAbs(p)
	if err != nil {
		return err
	}
	parent, err := r.dir(dir, false)
	if err != nil {
		return wrapErr("open folder", dir, err)
	}
	pfd := int(parent.Fd())
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := ".nvbind-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(pfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return wrapErr("create", path.Join(dir, tmp), err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644) // the umask must not matter
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(pfd, tmp, pfd, name)
	}
	if err != nil {
		_ = unix.Unlinkat(pfd, tmp, 0)
		return wrapErr("write", p, err)
	}
	return nil
}

// errNotFile refuses to open what is neither a regular file nor a folder for reading.
var errNotFile = errors.New("not a regular file or folder")

// errKernelFile refuses to read a file of a kernel filesystem.
var errKernelFile = errors.New("a file of a kernel filesystem (proc, sysfs, ...)")

// kernel filesystems x/sys/unix does not name
const (
	configFSMagic = 0x62656570
	fuseCtlMagic  = 0x65735543
	nfsdMagic     = 0x6e667364
)

// pseudoFS reports kernel filesystems whose files may act when read (the C hook has the
// same list).
func pseudoFS(t int64) bool {
	switch t {
	case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC, unix.DEBUGFS_MAGIC, unix.TRACEFS_MAGIC, unix.SECURITYFS_MAGIC,
		unix.CGROUP_SUPER_MAGIC, unix.CGROUP2_SUPER_MAGIC, unix.BPF_FS_MAGIC, configFSMagic, unix.EFIVARFS_MAGIC,
		unix.PSTOREFS_MAGIC, unix.DEVPTS_SUPER_MAGIC, unix.SELINUX_MAGIC, unix.SMACK_MAGIC, unix.BINFMTFS_MAGIC,
		fuseCtlMagic, nfsdMagic:
		return true
	}
	return false
}

// openRead opens a regular file or a folder p inside the root for reading. p is resolved
// to an O_PATH handle first (openat2 with RESOLVE_IN_ROOT where the kernel has it, 5.6+,
// else filepath-securejoin's emulation), which opens nothing: a device node's driver is
// never called and a FIFO never blocks. Only a regular file or a folder is then opened,
// through that handle, so swapping the path after the check changes nothing.
func (r *containerRoot) openRead(p string) (*os.File, error) {
	h, err := r.openat2(p, unix.O_PATH)
	if errors.Is(err, unix.ENOSYS) {
		h, err = pathrs.OpenatInRoot(r.fd, p)
	}
	if err != nil {
		return nil, err
	}
	defer func() { _ = h.Close() }()
	var st unix.Stat_t
	if err := unix.Fstat(int(h.Fd()), &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: p, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		// a kernel file (procfs' kmsg, sysfs' attributes) may act when read: the image's
		// links can lead into the container's /proc and /sys, mounted before the hook runs
		var sf unix.Statfs_t
		if err := unix.Fstatfs(int(h.Fd()), &sf); err != nil {
			return nil, &fs.PathError{Op: "statfs", Path: p, Err: err}
		}
		if pseudoFS(int64(sf.Type)) { //nolint:unconvert // int64 on every arch
			return nil, &fs.PathError{Op: "open", Path: p, Err: errKernelFile}
		}
		return pathrs.Reopen(h, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC)
	case unix.S_IFDIR:
		return pathrs.Reopen(h, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	}
	return nil, &fs.PathError{Op: "open", Path: p, Err: errNotFile}
}

// readFile reads a regular file inside the root, at most max bytes; a FIFO or device
// there is refused, never opened.
func (r *containerRoot) readFile(p string, max int64) ([]byte, error) {
	f, err := r.openRead(p)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, max) // ReadAll bounds a file still growing
	}
	return fileio.ReadAll(f, max, p)
}

// readDirNames lists a folder inside the root, at most max names; a missing folder is
// empty, a larger one an error.
func (r *containerRoot) readDirNames(dir string, max int) ([]string, error) {
	f, err := r.openRead(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s: %w", dir, unix.ENOTDIR)
	}
	var names []string
	for {
		batch, err := f.Readdirnames(256)
		names = append(names, batch...)
		if len(names) > max {
			return nil, fmt.Errorf("%s holds more than %d entries", dir, max)
		}
		if errors.Is(err, io.EOF) || (err == nil && len(batch) == 0) {
			return names, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// isLayoutDir reports whether p resolves to a folder on a read-only mount other than the
// root's, as a layout's folders are: a folder of the image's own that only looks like one
// does not count.
func (r *containerRoot) isLayoutDir(p string) bool {
	h, err := r.dir(p, false)
	return err == nil && inForeignReadOnly(int(h.Fd()), int(r.fd.Fd()))
}

// isDir reports whether p resolves to a folder inside the root.
func (r *containerRoot) isDir(p string) bool {
	_, err := r.dir(p, false)
	return err == nil
}
