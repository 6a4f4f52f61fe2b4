package spec

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/driverroot"
	"github.com/nvbind/nvbind/test/testutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

const hookPath = "/usr/bin/nvbind"

func discoverRoot(t testing.TB, name string) *gpu.Inventory {
	t.Helper()
	d, err := gpu.New(driverroot.Open(t, name).Options()...)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatalf("discover %s: %v", name, err)
	}
	return inv
}

// golden compares data with testdata/golden/name, with the fixture root replaced by
// /DRIVER_ROOT, and rewrites it under -update.
func golden(t *testing.T, name string, data []byte, root string) {
	t.Helper()
	if root != "" {
		data = bytes.ReplaceAll(data, []byte(root), []byte("/DRIVER_ROOT"))
	}
	testutil.Golden(t, filepath.Join("testdata", "golden", name), data, *update)
}

func TestGoldenFixtureSpecs(t *testing.T) {
	for _, tc := range []struct {
		root, golden string
		o            Options
	}{
		{"debian-535", "debian-535.yaml", Options{HookPath: hookPath}},
		{"flat-535", "flat-535.yaml", Options{HookPath: hookPath}},
		{"lib64-470", "lib64-470.yaml", Options{HookPath: hookPath}},
		{"debian-535", "debian-535-compute-hookless.yaml", Options{Capabilities: gpu.CapsOf(gpu.CapCompute, gpu.CapUtility),
			DisabledHooks: AllHooks, NameStrategies: []NameStrategy{NameTypeIndex}}},
		// the driver in one mount of its layout; the hook links what is found by path
		{"debian-535", "debian-535-layout.yaml", Options{HookPath: hookPath, LayoutBase: "/run/nvbind/driver"}},
		{"lib64-470", "lib64-470-layout.yaml", Options{HookPath: hookPath, LayoutBase: "/run/nvbind/driver"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			inv := discoverRoot(t, tc.root)
			s, err := Generate(inv, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if s.Version != "0.5.0" {
				t.Errorf("cdiVersion = %s, want 0.5.0 (the minimum, which Podman 4.3 reads)", s.Version)
			}
			if err := Validate(s); err != nil {
				t.Fatal(err)
			}
			data, err := Marshal(s, FormatYAML)
			if err != nil {
				t.Fatal(err)
			}
			if tc.o.LayoutBase != "" {
				// a layout's ID hashes the host paths of its files: the fixture's folder
				data = layoutID.ReplaceAll(data, []byte("$1-HASH"))
			}
			golden(t, tc.golden, data, inv.DriverRoot)
		})
	}
}

var layoutID = regexp.MustCompile(`(/run/nvbind/driver/[0-9.]+-[a-z+]+)-[0-9a-f]{12}`)

// mountedNames returns the base names of the spec's mounts and the paths of its nodes.
func mounted(s *cdispecs.Spec) (names map[string]bool, paths map[string]bool) {
	names, paths = map[string]bool{}, map[string]bool{}
	for _, m := range s.ContainerEdits.Mounts {
		names[filepath.Base(m.ContainerPath)] = true
		paths[m.ContainerPath] = true
	}
	for _, d := range s.Devices {
		for _, n := range d.ContainerEdits.DeviceNodes {
			paths[n.Path] = true
		}
	}
	for _, n := range s.ContainerEdits.DeviceNodes {
		paths[n.Path] = true
	}
	return names, paths
}

// TestParityWithNVIDIAToolkit checks that on both 535 layouts the spec mounts at least
// what NVIDIA's toolkit (v1.20.2, cdi generate --mode=management) mounts on the flat root,
// plus libnvidia-api.so.1, which it drops.
func TestParityWithNVIDIAToolkit(t *testing.T) {
	versioned := []string{"libcuda", "libcudadebugger", "libnvidia-ml", "libnvidia-ptxjitcompiler", "libnvidia-nvvm",
		"libnvidia-opticalflow", "libnvidia-encode", "libnvidia-fbc", "libnvidia-cfg", "libnvidia-allocator", "libnvidia-ngx",
		"libnvidia-pkcs11-openssl3", "libnvidia-eglcore", "libnvidia-glcore", "libnvidia-glsi", "libnvidia-glvkspirv",
		"libnvidia-rtcore", "libnvidia-tls", "libnvidia-vulkan-producer", "libnvcuvid", "libnvoptix", "libEGL_nvidia",
		"libGLX_nvidia", "libGLESv1_CM_nvidia", "libGLESv2_nvidia"}
	if len(versioned) != 25 {
		t.Fatalf("list has %d libraries", len(versioned))
	}
	for _, root := range []string{"debian-535", "flat-535"} {
		t.Run(root, func(t *testing.T) {
			inv := discoverRoot(t, root)
			s, err := Generate(inv, Options{HookPath: hookPath})
			if err != nil {
				t.Fatal(err)
			}
			names, paths := mounted(s)
			for _, l := range versioned {
				if !names[l+".so.535.261.03"] {
					t.Errorf("missing %s.so.535.261.03", l)
				}
			}
			for _, want := range []string{"libnvidia-api.so.1", "gsp_ga10x.bin", "gsp_tu10x.bin"} {
				if !names[want] {
					t.Errorf("missing %s", want)
				}
			}
			for _, want := range []string{"/usr/bin/nvidia-smi", "/usr/bin/nvidia-persistenced", "/usr/bin/nvidia-cuda-mps-control",
				"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidia1"} {
				if !paths[want] {
					t.Errorf("missing %s", want)
				}
			}
			if !names["nvidia-cuda-mps-server"] {
				t.Error("missing nvidia-cuda-mps-server")
			}
		})
	}
}

// TestInjectWithCDILibrary feeds a written spec to the CDI library's cache and injects a
// device into an OCI spec, as Podman, containerd and CRI-O do.
func TestInjectWithCDILibrary(t *testing.T) {
	inv := discoverRoot(t, "debian-535")
	s, err := Generate(inv, Options{HookPath: hookPath})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	name, err := FileName(s, FormatJSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(s, filepath.Join(dir, name), FormatJSON); err != nil {
		t.Fatal(err)
	}
	cache, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(dir))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("cache errors: %v", errs)
	}
	for _, dev := range []string{"nvidia.com/gpu=0", "nvidia.com/gpu=gpu1", "nvidia.com/gpu=GPU-8b9d3c4e-1a2b-4c5d-8e9f-a0b1c2d3e4f5", "nvidia.com/gpu=all"} {
		if cache.GetDevice(dev) == nil {
			t.Errorf("cache has no %s; it has %v", dev, cache.ListDevices())
		}
	}
	o := &oci.Spec{Process: &oci.Process{Env: []string{"NVIDIA_VISIBLE_DEVICES=all"}}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(o, "nvidia.com/gpu=1"); err != nil {
		t.Fatalf("inject: %v (unresolved %v)", err, unresolved)
	}
	var devs []string
	for _, d := range o.Linux.Devices {
		devs = append(devs, d.Path)
	}
	if !slices.Contains(devs, "/dev/nvidia1") || slices.Contains(devs, "/dev/nvidia0") || !slices.Contains(devs, "/dev/nvidiactl") {
		t.Errorf("devices = %v", devs)
	}
	var cudaMounted bool
	for _, m := range o.Mounts {
		if strings.HasSuffix(m.Destination, "/libcuda.so.535.261.03") {
			cudaMounted = slices.Contains(m.Options, "ro") && slices.Contains(m.Options, "nosuid") && slices.Contains(m.Options, "nodev")
		}
	}
	if !cudaMounted {
		t.Error("libcuda is not mounted read-only, nosuid, nodev")
	}
	if o.Hooks == nil || len(o.Hooks.CreateRuntime) != 1 || o.Hooks.CreateRuntime[0].Path != hookPath {
		t.Fatalf("hooks = %+v", o.Hooks)
	}
	h := o.Hooks.CreateRuntime[0]
	if !slices.Contains(h.Args, "nvidia/current/libcuda.so.535.261.03::/usr/lib/x86_64-linux-gnu/libcuda.so.1") ||
		!slices.Contains(h.Args, "/usr/lib/x86_64-linux-gnu/nvidia/current") || len(h.Env) == 0 {
		t.Errorf("hook = %+v", h)
	}
	if !slices.Contains(o.Process.Env, "NVIDIA_VISIBLE_DEVICES=void") {
		t.Errorf("env = %v", o.Process.Env)
	}
}

func TestWriteFileInvalidLeavesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dst := filepath.Join(dir, "nvidia.yaml")
	if err := os.WriteFile(dst, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := &cdispecs.Spec{Version: "0.5.0", Kind: "nvidia.com/gpu", Devices: []cdispecs.Device{{Name: "bad name!",
		ContainerEdits: cdispecs.ContainerEdits{Env: []string{"A=1"}}}}}
	if err := WriteFile(bad, dst, FormatYAML); err == nil {
		t.Fatal("invalid spec written")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("folder holds %d entries, want only the old file", len(ents))
	}
	if data, _ := os.ReadFile(dst); string(data) != "old\n" {
		t.Fatalf("old file changed: %q", data)
	}
}

// TestCompat32 checks that the 32-bit libraries of the debian-535 root (Debian's i386
// packages) go with compat32 only.
func TestCompat32(t *testing.T) {
	inv := discoverRoot(t, "debian-535")
	const lib32 = "/usr/lib/i386-linux-gnu/nvidia/current/libcuda.so.535.261.03"
	for _, tc := range []struct {
		caps gpu.Capabilities
		want bool
	}{
		{gpu.CapsOf(gpu.CapCompute, gpu.CapUtility), false},
		{gpu.CapsOf(gpu.CapCompute, gpu.CapUtility, gpu.CapCompat32), true},
		{gpu.CapsAll, true},
	} {
		e, err := CommonEdits(inv, tc.caps, Options{HookPath: hookPath})
		if err != nil {
			t.Fatal(err)
		}
		got := slices.ContainsFunc(e.Mounts, func(m Mount) bool { return m.Path == lib32 })
		if got != tc.want {
			t.Errorf("capabilities %s: 32-bit libcuda mounted %v, want %v", tc.caps, got, tc.want)
		}
		if tc.want && !slices.Contains(e.Hooks[0].Args, "/usr/lib/i386-linux-gnu/nvidia/current") {
			t.Errorf("capabilities %s: the 32-bit folder is not in the ld cache", tc.caps)
		}
	}
}

func TestGenerateIMEX(t *testing.T) {
	inv := discoverRoot(t, "debian-535")
	s, err := GenerateIMEX(inv, Options{})
	if err != nil || s == nil {
		t.Fatalf("spec %v, err %v", s, err)
	}
	if err := Validate(s); err != nil {
		t.Fatal(err)
	}
	if s.Kind != "nvidia.com/imex-channel" || s.Version != "0.5.0" || len(s.Devices) != 2 || s.Devices[0].Name != "0" ||
		s.Devices[0].ContainerEdits.DeviceNodes[0].Path != "/dev/nvidia-caps-imex-channels/channel0" {
		t.Fatalf("spec = %+v", s)
	}
	if s, err := GenerateIMEX(&gpu.Inventory{}, Options{}); s != nil || err != nil {
		t.Fatal("a spec for a host without IMEX channels")
	}
}

// TestNVIDIADevicePluginCDINames: NVIDIA's k8s-device-plugin, in its cdi-annotations and
// cdi-cri strategies, names devices k8s.device-plugin.nvidia.com/gpu=<uuid> (or =<index>
// with deviceIDStrategy index). A spec nvbind writes with that vendor resolves exactly
// those names, through the CDI library the runtimes embed, to the allocated GPU only.
func TestNVIDIADevicePluginCDINames(t *testing.T) {
	inv := discoverRoot(t, "debian-535")
	s, err := Generate(inv, Options{HookPath: hookPath, Vendor: "k8s.device-plugin.nvidia.com"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	name, err := FileName(s, FormatYAML)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(s, filepath.Join(dir, name), FormatYAML); err != nil {
		t.Fatal(err)
	}
	cache, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(dir))
	if err != nil {
		t.Fatal(err)
	}
	for dev, want := range map[string]string{
		"k8s.device-plugin.nvidia.com/gpu=GPU-8b9d3c4e-1a2b-4c5d-8e9f-a0b1c2d3e4f5": "/dev/nvidia1",
		"k8s.device-plugin.nvidia.com/gpu=0":                                        "/dev/nvidia0",
	} {
		o := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
		if unresolved, err := cache.InjectDevices(o, dev); err != nil {
			t.Fatalf("inject %s: %v (unresolved %v)", dev, err, unresolved)
		}
		var gpus []string
		for _, d := range o.Linux.Devices {
			if d.Path == "/dev/nvidia0" || d.Path == "/dev/nvidia1" {
				gpus = append(gpus, d.Path)
			}
		}
		if len(gpus) != 1 || gpus[0] != want {
			t.Errorf("%s: GPU nodes %v, want %s", dev, gpus, want)
		}
	}
}
