package hook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/nvbind/nvbind/internal/ldcache"
	"github.com/nvbind/nvbind/test/testutil"
)

// The C hook (cmd/nvbind-hook) does the layout case itself and hands everything else to
// the full hook (nvbind-hook-go, this package): these tests run both on copies of one
// bundle and require the same tree, byte for byte, the same messages and the same exit
// status, and that the C hook took the path it should.

var (
	fastOnce sync.Once
	fastDir  string
	fastErr  error
)

// fastHook builds nvbind-hook (C) with nvbind-hook-go beside it, once per test binary.
func fastHook(t testing.TB) string {
	t.Helper()
	fastOnce.Do(func() {
		fastDir, fastErr = os.MkdirTemp("", "nvbind-fast-hook-") //nolint:usetesting // one build for every test of the binary, removed by TestMain
		if fastErr != nil {
			return
		}
		repo := testutil.RepoRoot(t)
		build := exec.Command("go", "build", "-o", filepath.Join(fastDir, "nvbind-hook-go"), "./cmd/nvbind-hook-go")
		build.Dir, build.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fastErr = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		cc := exec.Command(testutil.CCompiler(), "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", filepath.Join(fastDir, "nvbind-hook"),
			"cmd/nvbind-hook/nvbind-hook.c")
		cc.Dir = repo
		if out, err := cc.CombinedOutput(); err != nil {
			fastErr = fmt.Errorf("%s: %w\n%s", cc.Path, err, out)
			return
		}
		src := filepath.Join(fastDir, "launch.c")
		if fastErr = os.WriteFile(src, []byte(launcherSource), 0o644); fastErr != nil {
			return
		}
		if out, err := exec.Command("cc", "-O2", "-o", filepath.Join(fastDir, "launch"), src).CombinedOutput(); err != nil {
			fastErr = fmt.Errorf("cc launch.c: %w\n%s", err, out)
			return
		}
		src = filepath.Join(fastDir, "runtime.c")
		if fastErr = os.WriteFile(src, []byte(runtimeSource), 0o644); fastErr != nil {
			return
		}
		if out, err := exec.Command("cc", "-O2", "-Wall", "-Werror", "-o", filepath.Join(fastDir, "runtime"), src).CombinedOutput(); err != nil {
			fastErr = fmt.Errorf("cc runtime.c: %w\n%s", err, out)
		}
	})
	if fastErr != nil {
		t.Fatal(fastErr)
	}
	return filepath.Join(fastDir, "nvbind-hook")
}

// launcherSource runs a program as its child and writes the child's peak RSS to fd 3: a
// child that Go starts is a vfork in the test process's memory, and the kernel folds that
// (hundreds of MiB under -race) into the child's ru_maxrss; a fork from this small
// program starts the hook with its few pages instead.
const launcherSource = `#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
	if (argc < 2) return 2;
	pid_t pid = fork();
	if (pid < 0) return 2;
	if (pid == 0) {
		execv(argv[1], argv + 1);
		_exit(127);
	}
	int status;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) < 0) return 2;
	dprintf(3, "%ld\n", ru.ru_maxrss);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
`

// runtimeSource does what runc and crun do around a createRuntime hook: it makes the
// container's process in a mount namespace of its own and, with a root uid other than 0,
// a user namespace whose root that uid is; the process mounts src read-only at mnt there
// and is made non-dumpable, as runc's init is. Mode "child" makes it the runtime's child
// (runc); "grandchild" makes it through a process that exits at once, so that it is
// nobody's child here (crun with a user namespace). Then the runtime runs the hook (argv
// 7 on) as its child, the OCI state with the container process's pid on its stdin, and
// writes the hook's peak RSS to fd 3. Before the container's process ends, it writes to
// stderr "CHECK:" and the file check as it sees it, and CHECK-RO or CHECK-RW as it can
// open it for writing.
// Arguments: ROOT-UID MODE SRC MNT BUNDLE CHECK HOOK ARGS...
const runtimeSource = `#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
static int go[2], ready[2], pidp[2], user;
static const char *src, *mnt, *check;
static char stack[1 << 16];
static int container(void *arg) {
	(void)arg;
	char c;
	close(go[1]);
	close(ready[0]);
	if (read(go[0], &c, 1) != 1) _exit(1);
	if (user && (setgroups(0, NULL) || setresgid(0, 0, 0) || setresuid(0, 0, 0))) { perror("container: root"); _exit(1); }
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) || mount(src, mnt, NULL, MS_BIND, NULL) ||
	    mount(NULL, mnt, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL)) { perror("container: mount"); _exit(1); }
	prctl(PR_SET_DUMPABLE, 0);
	if (write(ready[1], "r", 1) != 1) _exit(1);
	if (read(go[0], &c, 1) != 1) _exit(1);
	char buf[4096] = "";
	int fd = open(check, O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
	buf[n > 0 ? n : 0] = 0;
	if (fd >= 0) close(fd);
	fd = open(check, O_WRONLY);
	fprintf(stderr, "CHECK:%sCHECK-%s\n", buf, fd >= 0 ? "RW" : errno == EROFS ? "RO" : "GONE");
	fflush(stderr);
	if (write(ready[1], "r", 1) != 1) _exit(1);
	pause();
	_exit(0);
}
static pid_t make(int flags, int grand) {
	if (!grand) {
		pid_t pid = clone(container, stack + sizeof stack, flags | SIGCHLD, NULL);
		if (pid > 0) return pid;
		perror("clone");
		exit(2);
	}
	pid_t mid = fork();
	if (mid == 0) {
		pid_t pid = clone(container, stack + sizeof stack, flags | SIGCHLD, NULL);
		_exit(pid > 0 && write(pidp[1], &pid, sizeof pid) == sizeof pid ? 0 : 1);
	}
	pid_t pid = -1;
	if (mid < 0 || read(pidp[0], &pid, sizeof pid) != sizeof pid) { fprintf(stderr, "no container process\n"); exit(2); }
	waitpid(mid, NULL, 0);
	return pid;
}
static void put(const char *path, const char *s, pid_t pid) {
	FILE *f = fopen(path, "w");
	if (!f || fputs(s, f) < 0 || fclose(f)) { perror(path); kill(pid, SIGKILL); exit(2); }
}
int main(int argc, char **argv) {
	if (argc < 8) return 2;
	int root = atoi(argv[1]), grand = strcmp(argv[2], "grandchild") == 0;
	user = root != 0;
	src = argv[3], mnt = argv[4], check = argv[6];
	signal(SIGPIPE, SIG_IGN);
	if (pipe2(go, O_CLOEXEC) || pipe2(ready, O_CLOEXEC) || pipe2(pidp, O_CLOEXEC)) return 2;
	pid_t pid = make(CLONE_NEWNS | (user ? CLONE_NEWUSER : 0), grand);
	close(go[0]); /* the container's process holds them: its end is the runtime's EOF */
	close(ready[1]);
	if (user) {
		char p[64], m[64];
		snprintf(m, sizeof m, "0 %d 65536\n", root);
		snprintf(p, sizeof p, "/proc/%d/uid_map", pid); put(p, m, pid);
		snprintf(p, sizeof p, "/proc/%d/gid_map", pid); put(p, m, pid);
	}
	char c;
	if (write(go[1], "g", 1) != 1 || read(ready[0], &c, 1) != 1) { fprintf(stderr, "the container's process failed\n"); kill(pid, SIGKILL); return 2; }
	char state[8192];
	snprintf(state, sizeof state, "{\"ociVersion\":\"1.2.0\",\"id\":\"c1\",\"status\":\"creating\",\"pid\":%d,\"bundle\":\"%s\"}", pid, argv[5]);
	int in[2];
	pid_t h = pipe2(in, O_CLOEXEC) ? -1 : fork();
	if (h == 0) {
		dup2(in[0], 0);
		execv(argv[7], argv + 7);
		_exit(127);
	}
	int status = 0;
	struct rusage ru = {0};
	if (h > 0) {
		close(in[0]);
		if (write(in[1], state, strlen(state)) < 0) perror("state");
		close(in[1]);
		if (wait4(h, &status, 0, &ru) < 0) status = 2 << 8;
	}
	dprintf(3, "%ld\n", ru.ru_maxrss);
	if (write(go[1], "c", 1) != 1 || read(ready[0], &c, 1) != 1) fprintf(stderr, "the container's process did not check\n");
	kill(pid, SIGKILL);
	if (!grand) waitpid(pid, NULL, 0);
	if (h < 0) return 2;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
`

