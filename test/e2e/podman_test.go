package e2e

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// podmanSpecDir is where Podman 4.3 reads CDI specs (it has no option for another).
const podmanSpecDir = "/var/run/cdi"

// podmanVendor picks nvidia.com unless the host already has specs of that vendor, so the
// test never shadows or clobbers a real one.
func podmanVendor(t *testing.T) string {
	c, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs("/etc/cdi", podmanSpecDir))
	if err == nil && slices.Contains(c.ListVendors(), spec.DefaultVendor) {
		t.Logf("the host has %s specs already: using vendor nvbind-e2e.test", spec.DefaultVendor)
		return "nvbind-e2e.test"
	}
	return spec.DefaultVendor
}

func podmanRun(t *testing.T, podman, rootfs, device, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, podman, "--runtime", "runc", "run", "--rm", "--network=none",
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
		"--device", device, "--rootfs", rootfs+":O", "/bin/sh", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	return string(out)
}

// podmanHooksScript reports what the hook made: the nodes, libcuda in the ld cache and
// where it points, nvidia-smi, the application profile, and libcuda loaded.
const podmanHooksScript = `ls -l /dev/nvidia1; test -e /dev/nvidia0 && echo HAS-NVIDIA0; ` + linkOfLibcuda +
	`; ldconfig -p | grep 'libcuda.so.1 '; ls /usr/bin/nvidia-smi; cat /etc/nvidia/nvidia-application-profiles-rc.d/10-nvbind-container.conf; cuda-probe`

func TestPodmanWithGeneratedSpec(t *testing.T) {
	testutil.RequiresRoot(t)
	podman := testutil.RequiresCommand(t, "podman")
	testutil.RequiresCommand(t, "runc")
	driverRoot := testutil.DriverRoot(t, "debian-535")
	bin := testutil.BuildNVBind(t, t.TempDir())
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	testutil.BuildRootfs(t, rootfs)
	vendor := podmanVendor(t)

	for _, tc := range []struct {
		name   string
		o      spec.Options
		device string
		script string
		want   []string
	}{
		{"hooks", spec.Options{}, "gpu=1", podmanHooksScript,
			[]string{"195,   1 ", "LINK=nvidia/current/libcuda.so.535.261.03", libcudaIn("all"),
				"/usr/bin/nvidia-smi", `"settings":["EGLVisibleDGPUDevices",2]`, "cuda-probe: loaded libcuda.so.1"}},
		{"hooks, one mount per file", spec.Options{LayoutBase: "files"}, "gpu=1", podmanHooksScript,
			[]string{"195,   1 ", "LINK=nvidia/current/libcuda.so.535.261.03", libcudaIn(""),
				"/usr/bin/nvidia-smi", `"settings":["EGLVisibleDGPUDevices",2]`, "cuda-probe: loaded libcuda.so.1"}},
		{"hookless", spec.Options{DisabledHooks: spec.AllHooks}, "gpu1",
			`ls -l /dev/nvidia1; test -e /dev/nvidia0 && echo HAS-NVIDIA0; cuda-probe`,
			[]string{"195,   1 ", "cuda-probe: loaded libcuda.so.1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.o.Vendor = vendor
			var written string
			if tc.o.LayoutBase == "files" {
				tc.o.LayoutBase = ""
				written = writeSpecFiles(t, driverRoot, dir, testutil.HookBinary(bin), tc.o)
			} else {
				written = writeSpec(t, driverRoot, dir, testutil.HookBinary(bin), tc.o)
			}
			dst := filepath.Join(podmanSpecDir, "nvbind-e2e-"+tc.name+".yaml")
			data, err := os.ReadFile(written)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(podmanSpecDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Remove(dst) })
			out := podmanRun(t, podman, rootfs, vendor+"/gpu="+strings.TrimPrefix(tc.device, "gpu="), tc.script)
			_ = os.Remove(dst)
			t.Logf("container output:\n%s", out)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("container output lacks %q", w)
				}
			}
			if strings.Contains(out, "HAS-NVIDIA") {
				t.Error("the container got a GPU it did not ask for")
			}
		})
	}
}

var demoRootfs = flag.String("rootfs", "", "TestBuildDemoRootfs: where to build the demo image root")

// TestBuildDemoRootfs builds the small image root that make demo runs (with -rootfs).
func TestBuildDemoRootfs(t *testing.T) {
	if *demoRootfs == "" {
		t.Skip("make demo sets -rootfs")
	}
	testutil.BuildRootfs(t, *demoRootfs)
}
