package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"

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
	script := `nvidia-smi -L; cuda-probe; grep ModifyDeviceFiles /proc/driver/nvidia/params; ldconfig -p | grep 'libcuda.so.1 '`
	want := []string{"GPU 0:", "cuInit=0", "libcuda.so.1 (libc6,x86-64)"}
	bundle := runcBundle(t, runc, specDir, "nvidia.com/gpu=0", script)
	if nvcc := findNVCC(); nvcc != "" {
		// a tiny CUDA program, built here with nvcc, run in the container
		buildCUDAProgram(t, nvcc, filepath.Join(bundle, "rootfs"))
		bundle = rebundle(t, bundle, script+"; /usr/bin/vector-add")
		want = append(want, "vector-add: 1048576 sums correct")
	} else {
		t.Log("nvcc not found: the CUDA program is skipped")
	}
	got := runcRun(t, runc, bundle)
	t.Logf("container output:\n%s", got)
	for _, want := range want {
		if !strings.Contains(got, want) {
			t.Errorf("container output lacks %q", want)
		}
	}
}

const vectorAdd = `#include <cstdio>
__global__ void add(const float *a, const float *b, float *c, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n) c[i] = a[i] + b[i];
}
int main() {
	const int n = 1 << 20;
	const size_t bytes = n * sizeof(float);
	float *ha = new float[n], *hb = new float[n], *hc = new float[n];
	for (int i = 0; i < n; i++) { ha[i] = i; hb[i] = 2 * i; }
	float *a, *b, *c;
	if (cudaMalloc(&a, bytes) || cudaMalloc(&b, bytes) || cudaMalloc(&c, bytes)) {
		printf("vector-add: allocation failed\n");
		return 1;
	}
	cudaMemcpy(a, ha, bytes, cudaMemcpyHostToDevice);
	cudaMemcpy(b, hb, bytes, cudaMemcpyHostToDevice);
	add<<<(n + 255) / 256, 256>>>(a, b, c, n);
	if (cudaMemcpy(hc, c, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) { printf("vector-add: kernel failed\n"); return 1; }
	int ok = 0;
	for (int i = 0; i < n; i++) ok += hc[i] == 3.0f * i;
	printf("vector-add: %d sums correct\n", ok);
	return ok == n ? 0 : 1;
}
`

func findNVCC() string {
	for _, p := range []string{"nvcc", "/usr/local/cuda/bin/nvcc"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	return ""
}

// buildCUDAProgram compiles vectorAdd with the CUDA runtime linked statically and copies
// the C++ runtime it needs into the image root.
func buildCUDAProgram(t *testing.T, nvcc, rootfs string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "vector_add.cu")
	if err := os.WriteFile(src, []byte(vectorAdd), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nvcc, "-O2", "-cudart", "static", "-o", filepath.Join(rootfs, "usr/bin/vector-add"), src).CombinedOutput()
	if err != nil {
		t.Fatalf("nvcc: %v\n%s", err, out)
	}
	for _, l := range []string{"/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libgcc_s.so.1"} {
		if data, err := os.ReadFile(l); err == nil {
			if err := os.WriteFile(filepath.Join(rootfs, "lib/x86_64-linux-gnu", filepath.Base(l)), data, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// rebundle changes the command of a bundle made by runcBundle.
func rebundle(t *testing.T, bundle, script string) string {
	t.Helper()
	p := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var s oci.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	s.Process.Args = []string{"/bin/sh", "-c", script}
	if data, err = json.Marshal(&s); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return bundle
}
