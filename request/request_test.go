package request

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

const kind = "nvidia.com/gpu"

var opts = Options{Kind: kind, EnvRequests: true}

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
		{strings.Repeat("0,", MaxListBytes), false, false, nil, "longer than the 65536"},
		{strings.TrimSuffix(strings.Repeat("GPU-x,", 1), ",") + "," + distinct(MaxDevices), false, false, nil, "more than 1024 GPUs"},
	} {
		all, none, devs, err := ParseDeviceList(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || len(err.Error()) > 600 {
				t.Errorf("ParseDeviceList(%.40q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || all != tc.all || none != tc.none || !slices.Equal(devs, tc.devs) {
			t.Errorf("ParseDeviceList(%q) = %v %v %v %v", tc.in, all, none, devs, err)
		}
	}
}

// distinct is a list of n distinct valid selectors.
func distinct(n int) string {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf("GPU-%d", i)
	}
	return strings.Join(items, ",")
}

// withinBudget runs f within the request parser's budget: 32 bytes of allocation per byte
// of input plus 256 KiB, 200 ms plus a microsecond per byte.
func withinBudget(t *testing.T, inputLen int, f func()) {
	t.Helper()
	testutil.WithinBudget(t, testutil.Budget{PerByte: 32, Fixed: 256 << 10, Base: 200 * time.Millisecond}, inputLen, f)
}

func FuzzParseDeviceList(f *testing.F) {
	for _, s := range []string{"all", "none", "0,1", "gpu0,GPU-abc", "0:1,mig1:2,MIG-x", "", ",", "all,0", distinct(MaxDevices + 1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var all, none bool
		var devs []string
		var err error
		withinBudget(t, len(s), func() { all, none, devs, err = ParseDeviceList(s) })
		if err != nil {
			if len(err.Error()) > 600 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if all && none || (all || none) && len(devs) > 0 || !all && !none && len(devs) == 0 || len(devs) > MaxDevices {
			t.Fatalf("%q: all=%v none=%v devs=%v", s, all, none, devs)
		}
		for _, d := range devs {
			if !spec.IsName(d) {
				t.Fatalf("%q: accepted selector %q", s, d)
			}
		}
	})
}

func TestParsePrecedence(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		podAnn  map[string]string
		ctrAnn  map[string]string
		env     []string
		mounts  []string
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
		{name: "cdi annotation of NVIDIA's device plugin", ctrAnn: map[string]string{"cdi.k8s.io/x": "k8s.device-plugin.nvidia.com/gpu=GPU-a,k8s.device-plugin.nvidia.com/gpu=GPU-a"},
			source: `annotation "cdi.k8s.io/x"`, devs: []string{"GPU-a"}, caps: gpu.CapsDefault},
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
		{name: "volume mounts", env: []string{"NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"}, envReq: true,
			mounts: []string{"/var/run/nvidia-container-devices/GPU-a", "/var/run/nvidia-container-devices/imex", "/data", "/var/run/nvidia-container-devices/GPU-a/"},
			source: "mounts under /var/run/nvidia-container-devices", devs: []string{"GPU-a"}, caps: gpu.CapsDefault},
		{name: "bad annotation", podAnn: map[string]string{"gpus.nvbind.io": "zero"}, wantErr: `annotation "gpus.nvbind.io": bad GPU "zero"`},
		{name: "bad capability", podAnn: map[string]string{"gpus.nvbind.io": "0", "capabilities.nvbind.io/pod": "cuda"},
			wantErr: `annotation "capabilities.nvbind.io/pod": unknown driver capability "cuda"`},
		{name: "bad env", env: []string{"NVIDIA_VISIBLE_DEVICES=0 1"}, envReq: true, wantErr: "env NVIDIA_VISIBLE_DEVICES: bad GPU"},
		{name: "bad requirement", env: []string{"NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda~12"}, envReq: true, wantErr: "NVIDIA_REQUIRE_CUDA"},
		{name: "bad cdi device", podAnn: map[string]string{"nvidia.cdi.k8s.io/pod": "nvidia.com/gpu"}, wantErr: `annotation "nvidia.cdi.k8s.io/pod": bad CDI device`},
		{name: "bad cdi annotation", ctrAnn: map[string]string{"cdi.k8s.io/x": "nvidia.com/gpu=0,garbage"}, wantErr: `annotation "cdi.k8s.io/x": bad CDI device "garbage"`},
		{name: "bad volume mount", env: []string{"NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"}, envReq: true,
			mounts: []string{"/var/run/nvidia-container-devices/$(id)"}, wantErr: "is not a GPU"},
		{name: "too many requirements", env: append([]string{"NVIDIA_VISIBLE_DEVICES=0"}, manyRequirements(MaxRequirements+1)...), envReq: true,
			wantErr: "more than 32 NVIDIA_REQUIRE_* variables"},
		{name: "requirements beyond the budget are harmless without a request", env: manyRequirements(MaxRequirements + 1), envReq: true, noReq: true},
		{name: "requirements disabled", env: append([]string{"NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DISABLE_REQUIRE=true", "NVIDIA_REQUIRE_CUDA=cuda~12"}, manyRequirements(MaxRequirements+1)...),
			envReq: true, source: "env NVIDIA_VISIBLE_DEVICES", devs: []string{"0"}, caps: gpu.CapsDefault},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := Input{Container: "c", PodAnnotations: tc.podAnn, Annotations: tc.ctrAnn, Env: tc.env, Mounts: tc.mounts}
			req, err := Parse(in, Options{Kind: kind, EnvRequests: tc.envReq})
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
				if w, _ := Which(in, Options{Kind: kind, EnvRequests: tc.envReq}); w != "" {
					t.Errorf("Which = %q for a container that asks for nothing", w)
				}
				return
			}
			if req == nil {
				t.Fatal("no request")
			}
			if req.Source != tc.source || req.All != tc.all || req.None != tc.none || !slices.Equal(req.Devices, tc.devs) || req.Caps != tc.caps {
				t.Fatalf("got %+v", req)
			}
			if w, _ := Which(in, Options{Kind: kind, EnvRequests: tc.envReq}); w != req.Kind {
				t.Errorf("Which = %q, the request's kind is %q", w, req.Kind)
			}
		})
	}
}

