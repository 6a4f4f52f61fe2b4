package nriplugin

import (
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
)

// capsInventory is testInventory with a file of every capability: a 32-bit libcuda, a
// video library, the X driver (display), NGX and a library no rule classifies.
func capsInventory() *gpu.Inventory {
	inv := testInventory()
	lib := func(dir, name, soname string, bits int, caps gpu.Capabilities) gpu.File {
		return gpu.File{Kind: gpu.KindLibrary, Path: dir + "/" + name, HostPath: dir + "/" + name, SONAME: soname, Bits: bits, Capabilities: caps}
	}
	inv.Files = append(inv.Files,
		lib("/usr/lib/i386-linux-gnu", "libcuda.so.535.261.03", "libcuda.so.1", 32, gpu.CapsOf(gpu.CapCompute, gpu.CapCompat32)),
		lib("/usr/lib/x86_64-linux-gnu", "libnvcuvid.so.535.261.03", "libnvcuvid.so.1", 64, gpu.CapsOf(gpu.CapVideo)),
		lib("/usr/lib/xorg/modules/drivers", "nvidia_drv.so", "", 64, gpu.CapsOf(gpu.CapDisplay)),
		lib("/usr/lib/x86_64-linux-gnu", "libnvidia-ngx.so.535.261.03", "libnvidia-ngx.so.1", 64, gpu.CapsOf(gpu.CapNGX)),
		lib("/usr/lib/x86_64-linux-gnu", "libnvidia-future.so.535.261.03", "libnvidia-future.so.1", 64, gpu.CapsOf(gpu.CapOther)),
	)
	return inv
}

// given is what a container ends up with: mounted files, device nodes, the links and
// ld-cache folders its hooks make, and the capabilities env.
type given struct {
	mounts, nodes, links, folders []string
	caps                          string
}

func addHook(g *given, t *testing.T, args []string) {
	t.Helper()
	a, err := hookargs.Decode(args[1:])
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range a.Links {
		g.links = append(g.links, l.String())
	}
	g.folders = append(g.folders, a.Folders...)
}

func (g *given) sortUnique() {
	for _, s := range []*[]string{&g.mounts, &g.nodes, &g.links, &g.folders} {
		sort.Strings(*s)
		*s = slices.Compact(*s)
	}
}