func TestMain(m *testing.M) {
	if spec := os.Getenv(envCreated); spec != "" {
		os.Exit(createdChild(spec))
	}
	code := m.Run()
	if fastDir != "" {
		_ = os.RemoveAll(fastDir)
	}
	os.Exit(code)
}

const layoutMount = "/usr/local/nvbind/all"

// layoutBundle makes a bundle whose root holds a driver layout at layoutMount (as the
// runtime mounts it: libcuda and NVML with their links, nvidia-smi, firmware) with its
// entries file, and the hook arguments a layout spec gives.
func layoutBundle(t testing.TB, config string) (bundle string, args []string) {
	t.Helper()
	bundle = t.TempDir()
	copyTree(t, layoutTemplate(t), bundle)
	if config == "" {
		config = `{"ociVersion":"1.2.0","root":{"path":"rootfs"},"linux":{"devices":[` +
			`{"path":"/dev/nvidia1","type":"c","major":195,"minor":1},{"path":"/dev/nvidiactl","type":"c","major":195,"minor":255},` +
			`{"path":"/dev/nvidia0","type":"c","major":195,"minor":0},{"path":"/dev/nvidia40","type":"c","major":195,"minor":40}]}}`
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	params := filepath.Join(bundle, "params")
	args = []string{"hook", "all",
		"--link", layoutMount + "/usr/bin/nvidia-smi::/usr/bin/nvidia-smi",
		"--link", layoutMount + "/lib/firmware/nvidia/535.261.03/gsp_ga10x.bin::/lib/firmware/nvidia/535.261.03/gsp_ga10x.bin",
		"--folder", layoutMount + "/usr/lib/x86_64-linux-gnu", "--folder-entries", layoutMount + "/.ld.so.cache",
		"--protect-device-nodes", "--host-params", params, "--host-driver-version", "535.261.03", "--app-profile"}
	return bundle, args
}

var (
	templateOnce sync.Once
	templateDir  string
	templateErr  error
)

// layoutTemplate builds, once, the bundle layoutBundle copies (the libraries are compiled).
func layoutTemplate(t testing.TB) string {
	t.Helper()
	fastHook(t) // fastDir
	templateOnce.Do(func() {
		templateDir = filepath.Join(fastDir, "template")
		templateErr = buildTemplate(t, templateDir)
	})
	if templateErr != nil {
		t.Fatal(templateErr)
	}
	return templateDir
}

func buildTemplate(t testing.TB, bundle string) error {
	root := filepath.Join(bundle, "rootfs")
	lay := filepath.Join(root, layoutMount)
	lib := filepath.Join(lay, "usr/lib/x86_64-linux-gnu")
	testutil.BuildSharedObject(t, filepath.Join(lib, "libcuda.so.535.261.03"), "libcuda.so.1", 64, "")
	testutil.BuildSharedObject(t, filepath.Join(lib, "libnvidia-ml.so.535.261.03"), "libnvidia-ml.so.1", 64, "")
	for link, target := range map[string]string{"libcuda.so.1": "libcuda.so.535.261.03", "libcuda.so": "libcuda.so.1",
		"libnvidia-ml.so.1": "libnvidia-ml.so.535.261.03"} {
		if err := os.Symlink(target, filepath.Join(lib, link)); err != nil {
			return err
		}
	}
	for _, f := range []string{"usr/bin/nvidia-smi", "lib/firmware/nvidia/535.261.03/gsp_ga10x.bin"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(lay, f)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(lay, f), []byte(f), 0o755); err != nil {
			return err
		}
	}
	entries, err := LibraryEntries(lay, layoutMount, []string{"/usr/lib/x86_64-linux-gnu"})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(lay, ".ld.so.cache"), ldcache.Encode(entries), 0o444); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, "params"), []byte("ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 0\n"), 0o444)
}

// tree lists a folder: each path with its type, and a file's content hash or a link's
// target.
func tree(t testing.TB, dir string) string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		line := rel + " " + fi.Mode().String()
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode().IsRegular():
			data, _ := os.ReadFile(p)
			sum := sha256.Sum256(data)
			line += " " + hex.EncodeToString(sum[:8])
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// readOnly makes folder d a read-only bind mount of itself until the test ends.
func readOnly(t testing.TB, d string) {
	t.Helper()
	testutil.RequiresRoot(t)
	if err := syscall.Mount(d, d, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(d, syscall.MNT_DETACH) })
	if err := syscall.Mount("", d, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
}

// copyTree copies a bundle (files, folders, links, modes).
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
}

type hookRun struct {
	code    int
	stderr  string // without the trace lines
	path    string // the trace: "done" (the C hook did it) or why it handed over
	tree    string
	elapsed time.Duration
	maxRSS  int64 // KiB
}

// runHookOn runs the hook (the C one, or the full one) on the bundle, through the
// launcher that measures its peak memory.
func runHookOn(t testing.TB, bin, bundle string, args []string, full bool) hookRun {
	t.Helper()
	return runHookPid(t, bin, bundle, args, full, 1)
}

// runHookPid is runHookOn with pid in the state.
func runHookPid(t testing.TB, bin, bundle string, args []string, full bool, pid int) hookRun {
	t.Helper()
	return runHookVia(t, []string{filepath.Join(filepath.Dir(bin), "launch")}, bin, bundle, args, full,
		`{"ociVersion":"1.2.0","id":"c1","status":"creating","pid":`+strconv.Itoa(pid)+`,"bundle":"`+bundle+`","annotations":{"a":"b"}}`)
}

// runHookInRuntime runs the hook as a runtime's createRuntime stage does, through
// runtimeSource: the container's process (its child, or with grandchild nobody's here)
// mounts src at mnt in its own namespaces (a user namespace too where root is not 0,
// whose root is that host uid), and reports the container path check after the hook.
func runHookInRuntime(t testing.TB, bin, bundle string, args []string, full bool, root int, grandchild bool, src, mnt string) hookRun {
	t.Helper()
	mode := "child"
	if grandchild {
		mode = "grandchild"
	}
	check := filepath.Join(bundle, "rootfs/proc/driver/nvidia/params")
	return runHookVia(t, []string{filepath.Join(filepath.Dir(bin), "runtime"), strconv.Itoa(root), mode, src, mnt, bundle, check}, bin, bundle, args, full, "")
}

