package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// cudaProbe loads libcuda.so.1 through the dynamic loader, as a CUDA program does, and
// calls cuInit: without a GPU it reports the driver's error code, which proves the real
// library was found and loaded.
const cudaProbe = `#include <dlfcn.h>
#include <stdio.h>
int main(void) {
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
	if (!h) { printf("cuda-probe: dlopen failed: %s\n", dlerror()); return 1; }
	int (*cuInit)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
	int (*cuDriverGetVersion)(int *) = (int (*)(int *))dlsym(h, "cuDriverGetVersion");
	if (!cuInit || !cuDriverGetVersion) { printf("cuda-probe: missing symbols\n"); return 1; }
	int v = 0;
	cuDriverGetVersion(&v);
	printf("cuda-probe: loaded libcuda.so.1, CUDA driver API %d, cuInit=%d\n", v, cuInit(0));
	return 0;
}
`

// BuildRootfs makes a small image root in dir: busybox-static with its applets, the
// host's static ldconfig, glibc's loader and the libraries libcuda needs, and
// /usr/bin/cuda-probe. It needs busybox-static and a C compiler on the host.
func BuildRootfs(t testing.TB, dir string) {
	t.Helper()
	busybox := RequiresCommand(t, "busybox")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "usr/bin", "lib/x86_64-linux-gnu", "lib64", "root"} {
		must(os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	copyFile(t, busybox, filepath.Join(dir, "bin/busybox"), 0o755)
	for _, a := range []string{"sh", "ls", "cat", "readlink", "grep", "test", "echo", "wc", "head", "stat", "sleep", "id", "env", "find", "true"} {
		must(os.Symlink("busybox", filepath.Join(dir, "bin", a)))
	}
	copyFile(t, "/sbin/ldconfig", filepath.Join(dir, "sbin/ldconfig"), 0o755)
	for _, l := range []string{"ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1"} {
		copyFile(t, filepath.Join("/lib/x86_64-linux-gnu", l), filepath.Join(dir, "lib/x86_64-linux-gnu", l), 0o755)
	}
	must(os.Symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", filepath.Join(dir, "lib64/ld-linux-x86-64.so.2")))
	must(os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\n"), 0o644))
	src := filepath.Join(t.TempDir(), "probe.c")
	must(os.WriteFile(src, []byte(cudaProbe), 0o644))
	if out, err := exec.Command("cc", "-O2", "-o", filepath.Join(dir, "usr/bin/cuda-probe"), src, "-ldl").CombinedOutput(); err != nil {
		t.Fatalf("build cuda-probe: %v\n%s", err, out)
	}
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
}

// BuildNVBind compiles the binaries of make build into dir and returns the path of
// nvbind: the lean CLI, the full build nvbind-node (which nvbind runs for nri,
// device-plugin and doctor), the static nvbind-hook and the runtime wrapper (the C front
// nvbind-runtime and nvbind-runtime-edit), beside it where nvbind finds them.
func BuildNVBind(t testing.TB, dir string) string {
	t.Helper()
	for _, b := range []struct {
		pkg, out, cgo, tags string
		env                 []string
	}{
		{"./cmd/nvbind", "nvbind", "0", "nvbind_lean", LeanBuildEnv(t)}, {"./cmd/nvbind", "nvbind-node", "1", "", nil}, {"./cmd/nvbind-hook-go", "nvbind-hook-go", "0", "", nil},
		{"./cmd/nvbind-runtime-edit", "nvbind-runtime-edit", "1", "", nil},
	} {
		cmd := exec.Command("go", "build", "-tags", b.tags, "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Dir = RepoRoot(t)
		cmd.Env = append(append(os.Environ(), "CGO_CFLAGS=-O2 -Wno-deprecated-declarations", "CGO_ENABLED="+b.cgo), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	for _, c := range []struct{ src, out string }{
		{"cmd/nvbind-runtime/nvbind-runtime.c", "nvbind-runtime"}, {"cmd/nvbind-hook/nvbind-hook.c", "nvbind-hook"},
	} {
		cc := exec.Command(CCompiler(), "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", filepath.Join(dir, c.out), c.src)
		cc.Dir = RepoRoot(t)
		if out, err := cc.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", cc.Path, c.src, err, out)
		}
	}
	return filepath.Join(dir, "nvbind")
}

// LeanBuildEnv is the environment make build adds to the lean nvbind's go build (its
// LEAN_ENV): norandomizedheapbase64 added to the experiments already set, where the
// toolchain knows it.
func LeanBuildEnv(t testing.TB) []string {
	t.Helper()
	leanEnvOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOEXPERIMENT").Output()
		if err != nil {
			return
		}
		e := "norandomizedheapbase64"
		if cur := strings.TrimSpace(string(out)); cur != "" {
			e = cur + "," + e
		}
		cmd := exec.Command("go", "env", "GOEXPERIMENT")
		cmd.Env = append(os.Environ(), "GOEXPERIMENT="+e)
		if cmd.Run() == nil {
			leanEnv = []string{"GOEXPERIMENT=" + e}
		}
	})
	return leanEnv
}

var (
	leanEnvOnce sync.Once
	leanEnv     []string
)

// CCompiler is the compiler of nvbind's static C programs, as make build picks it: musl's
// where it is installed, else cc.
func CCompiler() string {
	if p, err := exec.LookPath("musl-gcc"); err == nil {
		return p
	}
	return "cc"
}

// HookBinary is the nvbind-hook built by BuildNVBind next to nvbind (with nvbind-hook-go,
// the full hook it hands what it does not do itself).
func HookBinary(nvbind string) string { return filepath.Join(filepath.Dir(nvbind), "nvbind-hook") }

// RuntimeBinary is the nvbind-runtime built by BuildNVBind next to nvbind.
func RuntimeBinary(nvbind string) string {
	return filepath.Join(filepath.Dir(nvbind), "nvbind-runtime")
}