func manyRequirements(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("NVIDIA_REQUIRE_R%d=cuda>=1.%d", i, i)
	}
	return out
}

// worstInputs are the largest requests an image or a pod author can send, each a case
// the budgets must answer at once.
func worstInputs() map[string]Input {
	huge := strings.Repeat("0,", 150_000) // 150,000 entries
	many := make([]string, 0, 100_000)
	for i := range 100_000 {
		many = append(many, fmt.Sprintf("VAR%d=%d", i, i))
	}
	return map[string]Input{
		"env list of 150,000 entries":       {Container: "c", Env: []string{EnvVisibleDevices + "=" + huge}},
		"env list of 1024 distinct GPUs":    {Container: "c", Env: []string{EnvVisibleDevices + "=" + distinct(MaxDevices)}},
		"annotation of 150,000 entries":     {Container: "c", PodAnnotations: map[string]string{AnnotationGPUs: huge}},
		"CDI annotation of 150,000 entries": {Container: "c", Annotations: map[string]string{"cdi.k8s.io/x": strings.Repeat(kind+"=0,", 150_000)}},
		"100,000 env variables":             {Container: "c", Env: append(many, EnvVisibleDevices+"=0")},
		"150,000 volume mounts": {Container: "c", Env: []string{EnvVisibleDevices + "=" + NVIDIAVolumeMountsRoot},
			Mounts: slices.Repeat([]string{NVIDIAVolumeMountsRoot + "/GPU-a"}, 150_000)},
	}
}

// TestWorstRequests: every worst request is answered (refused or served) within a linear
// budget, with a short error.
func TestWorstRequests(t *testing.T) {
	for name, in := range worstInputs() {
		t.Run(name, func(t *testing.T) {
			size := 0
			for _, e := range in.Env {
				size += len(e)
			}
			for _, v := range in.PodAnnotations {
				size += len(v)
			}
			for _, v := range in.Annotations {
				size += len(v)
			}
			size += 64 * len(in.Mounts)
			var err error
			withinBudget(t, size, func() { _, err = Parse(in, opts) })
			if err != nil && len(err.Error()) > 600 {
				t.Fatalf("error of %d bytes: %.200s", len(err.Error()), err)
			}
		})
	}
}

// BenchmarkParseWorst times the worst requests (make bench reports them).
func BenchmarkParseWorst(b *testing.B) {
	for name, in := range worstInputs() {
		b.Run(strings.ReplaceAll(name, " ", "_"), func(b *testing.B) {
			for b.Loop() {
				_, _ = Parse(in, opts)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add("gpus.nvbind.io", "0,1", "NVIDIA_VISIBLE_DEVICES=all", "cdi.k8s.io/x", "nvidia.com/gpu=0", "/x")
	f.Add("gpus.nvbind.io/container.c", "none", "NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla,driver>=470", "nvidia.cdi.k8s.io/pod", "nvidia.com/gpu=all", "")
	f.Add("capabilities.nvbind.io", "all", "NVIDIA_DRIVER_CAPABILITIES=compute", "cdi.k8s.io/", "=", "")
	f.Add("x", "y", "NVIDIA_VISIBLE_DEVICES="+NVIDIAVolumeMountsRoot, "a", "b", NVIDIAVolumeMountsRoot+"/GPU-1")
	f.Fuzz(func(t *testing.T, podKey, podVal, env, ctrKey, ctrVal, mount string) {
		in := Input{Container: "c", PodAnnotations: map[string]string{podKey: podVal}, Env: []string{env},
			Annotations: map[string]string{ctrKey: ctrVal}, Mounts: []string{mount}}
		var req *Request
		var err error
		withinBudget(t, len(podKey)+len(podVal)+len(env)+len(ctrKey)+len(ctrVal)+len(mount), func() { req, err = Parse(in, opts) })
		if err != nil {
			if len(err.Error()) > 800 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if req == nil {
			return
		}
		if req.Source == "" || req.Caps == 0 || len(req.Devices) > MaxDevices {
			t.Fatalf("request without source or capabilities: %+v", req)
		}
		if w, _ := Which(in, opts); w == "" {
			t.Fatalf("Which says nothing asks, Parse made %+v", req)
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
		in := Input{Container: pod.Spec.Containers[0].Name, PodAnnotations: pod.Annotations}
		for _, e := range pod.Spec.Containers[0].Env {
			in.Env = append(in.Env, e.Name+"="+e.Value)
		}
		req, err := Parse(in, opts)
		if err != nil || req == nil {
			t.Fatalf("%s: request %v, %v", tc.file, req, err)
		}
		if !slices.Equal(req.Devices, tc.devs) || req.Caps.String() != tc.caps {
			t.Errorf("%s: devices %v caps %s", tc.file, req.Devices, req.Caps)
		}
	}
}
