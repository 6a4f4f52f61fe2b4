package driverroot

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/spec"
)

func discoverSpec(t *testing.T, r Root) (*gpu.Inventory, string) {
	t.Helper()
	d, err := gpu.New(r.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := spec.WriteDir(inv, spec.Options{HookPath: "/usr/bin/nvbind-hook"}, dir, spec.FormatYAML); err != nil {
		t.Fatal(err)
	}
	return inv, dir
}

func inject(t *testing.T, dir string, devices ...string) *oci.Spec {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(dir))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI cache: %v", errs)
	}
	o := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(o, devices...); err != nil {
		t.Fatalf("inject %v: %v (unresolved %v)", devices, err, unresolved)
	}
	return o
}

// TestTegraIGPU: on a Jetson (L4T's CSV files), discovery gives the iGPU's nodes,
// libraries, folders and links, each resolved inside the driver root, reports every
// entry it leaves out, and the spec gives the iGPU as nvidia.com/gpu=0, =igpu and =all.
func TestTegraIGPU(t *testing.T) {
	t.Parallel()
	r := Synthetic(t, "tegra-l4t")
	inv, dir := discoverSpec(t, r)
	ig := inv.IGPU
	if inv.Source != gpu.SourceCSV || inv.Driver.Version != "L4T R36.4.3" || ig == nil || len(inv.Devices) != 0 {
		t.Fatalf("source %s, driver %+v, iGPU %v, %d GPUs", inv.Source, inv.Driver, ig != nil, len(inv.Devices))
	}
	var nodes, libs, links []string
	for _, n := range ig.Nodes {
		nodes = append(nodes, n.Path)
	}
	for _, f := range ig.Files {
		libs = append(libs, string(f.Kind)+":"+f.Path)
	}
	for _, l := range ig.Links {
		links = append(links, l.Path+"->"+l.Target)
	}
	if len(nodes) != 10 || !slices.Contains(nodes, "/dev/nvmap") || !slices.Contains(nodes, "/dev/nvgpu/igpu0/ctrl") || slices.Contains(nodes, "/dev/nvhost-ctrl-nvdla0") {
		t.Errorf("nodes %v", nodes)
	}
	lib := "/usr/lib/aarch64-linux-gnu/nvidia"
	for _, want := range []string{"library:" + lib + "/libcuda.so.1.1", "library:" + lib + "/libnvidia-nvvm.so.4", "dir:/usr/lib/firmware/gv11b"} {
		if !slices.Contains(libs, want) {
			t.Errorf("files %v lack %s", libs, want)
		}
	}
	if !slices.Equal(links, []string{lib + "/libcuda.so->libcuda.so.1.1", "/usr/lib/aarch64-linux-gnu/libcuda.so->nvidia/libcuda.so", lib + "/libnvidia-ptxjitcompiler.so.1->libnvidia-ptxjitcompiler.so.540.4.0"}) {
		t.Errorf("links %v", links)
	}
	var w []string
	for _, x := range inv.Warnings {
		w = append(w, x.Message)
	}
	all := strings.Join(w, "\n")
	for _, want := range []string{"libnvdla_runtime.so is not under the driver root", "libnvidia-escape.so -> ../../../../../../../etc/shadow does not resolve inside the driver root",
		`unknown kind "bogus" (valid: dev, lib, sym, dir)`, `"relative/path.so" is not an absolute path`, "l4t.csv:1: /usr/bin/nvidia-smi-not-on-jetson is not under the driver root"} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings lack %q:\n%s", want, all)
		}
	}

	for _, dev := range []string{"nvidia.com/gpu=0", "nvidia.com/gpu=igpu", "nvidia.com/gpu=all"} {
		o := inject(t, dir, dev)
		var paths []string
		for _, d := range o.Linux.Devices {
			paths = append(paths, d.Path)
		}
		var mounts []string
		for _, m := range o.Mounts {
			mounts = append(mounts, m.Destination)
		}
		if !slices.Contains(paths, "/dev/nvmap") || !slices.Contains(mounts, lib+"/libcuda.so.1.1") || !slices.Contains(mounts, "/usr/lib/firmware/gv11b") {
			t.Errorf("%s: devices %v, mounts %v", dev, paths, mounts)
		}
		if o.Hooks == nil || len(o.Hooks.CreateRuntime) != 1 {
			t.Fatalf("%s: hooks %+v", dev, o.Hooks)
		}
		a, err := hookargs.Decode(o.Hooks.CreateRuntime[0].Args[1:])
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Links) != 3 || !slices.Contains(a.Folders, lib) || !slices.Contains(a.Folders, "/usr/lib/aarch64-linux-gnu") {
			t.Errorf("%s: hook %+v", dev, a)
		}
	}
}

// TestTegraWithDiscreteGPU: a Jetson with a discrete GPU (IGX, or an Orin with a PCIe
// GPU) gets both: the discrete GPUs keep their indexes and the iGPU is nvidia.com/gpu=igpu.
func TestTegraWithDiscreteGPU(t *testing.T) {
	t.Parallel()
	r := Combine(t, "debian-535", "tegra-l4t")
	inv, dir := discoverSpec(t, r)
	if len(inv.Devices) != 2 || inv.IGPU == nil || inv.Driver.Version != "535.261.03" {
		t.Fatalf("%d GPUs, iGPU %v, driver %+v", len(inv.Devices), inv.IGPU != nil, inv.Driver)
	}
	data, err := os.ReadFile(filepath.Join(dir, "nvidia.com-gpu.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	o := inject(t, dir, "nvidia.com/gpu=igpu", "nvidia.com/gpu=1")
	var paths []string
	for _, d := range o.Linux.Devices {
		paths = append(paths, d.Path)
	}
	if !slices.Contains(paths, "/dev/nvidia1") || !slices.Contains(paths, "/dev/nvmap") || slices.Contains(paths, "/dev/nvidia0") {
		t.Errorf("devices %v", paths)
	}
	o = inject(t, dir, "nvidia.com/gpu=0")
	paths = nil
	for _, d := range o.Linux.Devices {
		paths = append(paths, d.Path)
	}
	if slices.Contains(paths, "/dev/nvmap") || !slices.Contains(paths, "/dev/nvidia0") {
		t.Errorf("GPU 0 is the discrete one, not the iGPU: devices %v\n%s", paths, data)
	}
}

func readSpecNames(dir string) ([]string, error) {
	cache, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(dir))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range cache.ListDevices() {
		if strings.HasPrefix(d, "nvidia.com/gpu=") {
			out = append(out, strings.TrimPrefix(d, "nvidia.com/gpu="))
		}
	}
	return out, nil
}
