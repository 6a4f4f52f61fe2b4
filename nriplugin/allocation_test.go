package nriplugin

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/dra"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
)

const (
	uuid0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
	uuid1 = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
	mig0  = "MIG-11111111-0000-0000-0000-000000000000"
	mig1  = "MIG-22222222-0000-0000-0000-000000000000"
)

// gpuKey is the allocation annotation of nvidia.com/gpu.
var gpuKey = deviceplugin.AllocationKey("nvidia.com/gpu")

func devicePaths(adj *api.ContainerAdjustment) string {
	var out []string
	for _, d := range adj.GetLinux().GetDevices() {
		if strings.HasPrefix(d.Path, "/dev/nvidia") && !strings.Contains(d.Path, "ctl") && !strings.Contains(d.Path, "uvm") {
			out = append(out, d.Path)
		}
	}
	return strings.Join(out, " ")
}

// TestRequireAllocation: with --require-allocation a container gets exactly what the
// kubelet allocated through nvbind's device plugin, and other requests are refused.
func TestRequireAllocation(t *testing.T) {
	t.Parallel()
	a := newTestAdjuster(t, Config{EnvRequests: true, RequireAllocation: true})
	for _, tc := range []struct {
		name    string
		podAnn  map[string]string
		ctrAnn  map[string]string
		env     []string
		devices string
		err     string
	}{
		{"the allocation", nil, map[string]string{gpuKey: uuid1}, nil, "/dev/nvidia1", ""},
		{"an image's all gets the allocation", nil, map[string]string{gpuKey: uuid1},
			[]string{"NVIDIA_VISIBLE_DEVICES=all"}, "/dev/nvidia1", ""},
		{"an annotation inside the allocation", map[string]string{"gpus.nvbind.io": uuid1}, map[string]string{gpuKey: uuid1}, nil, "/dev/nvidia1", ""},
		{"a forged annotation", map[string]string{"gpus.nvbind.io": "0"}, map[string]string{gpuKey: uuid1}, nil, "",
			`annotation "gpus.nvbind.io" asks for GPU "0", but the kubelet allocated ` + uuid1},
		{"env for another GPU", nil, map[string]string{gpuKey: uuid1}, []string{"NVIDIA_VISIBLE_DEVICES=" + uuid0}, "",
			"env NVIDIA_VISIBLE_DEVICES asks for GPU"},
		{"two resources", nil, map[string]string{deviceplugin.AllocationKey("nvidia.com/mig-1g.5gb"): mig0,
			deviceplugin.AllocationKey("nvidia.com/mig-2g.10gb"): mig1}, nil, "/dev/nvidia0 /dev/nvidia-caps/nvidia-cap12 /dev/nvidia-caps/nvidia-cap13 /dev/nvidia-caps/nvidia-cap21 /dev/nvidia-caps/nvidia-cap22", ""},
		{"an annotation inside the second resource's allocation", map[string]string{"gpus.nvbind.io": mig1}, map[string]string{
			deviceplugin.AllocationKey("nvidia.com/mig-1g.5gb"): mig0, deviceplugin.AllocationKey("nvidia.com/mig-2g.10gb"): mig1}, nil,
			"/dev/nvidia0 /dev/nvidia-caps/nvidia-cap12 /dev/nvidia-caps/nvidia-cap13 /dev/nvidia-caps/nvidia-cap21 /dev/nvidia-caps/nvidia-cap22", ""},
		{"an earlier version's annotation", nil, map[string]string{deviceplugin.AnnotationAllocated: uuid1}, nil, "/dev/nvidia1", ""},
		{"no allocation, image env all", nil, nil, []string{"NVIDIA_VISIBLE_DEVICES=all"}, "", ""},
		{"no allocation, annotation", map[string]string{"gpus.nvbind.io/container.cuda": "1"}, nil, nil, "",
			"the kubelet allocated none to container \"cuda\": ask for nvidia.com/gpu"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pod := &api.PodSandbox{Namespace: "default", Annotations: tc.podAnn}
			ctr := &api.Container{Name: "cuda", Annotations: tc.ctrAnn, Env: tc.env}
			adj, _, err := a.Adjust(pod, ctr)
			if tc.err != "" {
				if err == nil || !errors.Is(err, ErrNotAllocated) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := devicePaths(adj); got != tc.devices {
				t.Errorf("devices %q, want %q", got, tc.devices)
			}
		})
	}
}

