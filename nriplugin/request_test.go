package nriplugin

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

const kind = "nvidia.com/gpu"

func TestParseDeviceList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in        string
		all, none bool
		devs      []string
		wantErr   string
	}{
		{"all", true, false, nil, ""},
		{" none ", false, true, nil, ""},
		{"0,1", false, false, []string{"0", "1"}, ""},
		{"gpu1, 0:1 ,MIG-1234-ab,GPU-abcd-ef01,gpu1", false, false, []string{"gpu1", "0:1", "MIG-1234-ab", "GPU-abcd-ef01"}, ""},
		{"mig0:3", false, false, []string{"mig0:3"}, ""},
		{"", false, false, nil, "empty GPU list"},
		{",,", false, false, nil, "empty GPU list"},
		{"0,all", false, false, nil, `"all" cannot be combined`},
		{"gpu-1", false, false, nil, `bad GPU "gpu-1"`},
		{"0;rm -rf", false, false, nil, "bad GPU"},
	} {
		all, none, devs, err := ParseDeviceList(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "valid:") && !strings.Contains(err.Error(), "combined") {
				t.Errorf("ParseDeviceList(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || all != tc.all || none != tc.none || !slices.Equal(devs, tc.devs) {
			t.Errorf("ParseDeviceList(%q) = %v %v %v %v", tc.in, all, none, devs, err)
		}
	}
}

func FuzzParseDeviceList(f *testing.F) {
	for _, s := range []string{"all", "none", "0,1", "gpu0,GPU-abc", "0:1,mig1:2,MIG-x", "", ",", "all,0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		all, none, devs, err := ParseDeviceList(s)
		if err != nil {
			return
		}
		if all && none || (all || none) && len(devs) > 0 || !all && !none && len(devs) == 0 {
			t.Fatalf("%q: all=%v none=%v devs=%v", s, all, none, devs)
		}
		for _, d := range devs {
			if !spec.IsName(d) {
				t.Fatalf("%q: accepted selector %q", s, d)
			}
		}
	})
}

func ctrWith(name string, env []string, ann map[string]string) *api.Container {
	return &api.Container{Name: name, Env: env, Annotations: ann}
}

