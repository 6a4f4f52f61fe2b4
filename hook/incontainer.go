package hook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/internal/fileio"
)

// RunInContainer applies the actions to a container the runtime has created and not yet
// started, from a long-lived process on the host (nvbind's NRI plugin at StartContainer),
// instead of from a hook process the runtime starts for it. The container's process pid
// waits for the start, pivoted into the container's root, in its namespaces and in a
// cgroup whose path names the container's id: its root (/proc/PID/root) is the root the
// actions resolve every path in, with the guarantees the hook gives against a hostile
// image, and a thread of this process enters its mount namespace for the mounts (the
// params copy) and for the root's write access. A pid that is no such process (the
// host's, one in this process's namespace, a virtual machine's of a sandboxed runtime)
// is refused.
//
// The caller needs what a runtime has: the capabilities InContainerCapabilities names in
// the host's user namespace, the host's pid namespace, and the new mount API (Linux
// 5.12); InContainerSupported tells. A container with a user namespace of its own is the
// hook's (a process with threads cannot join one), and is refused here.
//
// A root the runtime made read-only (readonlyRootfs) stays so: the actions write through a
// detached clone of its mounts whose top one is writable, as the root is at createRuntime,
// where the hook runs. RunInContainer returns once ctx is done, with an error, whatever is
// left to do (its thread stops at the next step): the caller fails the container's start.
func RunInContainer(ctx context.Context, pid int, id string, o Options) error {
	if o.Log == nil {
		o.Log = io.Discard
	}
	if pid <= 1 {
		return fmt.Errorf("the container's pid %d is no created container's (the runtime gave none?)", pid)
	}
	// a pidfd pins the process: while it lives, what /proc/PID opens is its
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("the container's process %d: %w", pid, err)
	}
	defer func() { _ = unix.Close(pidfd) }()
	if err := inCgroupOf(pid, id); err != nil {
		return err
	}
	nsPath := fmt.Sprintf("/proc/%d/ns/mnt", pid)
	ns, err := os.Open(nsPath) //nolint:gosec // /proc/PID of the runtime's pid, never a container path
	if err != nil {
		return fmt.Errorf("the container's mount namespace: %w", err)
	}
	// the handles go to the thread that does the actions, which closes them once done: a
	// handle closed under it, its number taken by another file, would lead it elsewhere
	var handles []io.Closer
	handedOver := false
	closeAll := func() {
		for _, h := range handles {
			_ = h.Close()
		}
	}
	defer func() {
		if !handedOver {
			closeAll()
		}
	}()
	handles = append(handles, ns)
	for _, other := range []string{"/proc/self/ns/mnt", "/proc/1/ns/mnt"} {
		same, err := sameNamespace(nsPath, other)
		if err != nil && other == "/proc/self/ns/mnt" {
			return err
		}
		if same {
			return fmt.Errorf("process %d is in the mount namespace of %s: it is no container", pid, strings.TrimSuffix(strings.TrimPrefix(other, "/proc/"), "/ns/mnt"))
		}
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
	handles = append(handles, r)
	// a process of the host's (in a mount namespace of a service of its own) has its root
	var got unix.Stat_t
	if err := unix.Fstat(int(root.Fd()), &got); err != nil {
		return fmt.Errorf("the container's root: %w", err)
	}
	for _, other := range []string{"/", "/proc/1/root"} {
		var host unix.Stat_t
		if unix.Stat(other, &host) == nil && got.Dev == host.Dev && got.Ino == host.Ino {
			return fmt.Errorf("process %d has the root of %s: it is no container", pid, other)
		}
	}
	// the process still lives: the handles are its (a process of another user answers
	// EPERM to a signal without CAP_KILL: alive too)
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("the container's process %d ended while its container was opened", pid)
	} else if err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("the container's process %d: %w", pid, err)
	}
	// the mount's source is made in this process's namespace, which the thread leaves
	if o.ProtectDeviceNodes {
		if o.hostParams, err = readHostParams(o.HostParams); err != nil {
			return fmt.Errorf("disable-device-node-modification: %w", err)
		}
		o.hostParamsRead = true
		if modified, changed := setModifyDeviceFiles(o.hostParams); o.hostParams != nil && changed {
			if o.paramsTree, err = detachedCopy(modified); err != nil {
				return fmt.Errorf("disable-device-node-modification: %w", err)
			}
			handles = append(handles, o.paramsTree)
		}
	}
	o.inContainer = true
	// the lookups that reopen a handle go through /proc/thread-self: a procfs of this
	// process's pid namespace, opened here, where /proc is the host's
	if h, err := pathrs.Reopen(root, unix.O_RDONLY|unix.O_DIRECTORY); err == nil {
		_ = h.Close()
	}
	// only so many threads in containers at once; one left behind by a call that took too
	// long (a hung file system in the container) keeps its slot and its namespace until it
	// ends: with every slot so held, calls wait and fail at their deadline
	select {
	case running <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waited for one of %d containers' steps to end, which still run: %w", maxRunning, context.Cause(ctx))
	}
	done := make(chan error, 1)
	handedOver = true
	go func() {
		defer func() { <-running }()
		defer closeAll()
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			// never unlocked: the thread, in the container's namespace, ends with the
			// goroutine
			done <- inNamespace(ctx, int(ns.Fd()), r, o)
			return
		}
		// the process's first thread, which Go keeps when its goroutine ends locked
		// rather than ending it: it stays here, in this namespace, while another does it
		inner := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			inner <- inNamespace(ctx, int(ns.Fd()), r, o)
		}()
		err := <-inner
		runtime.UnlockOSThread()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("took too long: %w", context.Cause(ctx))
	}
}

