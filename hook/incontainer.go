package hook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"
)

// RunInContainer applies the actions to a container the runtime has created and not yet
// started, from a long-lived process on the host (nvbind's NRI plugin at StartContainer),
// instead of from a hook process the runtime starts for it. The container's process pid
// waits for the start, pivoted into the container's root, in its namespaces: its root
// (/proc/PID/root) is the root the actions resolve every path in, with the guarantees
// the hook gives against a hostile image, and a thread of this process enters its mount
// namespace for the mounts (the params copy) and for the root's write access.
//
// The caller needs what a runtime has: CAP_SYS_ADMIN, CAP_SYS_CHROOT and CAP_SYS_PTRACE
// in the host's user namespace, the host's pid namespace, and the new mount API (Linux
// 5.12); InContainerSupported tells. A container with a user namespace of its own is the
// hook's (a process with threads cannot join one), and is refused here.
//
// A root the runtime made read-only (readonlyRootfs) is made writable for the time of the
// actions and read-only again, as it is at createRuntime, where the hook runs; nothing in
// the container runs before its start.
func RunInContainer(_ context.Context, pid int, o Options) error {
	if o.Log == nil {
		o.Log = io.Discard
	}
	if pid <= 1 {
		return fmt.Errorf("the container's pid is %d: the runtime gave none for the created container", pid)
	}
	nsPath := fmt.Sprintf("/proc/%d/ns/mnt", pid)
	ns, err := os.Open(nsPath) //nolint:gosec // /proc/PID of the runtime's pid, never a container path
	if err != nil {
		return fmt.Errorf("the container's mount namespace: %w", err)
	}
	defer func() { _ = ns.Close() }()
	if same, err := sameNamespace(nsPath, "/proc/self/ns/mnt"); err != nil {
		return err
	} else if same {
		return fmt.Errorf("process %d is in nvbind's mount namespace: it is no container", pid)
	}
	if same, err := sameNamespace(fmt.Sprintf("/proc/%d/ns/user", pid), "/proc/self/ns/user"); err != nil {
		return err
	} else if !same {
		return fmt.Errorf("process %d has a user namespace of its own: its container needs the hook", pid)
	}
	root, err := os.OpenFile(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("the container's root: %w", err)
	}
	r := &containerRoot{path: "/", fd: root, dirs: map[string]*os.File{}}
	defer func() { _ = r.Close() }()
	// a process of the host's (in a mount namespace of a service of its own) has its root
	var got, host unix.Stat_t
	if err := unix.Fstat(int(root.Fd()), &got); err != nil {
		return fmt.Errorf("the container's root: %w", err)
	}
	if err := unix.Stat("/", &host); err != nil {
		return err
	}
	if got.Dev == host.Dev && got.Ino == host.Ino {
		return fmt.Errorf("process %d has the host's root: it is no container", pid)
	}
	// the pid still names the process whose namespace is open: the root is that process's
	if same, err := sameNamespace(nsPath, "/proc/self/fd/"+fmt.Sprint(ns.Fd())); err != nil || !same {
		return errors.Join(fmt.Errorf("process %d ended while its container was opened", pid), err)
	}
	// the mount's source is made in this process's namespace, which the thread leaves
	if o.ProtectDeviceNodes {
		if o.hostParams, err = readHostParams(o.HostParams); err != nil {
			return fmt.Errorf("disable-device-node-modification: %w", err)
		}
		o.hostParamsRead = true
		if modified, changed := setModifyDeviceFiles(o.hostParams); o.hostParams != nil && changed {
			var done func()
			if o.paramsTree, done, err = detachedCopy(modified); err != nil {
				return fmt.Errorf("disable-device-node-modification: %w", err)
			}
			defer done()
		}
	}
	// the lookups that reopen a handle go through /proc/thread-self: a procfs of this
	// process's pid namespace, opened here, where /proc is the host's
	if h, err := pathrs.Reopen(root, unix.O_RDONLY|unix.O_DIRECTORY); err == nil {
		_ = h.Close()
	}
	done := make(chan error, 1)
	go func() {
		// never unlocked: the thread, in the container's namespace, ends with the goroutine
		runtime.LockOSThread()
		done <- inNamespace(int(ns.Fd()), r, o)
	}()
	return <-done
}

