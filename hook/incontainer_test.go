package hook

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/test/testutil"
)

// envCreated makes the test binary a created container's process (createdChild).
const envCreated = "NVBIND_TEST_CREATED"

// createdContainer starts a process that stands for a container a runtime has created and
// not started: in a mount namespace of its own, the layout src mounted read-only at mnt,
// the root bound on itself (read-only with ro) and chrooted into, it waits until the test
// ends. It returns its pid.
func createdContainer(t testing.TB, root, src, mnt string, ro bool) int {
	t.Helper()
	return createdContainerAs(t, root, src, mnt, ro, 0)
}

// createdContainerAs is createdContainer whose process then runs as uid (runc's init
// takes the container's user before it waits for the start).
func createdContainerAs(t testing.TB, root, src, mnt string, ro bool, uid int) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s\n%s\n%s\n%v\n%d", envCreated, root, src, mnt, ro, uid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("the created container: %q, %v: %s", line, err, stderr.String())
	}
	return cmd.Process.Pid
}

// createdChild is the created container's process (see createdContainer).
func createdChild(spec string) int {
	f := strings.Split(spec, "\n")
	root, src, mnt, ro := f[0], f[1], f[2], f[3] == "true"
	uid, _ := strconv.Atoi(f[4])
	steps := []struct {
		src, dst string
		flags    uintptr
	}{{"", "/", unix.MS_REC | unix.MS_PRIVATE}, {src, mnt, unix.MS_BIND}, {"", mnt, unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY},
		{root, root, unix.MS_BIND | unix.MS_REC}}
	if ro {
		steps = append(steps, struct {
			src, dst string
			flags    uintptr
		}{"", root, unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY})
	}
	for _, s := range steps {
		if err := unix.Mount(s.src, s.dst, "", s.flags, ""); err != nil {
			fmt.Fprintln(os.Stderr, "mount", s.dst, err)
			return 1
		}
	}
	if err := unix.Chroot(root); err != nil {
		fmt.Fprintln(os.Stderr, "chroot", err)
		return 1
	}
	_ = os.Chdir("/")
	if uid != 0 {
		if err := unix.Setresuid(uid, uid, uid); err != nil {
			fmt.Fprintln(os.Stderr, "setresuid", err)
			return 1
		}
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// stageOptions are the Options the hook command gives for args (hook all ...).
func stageOptions(t *testing.T, args []string) Options {
	t.Helper()
	a, err := hookargs.Decode(args)
	if err != nil {
		t.Fatal(err)
	}
	o := OptionsOf(a)
	o.GPUMinors = []int{0, 1, 40}
	return o
}

// TestRunInContainer: what RunInContainer gives a created container, from this process on
// the host, is what the C hook gives it at createRuntime: the same tree, read-only root or
// not (and the root read-only again after); the params copy is bound in the container's
// namespace alone, read-only; a pid that is no container is refused and nothing changes.
func TestRunInContainer(t *testing.T) {
	testutil.RequiresRoot(t)
	if err := InContainerSupported(); err != nil {
		t.Skip("RunInContainer cannot work here:", err)
	}
	bin := fastHook(t)
	bundle, args := layoutBundle(t, "")
	entered := append(args[:2:2], append([]string{"--enter-mount-namespace"}, args[2:]...)...)
	b, src, mnt := layoutAside(t, bundle, 0)
	hook := runHookInRuntime(t, bin, b, entered, false, 0, false, src, mnt)
	if hook.code != 0 {
		t.Fatalf("the C hook: exit %d: %s", hook.code, hook.stderr)
	}
	want := tree(t, filepath.Join(b, "rootfs"))

	for _, c := range []struct {
		ro  bool
		uid int
	}{{false, 0}, {true, 0}, {true, 1000}} {
		ro := c.ro
		b, src, mnt := layoutAside(t, bundle, 0)
		root := filepath.Join(b, "rootfs")
		// a container of another user: its process is undumpable, and answers a signal of
		// a plugin without CAP_KILL with EPERM
		pid := createdContainerAs(t, root, src, mnt, ro, c.uid)
		o := stageOptions(t, args)
		if err := withoutCapKill(t, c.uid != 0, func() error { return RunInContainer(context.Background(), pid, "", o) }); err != nil {
			t.Fatalf("read-only root %v, uid %d: %v", ro, c.uid, err)
		}
		if got := tree(t, root); got != want {
			t.Errorf("read-only root %v: RunInContainer and the C hook differ:\n%s\n---\n%s", ro, got, want)
		}
		if !cacheHas(t, b, "libcuda.so.1", layoutMount+"/") {
			t.Errorf("read-only root %v: the ld cache lacks the layout's libcuda.so.1", ro)
		}
		var sf unix.Statfs_t
		if err := unix.Statfs(fmt.Sprintf("/proc/%d/root/", pid), &sf); err != nil || (sf.Flags&unix.ST_RDONLY != 0) != ro {
			t.Errorf("read-only root %v: the root's flags after: %#x (%v)", ro, sf.Flags, err)
		}
	}

	// the params: the container's reads ModifyDeviceFiles: 0 from a read-only copy bound in
	// its namespace only; the host's file and the image's stay as they were
	b, src, mnt = layoutAside(t, bundle, 0)
	writeFiles(t, b, map[string]string{"params": "ModifyDeviceFiles: 1\n", "rootfs/proc/driver/nvidia/params": "ModifyDeviceFiles: 1\n"})
	pid := createdContainer(t, filepath.Join(b, "rootfs"), src, mnt, true)
	o := stageOptions(t, args)
	o.HostParams = filepath.Join(b, "params")
	if err := RunInContainer(context.Background(), pid, "", o); err != nil {
		t.Fatal(err)
	}
	inside := fmt.Sprintf("/proc/%d/root/proc/driver/nvidia/params", pid)
	if data, err := os.ReadFile(inside); err != nil || string(data) != "ModifyDeviceFiles: 0\n" {
		t.Errorf("the container's params: %q, %v", data, err)
	}
	if err := os.WriteFile(inside, []byte("x"), 0o644); err == nil {
		t.Error("the container's params copy is writable")
	}
	for _, p := range []string{"params", "rootfs/proc/driver/nvidia/params"} {
		if data, err := os.ReadFile(filepath.Join(b, p)); err != nil || string(data) != "ModifyDeviceFiles: 1\n" {
			t.Errorf("%s outside the container's namespace: %q, %v", p, data, err)
		}
	}
	if left, _ := filepath.Glob("/run/nvbind-params-*"); len(left) > 0 {
		t.Errorf("params folders left: %v", left)
	}

	// pids that are no created container: refused, and no root changed
	b, src, mnt = layoutAside(t, bundle, 0)
	before := tree(t, b)
	hostRoot := inMountNamespace(t, "mount --bind "+src+" "+mnt)
	for pid, why := range map[int]string{0: "is no created container's", 1: "is no created container's", os.Getpid(): "is in the mount namespace of self",
		hostRoot: "has the root of /", 1 << 30: "the container's process"} {
		err := RunInContainer(context.Background(), pid, "", stageOptions(t, args))
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("pid %d: %v, want %q", pid, err, why)
		}
	}
	// a created container's process in no cgroup of the id the runtime gives (a sandboxed
	// runtime's virtual machine, say): refused
	pid = createdContainer(t, filepath.Join(b, "rootfs"), src, mnt, false)
	if err := RunInContainer(context.Background(), pid, "0123456789abcdef", stageOptions(t, args)); err == nil || !strings.Contains(err.Error(), "is in no cgroup of container 0123456789ab:") {
		t.Errorf("a process of another cgroup: %v", err)
	}
	if after := tree(t, b); after != before {
		t.Error("a refused pid changed the bundle")
	}
	// a deadline passed: an error at once
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := RunInContainer(ctx, pid, "", stageOptions(t, args)); err == nil {
		t.Error("RunInContainer with its context done succeeded")
	}
}

// TestRunInContainerLeavesNoThreadInside: whichever thread runs the actions, the
// process's threads are all in its own mount namespace afterwards (Go keeps the first
// thread when a goroutine ends locked to it, rather than ending it: one left in the
// container's namespace would keep it, and its mounts, alive), from many calls at once.
func TestRunInContainerLeavesNoThreadInside(t *testing.T) {
	testutil.RequiresRoot(t)
	if err := InContainerSupported(); err != nil {
		t.Skip("RunInContainer cannot work here:", err)
	}
	bundle, args := layoutBundle(t, "")
	var own unix.Stat_t
	if err := unix.Stat("/proc/self/ns/mnt", &own); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		var pids []int
		for range 4 {
			b, src, mnt := layoutAside(t, bundle, 0)
			pids = append(pids, createdContainer(t, filepath.Join(b, "rootfs"), src, mnt, false))
		}
		errs := make(chan error, len(pids))
		for _, pid := range pids {
			go func() { errs <- RunInContainer(context.Background(), pid, "", stageOptions(t, args)) }()
		}
		for range pids {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		// a thread that did the actions ends just after it answered
		deadline := time.Now().Add(5 * time.Second)
		for {
			inside := threadsElsewhere(t, own.Ino)
			if len(inside) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("threads %v (the process is %d) are in another mount namespace after RunInContainer", inside, os.Getpid())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// BenchmarkRunInContainer: RunInContainer's time on a fresh created container with the
// layout of layoutBundle (the links, the ld cache merged with the image's, the
// application profile), from this process; the container's making is not timed.
func BenchmarkRunInContainer(b *testing.B) {
	testutil.RequiresRoot(b)
	if err := InContainerSupported(); err != nil {
		b.Skip("RunInContainer cannot work here:", err)
	}
	bundle, args := layoutBundle(b, "")
	a, err := hookargs.Decode(args)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		bb, src, mnt := layoutAside(b, bundle, 0)
		pid := createdContainer(b, filepath.Join(bb, "rootfs"), src, mnt, false)
		o := OptionsOf(a)
		o.GPUMinors = []int{0}
		b.StartTimer()
		if err := RunInContainer(context.Background(), pid, "", o); err != nil {
			b.Fatal(err)
		}
	}
}

// threadsElsewhere lists the process's threads whose mount namespace is not ino.
func threadsElsewhere(t *testing.T, ino uint64) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, task := range tasks {
		var st unix.Stat_t
		if err := unix.Stat("/proc/self/task/"+task.Name()+"/ns/mnt", &st); err == nil && st.Ino != ino {
			out = append(out, task.Name())
		}
	}
	return out
}

// withoutCapKill runs f on a thread without CAP_KILL in its effective set where drop is
// set (as nvbind-nri.service runs the plugin), and restores it after.
func withoutCapKill(t *testing.T, drop bool, f func() error) error {
	t.Helper()
	if !drop {
		return f()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data, saved [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	saved = data
	data[unix.CAP_KILL/32].Effective &^= 1 << (unix.CAP_KILL % 32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Capset(&hdr, &saved[0]); err != nil {
			t.Fatal(err)
		}
	}()
	return f()
}