// TestCapabilitiesInBothModes checks that a container gets exactly the driver files,
// nodes, links and ld-cache folders of the capabilities it asks for, the same whether the
// plugin edits the spec itself or names CDI devices that the CDI library resolves in the
// spec the plugin writes for CDI mode.
func TestCapabilitiesInBothModes(t *testing.T) {
	inv := capsInventory()
	const hook = "/usr/local/bin/nvbind-hook"
	dir := t.TempDir()
	if _, err := spec.WriteDir(inv, spec.Options{HookPath: hook, CapabilityDevices: true}, dir, spec.FormatYAML); err != nil {
		t.Fatal(err)
	}
	cache, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(dir))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI cache: %v", errs)
	}
	direct, err := NewAdjuster(Config{Spec: spec.Options{HookPath: hook}})
	if err != nil {
		t.Fatal(err)
	}
	viaCDI, err := NewAdjuster(Config{Spec: spec.Options{HookPath: hook}, CDIMode: true})
	if err != nil {
		t.Fatal(err)
	}
	direct.SetInventory(inv)
	viaCDI.SetInventory(inv)

	for _, tc := range []struct{ gpus, caps string }{
		{"0", "compute"}, {"1", "utility"}, {"0,1", "compute,utility"}, {"1", "graphics"}, {"0", "video,display"},
		{"1", "compute,compat32"}, {"0", "ngx"}, {"0:1", "compute,utility"}, {"none", "utility"}, {"1", "all"},
	} {
		t.Run(tc.gpus+"/"+tc.caps, func(t *testing.T) {
			pod := &api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": tc.gpus, "capabilities.nvbind.io": tc.caps}}
			caps, err := gpu.ParseCapabilities(tc.caps)
			if err != nil {
				t.Fatal(err)
			}

			// what the capabilities mean, from the inventory alone
			var want given
			for _, f := range inv.FilesFor(caps) {
				want.mounts = append(want.mounts, f.Path)
			}
			e, err := spec.CommonEdits(inv, caps, spec.Options{HookPath: hook})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range e.Nodes {
				want.nodes = append(want.nodes, n.Path)
			}
			for _, h := range e.Hooks {
				addHook(&want, t, h.Args)
			}
			want.caps = caps.String()

			// direct edits
			adj, _, err := direct.Adjust(pod, ctrWith("c", nil, nil))
			if err != nil {
				t.Fatal(err)
			}
			var got given
			for _, m := range adj.GetMounts() {
				got.mounts = append(got.mounts, m.Destination)
			}
			for _, d := range adj.GetLinux().GetDevices() {
				got.nodes = append(got.nodes, d.Path)
			}
			for _, h := range adj.GetHooks().GetCreateRuntime() {
				addHook(&got, t, h.Args)
			}
			for _, kv := range adj.GetEnv() {
				if kv.Key == request.EnvDriverCapabilities {
					got.caps = kv.Value
				}
			}

			// CDI mode, resolved by the CDI library as a runtime would
			cadj, _, err := viaCDI.Adjust(pod, ctrWith("c", nil, nil))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, d := range cadj.GetCDIDevices() {
				names = append(names, d.Name)
			}
			o := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
			if unresolved, err := cache.InjectDevices(o, names...); err != nil {
				t.Fatalf("inject %v: %v (unresolved %v)", names, err, unresolved)
			}
			var viaSpec given
			for _, m := range o.Mounts {
				viaSpec.mounts = append(viaSpec.mounts, m.Destination)
			}
			for _, d := range o.Linux.Devices {
				viaSpec.nodes = append(viaSpec.nodes, d.Path)
			}
			for _, d := range cadj.GetLinux().GetDevices() {
				viaSpec.nodes = append(viaSpec.nodes, d.Path)
			}
			if o.Hooks != nil {
				for _, h := range o.Hooks.CreateRuntime {
					addHook(&viaSpec, t, h.Args)
				}
			}
			for _, kv := range cadj.GetEnv() {
				if kv.Key == request.EnvDriverCapabilities {
					viaSpec.caps = kv.Value
				}
			}
			if !slices.Contains(o.Process.Env, request.EnvVisibleDevices+"=void") {
				t.Errorf("CDI mode: env %v lacks %s=void", o.Process.Env, request.EnvVisibleDevices)
			}

			// the GPUs' own nodes, for both
			targets := map[string]bool{}
			if tc.gpus != "none" {
				p := direct.state.Load()
				for _, sel := range strings.Split(tc.gpus, ",") {
					tgs, err := p.Resolve(&request.Request{Source: "test", Devices: []string{sel}})
					if err != nil {
						t.Fatal(err)
					}
					for _, n := range p.nodes[tgs[0]] {
						targets[n.Path] = true
					}
					if caps.Has(gpu.CapGraphics) || caps.Has(gpu.CapDisplay) {
						for _, n := range tgs[0].Device.DRM {
							targets[n.Path] = true
						}
					}
				}
			}
			want.nodes = append(want.nodes, slices.Collect(maps.Keys(targets))...)

			for _, g := range []*given{&want, &got, &viaSpec} {
				g.sortUnique()
			}
			for mode, g := range map[string]given{"direct": got, "CDI mode": viaSpec} {
				if !slices.Equal(g.mounts, want.mounts) {
					t.Errorf("%s: mounts\n got %v\nwant %v", mode, g.mounts, want.mounts)
				}
				if !slices.Equal(g.nodes, want.nodes) {
					t.Errorf("%s: nodes\n got %v\nwant %v", mode, g.nodes, want.nodes)
				}
				if !slices.Equal(g.links, want.links) {
					t.Errorf("%s: links\n got %v\nwant %v", mode, g.links, want.links)
				}
				if !slices.Equal(g.folders, want.folders) {
					t.Errorf("%s: ld cache folders\n got %v\nwant %v", mode, g.folders, want.folders)
				}
				if g.caps != want.caps {
					t.Errorf("%s: %s=%q, want %q", mode, request.EnvDriverCapabilities, g.caps, want.caps)
				}
			}
		})
	}
}