// inNamespace enters the mount namespace ns with the calling thread and runs the actions
// on root r there, the root made writable for their time.
func inNamespace(ns int, r *containerRoot, o Options) (err error) {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare CLONE_FS: %w", err)
	}
	if err := unix.Setns(ns, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("enter the container's mount namespace: %w", err)
	}
	rfd := int(r.fd.Fd())
	var sf unix.Statfs_t
	if err := unix.Fstatfs(rfd, &sf); err != nil {
		return fmt.Errorf("the container's root: %w", err)
	}
	if sf.Flags&unix.ST_RDONLY != 0 {
		if err := setReadOnly(rfd, false); err != nil {
			return fmt.Errorf("make the read-only root writable for the hook's actions: %w", err)
		}
		defer func() {
			if rerr := setReadOnly(rfd, true); rerr != nil {
				err = errors.Join(err, fmt.Errorf("make the root read-only again: %w", rerr))
			}
		}()
	}
	return runIn(context.Background(), r, o)
}

// setReadOnly sets or clears the read-only flag of the mount of handle fd alone.
func setReadOnly(fd int, ro bool) error {
	a := &unix.MountAttr{}
	if ro {
		a.Attr_set = unix.MOUNT_ATTR_RDONLY
	} else {
		a.Attr_clr = unix.MOUNT_ATTR_RDONLY
	}
	return unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, a)
}

// detachedCopy returns a detached, read-only mount of a new file holding data: made from
// hostCopy's file in this process's mount namespace, to be moved onto a file of another
// (move_mount), where no path of this namespace is reached. done closes it and removes
// the file's folder, once it is moved: a file no folder holds cannot be mounted.
func detachedCopy(data []byte) (tree *os.File, done func(), err error) {
	src, err := hostCopy(data)
	if err != nil {
		return nil, nil, err
	}
	rm := func() { _ = src.Close(); _ = os.RemoveAll(filepath.Dir(src.Name())) }
	fd, err := unix.OpenTree(int(src.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		rm()
		return nil, nil, fmt.Errorf("open_tree of the params copy: %w", err)
	}
	tree = os.NewFile(uintptr(fd), "params")
	done = func() { _ = tree.Close(); rm() }
	a := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, a); err != nil {
		done()
		return nil, nil, fmt.Errorf("make the params copy read-only: %w", err)
	}
	return tree, done, nil
}

// The inode numbers of the first user and pid namespaces (include/linux/proc_ns.h).
const (
	procUserInitIno = 0xEFFFFFFD
	procPidInitIno  = 0xEFFFFFFC
)

// InContainerSupported reports whether RunInContainer can work from this process, and
// why not: it has the privileges, it sees the host's processes, and the kernel has the
// new mount API.
func InContainerSupported() error {
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}, {unix.CAP_SYS_CHROOT, "CAP_SYS_CHROOT"}, {unix.CAP_SYS_PTRACE, "CAP_SYS_PTRACE"}} {
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			return fmt.Errorf("no %s", c.name)
		}
	}
	// the kernel's first namespaces have fixed inode numbers (PROC_USER_INIT_INO,
	// PROC_PID_INIT_INO): the runtime's pids are the first pid namespace's
	for _, n := range []struct {
		file string
		ino  uint64
	}{{"/proc/self/ns/user", procUserInitIno}, {"/proc/self/ns/pid", procPidInitIno}} {
		var st unix.Stat_t
		if err := unix.Stat(n.file, &st); err != nil {
			return err
		}
		if st.Ino != n.ino {
			return fmt.Errorf("not in the host's %s namespace", filepath.Base(n.file))
		}
	}
	// a call with no handle answers EBADF where the kernel has it, ENOSYS where not
	if err := unix.MountSetattr(-1, "", unix.AT_EMPTY_PATH, &unix.MountAttr{}); errors.Is(err, unix.ENOSYS) {
		return errors.New("the kernel has no mount_setattr (Linux 5.12)")
	}
	return nil
}
