package e2e

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// TestGPUHost runs on a host with a real NVIDIA GPU and driver (make test-gpu):
// discovery through NVML, a spec from the real driver, and a runc container from it that
// lists the GPUs with nvidia-smi and initialises CUDA.
func TestGPUHost(t *testing.T) {
	testutil.RequiresGPU(t)
	testutil.RequiresRoot(t)
	runc := testutil.RequiresCommand(t, "runc")
	bin := testutil.BuildNVBind(t, t.TempDir())
	out, err := exec.Command(bin, "info").CombinedOutput()
	t.Logf("nvbind info:\n%s", out)
	if err != nil || !strings.Contains(string(out), "GPU source:  nvml") {
		t.Fatalf("nvbind info: %v", err)
	}
	specDir := t.TempDir()
	writeSpec(t, "/", specDir, testutil.HookBinary(bin), spec.Options{})
	got := runcRun(t, runc, runcBundle(t, runc, specDir, "nvidia.com/gpu=0",
		`nvidia-smi -L; cuda-probe; grep ModifyDeviceFiles /proc/driver/nvidia/params; ldconfig -p | grep 'libcuda.so.1 '`))
	t.Logf("container output:\n%s", got)
	for _, want := range []string{"GPU 0:", "cuInit=0", "libcuda.so.1 (libc6,x86-64)"} {
		if !strings.Contains(got, want) {
			t.Errorf("container output lacks %q", want)
		}
	}
}
