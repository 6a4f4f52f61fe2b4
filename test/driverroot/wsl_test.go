package driverroot

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/spec"
)

const wslStore = "/usr/lib/wsl/drivers/nv_dispi.inf_amd64_7a4c5e1f0b2d9c36"

// TestWSL2 gives a WSL2 host's GPU to containers: /dev/dxg, WSL's GPU libraries and the
// NVIDIA driver store mounted at their paths, the SONAME links the store lacks,
// /usr/bin/nvidia-smi and the ld cache. Without NVML the spec offers "all" alone.
func TestWSL2(t *testing.T) {
	t.Parallel()
	r := Synthetic(t, "wsl2")
	inv, dir := discoverSpec(t, r)
	if inv.WSL == nil || inv.Source != gpu.SourceWSL || len(inv.Devices) != 0 || !slices.Equal(inv.WSL.DriverStores, []string{wslStore}) {
		t.Fatalf("source %s, WSL %+v, %d GPUs", inv.Source, inv.WSL, len(inv.Devices))
	}
	s, err := readSpecNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s, []string{"all"}) {
		t.Errorf("devices %v, want all alone (no NVML to name GPUs)", s)
	}
	o := inject(t, dir, "nvidia.com/gpu=all")
	if len(o.Linux.Devices) != 1 || o.Linux.Devices[0].Path != "/dev/dxg" {
		t.Errorf("devices %+v", o.Linux.Devices)
	}
	var mounts []string
	for _, m := range o.Mounts {
		mounts = append(mounts, m.Destination)
	}
	for _, want := range []string{"/usr/lib/wsl/lib/libcuda.so.1.1", "/usr/lib/wsl/lib/libdxcore.so", "/usr/lib/wsl/lib/libnvidia-ml.so.1",
		wslStore + "/libcuda.so.1.1", wslStore + "/libnvdxgdmal.so.1", wslStore + "/nvcubins.bin", wslStore + "/nvidia-smi"} {
		if !slices.Contains(mounts, want) {
			t.Errorf("mounts lack %s: %v", want, mounts)
		}
	}
	for _, m := range mounts {
		if strings.HasSuffix(m, ".mui") || strings.Contains(m, "iigd_dch") {
			t.Errorf("mounted %s, which is not for Linux GPU containers", m)
		}
	}
	if o.Hooks == nil || len(o.Hooks.CreateRuntime) != 1 {
		t.Fatalf("hooks %+v", o.Hooks)
	}
	a, err := hookargs.Decode(o.Hooks.CreateRuntime[0].Args[1:])
	if err != nil {
		t.Fatal(err)
	}
	var links []string
	for _, l := range a.Links {
		links = append(links, l.String())
	}
	for _, want := range []string{"libcuda.so.1.1::" + wslStore + "/libcuda.so.1", wslStore + "/nvidia-smi::/usr/bin/nvidia-smi"} {
		if !slices.Contains(links, want) {
			t.Errorf("hook links lack %s: %v", want, links)
		}
	}
	if !slices.Equal(a.Folders, []string{"/usr/lib/wsl/lib", wslStore}) {
		t.Errorf("ld cache folders %v", a.Folders)
	}
}

// TestWSL2NamedGPUs: where NVML (which works through WSL2) lists the host's GPUs, each
// is named and limited for CUDA by CUDA_VISIBLE_DEVICES, since all share /dev/dxg.
func TestWSL2NamedGPUs(t *testing.T) {
	t.Parallel()
	r := Synthetic(t, "wsl2")
	d, err := gpu.New(gpu.WithDriverRoot(r.Path), gpu.WithDevRoot(r.Path), gpu.WithDeviceStater(r.Stater()), gpu.WithNVML(dgxa100.New()))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Source != gpu.SourceNVML || len(inv.Devices) != 8 || inv.Devices[3].Node.Path != "/dev/dxg" || inv.Driver.Version == "" {
		t.Fatalf("source %s, %d GPUs, driver %+v", inv.Source, len(inv.Devices), inv.Driver)
	}
	dir := t.TempDir()
	if _, err := spec.WriteDir(inv, spec.Options{HookPath: "/usr/bin/nvbind-hook"}, dir, spec.FormatYAML); err != nil {
		t.Fatal(err)
	}
	names, err := readSpecNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"0", "gpu3", inv.Devices[7].UUID, "all"} {
		if !slices.Contains(names, want) {
			t.Errorf("devices %v lack %s", names, want)
		}
	}
	o := inject(t, dir, "nvidia.com/gpu=gpu3")
	if !slices.Contains(o.Process.Env, "CUDA_VISIBLE_DEVICES="+inv.Devices[3].UUID) || len(o.Linux.Devices) != 1 {
		t.Errorf("gpu3: env %v, devices %+v", o.Process.Env, o.Linux.Devices)
	}
	o = inject(t, dir, "nvidia.com/gpu=all")
	for _, e := range o.Process.Env {
		if strings.HasPrefix(e, "CUDA_VISIBLE_DEVICES=") {
			t.Errorf("all limits CUDA: %s", e)
		}
	}
}
