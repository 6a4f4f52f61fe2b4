package driverroot

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func mknod(p string, e entry) error {
	if err := unix.Mknod(p, unix.S_IFCHR|uint32(e.mode.Perm()), int(unix.Mkdev(uint32(e.major), uint32(e.minor)))); err != nil {
		return fmt.Errorf("mknod %s: %w", p, err)
	}
	if err := unix.Chmod(p, uint32(e.mode.Perm())); err != nil { // the umask must not matter
		return err
	}
	return unix.Lchown(p, int(e.uid), int(e.gid))
}

func charDevice(p string) (major, minor int64, uid, gid uint32, err error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("lstat %s: %w", p, err)
	}
	return int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev)), st.Uid, st.Gid, nil
}