// runHookVia runs the hook through launcher (which writes its peak RSS to fd 3), with
// stdin.
func runHookVia(t testing.TB, launcher []string, bin, bundle string, args []string, full bool, stdin string) hookRun {
	t.Helper()
	rusage, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rusage.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, launcher[0], append(append(launcher[1:len(launcher):len(launcher)], bin), args...)...)
	cmd.WaitDelay = 5 * time.Second // a process left holding stderr
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "NVBIND_HOOK_TRACE=1"}
	if full {
		cmd.Env = append(cmd.Env, "NVBIND_HOOK_FULL=1")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	_ = w.Close()
	r := hookRun{elapsed: time.Since(start), tree: tree(t, bundle)}
	if cmd.ProcessState == nil {
		t.Fatalf("run %s: %v", bin, err)
	}
	r.code = cmd.ProcessState.ExitCode()
	line := make([]byte, 64)
	n, _ := rusage.Read(line)
	if r.maxRSS, err = strconv.ParseInt(strings.TrimSpace(string(line[:n])), 10, 64); err != nil {
		t.Fatalf("the launcher's rusage %q: %v\n%s", line[:n], err, stderr.String())
	}
	for _, line := range strings.SplitAfter(stderr.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "nvbind-hook: full hook: "); ok && r.path == "" {
			r.path = strings.TrimSpace(rest)
			continue
		}
		if strings.HasPrefix(line, "nvbind-hook: done") {
			r.path = "done"
			continue
		}
		r.stderr += line
	}
	return r
}

// both runs the C hook and the full hook on copies of the bundle and requires the same
// outcome; it returns the C hook's run.
func both(t testing.TB, bundle string, args []string) hookRun {
	t.Helper()
	return bothRO(t, bundle, args)
}

// bothRO is both with the root's folders ro (layouts, as a runtime mounts them) read-only
// bind mounts of themselves in each copy.
func bothRO(t testing.TB, bundle string, args []string, ro ...string) hookRun {
	t.Helper()
	bin := fastHook(t)
	other := t.TempDir()
	copyTree(t, bundle, other)
	for _, b := range []string{bundle, other} {
		for _, d := range ro {
			readOnly(t, filepath.Join(b, "rootfs", d))
		}
	}
	fast := runHookOn(t, bin, bundle, args, false)
	full := runHookOn(t, bin, other, args, true)
	full.stderr = strings.ReplaceAll(full.stderr, other, bundle) // messages name the bundle
	if fast.code != full.code || fast.tree != full.tree || fast.stderr != full.stderr {
		t.Fatalf("the C hook (%s) and the full hook differ:\nexit %d / %d\nstderr:\n%s\n---\n%s\ntree:\n%s\n---\n%s",
			fast.path, fast.code, full.code, fast.stderr, full.stderr, fast.tree, full.tree)
	}
	return fast
}

func TestFastHookLayout(t *testing.T) {
	hostCache, _ := os.ReadFile("/etc/ld.so.cache") // a cache glibc's ldconfig wrote
	hwcaps := ldcache.Encode([]ldcache.Entry{
		{Name: "libz.so.1", Path: "/usr/lib/glibc-hwcaps/x86-64-v3/libz.so.1", Flags: 0x303, HWCaps: "x86-64-v3"},
		{Name: "libz.so.1", Path: "/usr/lib/x86_64-linux-gnu/libz.so.1", Flags: 0x303},
		{Name: "libcuda.so.1", Path: layoutMount + "/usr/lib/x86_64-linux-gnu/libcuda.so.1", Flags: 0x303},
		{Name: "libc.so.6", Path: "/lib/x86_64-linux-gnu/libc.so.6", Flags: 0x303, HWCap: 1 << 40},
	})
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root string)
		// the C hook hands over
		handsOver string
	}{
		{name: "an image with the host's cache and ld.so.conf.d", setup: func(t *testing.T, root string) {
			if len(hostCache) == 0 {
				t.Skip("no /etc/ld.so.cache on this host")
			}
			writeFiles(t, root, map[string]string{"etc/ld.so.cache": string(hostCache), "etc/ld.so.conf.d/libc.conf": "/usr/local/lib\n"})
		}},
		{name: "an image cache with glibc-hwcaps, an entry of ours, ISA levels", setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{"etc/ld.so.cache": string(hwcaps)})
		}},
		{name: "an image with no /etc"},
		{name: "links over the image's own file and link", setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{"usr/bin/nvidia-smi": "the image's own"})
			if err := os.MkdirAll(filepath.Join(root, "lib/firmware/nvidia/535.261.03"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("elsewhere", filepath.Join(root, "lib/firmware/nvidia/535.261.03/gsp_ga10x.bin")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "an older CUDA compat libcuda", setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{"usr/local/cuda/compat/libcuda.so.530.30.02": "", "usr/local/cuda/compat/libcuda.so.1": ""})
		}},
		{name: "a newer CUDA compat libcuda", handsOver: "compat", setup: func(t *testing.T, root string) {
			testutil.BuildSharedObject(t, filepath.Join(root, "usr/local/cuda/compat/libcuda.so.570.86.10"), "libcuda.so.1", 64, "")
		}},
		{name: "an image cache that is no cache", handsOver: "unusable", setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{"etc/ld.so.cache": "glibc-ld.so.cache1.1 but not really"})
		}},
		{name: "an image cache that is a FIFO", handsOver: "cannot be read", setup: func(t *testing.T, root string) {
			if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mkfifo(filepath.Join(root, "etc/ld.so.cache"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "no entries file", handsOver: "entries", setup: func(t *testing.T, root string) {
			if err := os.Remove(filepath.Join(root, layoutMount, ".ld.so.cache")); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bundle, args := layoutBundle(t, "")
			if tc.setup != nil {
				tc.setup(t, filepath.Join(bundle, "rootfs"))
			}
			r := both(t, bundle, args)
			if tc.handsOver == "" && r.path != "done" {
				t.Errorf("the C hook handed over: %s", r.path)
			}
			if tc.handsOver != "" && !strings.Contains(r.path, tc.handsOver) {
				t.Errorf("the C hook: %q, want it to hand over (%s)", r.path, tc.handsOver)
			}
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			root := filepath.Join(bundle, "rootfs")
			e := cacheEntries(t, root)
			if got := lookup(e, "libcuda.so.1"); !strings.HasPrefix(got, layoutMount+"/") && !strings.HasPrefix(got, "/usr/local/cuda/compat/") {
				t.Errorf("libcuda.so.1 => %q", got)
			}
			profile, err := os.ReadFile(filepath.Join(root, "etc/nvidia/nvidia-application-profiles-rc.d/10-nvbind-container.conf"))
			if err != nil || !strings.Contains(string(profile), `"EGLVisibleDGPUDevices",3]`) {
				t.Errorf("application profile %q, %v", profile, err)
			}
			if !strings.Contains(r.stderr, "/dev/nvidia40 is beyond") {
				t.Errorf("no word of /dev/nvidia40: %q", r.stderr)
			}
		})
	}
}

// The C hook hands over, unchanged, whatever it does not handle itself; a state it cannot
// trust with the full hook is refused.
func TestFastHookHandsOver(t *testing.T) {
	for _, tc := range []struct {
		name, config string
		args         func([]string) []string
		why          string
	}{
		{name: "another action", args: func([]string) []string { return []string{"hook", "update-ldcache", "--folder", "/x"} }, why: "not hook all"},
		{name: "a flag it does not know", args: func(a []string) []string { return append(a, "--dry-run") }, why: "does not know"},
		{name: "a bad link", args: func(a []string) []string { return append(a, "--link", "x::relative") }, why: "refuses"},
		{name: "a boolean flag with a value", args: func(a []string) []string { return append(a, "--app-profile=false") }, why: "boolean"},
		{name: "no layout", args: func([]string) []string { return []string{"hook", "all", "--app-profile"} }, why: "no layout"},
		{name: "a root key in another case", config: `{"Root":{"path":"rootfs"}}`, why: "cannot use"},
		{name: "a root path beyond ASCII", config: `{"root":{"path":"r\u00f6otfs"}}`, why: "cannot use"},
		{name: "a device minor that is no integer", config: `{"root":{"path":"rootfs"},"linux":{"devices":[{"path":"/dev/nvidia0","type":"c","minor":1.5}]}}`,
			why: "cannot use"},
		{name: "config.json that is no JSON", config: `{"root":{"path":"rootfs"}`, why: "cannot use"},
		{name: "a root dropped by a later null", config: `{"root":{"path":"rootfs"},"root":null}`, why: "cannot use"},
		{name: "a root path longer than a path", config: `{"root":{"path":"/` + strings.Repeat("/", 4100) + `tmp/rootfs"}}`, why: "long root path"},
		{name: "an empty --host-params is the default", args: func(a []string) []string {
			return append(a, "--host-params", "")
		}, why: "done"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bundle, args := layoutBundle(t, tc.config)
			if tc.args != nil {
				args = tc.args(args)
			}
			r := both(t, bundle, args)
			if !strings.Contains(r.path, tc.why) {
				t.Errorf("the C hook: %q, want it to hand over (%s)", r.path, tc.why)
			}
		})
	}
	// encoding/json empties a field that a later null names
	for _, config := range []string{
		`{"root":{"path":"rootfs"},"linux":{"devices":[{"path":"/dev/nvidia0","type":"c","minor":0}],"devices":null}}`,
		`{"root":{"path":"rootfs"},"linux":{"devices":[{"path":"/dev/nvidia0","type":"c","minor":0}]},"linux":null}`,
	} {
		t.Run("null after devices", func(t *testing.T) {
			bundle, args := layoutBundle(t, config)
			if r := both(t, bundle, args); r.path != "done" || !strings.Contains(r.stderr, "no profile written") {
				t.Errorf("%s: %s", r.path, r.stderr)
			}
		})
	}
	t.Run("a state larger than the full hook reads is refused, never handed over in part", func(t *testing.T) {
		bundle, args := layoutBundle(t, "")
		cmd := exec.Command(fastHook(t), args...)
		cmd.Env = []string{"NVBIND_HOOK_TRACE=1"}
		cmd.Stdin = strings.NewReader(`{"annotations":{"a":"` + strings.Repeat("x", 1<<20) + `"},"bundle":"/"}`)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "larger than 1 MiB") || strings.Contains(string(out), "full hook") {
			t.Errorf("%v: %s", err, out)
		}
		if _, err := os.Stat(filepath.Join(bundle, "rootfs/etc/ld.so.cache")); err == nil {
			t.Error("the hook changed the container")
		}
	})
}