// TestAllocationMergesResources: the kubelet merges the annotations of every resource of
// a container, so each resource has its own key and the allocation is all of them.
func TestAllocationMergesResources(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want string
	}{
		{"none", map[string]string{"allocated.gpus.nvbind.io.other/gpu": uuid0, "cdi.k8s.io/x": "nvidia.com/gpu=0"}, ""},
		{"one resource", map[string]string{gpuKey: uuid1 + ", " + uuid0}, uuid1 + " " + uuid0},
		{"empty", map[string]string{gpuKey: ""}, ""},
		{"earlier version", map[string]string{deviceplugin.AnnotationAllocated: uuid0}, uuid0},
		{"two profiles and a GPU", map[string]string{
			deviceplugin.AllocationKey("nvidia.com/mig-2g.10gb"): mig1,
			deviceplugin.AllocationKey("nvidia.com/mig-1g.5gb"):  mig0,
			gpuKey: uuid1,
		}, uuid1 + " " + mig0 + " " + mig1},
		{"both versions, repeats", map[string]string{deviceplugin.AnnotationAllocated: uuid0 + "," + uuid1, gpuKey: uuid1}, uuid0 + " " + uuid1},
		{"not an allocation key", map[string]string{"allocated.gpus.nvbind.io/a/b": uuid0, "allocated.gpus.nvbind.io/": uuid1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := strings.Join(allocation(&api.Container{Annotations: tc.ann}), " "); got != tc.want {
				t.Errorf("allocation %q, want %q", got, tc.want)
			}
		})
	}
}

// TestAllocationWinsWithoutRequire: without the flag the allocation still decides, and
// a GPU the runtime already injected from CDI (cdi-cri) is not injected twice.
func TestAllocationWinsWithoutRequire(t *testing.T) {
	t.Parallel()
	a := newTestAdjuster(t, Config{EnvRequests: true})
	ctr := &api.Container{Name: "cuda", Annotations: map[string]string{gpuKey: uuid0}, Env: []string{"NVIDIA_VISIBLE_DEVICES=1"}}
	adj, dec, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, ctr)
	if err != nil || devicePaths(adj) != "/dev/nvidia0" || !strings.Contains(dec.Source, "kubelet allocation") {
		t.Fatalf("adjustment %v decision %+v err %v", devicePaths(adj), dec, err)
	}
	// what a runtime leaves after applying nvbind's CDI spec: the nodes and the mounts
	ctr.Linux = &api.LinuxContainer{Devices: adj.GetLinux().GetDevices()}
	ctr.Mounts = adj.GetMounts()
	adj, dec, err = a.Adjust(&api.PodSandbox{Namespace: "default"}, ctr)
	if err != nil || !onlyMarked(adj, "injected") || !strings.Contains(dec.Skipped, "already injected") {
		t.Errorf("with the devices and mounts in place: %v %+v %v", adj, dec, err)
	}
}

// onlyMarked reports whether an adjustment only marks the container handled.
func onlyMarked(adj *api.ContainerAdjustment, what string) bool {
	return adj != nil && len(adj.GetLinux().GetDevices()) == 0 && len(adj.GetMounts()) == 0 && len(adj.GetEnv()) == 0 &&
		len(adj.GetHooks().GetCreateRuntime()) == 0 && len(adj.GetCDIDevices()) == 0 &&
		len(adj.GetAnnotations()) == 1 && adj.GetAnnotations()[request.AnnotationHandled] == what
}

// TestPrivilegedGetsDriverFiles: a privileged container has every host device, the GPUs'
// among them, but no driver file: it gets the files, the hook and the env of its request.
func TestPrivilegedGetsDriverFiles(t *testing.T) {
	t.Parallel()
	host := []*api.LinuxDevice{{Path: "/dev/nvidia0", Type: "c", Major: 195}, {Path: "/dev/nvidia1", Type: "c", Major: 195, Minor: 1},
		{Path: "/dev/nvidiactl", Type: "c", Major: 195, Minor: 255}, {Path: "/dev/nvidia-uvm", Type: "c", Major: 508},
		{Path: "/dev/nvidia-uvm-tools", Type: "c", Major: 508, Minor: 1}, {Path: "/dev/null", Type: "c", Major: 1, Minor: 3}}
	ctr := &api.Container{Name: "dcgm", Env: []string{"NVIDIA_VISIBLE_DEVICES=1"}, Linux: &api.LinuxContainer{Devices: host}}
	for _, cdi := range []bool{false, true} {
		a := newTestAdjuster(t, Config{EnvRequests: true, CDIMode: cdi})
		adj, dec, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, ctr)
		if err != nil || dec.Skipped != "" {
			t.Fatalf("cdi mode %v: %v %+v", cdi, err, dec)
		}
		if cdi {
			// the nodes are there: only the capabilities are named
			if names := adj.GetCDIDevices(); len(names) != 2 || names[0].Name != "nvidia.com/gpu=capability-compute" {
				t.Errorf("CDI mode: %v", names)
			}
			continue
		}
		if len(adj.GetMounts()) < 3 || len(adj.GetHooks().GetCreateRuntime()) != 1 || devicePaths(adj) != "/dev/nvidia1" {
			t.Errorf("a privileged container did not get the driver's files: %v", adj)
		}
	}
}

