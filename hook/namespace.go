package hook

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/internal/fileio"
	"github.com/nvbind/nvbind/internal/hookargs"
)

// enterMountNamespace moves the calling goroutine into the mount namespace of process
// pid: at createRuntime the runtime has made the container's mounts there, not yet
// pivoted into, and runs hooks on the host. It does nothing where the thread is in that
// namespace already (the C hook entered it before handing over). The goroutine keeps its
// thread, which no other goroutine gets again: the thread ends with the goroutine.
//
// A container with a user namespace of its own is entered by the C hook alone, which
// joins it first (a process with threads cannot): here it is an error to be outside it.
func enterMountNamespace(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("--%s: the OCI state has no pid: run the hook at createRuntime, where the runtime gives the container's", hookargs.FlagEnterMountNS)
	}
	// a process of the host's own (pid 1, as the flag at createContainer gives: runc gives
	// the pid in the container's namespace there) is no container being created; the
	// container's process may be the runtime's grandchild (crun forks twice with a user
	// namespace), so its parent is not compared with this hook's
	if ppid, err := parentOf(pid); err != nil || ppid <= 0 || pid == 1 {
		return fmt.Errorf("--%s: the state's pid %d is no container being created: the hook runs at createRuntime", hookargs.FlagEnterMountNS, pid)
	}
	if same, err := sameNamespace(fmt.Sprintf("/proc/%d/ns/user", pid), "/proc/thread-self/ns/user"); err == nil && !same {
		return fmt.Errorf("--%s: the container has a user namespace of its own, which only nvbind-hook enters (not nvbind-hook-go, nor nvbind hook)", hookargs.FlagEnterMountNS)
	}
	p := fmt.Sprintf("/proc/%d/ns/mnt", pid)
	f, err := os.Open(p) //nolint:gosec // /proc/PID/ns/mnt of the runtime's state, never a container path
	if err != nil {
		return fmt.Errorf("--%s: the container's mount namespace: %w", hookargs.FlagEnterMountNS, err)
	}
	defer func() { _ = f.Close() }()
	runtime.LockOSThread() // never unlocked: see above
	if same, err := sameNamespace(p, "/proc/thread-self/ns/mnt"); err != nil {
		return fmt.Errorf("--%s: %w", hookargs.FlagEnterMountNS, err)
	} else if same {
		return nil
	}
	// a mount namespace is entered by a thread whose root and working folder are its own
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("--%s: unshare CLONE_FS: %w", hookargs.FlagEnterMountNS, err)
	}
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("--%s: enter %s: %w", hookargs.FlagEnterMountNS, p, err)
	}
	var sf unix.Statfs_t
	if err := unix.Statfs("/proc/self/fd", &sf); err != nil || sf.Type != unix.PROC_SUPER_MAGIC {
		return errors.Join(fmt.Errorf("--%s: no procfs at /proc in the container's mount namespace", hookargs.FlagEnterMountNS), err)
	}
	return nil
}

// sameNamespace reports whether the namespace files a and b are one namespace.
func sameNamespace(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return false, fmt.Errorf("%s: %w", a, err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		return false, fmt.Errorf("%s: %w", b, err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// parentOf returns the parent pid of process pid, from /proc/PID/stat.
func parentOf(pid int) (int, error) {
	p := fmt.Sprintf("/proc/%d/stat", pid)
	data, err := fileio.ReadFile(p, 1024)
	if err != nil {
		return 0, err
	}
	// the name, in parentheses, may hold anything: the fields follow the last ')'
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: no parent pid", p)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("%s: no parent pid", p)
	}
	return strconv.Atoi(f[1])
}
