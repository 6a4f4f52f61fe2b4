// Package testutil holds helpers shared by nvbind's tests: gates for root and GPU tests,
// the driver roots built by test/driverroot/build.sh, and small ELF libraries.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Environment switches. The default `go test ./...` is hermetic; `make test` sets them.
const (
	// EnvRoots points at the folder of driver roots (default /var/tmp/nvbind-roots).
	EnvRoots = "NVBIND_TEST_ROOTS"
	// EnvRequireFixtures=1 turns a missing driver root into a failure instead of a skip.
	EnvRequireFixtures = "NVBIND_REQUIRE_FIXTURES"
	// EnvRoot=1 runs tests that need root (mknod, mounts, runc, podman, containerd).
	EnvRoot = "NVBIND_TEST_ROOT"
	// EnvGPU=1 runs tests that need a real NVIDIA GPU and driver.
	EnvGPU = "NVBIND_TEST_GPU"
)

// RequiresRoot skips unless root tests are enabled and the process is root.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvRoot) != "1" {
		t.Skipf("root test: set %s=1 (as root) to run", EnvRoot)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("%s=1 but not running as root", EnvRoot)
	}
}

// RequiresGPU skips unless GPU tests are enabled.
func RequiresGPU(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvGPU) != "1" {
		t.Skipf("GPU test: set %s=1 on a host with an NVIDIA GPU to run", EnvGPU)
	}
}

// RequiresCommand skips (or fails, under root tests) when a program is missing.
func RequiresCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv(EnvRoot) == "1" {
			t.Fatalf("%s is not installed (run .ci/run or make deps)", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

// DriverRoot returns the path of a driver root built by test/driverroot/build.sh
// (debian-535, flat-535, lib64-470).
func DriverRoot(t testing.TB, name string) string {
	t.Helper()
	base := os.Getenv(EnvRoots)
	if base == "" {
		base = "/var/tmp/nvbind-roots"
	}
	p := filepath.Join(base, name)
	if _, err := os.Stat(filepath.Join(p, "proc/driver/nvidia/version")); err != nil {
		if os.Getenv(EnvRequireFixtures) == "1" {
			t.Fatalf("driver root %s is missing: run make fixtures", p)
		}
		t.Skipf("driver root %s is missing: run make fixtures", p)
	}
	return p
}

// RepoRoot returns the repository's top folder.
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BuildSharedObject compiles an empty shared object with the given SONAME at path
// (parents created). bits is 64 or 32. With extra, a string constant is embedded.
func BuildSharedObject(t testing.TB, path, soname string, bits int, extra string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "lib.c")
	code := "int nvbind_test_symbol(void) { return 1; }\n"
	if extra != "" {
		code += "const char nvbind_test_string[] = \"" + strings.ReplaceAll(extra, `"`, `\"`) + "\";\n"
	}
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-shared", "-fPIC", "-nostdlib", "-o", path, src}
	if soname != "" {
		args = append(args, "-Wl,-soname,"+soname)
	}
	if bits == 32 {
		args = append(args, "-m32")
	}
	out, err := exec.Command("cc", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("cc %v: %v\n%s", args, err, out)
	}
}

// Golden compares data with the file at path, or rewrites the file when update is set
// (each package's -update flag).
func Golden(t testing.TB, path string, data []byte, update bool) {
	t.Helper()
	if update {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the package's tests with -update to write it)", err)
	}
	if string(want) != string(data) {
		t.Fatalf("%s differs (the package's tests with -update rewrite it); got:\n%s", path, data)
	}
}

// KeepHostDevNodes removes, when the test ends, the NVIDIA device nodes a test leaves in
// the host's /dev that were not there before: NVIDIA's own tools (nvidia-ctk, the
// runtime), run side by side on a driver root, make /dev/nvidiactl and others on the host
// when NVML starts there.
func KeepHostDevNodes(tb testing.TB) {
	tb.Helper()
	before := map[string]bool{}
	list := func() []string {
		m, _ := filepath.Glob("/dev/nvidia*")
		return m
	}
	for _, p := range list() {
		before[p] = true
	}
	tb.Cleanup(func() {
		for _, p := range list() {
			if !before[p] {
				_ = os.RemoveAll(p)
			}
		}
	})
}