// A hostile image cannot lead the C hook out of its root: links in the image are
// resolved inside it, and what the hook writes stays there.
func TestFastHookHostile(t *testing.T) {
	outside := t.TempDir()
	before := tree(t, outside)
	for _, tc := range []struct{ name, link, target string }{
		{"/usr/bin is a link out", "usr/bin", outside},
		{"/usr/bin climbs out", "usr/bin", "../../../../../../../../" + outside},
		{"/etc is a link out", "etc", outside},
		{"/etc/ld.so.conf.d is a link out", "etc/ld.so.conf.d", outside},
		{"the application profile folder is a link out", "etc/nvidia", outside},
		{"/lib is /proc's magic link to the host", "lib", "/proc/self/root" + outside},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bundle, args := layoutBundle(t, "")
			p := filepath.Join(bundle, "rootfs", tc.link)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target, p); err != nil {
				t.Fatal(err)
			}
			r := both(t, bundle, args)
			if got := tree(t, outside); got != before {
				t.Fatalf("the hook (%s) wrote outside the root:\n%s", r.path, got)
			}
		})
	}
}

// The image's cache is the C hook's one input from the image that it parses: its budgets
// hold (time and memory) on the largest caches the full hook reads: the most entries, and
// the longest strings, all suffixes of one another (the string table sorts them).
func TestFastHookImageCacheBudget(t *testing.T) {
	many := make([]ldcache.Entry, ldcache.MaxEntries-8)
	for i := range many {
		many[i] = ldcache.Entry{Name: fmt.Sprintf("lib%06d.so.1", i), Path: fmt.Sprintf("/usr/lib/x86_64-linux-gnu/%s/lib%06d.so.1",
			strings.Repeat("d", 40), i), Flags: 0x303}
	}
	long := strings.Repeat("x", ldcache.MaxPathLen-4) + ".so"
	var suffixes []ldcache.Entry
	for i := 0; i+4 < len(long) && len(suffixes) < 3500; i++ {
		suffixes = append(suffixes, ldcache.Entry{Name: fmt.Sprintf("lib%d.so", i), Path: "/" + long[i:], Flags: 0x303})
	}
	for _, entries := range [][]ldcache.Entry{many, suffixes} {
		ldcache.Sort(entries)
		data := ldcache.Encode(entries)
		bundle, args := layoutBundle(t, "")
		writeFiles(t, filepath.Join(bundle, "rootfs"), map[string]string{"etc/ld.so.cache": string(data)})
		r := both(t, bundle, args)
		if r.path != "done" || r.code != 0 {
			t.Fatalf("%s, exit %d: %s", r.path, r.code, r.stderr)
		}
		t.Logf("%d-entry image cache (%d KiB): %v, %d KiB resident", len(entries), len(data)>>10, r.elapsed, r.maxRSS)
		if r.elapsed > 5*time.Second || r.maxRSS > 48<<10 {
			t.Errorf("the C hook took %v and %d KiB on a %d KiB cache", r.elapsed, r.maxRSS, len(data)>>10)
		}
	}
}

// Names with numbers beyond int32, which the loader's order wraps as glibc does, are left
// to the full hook: the order is intransitive there, and sorts may disagree.
func TestFastHookLongNumbers(t *testing.T) {
	data := ldcache.Encode([]ldcache.Entry{{Name: "libx0.so", Path: "/a", Flags: 0x303},
		{Name: "libx1500000000.so", Path: "/b", Flags: 0x303}, {Name: "libx3000000000.so", Path: "/c", Flags: 0x303}})
	bundle, args := layoutBundle(t, "")
	writeFiles(t, filepath.Join(bundle, "rootfs"), map[string]string{"etc/ld.so.cache": string(data)})
	if r := both(t, bundle, args); !strings.Contains(r.path, "beyond 9 digits") {
		t.Errorf("the C hook: %s", r.path)
	}
}

