package main

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/test/driverroot"
	"github.com/nvbind/nvbind/test/testutil"
)

// TestARM64UnderQEMU cross-compiles the lean nvbind (cgo, with Debian's aarch64 gcc) and
// the hook for arm64, as make build ARCH=arm64 does, and runs them under qemu-user: info
// and cdi generate on a driver root (the spec must be the amd64 build's, byte for byte),
// and a hook stage on a container bundle.
func TestARM64UnderQEMU(t *testing.T) {
	cc := testutil.RequiresCommand(t, "aarch64-linux-gnu-gcc")
	qemu := testutil.RequiresCommand(t, "qemu-aarch64")
	root := testutil.DriverRoot(t, "debian-535")
	dir := t.TempDir()
	build := func(out string, cgo bool, args ...string) {
		t.Helper()
		cmd := exec.Command("go", append([]string{"build", "-trimpath", "-o", filepath.Join(dir, out)}, args...)...)
		cmd.Dir = testutil.RepoRoot(t)
		cmd.Env = append(os.Environ(), "GOARCH=arm64", "CC="+cc, "CGO_CFLAGS=-O2 -Wno-deprecated-declarations", "CGO_ENABLED=0")
		if cgo {
			cmd.Env = append(cmd.Env, "CGO_ENABLED=1")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", args, err, out)
		}
		f, err := elf.Open(filepath.Join(dir, out))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = f.Close() }()
		if f.Machine != elf.EM_AARCH64 {
			t.Fatalf("%s is for %v", out, f.Machine)
		}
	}
	build("nvbind", false, "-tags", "nvbind_lean", "./cmd/nvbind")
	build(nodeBinaryName, true, "./cmd/nvbind")
	build("nvbind-hook-go", false, "./cmd/nvbind-hook-go")
	build("nvbind-runtime-edit", true, "./cmd/nvbind-runtime-edit")
	// the static C programs (the runtime wrapper's front, the hook), as make build
	// ARCH=arm64 builds them
	for _, c := range []struct{ out, src string }{{"nvbind-runtime", "cmd/nvbind-runtime/nvbind-runtime.c"}, {"nvbind-hook", "cmd/nvbind-hook/nvbind-hook.c"}} {
		front := exec.Command(cc, "-static", "-O2", "-s", "-Wall", "-Wextra", "-Werror", "-o", filepath.Join(dir, c.out), c.src)
		front.Dir = testutil.RepoRoot(t)
		if out, err := front.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", cc, c.src, err, out)
		}
		if f, err := elf.Open(filepath.Join(dir, c.out)); err != nil || f.Machine != elf.EM_AARCH64 {
			t.Fatalf("%s is no aarch64 program: %v", c.out, err)
		}
	}
	run := func(stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(qemu, append([]string{"-L", "/usr/aarch64-linux-gnu"}, args...)...)
		cmd.Stdin = bytes.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("qemu-aarch64 %v: %v\n%s", args, err, stderr.String())
		}
		return out
	}

	var info struct {
		Driver  struct{ Version string } `json:"driver"`
		Devices []struct{ UUID string }  `json:"devices"`
	}
	// info asks libcuda its CUDA version, which the lean build hands to nvbind-node: run
	// here directly, as qemu-aarch64 runs no second aarch64 program of its own accord
	if err := json.Unmarshal(run(nil, filepath.Join(dir, nodeBinaryName), "info", "--no-nvml", "--format", "json", "--driver-root", root, "--dev-root", root), &info); err != nil {
		t.Fatal(err)
	}
	if info.Driver.Version != "535.261.03" || len(info.Devices) != 2 {
		t.Errorf("info under qemu: %+v", info)
	}
	args := []string{"cdi", "generate", "--no-nvml", "--driver-root", root, "--dev-root", root, "--hook-path", "/usr/bin/nvbind-hook"}
	arm := run(nil, append([]string{filepath.Join(dir, "nvbind")}, args...)...)
	host := testutil.BuildNVBind(t, t.TempDir())
	amd, err := exec.Command(host, args...).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(arm, amd) || !bytes.Contains(arm, []byte("cdiVersion: 0.5.0")) {
		t.Errorf("the arm64 build's spec differs from the amd64 build's:\n%s", arm)
	}

	// a Jetson (tegra-l4t: L4T's CSV files, aarch64 libraries); its device nodes are real
	// only when root makes them
	if os.Geteuid() == 0 {
		tegra := driverroot.Synthetic(t, "tegra-l4t")
		out := string(run(nil, filepath.Join(dir, "nvbind"), "cdi", "generate", "--driver-root", tegra.Path, "--dev-root", tegra.Path, "--hook-path", "/usr/bin/nvbind-hook"))
		for _, want := range []string{"name: igpu", "name: \"0\"", "path: /dev/nvmap", "containerPath: /usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1.1", "libcuda.so.1.1::/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so"} {
			if !strings.Contains(out, want) {
				t.Errorf("the arm64 build's spec on the Jetson root lacks %q:\n%s", want, out)
			}
		}
		if info := string(run(nil, filepath.Join(dir, "nvbind"), "info", "--driver-root", tegra.Path, "--dev-root", tegra.Path)); !strings.Contains(info, "iGPU:        igpu (L4T R36.4.3; 10 nodes") {
			t.Errorf("info on the Jetson root:\n%s", info)
		}
	}

	// the image's layout for arm64 (make image ARCH=arm64): the binaries with the cross
	// toolchain's loader and libraries
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	mk := exec.Command("go", "run", "./internal/cmd/mkimage", "-rootfs-only", "-rootfs", rootfs, "-arch", "arm64", "-bin", dir)
	mk.Dir = testutil.RepoRoot(t)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("mkimage -arch arm64: %v\n%s", err, out)
	}
	for _, p := range []string{"lib/ld-linux-aarch64.so.1", "lib/aarch64-linux-gnu/libc.so.6", "usr/local/bin/nvbind-hook", "usr/local/bin/nvbind-hook-go", "usr/local/bin/nvbind",
		"usr/local/bin/nvbind-runtime", "usr/local/bin/nvbind-runtime-edit"} {
		if _, err := os.Stat(filepath.Join(rootfs, p)); err != nil {
			t.Errorf("the arm64 image lacks /%s: %v", p, err)
		}
	}
	if f, err := elf.Open(filepath.Join(rootfs, "lib/aarch64-linux-gnu/libc.so.6")); err != nil || f.Machine != elf.EM_AARCH64 {
		t.Errorf("the arm64 image's libc: %v", err)
	}

	// a hook stage: links and the EGL profile in a bundle's root
	bundle := t.TempDir()
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs/usr/lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := `{"root":{"path":"rootfs"},"linux":{"devices":[{"path":"/dev/nvidia1","type":"c","major":195,"minor":1}]}}`
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	state := []byte(`{"ociVersion":"1.0.2","id":"arm64","status":"creating","pid":1,"bundle":"` + bundle + `"}`)
	hookArgs := []string{"hook", "all", "--link", "libcuda.so.535.261.03::/usr/lib/libcuda.so.1", "--app-profile"}
	// the C hook does this stage itself where openat2 is (QEMU 8.2 and later emulate it);
	// under an older QEMU, as on a kernel before 5.6, it hands it to the full hook, which
	// QEMU's user mode cannot start without binfmt_misc: the full hook runs it here then
	fast := exec.Command(qemu, append([]string{"-L", "/usr/aarch64-linux-gnu", filepath.Join(dir, "nvbind-hook")}, hookArgs...)...)
	fast.Stdin, fast.Env = bytes.NewReader(state), append(os.Environ(), "NVBIND_HOOK_TRACE=1")
	out, err := fast.CombinedOutput()
	switch {
	case err == nil && strings.Contains(string(out), "nvbind-hook: done"):
	case strings.Contains(string(out), "full hook: openat2 with RESOLVE_IN_ROOT is not available") && strings.Contains(string(out), "nvbind-hook-go"):
		t.Logf("QEMU lacks openat2: the C hook hands over to nvbind-hook-go\n%s", out)
		run(state, append([]string{filepath.Join(dir, "nvbind-hook-go")}, hookArgs...)...)
	default:
		t.Fatalf("the arm64 C hook: %v\n%s", err, out)
	}
	if target, err := os.Readlink(filepath.Join(bundle, "rootfs/usr/lib/libcuda.so.1")); err != nil || target != "libcuda.so.535.261.03" {
		t.Errorf("link: %q, %v", target, err)
	}
	profile, err := os.ReadFile(filepath.Join(bundle, "rootfs/etc/nvidia/nvidia-application-profiles-rc.d/10-nvbind-container.conf"))
	if err != nil || !strings.Contains(string(profile), `"settings":["EGLVisibleDGPUDevices",2]`) {
		t.Errorf("profile: %s, %v", profile, err)
	}
}