// TestNVIDIADevicePluginStrategies feeds the plugin what NVIDIA's k8s-device-plugin puts
// on a container under each deviceListStrategy that reaches an NRI plugin.
func TestNVIDIADevicePluginStrategies(t *testing.T) {
	t.Parallel()
	a := newTestAdjuster(t, Config{EnvRequests: true})
	for _, tc := range []struct {
		name string
		ctr  *api.Container
		want string
	}{
		{"envvar", &api.Container{Name: "c", Env: []string{"NVIDIA_VISIBLE_DEVICES=" + uuid1 + "," + uuid0}}, "/dev/nvidia0 /dev/nvidia1"},
		{"volume-mounts", &api.Container{Name: "c", Env: []string{"NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"},
			Mounts: []*api.Mount{{Source: "/dev/null", Destination: "/var/run/nvidia-container-devices/" + uuid1}}}, "/dev/nvidia1"},
		{"cdi-annotations", &api.Container{Name: "c", Annotations: map[string]string{
			"cdi.k8s.io/nvidia-device-plugin_5bd5a1e3-3c4f-4d9e-9f43-4a3c1e2b7f10": "k8s.device-plugin.nvidia.com/gpu=" + uuid0}}, "/dev/nvidia0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			adj, _, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, tc.ctr)
			if err != nil {
				t.Fatal(err)
			}
			if got := devicePaths(adj); got != tc.want {
				t.Errorf("devices %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzRequireAllocation: whatever the allocation annotations (alloc: the earlier
// versions' key, then after a ";" nvidia.com/gpu's), the pod's annotation, the env and
// the mounts say, a container under --require-allocation never gets a GPU outside
// its allocation, and nothing panics.
func FuzzRequireAllocation(f *testing.F) {
	f.Add(uuid1, "0", "NVIDIA_VISIBLE_DEVICES=all", "/var/run/nvidia-container-devices/"+uuid0)
	f.Add(uuid0+","+uuid1, uuid1, "NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices", "/var/run/nvidia-container-devices/1")
	f.Add("", "all", "NVIDIA_VISIBLE_DEVICES=1", "/")
	f.Add(" , ,"+uuid0, "", "", "/var/run/nvidia-container-devices/imex/0")
	f.Add(uuid0+";"+mig1, mig1, "", "")
	a := newTestAdjuster(f, Config{EnvRequests: true, RequireAllocation: true})
	p := a.state.Load()
	f.Fuzz(func(t *testing.T, alloc, podVal, env, mount string) {
		pod := &api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": podVal}}
		legacy, perResource, _ := strings.Cut(alloc, ";")
		ctr := &api.Container{Name: "c", Env: []string{env}, Annotations: map[string]string{deviceplugin.AnnotationAllocated: legacy, gpuKey: perResource},
			Mounts: []*api.Mount{{Destination: mount, Source: "/dev/null"}}}
		adj, _, err := a.Adjust(pod, ctr)
		if err != nil {
			return
		}
		allowed := map[string]bool{}
		for _, id := range allocation(ctr) {
			if tgs, err := p.Resolve(&request.Request{Source: "test", Devices: []string{id}}); err == nil {
				for _, n := range p.nodes[tgs[0]] {
					allowed[n.Path] = true
				}
			}
		}
		for _, d := range strings.Fields(devicePaths(adj)) {
			if !allowed[d] {
				t.Fatalf("allocation %q gave %s", alloc, d)
			}
		}
	})
}

// TestHookCommandLineDecodes: the hook command line an adjustment carries is hookargs'
// encoding, which the hook decodes back to the links and folders the inventory gives.
func TestHookCommandLineDecodes(t *testing.T) {
	t.Parallel()
	a := newTestAdjuster(t, Config{EnvRequests: true})
	adj, _, err := a.Adjust(&api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0"}}, &api.Container{Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	hooks := adj.GetHooks().GetCreateRuntime()
	if len(hooks) != 1 {
		t.Fatalf("hooks %v", hooks)
	}
	args, err := hookargs.Decode(hooks[0].Args[1:])
	if err != nil {
		t.Fatalf("the hook cannot read %q: %v", hooks[0].Args, err)
	}
	if len(args.Links) == 0 || len(args.Folders) == 0 || args.HostDriverVersion == "" {
		t.Errorf("decoded %+v from %q", args, hooks[0].Args)
	}
}

// TestLayoutInjectedFromSpec: once the layout of a request's set is complete the plugin
// mounts it in one mount; a container the runtime already gave the driver from nvbind's
// spec, by the layout of a set that holds the request's (the spec's all) or one mount per
// file, is not given it twice (a second hook would be refused by NRI's validator).
func TestLayoutInjectedFromSpec(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	a := newTestAdjuster(t, Config{EnvRequests: true, Layouts: &layout.Provider{Base: base}})
	inv := testInventory()
	for _, caps := range []gpu.Capabilities{gpu.CapsDefault, gpu.CapsAll} { // as a builder leaves them
		p := layout.For(inv, caps)
		if err := os.MkdirAll(p.HostPath(base), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.HostPath(base), ".complete"), nil, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	a.SetInventory(inv)
	ctr := &api.Container{Name: "cuda", Annotations: map[string]string{gpuKey: uuid0}}
	adj, _, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, ctr)
	if err != nil {
		t.Fatal(err)
	}
	var dests []string
	for _, m := range adj.GetMounts() {
		dests = append(dests, m.Destination)
	}
	if !slices.Contains(dests, layout.Dest+"/compute+utility") || slices.ContainsFunc(dests, func(d string) bool { return strings.Contains(d, "libcuda") }) {
		t.Fatalf("mounts %v: want the layout of compute+utility, not the files", dests)
	}
	// the layout detached (nvbind layout remove): the next container mounts the files,
	// and the layout is asked for again; built again, the next gets it
	def := layout.For(inv, gpu.CapsDefault)
	if err := os.Remove(filepath.Join(def.HostPath(base), ".complete")); err != nil {
		t.Fatal(err)
	}
	layoutOf := func() (bool, bool) {
		adj, _, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, &api.Container{Name: "cuda", Annotations: ctr.Annotations})
		if err != nil {
			t.Fatal(err)
		}
		var l, files bool
		for _, m := range adj.GetMounts() {
			l = l || m.Destination == layout.Dest+"/compute+utility"
			files = files || strings.Contains(m.Destination, "libcuda")
		}
		return l, files
	}
	if l, files := layoutOf(); l || !files {
		t.Errorf("with the layout gone: layout %v, files %v", l, files)
	}
	if err := os.WriteFile(filepath.Join(def.HostPath(base), ".complete"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if l, files := layoutOf(); !l || files {
		t.Errorf("with the layout back: layout %v, files %v", l, files)
	}
	specOf := func(o spec.Options) []*api.Mount {
		e, err := request.Edits(inv, nil, gpu.CapsAll, o)
		if err != nil {
			t.Fatal(err)
		}
		return toNRI(e).mounts
	}
	o := spec.Options{HookPath: "/usr/local/bin/nvbind-hook"}
	files := specOf(o)
	o.LayoutBase = base
	for name, mounts := range map[string][]*api.Mount{"the layout of all": specOf(o), "one mount per file": files} {
		injected := &api.Container{Name: "cuda", Annotations: ctr.Annotations, Mounts: mounts,
			Linux: &api.LinuxContainer{Devices: adj.GetLinux().GetDevices()}}
		adj, dec, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, injected)
		if err != nil || !onlyMarked(adj, "injected") || !strings.Contains(dec.Skipped, "already injected") {
			t.Errorf("%s in place: %v %+v %v", name, adj, dec, err)
		}
	}
	// a layout of a smaller set does not hold the request's
	o.Capabilities = gpu.CapsOf(gpu.CapUtility)
	e, err := request.Edits(inv, nil, o.Capabilities, o)
	if err != nil {
		t.Fatal(err)
	}
	small := &api.Container{Name: "cuda", Annotations: ctr.Annotations, Mounts: toNRI(e).mounts,
		Linux: &api.LinuxContainer{Devices: adj.GetLinux().GetDevices()}}
	if adj, dec, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, small); err != nil || dec.Skipped != "" || len(adj.GetMounts()) == 0 {
		t.Errorf("the layout of utility taken for compute,utility: %v %+v %v", adj, dec, err)
	}
}

// TestDRAClaims: a container the kubelet gave CDI devices of nvbind's DRA claims got them
// from the runtime: the plugin adds nothing, and with --require-allocation no annotation
// or env widens the claim; a container with neither claim nor allocation gets no GPU.
func TestDRAClaims(t *testing.T) {
	t.Parallel()
	const uid = "0b7e6a0c-5d3e-4c39-9a55-3f2c1f9e8d01"
	claimDev := func(name string) []*api.CDIDevice {
		return []*api.CDIDevice{{Name: dra.ClaimKind + "=" + uid + "-" + name}, {Name: "other.example.com/x=y"}}
	}
	for _, require := range []bool{false, true} {
		a := newTestAdjuster(t, Config{EnvRequests: true, RequireAllocation: require})
		for _, tc := range []struct {
			name   string
			podAnn map[string]string
			env    []string
			cdi    []*api.CDIDevice
			err    string // with --require-allocation
		}{
			{"the claim", nil, nil, claimDev("gpu-1"), ""},
			{"an image's all", nil, []string{"NVIDIA_VISIBLE_DEVICES=all"}, claimDev("gpu-1"), ""},
			{"the claimed GPU by UUID", map[string]string{"gpus.nvbind.io": uuid1}, nil, claimDev("gpu-1"), ""},
			{"a MIG device's claim", nil, []string{"NVIDIA_VISIBLE_DEVICES=" + mig1}, claimDev("gpu-0-mig-2-0"), ""},
			{"an annotation beyond the claim", map[string]string{"gpus.nvbind.io": uuid0}, nil, claimDev("gpu-1"),
				`asks for GPU "` + uuid0 + `", but the kubelet allocated ` + uuid1},
			{"env beyond the claim", nil, []string{"NVIDIA_VISIBLE_DEVICES=" + uuid0 + "," + uuid1}, claimDev("gpu-1"), "env NVIDIA_VISIBLE_DEVICES asks for GPU"},
			{"all from an annotation", map[string]string{"gpus.nvbind.io": "all"}, nil, claimDev("gpu-1"), "asks for every GPU"},
			{"another driver's CDI device only", map[string]string{"gpus.nvbind.io": uuid0}, nil, []*api.CDIDevice{{Name: "other.example.com/x=y"}},
				"the kubelet allocated none"},
		} {
			pod := &api.PodSandbox{Namespace: "default", Annotations: tc.podAnn}
			ctr := &api.Container{Name: "cuda", Env: tc.env, CDIDevices: tc.cdi}
			if !a.Asks(pod, ctr) {
				t.Errorf("%s: not seen as asking", tc.name)
			}
			adj, dec, err := a.Adjust(pod, ctr)
			claim := slices.ContainsFunc(tc.cdi, func(d *api.CDIDevice) bool { return strings.HasPrefix(d.Name, dra.ClaimKind) })
			switch {
			case require && tc.err != "":
				if err == nil || !errors.Is(err, ErrNotAllocated) || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("%s: err = %v, want %q", tc.name, err, tc.err)
				}
			case err != nil:
				t.Errorf("%s (require %v): %v", tc.name, require, err)
			case claim:
				// nothing added: the runtime injected the claim's spec
				if devicePaths(adj) != "" || len(adj.GetMounts()) != 0 || dec == nil || dec.Source != "DRA claim" {
					t.Errorf("%s: adjustment %v, decision %+v", tc.name, adj, dec)
				}
				if want := map[string]string{"gpu-1": uuid1, "gpu-0-mig-2-0": mig1}; len(dec.Devices) != 1 || !slices.Contains(dec.Devices, want[strings.TrimPrefix(tc.cdi[0].Name, dra.ClaimKind+"="+uid+"-")]) {
					t.Errorf("%s: claimed %v", tc.name, dec.Devices)
				}
			}
		}
	}
}