// The image's links can lead into the container's /proc and /sys, mounted before the hook
// runs: neither hook reads a kernel file there (procfs' kmsg consumes the host's log).
func TestHooksReadNoKernelFile(t *testing.T) {
	testutil.RequiresRoot(t)
	bundle, args := layoutBundle(t, "")
	root := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(filepath.Join(root, "sys"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("sysfs", filepath.Join(root, "sys"), "sysfs", syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(filepath.Join(root, "sys"), syscall.MNT_DETACH) })
	writeFiles(t, root, map[string]string{"etc/.keep": ""})
	if err := os.Symlink("/sys/kernel/mm/transparent_hugepage/enabled", filepath.Join(root, "etc/ld.so.cache")); err != nil {
		t.Fatal(err)
	}
	// the copy both() makes for the full hook needs its own sysfs
	bin := fastHook(t)
	fast := runHookOn(t, bin, bundle, args, false)
	if fast.code != 0 || !strings.Contains(fast.path, "cannot be read") || !strings.Contains(fast.stderr, "a file of a kernel filesystem") {
		t.Errorf("exit %d, %s: %s", fast.code, fast.path, fast.stderr)
	}
	if link, err := os.Readlink(filepath.Join(root, "etc/ld.so.cache")); err == nil {
		t.Errorf("the image's link is still there: %s", link)
	}
}

// FuzzFastHookImageCache gives both hooks an image cache of arbitrary bytes: the C hook
// uses it where the full hook's parser does and gives the same cache, or hands over, and
// stays in its budgets.
func FuzzFastHookImageCache(f *testing.F) {
	if data, err := os.ReadFile("/etc/ld.so.cache"); err == nil {
		f.Add(data)
	}
	good := ldcache.Encode([]ldcache.Entry{{Name: "libz.so.1", Path: "/usr/lib/glibc-hwcaps/x86-64-v3/libz.so.1", Flags: 0x303, HWCaps: "x86-64-v3"},
		{Name: "libz.so.1", Path: "/lib/libz.so.1", Flags: 0x303}})
	f.Add(good)
	f.Add(good[:60])
	f.Add(append([]byte("ld.so-1.7.0\x00\x00\x00\x00\x00"), good...))
	f.Add([]byte("glibc-ld.so.cache1.1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > ldcache.MaxSize+1 {
			return
		}
		bundle, args := layoutBundle(t, "")
		writeFiles(t, filepath.Join(bundle, "rootfs"), map[string]string{"etc/ld.so.cache": string(data)})
		r := both(t, bundle, args)
		_, perr := ldcache.Parse(data)
		if (perr == nil) != (r.path == "done") {
			t.Errorf("the full hook's parser: %v; the C hook: %s", perr, r.path)
		}
		if r.elapsed > 5*time.Second || r.maxRSS > 48<<10 {
			t.Errorf("the C hook took %v and %d KiB", r.elapsed, r.maxRSS)
		}
	})
}

// BenchmarkHookLayout times one hook stage of a layout container, the C hook against the
// full hook (Go) on the same bundle, interleaved: the host's own ld cache as the image's.
func BenchmarkHookLayout(b *testing.B) {
	bin := fastHook(b)
	bundle, args := layoutBundle(b, "")
	if data, err := os.ReadFile("/etc/ld.so.cache"); err == nil {
		p := filepath.Join(bundle, "rootfs/etc/ld.so.cache")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	var fast, full []time.Duration
	for b.Loop() {
		for _, f := range []bool{false, true} {
			r := runHookOn(b, bin, bundle, args, f)
			if r.code != 0 || !f && r.path != "done" {
				b.Fatalf("exit %d (%s): %s", r.code, r.path, r.stderr)
			}
			if f {
				full = append(full, r.elapsed)
			} else {
				fast = append(fast, r.elapsed)
			}
		}
	}
	med := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2]) / float64(time.Millisecond)
	}
	b.ReportMetric(med(fast), "ms-median/c-hook")
	b.ReportMetric(med(full), "ms-median/full-hook")
	b.ReportMetric(0, "ns/op")
}

// A link the hook makes over a folder link it already looked up is followed afresh: the
// folders of later links go where the new link points.
func TestFastHookLinkOverLookedUpFolder(t *testing.T) {
	bundle, args := layoutBundle(t, "")
	root := filepath.Join(bundle, "rootfs")
	writeFiles(t, root, map[string]string{"opt/real/.keep": "", "opt/other/.keep": ""})
	if err := os.Symlink("real", filepath.Join(root, "opt/lnk")); err != nil {
		t.Fatal(err)
	}
	args = append(args, "--link", "t1::/opt/lnk/a", "--link", "other::/opt/lnk", "--link", "t2::/opt/lnk/x/y")
	r := both(t, bundle, args)
	if r.path != "done" || r.code != 0 {
		t.Fatalf("%s, exit %d: %s", r.path, r.code, r.stderr)
	}
	if target, err := os.Readlink(filepath.Join(root, "opt/other/x/y")); err != nil || target != "t2" {
		t.Errorf("the last link: %q, %v", target, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "opt/real/x")); err == nil {
		t.Error("a folder made under the link's old target")
	}
}

// linkAt makes p, under root, a link to target, with the folders above it.
func linkAt(t *testing.T, root, p, target string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, path.Dir(p)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
		t.Fatal(err)
	}
}

