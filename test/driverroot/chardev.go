package driverroot

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func charDevice(p string) (major, minor int64, uid, gid uint32, err error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("lstat %s: %w", p, err)
	}
	return int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev)), st.Uid, st.Gid, nil
}
