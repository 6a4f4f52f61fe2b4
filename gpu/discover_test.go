package gpu

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

func discover(t *testing.T, tr tree, opts ...Option) (*Inventory, error) {
	t.Helper()
	root := t.TempDir()
	tr.build(t, root)
	d, err := New(append([]Option{WithDriverRoot(root), WithDevRoot(root), WithDeviceStater(fakeStater{}), WithoutNVML()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return d.Discover(context.Background())
}

func libPaths(inv *Inventory) []string {
	var out []string
	for _, f := range inv.Files {
		if f.Kind == KindLibrary {
			out = append(out, f.Path)
		}
	}
	return out
}

func findFile(inv *Inventory, p string) *File {
	for i := range inv.Files {
		if inv.Files[i].Path == p {
			return &inv.Files[i]
		}
	}
	return nil
}

const lib = "/usr/lib/x86_64-linux-gnu"

func TestDiscoverEmptyRoot(t *testing.T) {
	t.Parallel()
	_, err := discover(t, tree{"/etc/hostname": "x\n"})
	if !errors.Is(err, ErrNoDriver) {
		t.Fatalf("err = %v, want ErrNoDriver", err)
	}
	if !strings.Contains(err.Error(), "driver root") {
		t.Errorf("error does not name the driver root: %v", err)
	}
}

func TestDiscoverDriverWithoutGPUs(t *testing.T) {
	t.Parallel()
	inv, err := discover(t, tree{
		lib + "/libcuda.so." + v535: "elf:libcuda.so.1",
		lib + "/libcuda.so.1":       "link:libcuda.so." + v535,
	})
	if !errors.Is(err, ErrNoDevices) {
		t.Fatalf("err = %v, want ErrNoDevices", err)
	}
	if inv.Driver.Version != v535 || inv.Driver.VersionSource != "library file names" {
		t.Errorf("driver = %+v", inv.Driver)
	}
}

func TestDiscoverFlatNoLDCache(t *testing.T) {
	t.Parallel()
	inv, err := discover(t, hostTree().with(tree{
		lib + "/libcuda.so." + v535:                       "elf:libcuda.so.1",
		lib + "/libcuda.so.1":                             "link:libcuda.so." + v535,
		lib + "/libcuda.so":                               "link:libcuda.so.1",
		lib + "/libnvidia-ml.so." + v535:                  "elf:libnvidia-ml.so.1",
		lib + "/libnvidia-ml.so.1":                        "link:libnvidia-ml.so." + v535,
		lib + "/libnvidia-api.so.1":                       "elf:libnvidia-api.so.1:" + v535,
		lib + "/libnvidia-glcore.so." + v535:              "elf:libnvidia-glcore.so." + v535,
		"/usr/bin/nvidia-smi":                             "#!/bin/true\n",
		"/lib/firmware/nvidia/" + v535 + "/gsp_ga10x.bin": "fw",
		"/lib/firmware/nvidia/530.30.02/gsp_ga10x.bin":    "old fw",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if inv.Source != SourceProcfs || len(inv.Devices) != 2 {
		t.Fatalf("source %s, %d devices", inv.Source, len(inv.Devices))
	}
	if d := inv.Devices[0]; d.UUID != "GPU-aaaa" || d.Node.Path != "/dev/nvidia0" || len(d.DRM) != 2 {
		t.Errorf("device 0 = %+v", d)
	}
	want := []string{lib + "/libcuda.so." + v535, lib + "/libnvidia-api.so.1", lib + "/libnvidia-glcore.so." + v535, lib + "/libnvidia-ml.so." + v535}
	if got := libPaths(inv); !slices.Equal(got, want) {
		t.Fatalf("libraries = %v\nwant %v", got, want)
	}
	cuda := findFile(inv, lib+"/libcuda.so."+v535)
	if cuda.SONAME != "libcuda.so.1" || !slices.Equal(cuda.Links, []string{lib + "/libcuda.so", lib + "/libcuda.so.1"}) || !cuda.Capabilities.Has(CapCompute) {
		t.Errorf("libcuda = %+v", cuda)
	}
	if f := findFile(inv, "/usr/bin/nvidia-smi"); f == nil || !f.Capabilities.Has(CapUtility) {
		t.Errorf("nvidia-smi = %+v", f)
	}
	if f := findFile(inv, "/lib/firmware/nvidia/530.30.02/gsp_ga10x.bin"); f != nil {
		t.Error("firmware of another driver version was listed")
	}
	if inv.Driver.ModifyDeviceFiles == nil || !*inv.Driver.ModifyDeviceFiles {
		t.Error("ModifyDeviceFiles not read")
	}
	if len(inv.ControlNodes) != 3 {
		t.Errorf("control nodes = %+v", inv.ControlNodes)
	}
}

func TestDiscoverLeftoversAndHostileLinks(t *testing.T) {
	t.Parallel()
	inv, err := discover(t, hostTree().with(tree{
		lib + "/libcuda.so." + v535:              "elf:libcuda.so.1",
		lib + "/libcuda.so.1":                    "link:libcuda.so." + v535,
		lib + "/libcuda.so.530.30.02":            "elf:libcuda.so.1", // leftover of an older driver
		lib + "/libnvidia-ml.so.530.30.02":       "elf:libnvidia-ml.so.1",
		lib + "/libnvidia-cfg.so.1":              "elf:libnvidia-cfg.so.1:530.30.02", // unversioned leftover
		lib + "/libnvidia-broken.so.1":           "link:libnvidia-broken.so." + v535, // dangling
		lib + "/libnvidia-escape.so.1":           "link:../../../../../../../../etc/shadow",
		lib + "/libnvidia-abs.so.1":              "link:/etc/passwd",
		lib + "/libnvidia-loop.so.1":             "link:libnvidia-loop.so.1",
		"/etc/passwd":                            "root:x:0:0::/root:/bin/sh\n",
		lib + "/libnvidia-egl-wayland.so.1":      "link:libnvidia-egl-wayland.so.1.1.13",
		lib + "/libnvidia-egl-wayland.so.1.1.13": "elf:libnvidia-egl-wayland.so.1",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if got := libPaths(inv); !slices.Equal(got, []string{lib + "/libcuda.so." + v535}) {
		t.Fatalf("libraries = %v", got)
	}
	joined := warningText(inv)
	if !strings.Contains(joined, "leftover: skipped") || !strings.Contains(joined, "libcuda.so.530.30.02") || !strings.Contains(joined, "not the installed "+v535) {
		t.Errorf("no warning about the leftover:\n%s", joined)
	}
	for _, f := range inv.Files {
		if !strings.HasPrefix(f.HostPath, inv.DriverRoot+"/") {
			t.Errorf("%s resolves outside the driver root: %s", f.Path, f.HostPath)
		}
	}
}

func TestDiscoverDebianAlternatives(t *testing.T) {
	t.Parallel()
	cur := lib + "/nvidia/current"
	inv, err := discover(t, hostTree().with(tree{
		cur + "/libcuda.so." + v535:                               "elf:libcuda.so.1",
		cur + "/libcuda.so.1":                                     "link:libcuda.so." + v535,
		"/etc/alternatives/nvidia--libcuda.so.1-x86_64-linux-gnu": "link:" + cur + "/libcuda.so.1",
		lib + "/libcuda.so.1":                                     "link:/etc/alternatives/nvidia--libcuda.so.1-x86_64-linux-gnu",
		"/usr/lib/nvidia/current/nvidia-smi":                      "#!/bin/true\n",
		"/etc/alternatives/nvidia--nvidia-smi":                    "link:/usr/lib/nvidia/current/nvidia-smi",
		"/usr/bin/nvidia-smi":                                     "link:/etc/alternatives/nvidia--nvidia-smi",
	}))
	if err != nil {
		t.Fatal(err)
	}
	f := findFile(inv, cur+"/libcuda.so."+v535)
	if f == nil || !slices.Equal(f.Links, []string{lib + "/libcuda.so.1", cur + "/libcuda.so.1"}) {
		t.Fatalf("libcuda = %+v", f)
	}
	smi := findFile(inv, "/usr/bin/nvidia-smi")
	if smi == nil || smi.HostPath != path.Join(inv.DriverRoot, "/usr/lib/nvidia/current/nvidia-smi") {
		t.Fatalf("nvidia-smi = %+v", smi)
	}
}

func TestDiscoverStaleMajor(t *testing.T) {
	t.Parallel()
	inv, err := discover(t, hostTree().with(tree{
		lib + "/libcuda.so." + v535: "elf:libcuda.so.1",
		"/dev/nvidia-uvm":           "dev:237:0",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(warningText(inv), "stale-node: ") {
		t.Errorf("no stale-node warning: %v", inv.Warnings)
	}
}

func TestDiscoverMissingGPUNode(t *testing.T) {
	t.Parallel()
	_, err := discover(t, hostTree().with(tree{lib + "/libcuda.so." + v535: "elf:libcuda.so.1", "/dev/nvidia1": ""}))
	if err == nil || !strings.Contains(err.Error(), "dev/nvidia1 is missing") {
		t.Fatalf("err = %v", err)
	}
}

// migServer is go-nvml's DGX A100 mock with MIG enabled on GPU 0 and two MIG devices.
func migServer() *server.Server {
	s := dgxa100.New()
	d0 := s.Devices[0].(*server.Device)
	d0.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		var p nvml.PciInfo
		for i, c := range "00000000:07:00.0" {
			p.BusId[i] = int8(c)
		}
		return p, nvml.SUCCESS
	}
	d0.GetMigModeFunc = func() (int, int, nvml.Return) { return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS }
	migs := []*mock.Device{}
	for i, ids := range [][2]int{{1, 0}, {2, 0}} {
		gi, ci, uuid := ids[0], ids[1], []string{"MIG-1111", "MIG-2222"}[i]
		migs = append(migs, &mock.Device{
			GetUUIDFunc:              func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
			GetGpuInstanceIdFunc:     func() (int, nvml.Return) { return gi, nvml.SUCCESS },
			GetComputeInstanceIdFunc: func() (int, nvml.Return) { return ci, nvml.SUCCESS },
			GetNameFunc:              func() (string, nvml.Return) { return "NVIDIA A100-SXM4-40GB MIG 3g.20gb", nvml.SUCCESS },
			GetMemoryInfoFunc:        func() (nvml.Memory, nvml.Return) { return nvml.Memory{Total: 20 << 30}, nvml.SUCCESS },
		})
	}
	d0.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	d0.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i < len(migs) {
			return migs[i], nvml.SUCCESS
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	return s
}

// dgxTree is a host tree whose nodes match the mock's 8 GPUs and MIG minors.
func dgxTree() tree {
	tr := tree{
		"/proc/devices":                       "Character devices:\n195 nvidia-frontend\n508 nvidia-uvm\n510 nvidia-caps\n",
		"/proc/driver/nvidia-caps/mig-minors": "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\ngpu0/gi2/access 21\ngpu0/gi2/ci0/access 22\n",
		"/dev/nvidiactl":                      "dev:195:255",
		"/dev/nvidia-uvm":                     "dev:508:0",
		"/dev/nvidia-caps/nvidia-cap1":        "dev:510:1",
		"/dev/nvidia-caps/nvidia-cap2":        "dev:510:2",
		"/dev/nvidia-caps/nvidia-cap12":       "dev:510:12",
		"/dev/nvidia-caps/nvidia-cap13":       "dev:510:13",
		"/dev/nvidia-caps/nvidia-cap21":       "dev:510:21",
		"/dev/nvidia-caps/nvidia-cap22":       "dev:510:22",
		lib + "/libcuda.so." + v535:           "elf:libcuda.so.1",
		lib + "/libcuda.so.1":                 "link:libcuda.so." + v535,
	}
	for i := 0; i < 8; i++ {
		tr["/dev/nvidia"+string(rune('0'+i))] = "dev:195:" + string(rune('0'+i))
	}
	return tr
}

func TestDiscoverNVMLMock(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dgxTree().build(t, root)
	d, err := New(WithDriverRoot(root), WithDevRoot(root), WithDeviceStater(fakeStater{}), WithNVML(migServer()))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Source != SourceNVML || len(inv.Devices) != 8 {
		t.Fatalf("source %s, %d devices", inv.Source, len(inv.Devices))
	}
	if d := inv.Devices[0]; d.Architecture != "ampere" || d.Memory != 40<<30 || len(d.MIG) != 2 || d.MIG[0].Memory != 20<<30 {
		t.Errorf("GPU 0: architecture %q, memory %d, MIG %+v", d.Architecture, d.Memory, d.MIG)
	}
	// the mock's NVML reports 550.54.15 while the files are 535: the files decide what is
	// mounted, and the mismatch is reported
	if inv.Driver.Version != v535 || !strings.Contains(warningText(inv), "version-mismatch: NVML reports driver 550.54.15") {
		t.Errorf("driver = %+v, warnings %v", inv.Driver, inv.Warnings)
	}
	d0 := inv.Devices[0]
	if d0.Model != "Mock NVIDIA A100-SXM4-40GB" || !strings.HasPrefix(d0.UUID, "GPU-") || d0.PCIBusID != "0000:07:00.0" {
		t.Errorf("device 0 = %+v", d0)
	}
	if len(d0.MIG) != 2 || d0.MIG[1].UUID != "MIG-2222" || d0.MIG[1].GI != 2 || len(d0.MIG[1].Caps) != 2 || d0.MIG[1].Caps[1].Minor != 22 {
		t.Fatalf("MIG = %+v", d0.MIG)
	}
	if len(inv.MIGControl) != 2 {
		t.Errorf("MIG control nodes = %+v", inv.MIGControl)
	}
}

func TestDiscoverNVMLInitFailureFallsBack(t *testing.T) {
	t.Parallel()
	s := dgxa100.New()
	s.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }
	root := t.TempDir()
	hostTree().with(tree{lib + "/libcuda.so." + v535: "elf:libcuda.so.1"}).build(t, root)
	d, err := New(WithDriverRoot(root), WithDevRoot(root), WithDeviceStater(fakeStater{}), WithNVML(s))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Source != SourceProcfs || !strings.Contains(strings.ToLower(strings.ReplaceAll(inv.NVMLError, "_", " ")), "driver not loaded") || len(inv.Devices) != 2 {
		t.Fatalf("source %s, nvml error %q, %d devices", inv.Source, inv.NVMLError, len(inv.Devices))
	}
}

// TestDiscoverMountedRoots reads the roots where a container mounts them and keeps the
// host's paths in the inventory.
func TestDiscoverMountedRoots(t *testing.T) {
	t.Parallel()
	mount := t.TempDir()
	hostTree().with(tree{lib + "/libcuda.so." + v535: "elf:libcuda.so.1", lib + "/libcuda.so.1": "link:libcuda.so." + v535}).build(t, mount)
	d, err := New(WithDriverRoot("/run/nvidia/driver"), WithDriverRootMount(mount), WithDevRoot("/"), WithDevRootMount(mount),
		WithDeviceStater(fakeStater{}), WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f := findFile(inv, lib+"/libcuda.so."+v535); f == nil || f.HostPath != "/run/nvidia/driver"+lib+"/libcuda.so."+v535 {
		t.Fatalf("libcuda = %+v", f)
	}
	if n := inv.Devices[0].Node; n.HostPath != "/dev/nvidia0" || n.Major != 195 {
		t.Fatalf("node = %+v", n)
	}
	if inv.DriverRoot != "/run/nvidia/driver" || inv.DevRoot != "/" {
		t.Fatalf("roots = %s %s", inv.DriverRoot, inv.DevRoot)
	}
	// the driver's libraries are loaded (libcuda for its CUDA version) from the mount
	if strings.Contains(warningText(inv), "/run/nvidia/driver") {
		t.Errorf("nvbind tried to load a library from the host path: %v", inv.Warnings)
	}
}

// TestDiscoverModuleWithoutLibraries: a loaded kernel module whose libraries are not (yet)
// installed is an error, not an empty inventory a spec could be written from.
func TestDiscoverModuleWithoutLibraries(t *testing.T) {
	t.Parallel()
	_, err := discover(t, hostTree().with(tree{lib + "/libcuda.so.530.30.02": "elf:libcuda.so.1"}))
	if !errors.Is(err, ErrNoLibraries) || !strings.Contains(err.Error(), "driver "+v535+" is loaded") {
		t.Fatalf("err = %v", err)
	}
}

// TestDiscoverTopology: with NVML's topology calls, each GPU carries its level to every
// GPU; a binding without them (the plain mock) gives no topology and no error.
func TestDiscoverTopology(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dgxTree().build(t, root)
	s := migServer()
	// two halves of four GPUs: one NUMA node each, pairs behind one PCIe switch
	level := func(i, j int) nvml.GpuTopologyLevel {
		switch {
		case i/2 == j/2:
			return nvml.TOPOLOGY_SINGLE
		case i/4 == j/4:
			return nvml.TOPOLOGY_NODE
		}
		return nvml.TOPOLOGY_SYSTEM
	}
	for i := range s.Devices {
		d := s.Devices[i].(*server.Device)
		d.GetTopologyCommonAncestorFunc = func(other nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
			for j := range s.Devices {
				if s.Devices[j] == other {
					return level(i, j), nvml.SUCCESS
				}
			}
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
	}
	d, err := New(WithDriverRoot(root), WithDevRoot(root), WithDeviceStater(fakeStater{}), WithNVML(s))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(inv.Devices[1].Topology); got != "[10 0 40 40 50 50 50 50]" {
		t.Errorf("topology of GPU 1 = %s", got)
	}
	plain, err := New(WithDriverRoot(root), WithDevRoot(root), WithDeviceStater(fakeStater{}), WithNVML(migServer()))
	if err != nil {
		t.Fatal(err)
	}
	inv, err = plain.Discover(context.Background())
	if err != nil || inv.Source != SourceNVML || inv.Devices[0].Topology != nil {
		t.Errorf("without topology calls: %v, source %s, topology %v", err, inv.Source, inv.Devices[0].Topology)
	}
}

func warningText(inv *Inventory) string {
	var out []string
	for _, w := range inv.Warnings {
		out = append(out, string(w.Kind)+": "+w.Message)
	}
	return strings.Join(out, "\n")
}

// TestDiscoverNVMLOnlyForMIG: with WithNVMLOnlyForMIG, NVML is not started when procfs
// lists every GPU and none has MIG instances, and is when one has.
func TestDiscoverNVMLOnlyForMIG(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		extra   tree
		useNVML bool
	}{
		{"no MIG", tree{}, false},
		{"MIG instance on GPU 1", tree{"/proc/driver/nvidia/capabilities/gpu1/mig/gi3/access": "DeviceFileMinor: 30\nDeviceFileMode: 292\nDeviceFileModify: 1\n"}, true},
		{"MIG enabled, no instance", tree{"/proc/driver/nvidia/capabilities/gpu0/mig/config": "DeviceFileMinor: 1\n"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var inits atomic.Int32
			s := dgxa100.New()
			s.InitFunc = func() nvml.Return { inits.Add(1); return nvml.ERROR_DRIVER_NOT_LOADED }
			root := t.TempDir()
			hostTree().with(tree{lib + "/libcuda.so." + v535: "elf:libcuda.so.1"}).with(tc.extra).build(t, root)
			d, err := New(WithDriverRoot(root), WithDevRoot(root), WithDeviceStater(fakeStater{}), WithNVML(s), WithNVMLOnlyForMIG())
			if err != nil {
				t.Fatal(err)
			}
			inv, err := d.Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := inits.Load() > 0; got != tc.useNVML {
				t.Errorf("NVML started: %v, want %v (nvml error %q)", got, tc.useNVML, inv.NVMLError)
			}
			if inv.Source != SourceProcfs || len(inv.Devices) != 2 || inv.Devices[1].UUID != "GPU-bbbb" {
				t.Fatalf("source %s, devices %+v", inv.Source, inv.Devices)
			}
			// /proc tells a GPU with MIG instances, whose MIG devices only NVML lists
			if inv.Devices[0].MIGMode || inv.Devices[1].MIGMode != (tc.name == "MIG instance on GPU 1") {
				t.Errorf("MIG mode: %v, %v", inv.Devices[0].MIGMode, inv.Devices[1].MIGMode)
			}
		})
	}
}

// TestDiscoverUnversionedLibrariesOfTheBranch: a library built for the CUDA release of
// the driver's branch (535: 12.2) is the driver's without the scan of libcuda's stamp,
// which here has none; one built for another release still needs the stamp.
func TestDiscoverUnversionedLibrariesOfTheBranch(t *testing.T) {
	t.Parallel()
	stamp := func(rel string) string { return "Cuda compilation tools, release " + rel + ", V" + rel + ".557" }
	base := tree{
		lib + "/libcuda.so." + v535:      "elf:libcuda.so.1",
		lib + "/libcuda.so.1":            "link:libcuda.so." + v535,
		lib + "/libnvidia-nvvm.so.4.0.0": "elf:libnvidia-nvvm.so.4:" + stamp("12.2"),
		lib + "/libnvidia-nvvm.so.4":     "link:libnvidia-nvvm.so.4.0.0",
	}
	inv, err := discover(t, hostTree().with(base))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{lib + "/libcuda.so." + v535, lib + "/libnvidia-nvvm.so.4.0.0"}; !slices.Equal(libPaths(inv), want) {
		t.Fatalf("libraries = %v\nwant %v", libPaths(inv), want)
	}
	base[lib+"/libnvidia-other.so.1"] = "elf:libnvidia-other.so.1:" + stamp("12.1")
	inv, err = discover(t, hostTree().with(base))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{lib + "/libcuda.so." + v535}; !slices.Equal(libPaths(inv), want) {
		t.Fatalf("with a library of another release, libraries = %v\nwant %v (libcuda has no stamp to settle either)", libPaths(inv), want)
	}
	if w := warningText(inv); !strings.Contains(w, "built for CUDA 12.1, but the CUDA version of this driver's libcuda is unknown") {
		t.Errorf("warnings:\n%s", w)
	}
}

func TestBranchRelease(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]string{"470.256.02": "11.4", "535.261.03": "12.2", "580.65.06": "13.0", "999.1": "", "470": "", "": ""} {
		if got := branchRelease(v); got != want {
			t.Errorf("branchRelease(%q) = %q, want %q", v, got, want)
		}
	}
}

// TestDiscoverUnversionedLibraries: a driver library without the driver version in its
// name or contents (the 470 branch's libnvidia-nvvm.so.4.0.0) is recognised by a link of
// the driver's version or by the CUDA release it was built for, which libcuda's own build
// stamp gives; one with neither is left out with the reason.
func TestDiscoverUnversionedLibraries(t *testing.T) {
	t.Parallel()
	stamp := func(rel string) string { return "Cuda compilation tools, release " + rel + ", V" + rel + ".557" }
	inv, err := discover(t, hostTree().with(tree{
		lib + "/libcuda.so." + v535:              "elf:libcuda.so.1:" + stamp("12.2"),
		lib + "/libcuda.so.1":                    "link:libcuda.so." + v535,
		lib + "/libnvidia-nvvm.so.4.0.0":         "elf:libnvidia-nvvm.so.4:" + stamp("12.2"),
		lib + "/libnvidia-nvvm.so.4":             "link:libnvidia-nvvm.so.4.0.0",
		lib + "/libnvidia-linked.so.1":           "elf:libnvidia-linked.so.1",
		lib + "/libnvidia-linked.so." + v535:     "link:libnvidia-linked.so.1",
		lib + "/libnvidia-oldcuda.so.1":          "elf:libnvidia-oldcuda.so.1:" + stamp("11.4"),
		lib + "/libnvidia-stranger.so.1":         "elf:libnvidia-stranger.so.1",
		lib + "/libnvidia-container.so.1.17.8":   "elf:libnvidia-container.so.1",
		lib + "/libnvidia-egl-wayland.so.1.1.13": "elf:libnvidia-egl-wayland.so.1",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{lib + "/libcuda.so." + v535, lib + "/libnvidia-linked.so.1", lib + "/libnvidia-nvvm.so.4.0.0"}
	if got := libPaths(inv); !slices.Equal(got, want) {
		t.Fatalf("libraries = %v\nwant %v", got, want)
	}
	if f := findFile(inv, lib+"/libnvidia-nvvm.so.4.0.0"); f.SONAME != "libnvidia-nvvm.so.4" || !f.Capabilities.Has(CapCompute) || !slices.Equal(f.Links, []string{lib + "/libnvidia-nvvm.so.4"}) {
		t.Errorf("nvvm = %+v", f)
	}
	w := warningText(inv)
	for _, s := range []string{
		"unrecognised: skipped " + filepath.Join(inv.DriverRoot, lib, "libnvidia-oldcuda.so.1") + ": no driver version in its name, links or contents, and it was built for CUDA 11.4, but this driver's libcuda is CUDA 12.2",
		"unrecognised: skipped " + filepath.Join(inv.DriverRoot, lib, "libnvidia-stranger.so.1") + ": neither its name, its links nor its contents carry driver " + v535 + " or a CUDA release",
	} {
		if !strings.Contains(w, s) {
			t.Errorf("warnings lack %q:\n%s", s, w)
		}
	}
	if strings.Contains(w, "libnvidia-container") || strings.Contains(w, "egl-wayland") {
		t.Errorf("projects with versions of their own are reported:\n%s", w)
	}
}