func TestParseRequestPrecedence(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		podAnn  map[string]string
		ctrAnn  map[string]string
		env     []string
		envReq  bool
		source  string
		devs    []string
		all     bool
		none    bool
		caps    gpu.Capabilities
		noReq   bool
		wantErr string
	}{
		{name: "nothing", envReq: true, noReq: true},
		{name: "container-scoped annotation wins", podAnn: map[string]string{"gpus.nvbind.io/container.c": "1", "gpus.nvbind.io/pod": "0", "gpus.nvbind.io": "all"},
			source: `annotation "gpus.nvbind.io/container.c"`, devs: []string{"1"}, caps: gpu.CapsDefault},
		{name: "pod annotation", podAnn: map[string]string{"gpus.nvbind.io/pod": "0", "gpus.nvbind.io": "all"},
			source: `annotation "gpus.nvbind.io/pod"`, devs: []string{"0"}, caps: gpu.CapsDefault},
		{name: "another container's annotation does not apply", podAnn: map[string]string{"gpus.nvbind.io/container.other": "1"}, noReq: true},
		{name: "annotation beats env", podAnn: map[string]string{"gpus.nvbind.io": "none"}, env: []string{"NVIDIA_VISIBLE_DEVICES=0"}, envReq: true,
			source: `annotation "gpus.nvbind.io"`, none: true, caps: gpu.CapsDefault},
		{name: "capabilities annotation", podAnn: map[string]string{"gpus.nvbind.io": "0", "capabilities.nvbind.io": "graphics,display"},
			source: `annotation "gpus.nvbind.io"`, devs: []string{"0"}, caps: gpu.CapsOf(gpu.CapGraphics, gpu.CapDisplay)},
		{name: "cdi annotation from a device plugin", ctrAnn: map[string]string{"cdi.k8s.io/nvidia-device-plugin_uuid": "nvidia.com/gpu=1,nvidia.com/gpu=GPU-bbbb"},
			env: []string{"NVIDIA_VISIBLE_DEVICES=0"}, envReq: true,
			source: `annotation "cdi.k8s.io/nvidia-device-plugin_uuid"`, devs: []string{"1", "GPU-bbbb"}, caps: gpu.CapsDefault},
		{name: "cdi annotation of another vendor is not ours", ctrAnn: map[string]string{"cdi.k8s.io/x": "vendor.com/fpga=0"}, noReq: true},
		{name: "nvidia's NRI annotation", podAnn: map[string]string{"nvidia.cdi.k8s.io/container.c": "nvidia.com/gpu=all"},
			source: `annotation "nvidia.cdi.k8s.io/container.c"`, all: true, caps: gpu.CapsDefault},
		{name: "env", env: []string{"NVIDIA_VISIBLE_DEVICES=0,1", "NVIDIA_DRIVER_CAPABILITIES=all"}, envReq: true,
			source: "env NVIDIA_VISIBLE_DEVICES", devs: []string{"0", "1"}, caps: gpu.CapsAll},
		{name: "env last entry wins", env: []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=1"}, envReq: true,
			source: "env NVIDIA_VISIBLE_DEVICES", devs: []string{"1"}, caps: gpu.CapsDefault},
		{name: "env void", env: []string{"NVIDIA_VISIBLE_DEVICES=void"}, envReq: true, noReq: true},
		{name: "env empty", env: []string{"NVIDIA_VISIBLE_DEVICES="}, envReq: true, noReq: true},
		{name: "env requests off", env: []string{"NVIDIA_VISIBLE_DEVICES=0"}, envReq: false, noReq: true},
		{name: "bad annotation", podAnn: map[string]string{"gpus.nvbind.io": "zero"}, wantErr: `annotation "gpus.nvbind.io": bad GPU "zero"`},
		{name: "bad capability", podAnn: map[string]string{"gpus.nvbind.io": "0", "capabilities.nvbind.io/pod": "cuda"},
			wantErr: `annotation "capabilities.nvbind.io/pod": unknown driver capability "cuda"`},
		{name: "bad env", env: []string{"NVIDIA_VISIBLE_DEVICES=0 1"}, envReq: true, wantErr: "env NVIDIA_VISIBLE_DEVICES: bad GPU"},
		{name: "bad requirement", env: []string{"NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda~12"}, envReq: true, wantErr: "NVIDIA_REQUIRE_CUDA"},
		{name: "bad cdi device", podAnn: map[string]string{"nvidia.cdi.k8s.io/pod": "nvidia.com/gpu"}, wantErr: `annotation "nvidia.cdi.k8s.io/pod": bad CDI device`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pod := &api.PodSandbox{Name: "p", Namespace: "ns", Annotations: tc.podAnn}
			req, err := ParseRequest(pod, ctrWith("c", tc.env, tc.ctrAnn), kind, tc.envReq)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.noReq {
				if req != nil {
					t.Fatalf("request %+v, want none", req)
				}
				return
			}
			if req == nil {
				t.Fatal("no request")
			}
			if req.Source != tc.source || req.All != tc.all || req.None != tc.none || !slices.Equal(req.Devices, tc.devs) || req.Caps != tc.caps {
				t.Fatalf("got %+v", req)
			}
		})
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add("gpus.nvbind.io", "0,1", "NVIDIA_VISIBLE_DEVICES=all", "cdi.k8s.io/x", "nvidia.com/gpu=0")
	f.Add("gpus.nvbind.io/container.c", "none", "NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla,driver>=470", "nvidia.cdi.k8s.io/pod", "nvidia.com/gpu=all")
	f.Add("capabilities.nvbind.io", "all", "NVIDIA_DRIVER_CAPABILITIES=compute", "cdi.k8s.io/", "=")
	f.Fuzz(func(t *testing.T, podKey, podVal, env, ctrKey, ctrVal string) {
		pod := &api.PodSandbox{Namespace: "ns", Annotations: map[string]string{podKey: podVal}}
		req, err := ParseRequest(pod, ctrWith("c", []string{env}, map[string]string{ctrKey: ctrVal}), kind, true)
		if err != nil || req == nil {
			return
		}
		if req.Source == "" || req.Caps == 0 {
			t.Fatalf("request without source or capabilities: %+v", req)
		}
		for _, d := range req.Devices {
			if !spec.IsName(d) {
				t.Fatalf("accepted selector %q", d)
			}
		}
	})
}

// TestExamplePodRequests reads the example pods of manifests/examples as the plugin sees
// them: their annotations and env must make the requests the examples describe.
func TestExamplePodRequests(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file string
		devs []string
		caps string
	}{
		{"../manifests/examples/pod-annotation.yaml", []string{"1"}, "compute,utility"},
		{"../manifests/examples/pod-env.yaml", []string{"0"}, "compute,utility,video"},
		{"../manifests/examples/pod-cdi.yaml", []string{"0"}, "compute,utility"},
	} {
		data, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict(data, &pod); err != nil {
			t.Fatal(err)
		}
		ctr := &api.Container{Name: pod.Spec.Containers[0].Name}
		for _, e := range pod.Spec.Containers[0].Env {
			ctr.Env = append(ctr.Env, e.Name+"="+e.Value)
		}
		req, err := ParseRequest(&api.PodSandbox{Namespace: "default", Annotations: pod.Annotations}, ctr, kind, true)
		if err != nil || req == nil {
			t.Fatalf("%s: request %v, %v", tc.file, req, err)
		}
		if !slices.Equal(req.Devices, tc.devs) || req.Caps.String() != tc.caps {
			t.Errorf("%s: devices %v caps %s", tc.file, req.Devices, req.Caps)
		}
	}
}
