package main

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/test/testutil"
)

// TestLeanDefaultsMatchPackages: the flag files the lean build shares spell out the
// defaults that NRI and the device plugin define, since it links neither.
func TestLeanDefaultsMatchPackages(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ lean, pkg string }{
		{nriDefaultSocket, api.DefaultSocketPath},
		{dpDefaultMIGStrategy, deviceplugin.MIGNone},
		{dpDefaultListStrategy, deviceplugin.ListCDICRI},
		{dpDefaultKubeletDir, deviceplugin.DefaultDir},
	} {
		if c.lean != c.pkg {
			t.Errorf("lean default %q, package says %q", c.lean, c.pkg)
		}
	}
	if dpDefaultForgetAfter != deviceplugin.DefaultForgetAfter {
		t.Errorf("lean --forget-after default %s, package says %s", dpDefaultForgetAfter, deviceplugin.DefaultForgetAfter)
	}
}

// TestLeanBuildLinksNoPluginStack: cdi generate, info and the hook must not pay, at every
// process start, for the package init of the NRI plugin's and device plugin's stack, nor
// for cgo's (the lean build, as make build makes it, has none: NVML is nvbind-node's).
func TestLeanBuildLinksNoPluginStack(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("go", "list", "-deps", "-tags", "nvbind_lean", "./cmd/nvbind")
	cmd.Dir = testutil.RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps gave %d packages", len(deps))
	}
	for _, d := range deps {
		for _, banned := range []string{"github.com/containerd/nri", "google.golang.org/grpc", "github.com/prometheus/",
			"k8s.io/kubelet", "k8s.io/cri-api", "github.com/containerd/containerd", "github.com/tetratelabs/wazero",
			"github.com/nvbind/nvbind/nriplugin", "github.com/nvbind/nvbind/deviceplugin", "github.com/nvbind/nvbind/doctor",
			"runtime/cgo", "github.com/NVIDIA/go-nvml"} {
			if strings.HasPrefix(d, banned) {
				t.Errorf("the lean nvbind links %s", d)
			}
		}
	}
}

// TestLeanRunsNodeBuild: the lean nvbind knows the flags of nri, device-plugin and doctor
// (help, validation, config), runs them through nvbind-node beside it with the same
// arguments, and says what is missing without it.
func TestLeanRunsNodeBuild(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := testutil.BuildNVBind(t, dir)
	for _, args := range [][]string{{"nri", "--help"}, {"device-plugin", "--help"}, {"doctor", "--help"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("nvbind %v: %v\n%s", args, err, out)
		}
		// the help of the full build's command, flags included
		if !strings.Contains(string(out), "--driver-root") || !strings.Contains(string(out), "Usage:") {
			t.Errorf("nvbind %v:\n%s", args, out)
		}
	}
	// a bad flag value is refused by the lean build before anything runs
	out, err := exec.Command(bin, "doctor", "--format", "yaml").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `--format "yaml": valid: text, json`) {
		t.Errorf("doctor --format yaml: %v\n%s", err, out)
	}
	// the full build ran: doctor's JSON comes back through the lean one
	empty := t.TempDir()
	out, _ = exec.Command(bin, "doctor", "--format", "json", "--driver-root", empty, "--dev-root", empty,
		"--containerd-address", filepath.Join(empty, "none.sock"), "--health-url", "http://127.0.0.1:1/readyz").Output()
	if !strings.Contains(string(out), `"status"`) {
		t.Errorf("doctor --format json gave:\n%s", out)
	}
	if err := os.Remove(filepath.Join(dir, nodeBinaryName)); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "nri", "--socket", filepath.Join(empty, "nri.sock"))
	cmd.Env = append(os.Environ(), "PATH=/nonexistent")
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "nvbind-node") || !strings.Contains(string(out), dir) {
		t.Errorf("without nvbind-node: %v\n%s", err, out)
	}
}

// TestLeanHandsOverForLibraries: the lean nvbind, built without cgo as make build builds
// it, writes cdi generate's spec itself, and hands a command that needs NVIDIA's
// libraries loaded (info asks libcuda its CUDA version) to nvbind-node, whose answer is
// the full build's own; without nvbind-node it says so.
func TestLeanHandsOverForLibraries(t *testing.T) {
	t.Parallel()
	root := testutil.DriverRoot(t, "debian-535")
	dir := t.TempDir()
	bin := testutil.BuildNVBind(t, dir)
	if f, err := elf.Open(bin); err != nil {
		t.Fatal(err)
	} else {
		interp := f.Section(".interp")
		_ = f.Close()
		if interp != nil {
			t.Fatalf("the lean nvbind is linked dynamically (cgo): %s", bin)
		}
	}
	info := func(b string) ([]byte, error) {
		return exec.Command(b, "info", "--format", "json", "--driver-root", root, "--dev-root", root).Output()
	}
	lean, err := info(bin)
	if err != nil {
		t.Fatalf("lean info: %v", err)
	}
	node, err := info(filepath.Join(dir, nodeBinaryName))
	if err != nil {
		t.Fatalf("nvbind-node info: %v", err)
	}
	if !bytes.Equal(lean, node) || !bytes.Contains(lean, []byte(`"cudaVersion"`)) {
		t.Errorf("lean info differs from nvbind-node's or has no CUDA version:\n%s\n---\n%s", lean, node)
	}
	if err := os.Remove(filepath.Join(dir, nodeBinaryName)); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "nvidia.yaml")
	cmd := exec.Command(bin, "cdi", "generate", "--driver-root", root, "--dev-root", root, "--output", out)
	cmd.Env = append(os.Environ(), "PATH=/nonexistent")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cdi generate without nvbind-node: %v\n%s", err, o)
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, "info", "--driver-root", root, "--dev-root", root)
	cmd.Env = append(os.Environ(), "PATH=/nonexistent")
	if o, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(o), nodeBinaryName) {
		t.Errorf("info without nvbind-node: %v\n%s", err, o)
	}
}