// A folder only the driver fills is linked whole where the image has nothing there, and
// the links under it are then skipped; a folder, file or link of the image's own there
// leaves them to be made one by one. Both hooks do the same.
func TestFastHookFolderLinks(t *testing.T) {
	const fw = "/lib/firmware/nvidia/535.261.03"
	folderLink := []string{"--folder-link", layoutMount + fw + "::" + fw}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root string)
		// check looks at the root after the hook
		check func(t *testing.T, root string)
		// linked: the folder is the link, so the links under it are not tried
		linked bool
		extra  []string
		fails  bool
	}{
		{name: "nothing there: the folder is one link", linked: true, check: func(t *testing.T, root string) {
			if got := readLink(t, filepath.Join(root, fw)); got != layoutMount+fw {
				t.Errorf("%s -> %q", fw, got)
			}
		}},
		// the spec generator never asks for it: the link is tried in the read-only layout
		{name: "a link under the linked folder to elsewhere is tried, not skipped", fails: true, extra: []string{"--link", "other::" + fw + "/extra.bin"},
			check: func(t *testing.T, root string) {
				if _, err := os.Lstat(filepath.Join(root, layoutMount, fw, "extra.bin")); err == nil {
					t.Error("extra.bin made in the read-only layout")
				}
			}},
		{name: "the image's folder: a link per file", setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{fw[1:] + "/gsp_tu10x.bin": "the image's own"})
		}, check: func(t *testing.T, root string) {
			if got := readLink(t, filepath.Join(root, fw, "gsp_ga10x.bin")); got != layoutMount+fw+"/gsp_ga10x.bin" {
				t.Errorf("gsp_ga10x.bin -> %q", got)
			}
			if data, err := os.ReadFile(filepath.Join(root, fw, "gsp_tu10x.bin")); err != nil || string(data) != "the image's own" {
				t.Errorf("the image's file: %q, %v", data, err)
			}
		}},
		{name: "the image's link elsewhere: a link per file where it points", setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{"opt/fw/.keep": ""})
			linkAt(t, root, fw, "/opt/fw")
		}, check: func(t *testing.T, root string) {
			if got := readLink(t, filepath.Join(root, fw)); got != "/opt/fw" {
				t.Errorf("the image's link: %q", got)
			}
			if got := readLink(t, filepath.Join(root, "opt/fw/gsp_ga10x.bin")); got != layoutMount+fw+"/gsp_ga10x.bin" {
				t.Errorf("gsp_ga10x.bin -> %q", got)
			}
		}},
		{name: "the image's link that looks like another layout's but is not", setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{"usr/local/nvbind/a/b" + fw + "/.keep": ""})
			linkAt(t, root, fw, "/usr/local/nvbind/a/b"+fw)
		}, check: func(t *testing.T, root string) {
			if got := readLink(t, filepath.Join(root, "usr/local/nvbind/a/b", fw, "gsp_ga10x.bin")); got != layoutMount+fw+"/gsp_ga10x.bin" {
				t.Errorf("gsp_ga10x.bin -> %q", got)
			}
		}},
		// an image committed from a container with another layout, run without it: the
		// stale link is replaced, as a stale link of a file is (its mount point is there)
		{name: "a stale link to another layout that is not there", linked: true, setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{path.Dir(layoutMount)[1:] + "/graphics/.keep": ""})
			linkAt(t, root, fw, path.Dir(layoutMount)+"/graphics"+fw)
		}, check: func(t *testing.T, root string) {
			if got := readLink(t, filepath.Join(root, fw)); got != layoutMount+fw {
				t.Errorf("%s -> %q", fw, got)
			}
		}},
		// a folder of the image's own where another layout's would be is no layout's
		{name: "a link to a look-alike of another layout's folder", linked: true, setup: func(t *testing.T, root string) {
			writeFiles(t, root, map[string]string{path.Dir(layoutMount)[1:] + "/graphics" + fw + "/gsp_ga10x.bin": "the image's"})
			linkAt(t, root, fw, path.Dir(layoutMount)+"/graphics"+fw)
		}, check: func(t *testing.T, root string) {
			if got := readLink(t, filepath.Join(root, fw)); got != layoutMount+fw {
				t.Errorf("%s -> %q", fw, got)
			}
		}},
		{name: "an earlier start's folder link: kept, nothing under it", linked: true, setup: func(t *testing.T, root string) {
			linkAt(t, root, fw, layoutMount+fw)
		}, check: func(t *testing.T, root string) {
			if got := readLink(t, filepath.Join(root, fw)); got != layoutMount+fw {
				t.Errorf("%s -> %q", fw, got)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bundle, args := layoutBundle(t, "")
			root := filepath.Join(bundle, "rootfs")
			if tc.setup != nil {
				tc.setup(t, root)
			}
			args = append(args[:2:2], append(folderLink, append(args[2:], tc.extra...)...)...)
			// the layout read-only as a runtime mounts it, where the test may mount; else
			// writable, which only the case that writes into it tells apart
			var ro []string
			if os.Getenv(testutil.EnvRoot) == "1" {
				ro = []string{layoutMount}
			} else if tc.extra != nil {
				testutil.RequiresRoot(t)
			}
			r := bothRO(t, bundle, args, ro...)
			tc.check(t, root)
			if tc.fails {
				if r.code == 0 {
					t.Errorf("exit 0: %s", r.stderr)
				}
				return
			}
			if r.path != "done" || r.code != 0 {
				t.Fatalf("%s, exit %d: %s", r.path, r.code, r.stderr)
			}
			if tc.linked && strings.Contains(r.stderr, "gsp_ga10x.bin") {
				t.Errorf("a link under the linked folder was tried: %s", r.stderr)
			}
			if fi, err := os.Lstat(filepath.Join(root, layoutMount, fw, "gsp_ga10x.bin")); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("the layout's file: %v, %v", fi, err)
			}
			// a second start of the same container changes nothing
			before := tree(t, root)
			if r := bothRO(t, bundle, args, ro...); r.code != 0 || tree(t, root) != before {
				t.Errorf("a second start: exit %d, %s\n%s\n---\n%s", r.code, r.stderr, before, tree(t, root))
			}
		})
	}
}

// Two layouts in one container (capability devices, or two specs) that both link a driver
// folder whole, read-only as a runtime mounts them: the second hook finds the folder linked
// to the first one's, which holds all of its files and links too, and changes nothing in
// either layout.
func TestFastHookFolderLinksOfTwoLayouts(t *testing.T) {
	const xorg = "/usr/lib/nvidia/xorg"
	bundle, _ := layoutBundle(t, "")
	root := filepath.Join(bundle, "rootfs")
	args := map[string][]string{}
	for _, set := range []string{"all", "graphics+display"} {
		mount := path.Join(path.Dir(layoutMount), set)
		writeFiles(t, root, map[string]string{mount[1:] + xorg + "/libglxserver_nvidia.so.535.261.03": "the driver's"})
		if err := os.Symlink("libglxserver_nvidia.so.535.261.03", filepath.Join(root, mount, xorg, "libglxserver_nvidia.so")); err != nil {
			t.Fatal(err)
		}
		args[set] = []string{"hook", "all", "--folder-link", mount + "/usr/lib/nvidia::/usr/lib/nvidia",
			"--link", mount + xorg + "/libglxserver_nvidia.so.535.261.03::" + xorg + "/libglxserver_nvidia.so.535.261.03",
			"--link", mount + xorg + "/libglxserver_nvidia.so::" + xorg + "/libglxserver_nvidia.so"}
	}
	ro := []string{layoutMount, path.Join(path.Dir(layoutMount), "graphics+display")}
	layouts := func() string { return tree(t, filepath.Join(root, path.Dir(layoutMount))) }
	before := layouts()
	if r := bothRO(t, bundle, args["all"], ro...); r.code != 0 || r.path != "done" {
		t.Fatalf("first hook: %s, exit %d: %s", r.path, r.code, r.stderr)
	}
	r := bothRO(t, bundle, args["graphics+display"], ro...)
	if r.code != 0 || r.path != "done" {
		t.Fatalf("second hook: %s, exit %d: %s", r.path, r.code, r.stderr)
	}
	if got := readLink(t, filepath.Join(root, "usr/lib/nvidia")); got != layoutMount+"/usr/lib/nvidia" {
		t.Errorf("/usr/lib/nvidia -> %q", got)
	}
	if data, err := os.ReadFile(filepath.Join(root, layoutMount, xorg, "libglxserver_nvidia.so")); err != nil || string(data) != "the driver's" {
		t.Errorf("through the links: %q, %v", data, err)
	}
	if after := layouts(); after != before {
		t.Errorf("the layouts changed:\n%s\n---\n%s", before, after)
	}
}

