// Package fileio holds the file primitives nvbind uses everywhere: opens that skip the
// runtime's poller, reads bounded in size, and writes that replace a file atomically.
package fileio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReadAll reads r to the end, failing when it holds more than max bytes; name goes into
// the error.
func ReadAll(r io.Reader, max int64, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, max)
	}
	return data, nil
}

// Open opens a file for reading, as os.Open does but without offering it to the
// runtime's poller. os.Open offers every file: two fcntl calls to make it non-blocking,
// an epoll_ctl that fails for regular files and procfs, and two more to make it blocking
// again. nvbind reads only such files, and a discovery opens dozens, where each system
// call is dear (a virtual machine's). Reads of the file block their thread, as they do
// for any regular file; a caller that may meet a FIFO checks the type first, as before
// (open blocks on one either way). Folders need nothing of the kind: os.ReadDir opens
// them without the poller, and with O_DIRECTORY.
func Open(path string) (*os.File, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err == nil {
			return os.NewFile(uintptr(fd), path), nil
		}
		if err != syscall.EINTR {
			return nil, &fs.PathError{Op: "open", Path: path, Err: err}
		}
	}
}

// ReadFile reads a file of at most max bytes.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	return ReadAll(f, max, path)
}

// ReplaceAtomic replaces the file dst with data as WriteAtomic does, without its fsyncs:
// a reader sees the old file or the new one, never a half-written one, but a crash may
// lose the change. For files that do not outlive what reads them at once (a container
// bundle's config.json between the runtime's caller and the runtime), where two fsyncs
// cost milliseconds on every container's creation.
func ReplaceAtomic(dst string, data []byte, mode fs.FileMode) error {
	return writeAtomic(dst, data, mode, nil, false)
}

// WriteAtomic replaces dst with data: a temp file beside it (mode, fsync), check on the
// temp file when given (its error leaves dst as it was; it runs during the fsync), rename,
// fsync of the folder. A
// reader sees the old file or the new one, never a half-written one, and on any error
// nothing is left behind. Missing folders are created world-readable.
func WriteAtomic(dst string, data []byte, mode fs.FileMode, check func(tmp string) error) error {
	return writeAtomic(dst, data, mode, check, true)
}

// writeAtomic is WriteAtomic; durable adds its fsyncs.
func writeAtomic(dst string, data []byte, mode fs.FileMode, check func(tmp string) error, durable bool) (err error) {
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // spec, bin and unit folders are world-readable
		return fmt.Errorf("create folder %s: %w", dir, err)
	}
	// the temp name ends in .tmp, not in dst's extension: readers of the folder go by it
	// (CDI reads every .yaml and .json, systemd every .service), and must not see a
	// second file of the same kind while this one is written
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return fmt.Errorf("create a temp file beside %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Chmod(mode) // the umask must not matter
	}
	// the check reads what the page cache holds, so it runs while the data goes to disk;
	// the rename waits for both
	checked := make(chan error, 1)
	if err == nil && check != nil {
		go func() { checked <- check(tmp.Name()) }()
	} else {
		checked <- nil
	}
	if err == nil && durable {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	cerr := <-checked
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err = cerr; err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("replace %s: %w", dst, err)
	}
	if !durable {
		return nil
	}
	return syncDir(dir)
}

// syncDir makes a folder's entries durable (a rename into it). A folder that cannot be
// opened, or whose file system cannot sync folders (EINVAL), is no error.
func syncDir(dir string) error {
	d, err := Open(dir)
	if err != nil {
		return nil
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Holds says whether dst already is what WriteAtomic(dst, data, mode, check) would leave
// there: a regular file with one link, not a link itself, with exactly mode's permission
// bits, owned by this process's effective user, holding exactly data, which check (when
// given) accepts. It pins the file with an O_PATH handle and looks at it before opening it
// for reading through /proc/self/fd (no device or FIFO is ever opened; without /proc it
// says no, and the file is written afresh), reads at most len(data)+1 bytes, and hands
// check that same file (/proc/self/fd/N), not dst, which another writer may replace
// meanwhile; check's error is Holds'. When dst holds data, the file and then its folder
// are synced, so that the file is as durable as a write would have made it, whoever wrote
// it; a failed sync says no.
func Holds(dst string, data []byte, mode fs.FileMode, check func(path string) error) (bool, error) {
	if mode&^fs.ModePerm != 0 {
		return false, nil
	}
	pfd, err := syscall.Open(dst, unix.O_PATH|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false, nil
	}
	defer func() { _ = syscall.Close(pfd) }()
	var st syscall.Stat_t
	if syscall.Fstat(pfd, &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Nlink != 1 ||
		st.Mode&0o7777 != uint32(mode) || int(st.Uid) != os.Geteuid() || st.Size != int64(len(data)) {
		return false, nil
	}
	fd, err := syscall.Open("/proc/self/fd/"+strconv.Itoa(pfd), syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOCTTY, 0)
	if err != nil {
		return false, nil
	}
	defer func() { _ = syscall.Close(fd) }()
	var rst syscall.Stat_t
	if syscall.Fstat(fd, &rst) != nil || rst.Dev != st.Dev || rst.Ino != st.Ino {
		return false, nil // not procfs's link to the file pinned
	}
	// the size may change under the read: read one byte more than data to see it
	old := make([]byte, len(data)+1)
	n := 0
	for n < len(old) {
		k, err := syscall.Read(fd, old[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return false, nil
		}
		if k == 0 {
			break
		}
		n += k
	}
	if n != len(data) || string(old[:n]) != string(data) {
		return false, nil
	}
	if check != nil {
		if err := check("/proc/self/fd/" + strconv.Itoa(fd)); err != nil {
			return true, err
		}
	}
	if syscall.Fsync(fd) != nil || syncDir(filepath.Dir(dst)) != nil {
		return false, nil
	}
	return true, nil
}
