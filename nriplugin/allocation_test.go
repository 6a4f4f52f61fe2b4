package nriplugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/internal/hookargs"
)

const (
	uuid0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
	uuid1 = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
)

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
		{"the allocation", nil, map[string]string{deviceplugin.AnnotationAllocated: uuid1}, nil, "/dev/nvidia1", ""},
		{"an image's all gets the allocation", nil, map[string]string{deviceplugin.AnnotationAllocated: uuid1},
			[]string{"NVIDIA_VISIBLE_DEVICES=all"}, "/dev/nvidia1", ""},
		{"an annotation inside the allocation", map[string]string{"gpus.nvbind.io": uuid1}, map[string]string{deviceplugin.AnnotationAllocated: uuid1}, nil, "/dev/nvidia1", ""},
		{"a forged annotation", map[string]string{"gpus.nvbind.io": "0"}, map[string]string{deviceplugin.AnnotationAllocated: uuid1}, nil, "",
			`annotation "gpus.nvbind.io" asks for GPU "0", but the kubelet allocated ` + uuid1},
		{"env for another GPU", nil, map[string]string{deviceplugin.AnnotationAllocated: uuid1}, []string{"NVIDIA_VISIBLE_DEVICES=" + uuid0}, "",
			"env NVIDIA_VISIBLE_DEVICES asks for GPU"},
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

// TestAllocationWinsWithoutRequire: without the flag the allocation still decides, and
// a GPU the runtime already injected from CDI (cdi-cri) is not injected twice.
func TestAllocationWinsWithoutRequire(t *testing.T) {
	t.Parallel()
	a := newTestAdjuster(t, Config{EnvRequests: true})
	ctr := &api.Container{Name: "cuda", Annotations: map[string]string{deviceplugin.AnnotationAllocated: uuid0}, Env: []string{"NVIDIA_VISIBLE_DEVICES=1"}}
	adj, dec, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, ctr)
	if err != nil || devicePaths(adj) != "/dev/nvidia0" || !strings.Contains(dec.Source, "kubelet allocation") {
		t.Fatalf("adjustment %v decision %+v err %v", devicePaths(adj), dec, err)
	}
	ctr.Linux = &api.LinuxContainer{Devices: adj.GetLinux().GetDevices()}
	adj, dec, err = a.Adjust(&api.PodSandbox{Namespace: "default"}, ctr)
	if err != nil || adj != nil || !strings.Contains(dec.Skipped, "already injected") {
		t.Errorf("with the devices in place: %v %+v %v", adj, dec, err)
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

// FuzzRequireAllocation: whatever the allocation annotation, the pod's annotation, the
// env and the mounts say, a container under --require-allocation never gets a GPU outside
// its allocation, and nothing panics.
func FuzzRequireAllocation(f *testing.F) {
	f.Add(uuid1, "0", "NVIDIA_VISIBLE_DEVICES=all", "/var/run/nvidia-container-devices/"+uuid0)
	f.Add(uuid0+","+uuid1, uuid1, "NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices", "/var/run/nvidia-container-devices/1")
	f.Add("", "all", "NVIDIA_VISIBLE_DEVICES=1", "/")
	f.Add(" , ,"+uuid0, "", "", "/var/run/nvidia-container-devices/imex/0")
	a := newTestAdjuster(f, Config{EnvRequests: true, RequireAllocation: true})
	p := a.state.Load()
	f.Fuzz(func(t *testing.T, alloc, podVal, env, mount string) {
		pod := &api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": podVal}}
		ctr := &api.Container{Name: "c", Env: []string{env}, Annotations: map[string]string{deviceplugin.AnnotationAllocated: alloc},
			Mounts: []*api.Mount{{Destination: mount, Source: "/dev/null"}}}
		adj, _, err := a.Adjust(pod, ctr)
		if err != nil {
			return
		}
		allowed := map[string]bool{}
		for _, id := range allocation(ctr) {
			if tg, ok := p.byName[id]; ok {
				for _, n := range tg.nodes {
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
	hooks := adj.GetHooks().GetCreateContainer()
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