// A layout that holds only part of a driver folder links its files one by one; beside a
// layout that linked the folder whole (capability devices, two specs), either may run
// first. After the whole one, the files are there, in its read-only mount, and the partial
// one's links, differing or not, are left with a note, never tried in that mount.
func TestFastHookPartialLayoutBesideFolderLink(t *testing.T) {
	testutil.RequiresRoot(t) // the layouts read-only, as a runtime mounts them
	const xorg = "/usr/lib/nvidia/xorg"
	const lib = "libglxserver_nvidia.so.535.261.03"
	for _, order := range [][]string{{"all", "graphics"}, {"graphics", "all"}} {
		t.Run(strings.Join(order, "-then-"), func(t *testing.T) {
			bundle, _ := layoutBundle(t, "")
			root := filepath.Join(bundle, "rootfs")
			args := map[string][]string{}
			var ro []string
			for _, set := range []string{"all", "graphics"} {
				mount := path.Join(path.Dir(layoutMount), set)
				ro = append(ro, mount)
				writeFiles(t, root, map[string]string{mount[1:] + xorg + "/" + lib: "the driver's"})
				if err := os.Symlink(lib, filepath.Join(root, mount, xorg, "libglxserver_nvidia.so")); err != nil {
					t.Fatal(err)
				}
				args[set] = []string{"hook", "all",
					"--link", mount + xorg + "/" + lib + "::" + xorg + "/" + lib,
					"--link", mount + xorg + "/libglxserver_nvidia.so::" + xorg + "/libglxserver_nvidia.so"}
			}
			// the whole one links the folder; the partial one cannot
			args["all"] = append(args["all"][:2:2], append([]string{"--folder-link", layoutMount + "/usr/lib/nvidia::/usr/lib/nvidia"}, args["all"][2:]...)...)
			layouts := func() string { return tree(t, filepath.Join(root, path.Dir(layoutMount))) }
			before := layouts()
			var stderr string
			for i, set := range order {
				r := bothRO(t, bundle, args[set], ro...)
				if r.code != 0 || r.path != "done" {
					t.Fatalf("hook %d (%s): %s, exit %d: %s", i+1, set, r.path, r.code, r.stderr)
				}
				stderr += r.stderr
			}
			if after := layouts(); after != before {
				t.Errorf("the layouts changed:\n%s\n---\n%s", before, after)
			}
			for _, name := range []string{lib, "libglxserver_nvidia.so"} {
				p, err := securejoin.SecureJoin(root, xorg+"/"+name) // as the container sees it
				if err != nil {
					t.Fatal(err)
				}
				if data, err := os.ReadFile(p); err != nil || string(data) != "the driver's" {
					t.Errorf("%s: %q, %v", name, data, err)
				}
			}
			if order[0] == "all" && !strings.Contains(stderr, xorg+"/libglxserver_nvidia.so is on a read-only mount (a layout's or a volume's): left as it is") {
				t.Errorf("no note of the links left in the whole layout:\n%s", stderr)
			}
		})
	}
}

// TestFastHookEntersMountNamespace: at createRuntime the runtime has mounted the layout in
// the container's mount namespace only, and runs the hook on the host. With
// --enter-mount-namespace both hooks enter the namespace of the state's pid and give the
// container what they give it from inside; without it they do not see the layout.
func TestFastHookEntersMountNamespace(t *testing.T) {
	testutil.RequiresRoot(t)
	bin := fastHook(t)
	bundle, args := layoutBundle(t, "")
	entered := append(args[:2:2], append([]string{"--enter-mount-namespace"}, args[2:]...)...)
	runs := map[string]hookRun{}
	for _, c := range []struct {
		name string
		args []string
		full bool
	}{{"C, entered", entered, false}, {"full, entered", entered, true}, {"C, not entered", args, false}, {"full, not entered", args, true}} {
		b, src, mnt := layoutAside(t, bundle, 0)
		r := runHookInRuntime(t, bin, b, c.args, c.full, 0, false, src, mnt)
		r.stderr = strings.ReplaceAll(r.stderr, b, "BUNDLE")
		if r.code != 0 {
			t.Fatalf("%s: exit %d (%s): %s", c.name, r.code, r.path, r.stderr)
		}
		hasCUDA := cacheHas(t, b, "libcuda.so.1", layoutMount+"/")
		if want := c.args[2] == "--enter-mount-namespace"; hasCUDA != want {
			t.Errorf("%s: libcuda.so.1 of the layout in the ld cache: %v, want %v", c.name, hasCUDA, want)
		}
		r.tree = tree(t, filepath.Join(b, "rootfs"))
		runs[c.name] = r
	}
	c, full := runs["C, entered"], runs["full, entered"]
	if c.path != "done" {
		t.Errorf("the C hook handed over in the container's namespace: %s", c.path)
	}
	if c.tree != full.tree || c.stderr != full.stderr {
		t.Errorf("the C hook and the full hook differ:\n%s\n---\n%s\ntree:\n%s\n---\n%s", c.stderr, full.stderr, c.tree, full.tree)
	}
	if p := runs["C, not entered"].path; p != "the layout's ld cache entries cannot be read" {
		t.Errorf("outside the namespace the C hook took the path %q", p)
	}
	if c.tree == runs["full, not entered"].tree {
		t.Error("the hook gave the container the same outside its namespace")
	}

	// a state without the container's pid, or with one that is no container being made
	// (pid 1: the flag at createContainer, where runc gives the pid in the container's
	// namespace): refused, in one short line, by both
	for _, full := range []bool{false, true} {
		for pid, why := range map[int]string{0: "the OCI state has no pid", 1: "is no container being created: the hook runs at createRuntime"} {
			b, _, _ := layoutAside(t, bundle, 0)
			before := tree(t, b)
			r := runHookPid(t, bin, b, entered, full, pid)
			if r.code == 0 || !strings.Contains(r.stderr, why) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
				t.Errorf("full %v, pid %d: exit %d (%s): %s", full, pid, r.code, r.path, r.stderr)
			}
			if after := tree(t, b); after != before {
				t.Errorf("full %v, pid %d: the bundle changed", full, pid)
			}
		}
	}
	// a stopped container (runc runs createRuntime hooks on a restore from a checkpoint,
	// with the state's status "stopped", once the container's files are in place):
	// nothing to do, and nothing entered
	goHook := filepath.Join(filepath.Dir(bin), "nvbind-hook-go")
	for _, h := range []string{bin, goHook} {
		b, src, mnt := layoutAside(t, bundle, 0)
		pid := inMountNamespace(t, "mount --bind "+src+" "+mnt)
		before := tree(t, b)
		r := runHookVia(t, []string{filepath.Join(filepath.Dir(bin), "launch")}, h, b, entered, false,
			`{"ociVersion":"1.2.0","id":"c1","status":"stopped","pid":`+strconv.Itoa(pid)+`,"bundle":"`+b+`"}`)
		if r.code != 0 || !strings.Contains(r.stderr, "the container is stopped (runc runs createRuntime hooks on a restore from a checkpoint, once its files are in place): nothing to do") {
			t.Errorf("%s, stopped: exit %d (%s): %s", filepath.Base(h), r.code, r.path, r.stderr)
		}
		if after := tree(t, b); after != before {
			t.Errorf("%s, stopped: the bundle changed:\n%s\n---\n%s", filepath.Base(h), before, after)
		}
	}
	// a namespace where the root's path is another folder (pivoted already, as it were):
	// refused, and nothing changed
	for _, h := range []string{bin, goHook} {
		b, _, _ := layoutAside(t, bundle, 0)
		pid := inMountNamespace(t, "mount -t tmpfs none "+filepath.Join(b, "rootfs"))
		before := tree(t, b)
		r := runHookPid(t, h, b, entered, false, pid)
		if r.code == 0 || !strings.Contains(r.stderr, "in the container's mount namespace is not the container root: is it pivoted already?") {
			t.Errorf("%s, another root: exit %d (%s): %s", filepath.Base(h), r.code, r.path, r.stderr)
		}
		if after := tree(t, b); after != before {
			t.Errorf("%s, another root: the bundle changed", filepath.Base(h))
		}
	}
	// the full hook by itself enters the mount namespace, of a container's process that
	// is nobody's child here too (crun's, with a user namespace): as the C hook does
	b, src, mnt := layoutAside(t, bundle, 0)
	r := runHookInRuntime(t, goHook, b, entered, false, 0, true, src, mnt)
	if r.code != 0 {
		t.Fatalf("nvbind-hook-go by itself: exit %d: %s", r.code, r.stderr)
	}
	if got := tree(t, filepath.Join(b, "rootfs")); got != c.tree {
		t.Errorf("nvbind-hook-go by itself and the C hook differ:\n%s\n---\n%s", got, c.tree)
	}
}