// running holds a slot for each call whose actions run; maxRunning bounds them.
var running = make(chan struct{}, maxRunning)

const maxRunning = 8

// inCgroupOf checks that process pid is in a cgroup whose path names the container's id
// (runc under containerd and CRI-O, crun: cri-containerd-ID.scope, crio-ID.scope,
// .../ID): what a runtime reports as a container's process and is not (a sandboxed
// runtime's virtual machine, a host process) is in none. An empty id checks nothing.
func inCgroupOf(pid int, id string) error {
	if id == "" {
		return nil
	}
	p := fmt.Sprintf("/proc/%d/cgroup", pid)
	data, err := fileio.ReadFile(p, maxSmallFile)
	if err != nil {
		return fmt.Errorf("the container's process: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		_, path, _ := strings.Cut(line, "::")
		if path == "" {
			if i := strings.LastIndexByte(line, ':'); i >= 0 {
				path = line[i+1:]
			}
		}
		if CgroupPathNames(path, id) {
			return nil
		}
	}
	return fmt.Errorf("process %d is in no cgroup of container %.12s: not the container's own process (a sandboxed runtime's?); for this runtime, leave the steps to the hook (nvbind nri --stage hook, stage = \"hook\" in runtime.toml)", pid, id)
}

// CgroupPathNames reports whether a cgroup path names container id as runtimes name
// their containers' cgroups: a component that is the id, or ends in -ID (a .scope:
// cri-containerd-ID.scope, docker-ID.scope), or systemd's slice:prefix:ID.
func CgroupPathNames(path, id string) bool {
	for part := range strings.SplitSeq(path, "/") {
		if part == id || strings.HasSuffix(strings.TrimSuffix(part, ".scope"), "-"+id) || strings.HasSuffix(part, ":"+id) {
			return true
		}
	}
	return false
}

// inNamespace enters the mount namespace ns with the calling thread and runs the actions
// on root r there (through a writable clone of a read-only root).
func inNamespace(ctx context.Context, ns int, r *containerRoot, o Options) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the driver's steps failed: %v", p)
		}
	}()
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
	if sf.Flags&unix.ST_RDONLY == 0 {
		return runIn(ctx, r, o)
	}
	// the container's root stays read-only: the actions write through a clone of its
	// mounts whose top one is writable, detached, which nothing of the container reaches
	// and which goes with its handle; the params copy goes onto the container's own
	cfd, err := unix.OpenTree(rfd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("clone the container's read-only root: %w", err)
	}
	w := &containerRoot{path: "/", fd: os.NewFile(uintptr(cfd), "/"), dirs: map[string]*os.File{}}
	defer func() { _ = w.Close() }()
	if err := setReadOnly(cfd, false); err != nil {
		return fmt.Errorf("make a clone of the read-only root writable: %w", err)
	}
	o.paramsRoot = r.fd
	return runIn(ctx, w, o)
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

// detachedCopy returns a detached, read-only mount of a new file holding data, on a
// tmpfs of its own that no path reaches: to be moved onto a file of another mount
// namespace (move_mount). Nothing is left behind once it is closed, or if the process is
// killed.
func detachedCopy(data []byte) (*os.File, error) {
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsopen tmpfs: %w", err)
	}
	defer func() { _ = unix.Close(fsfd) }()
	if err := unix.FsconfigSetString(fsfd, "mode", "0755"); err != nil {
		return nil, fmt.Errorf("fsconfig tmpfs: %w", err)
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("fsconfig create tmpfs: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsmount tmpfs: %w", err)
	}
	defer func() { _ = unix.Close(mfd) }()
	fd, err := unix.Openat(mfd, "params", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create the params copy: %w", err)
	}
	f := os.NewFile(uintptr(fd), "params")
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write the params copy: %w", err)
	}
	tfd, err := unix.OpenTree(mfd, "params", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("open_tree of the params copy: %w", err)
	}
	tree := os.NewFile(uintptr(tfd), "params")
	a := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	if err := unix.MountSetattr(tfd, "", unix.AT_EMPTY_PATH, a); err != nil {
		_ = tree.Close()
		return nil, fmt.Errorf("make the params copy read-only: %w", err)
	}
	return tree, nil
}

// A Capability is one of the capabilities RunInContainer needs.
type Capability struct {
	Bit  uint
	Name string
}

// InContainerCapabilities are the capabilities RunInContainer needs, as a hook has them:
// to enter a mount namespace and mount (SYS_ADMIN, SYS_CHROOT), to open the files of the
// container's process, which runc makes undumpable (SYS_PTRACE), and to write in an
// image's folders whatever their owner and mode (DAC_OVERRIDE, FOWNER).
var InContainerCapabilities = []Capability{
	{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}, {unix.CAP_SYS_CHROOT, "CAP_SYS_CHROOT"}, {unix.CAP_SYS_PTRACE, "CAP_SYS_PTRACE"},
	{unix.CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"}, {unix.CAP_FOWNER, "CAP_FOWNER"},
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
	for _, c := range InContainerCapabilities {
		if data[c.Bit/32].Effective&(1<<(c.Bit%32)) == 0 {
			return fmt.Errorf("no %s", c.Name)
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
	// the params copy is what needs most of the new mount API: made here once
	tree, err := detachedCopy([]byte("ModifyDeviceFiles: 0\n"))
	if err != nil {
		return fmt.Errorf("the new mount API (Linux 5.12): %w", err)
	}
	_ = tree.Close()
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open (Linux 5.3): %w", err)
	}
	return unix.Close(fd)
}