// layoutAside copies bundle and moves its layout out of the root, for a container's
// process to mount there (src at mnt); with root other than 0, the root and the folders
// above the copy become that uid's and readable (a user namespace whose root is root).
func layoutAside(t testing.TB, bundle string, root int) (b, src, mnt string) {
	t.Helper()
	b = t.TempDir()
	copyTree(t, bundle, b)
	mnt = filepath.Join(b, "rootfs", layoutMount)
	src = filepath.Join(b, "layout")
	if err := os.Rename(mnt, src); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if root != 0 {
		for d := b; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", root, root), filepath.Join(b, "rootfs")).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v\n%s", err, out)
		}
	}
	return b, src, mnt
}

// cacheHas reports whether the ld cache of bundle b's root has name in a folder under
// prefix.
func cacheHas(t *testing.T, b, name, prefix string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(b, "rootfs/etc/ld.so.cache"))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := ldcache.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(entries, func(e ldcache.Entry) bool { return e.Name == name && strings.HasPrefix(e.Path, prefix) })
}

// TestFastHookEntersUserNamespace: a container with a user namespace of its own (its
// root is host uid 200000) whose process is not dumpable, as runc's init is not, and is
// the runtime's child (runc) or nobody's here (crun): the C hook joins it as its root
// before the mount namespace, as a createContainer hook runs there, so what it makes is
// the container root's; the full hook it hands over to, by handle (its folder is closed
// to that root), starts there too, without entering again; the container reads the params
// the hook bound, read-only; the full hook alone, a process with threads, cannot join it
// and says so.
func TestFastHookEntersUserNamespace(t *testing.T) {
	testutil.RequiresRoot(t)
	bin := fastHook(t)
	bundle, args := layoutBundle(t, "")
	entered := append(args[:2:2], append([]string{"--enter-mount-namespace"}, args[2:]...)...)
	const uid = 200000
	trees := map[string]string{}
	for _, c := range []struct {
		name             string
		full, grandchild bool
	}{{"C", false, false}, {"full", true, false}, {"C, the runtime's grandchild", false, true}} {
		full := c.full
		b, src, mnt := layoutAside(t, bundle, uid)
		// the host's params, readable by the container's root; the container's own
		writeFiles(t, b, map[string]string{"params": "ModifyDeviceFiles: 1\n", "rootfs/proc/driver/nvidia/params": "ModifyDeviceFiles: 1\n"})
		// the C hook reads the host's params on the host: a file the container's root
		// cannot read; the full hook, handed over to inside, reads it again there
		mode := os.FileMode(0o600)
		if full {
			mode = 0o644
		}
		if err := os.Chmod(filepath.Join(b, "params"), mode); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, uid), filepath.Join(b, "rootfs/proc")).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v\n%s", err, out)
		}
		r := runHookInRuntime(t, bin, b, append(slices.Clone(entered), "--host-params", filepath.Join(b, "params")), full, uid, c.grandchild, src, mnt)
		want := "done"
		if full {
			want = "NVBIND_HOOK_FULL=1"
		}
		if r.code != 0 || r.path != want {
			t.Fatalf("%s: exit %d (%s): %s", c.name, r.code, r.path, r.stderr)
		}
		if !strings.Contains(r.stderr, "CHECK:ModifyDeviceFiles: 0\nCHECK-RO") {
			t.Errorf("%s: the container's params after the hook: %s", c.name, r.stderr)
		}
		for _, p := range []string{"usr/bin/nvidia-smi", "etc/nvidia/nvidia-application-profiles-rc.d", "lib/firmware/nvidia/535.261.03"} {
			var st syscall.Stat_t
			if err := syscall.Lstat(filepath.Join(b, "rootfs", p), &st); err != nil || st.Uid != uid || st.Gid != uid {
				t.Errorf("full %v: /%s: owner %d:%d (%v), want the container's root, %d", full, p, st.Uid, st.Gid, err, uid)
			}
		}
		if !cacheHas(t, b, "libcuda.so.1", layoutMount+"/") {
			t.Errorf("full %v: the ld cache lacks the layout's libcuda.so.1", full)
		}
		trees[c.name] = tree(t, filepath.Join(b, "rootfs"))

		if c.name == "C" { // the full hook by itself
			r := runHookInRuntime(t, filepath.Join(filepath.Dir(bin), "nvbind-hook-go"), b, entered, false, uid, false, src, mnt)
			if r.code == 0 || !strings.Contains(r.stderr, "the container has a user namespace of its own, which only nvbind-hook enters") {
				t.Errorf("nvbind-hook-go in a container with a user namespace: exit %d: %s", r.code, r.stderr)
			}
		}
	}
	for name, tr := range trees {
		if tr != trees["C"] {
			t.Errorf("%s and the C hook differ:\n%s\n---\n%s", name, tr, trees["C"])
		}
	}
	for _, pattern := range []string{"/run/nvbind-params-*", "/dev/shm/nvbind-params-*"} {
		if left, _ := filepath.Glob(pattern); len(left) > 0 {
			t.Errorf("params folders left: %v", left)
		}
	}
}

// inMountNamespace starts a process in a mount namespace of its own, where it runs the
// shell command setup, and returns its pid; it lives until the test ends.
func inMountNamespace(t *testing.T, setup string) int {
	t.Helper()
	return inNamespaces(t, 0, setup)
}

// inNamespaces is inMountNamespace, in a user namespace of its own too where root is not
// 0: one whose root is host uid and gid root (65536 ids), as which setup runs.
func inNamespaces(t *testing.T, root int, setup string) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", "mount --make-rprivate / && "+setup+" && echo ready && exec sleep 600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	if root != 0 {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: root, Size: 65536}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: root, Size: 65536}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make([]byte, 6)
	if n, err := out.Read(line); err != nil || string(line[:n]) != "ready\n" {
		t.Fatalf("%s: %q, %v: %s", setup, line[:n], err, stderr.String())
	}
	return cmd.Process.Pid
}
