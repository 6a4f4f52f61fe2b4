package nriplugin

import (
	"encoding/json"
	"errors"
	"flag"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

func newTestAdjuster(t testing.TB, cfg Config) *Adjuster {
	t.Helper()
	if cfg.Spec.HookPath == "" && len(cfg.Spec.DisabledHooks) == 0 {
		cfg.Spec.HookPath = "/usr/local/bin/nvbind-hook"
	}
	a, err := NewAdjuster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.SetInventory(testInventory())
	return a
}

func goldenJSON(t *testing.T, name string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, '\n')
	testutil.Golden(t, filepath.Join("testdata", "golden", name), data, *update)
}

func TestAdjustGolden(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		golden string
		cfg    Config
		ns     string
		podAnn map[string]string
		env    []string
	}{
		{"annotation-gpu1.json", Config{}, "default", map[string]string{"gpus.nvbind.io": "1"}, nil},
		{"env-gpu0-graphics.json", Config{EnvRequests: true}, "default", nil,
			[]string{"NVIDIA_VISIBLE_DEVICES=GPU-aaaaaaaa-0000-0000-0000-000000000000", "NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics"}},
		{"mig-0-1.json", Config{}, "default", map[string]string{"gpus.nvbind.io/container.c": "mig0:1"}, nil},
		{"none-driver-only.json", Config{}, "default", map[string]string{"gpus.nvbind.io": "none"}, nil},
		{"all-allowed-namespace.json", Config{AllNamespaces: []string{"admin"}}, "admin", map[string]string{"gpus.nvbind.io": "all"}, nil},
		{"hookless.json", Config{Spec: spec.Options{DisabledHooks: spec.AllHooks}}, "default", map[string]string{"gpus.nvbind.io": "0"}, nil},
		{"cdi-mode.json", Config{CDIMode: true}, "default", map[string]string{"gpus.nvbind.io": "gpu1,0:0"}, nil},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			t.Parallel()
			a := newTestAdjuster(t, tc.cfg)
			adj, dec, err := a.Adjust(&api.PodSandbox{Namespace: tc.ns, Annotations: tc.podAnn}, ctrWith("c", tc.env, nil))
			if err != nil {
				t.Fatal(err)
			}
			if adj == nil || dec == nil || dec.Skipped != "" {
				t.Fatalf("no adjustment: %+v", dec)
			}
			goldenJSON(t, tc.golden, map[string]any{"decision": map[string]any{"source": dec.Source, "devices": dec.Devices,
				"capabilities": dec.Caps.String()}, "adjustment": adj})
		})
	}
}

func TestAdjustRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		cfg     Config
		ns      string
		podAnn  map[string]string
		env     []string
		wantErr []string
		skipped string
	}{
		{name: "unknown GPU", podAnn: map[string]string{"gpus.nvbind.io": "0,7"},
			wantErr: []string{`annotation "gpus.nvbind.io"`, `GPU "7" is not on this node`, "valid: all, none, 0, 0:0, 0:1, 1", "GPU-aaaaaaaa"}},
		{name: "unknown UUID from env", cfg: Config{EnvRequests: true}, env: []string{"NVIDIA_VISIBLE_DEVICES=GPU-ffff"},
			wantErr: []string{"env NVIDIA_VISIBLE_DEVICES", `GPU "GPU-ffff" is not on this node`}},
		{name: "all by annotation needs an allowed namespace", podAnn: map[string]string{"gpus.nvbind.io": "all"},
			wantErr: []string{"request denied by policy", "asks for all GPUs", `namespace "default"`, "--all-gpus-namespaces: none"}},
		{name: "namespace not allowed", cfg: Config{AllowedNamespaces: []string{"ml"}}, podAnn: map[string]string{"gpus.nvbind.io": "0"},
			wantErr: []string{`namespace "default" may not request GPUs (allowed: ml)`}},
		{name: "unmet requirement", cfg: Config{EnvRequests: true}, env: []string{"NVIDIA_VISIBLE_DEVICES=1", "NVIDIA_REQUIRE_CUDA=cuda>=12.4"},
			wantErr: []string{`unmet requirement NVIDIA_REQUIRE_CUDA="cuda>=12.4"`, "CUDA version is 12.2"}},
		{name: "image env all is ignored", cfg: Config{EnvRequests: true}, env: []string{"NVIDIA_VISIBLE_DEVICES=all"},
			skipped: "is not allowed every GPU"},
		{name: "env in a namespace not allowed is ignored", cfg: Config{EnvRequests: true, AllowedNamespaces: []string{"ml"}}, env: []string{"NVIDIA_VISIBLE_DEVICES=0"},
			skipped: "may not request GPUs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newTestAdjuster(t, tc.cfg)
			ns := tc.ns
			if ns == "" {
				ns = "default"
			}
			adj, dec, err := a.Adjust(&api.PodSandbox{Namespace: ns, Annotations: tc.podAnn}, ctrWith("c", tc.env, nil))
			if tc.skipped != "" {
				if err != nil || !onlyMarked(adj, "ignored") || dec == nil || !strings.Contains(dec.Skipped, tc.skipped) {
					t.Fatalf("adj %v, dec %+v, err %v", adj, dec, err)
				}
				return
			}
			if err == nil || adj != nil {
				t.Fatalf("accepted: %v", adj)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestAdjustWithoutInventory(t *testing.T) {
	t.Parallel()
	a, err := NewAdjuster(Config{Spec: spec.Options{HookPath: "/x"}})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = a.Adjust(&api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0"}}, ctrWith("c", nil, nil))
	if !errors.Is(err, ErrNoInventory) {
		t.Fatalf("err = %v", err)
	}
	if adj, dec, err := a.Adjust(&api.PodSandbox{Namespace: "default"}, ctrWith("c", nil, nil)); adj != nil || dec != nil || err != nil {
		t.Fatal("a container without a request was touched")
	}
}

// TestAdjustRefusesCDIOnlyHosts: on a WSL2 host or a Jetson without a discrete GPU the
// plugin refuses GPU requests with the way out, rather than give a container nodes
// without the driver's files.
func TestAdjustRefusesCDIOnlyHosts(t *testing.T) {
	t.Parallel()
	for name, inv := range map[string]*gpu.Inventory{
		"wsl2":   {WSL: &gpu.WSL{}, Devices: []gpu.Device{{Index: 0, Node: node("/dev/dxg", 10, 125)}}},
		"jetson": {IGPU: &gpu.IGPU{}},
	} {
		a, err := NewAdjuster(Config{Spec: spec.Options{HookPath: "/usr/local/bin/nvbind-hook"}})
		if err != nil {
			t.Fatal(err)
		}
		a.SetInventory(inv)
		_, _, err = a.Adjust(&api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0"}}, ctrWith("c", nil, nil))
		if !errors.Is(err, request.ErrUnsupportedHost) || !strings.Contains(err.Error(), "nvbind cdi generate") || failureReason(err) != "unsupported_host" {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func ctrWith(name string, env []string, ann map[string]string) *api.Container {
	return &api.Container{Name: name, Env: env, Annotations: ann}
}

// TestAdjustmentIsTheEditModel: the direct adjustment is request.Edits (the edits the
// runtime wrapper applies to config.json) in NRI's types, whatever the request.
func TestAdjustmentIsTheEditModel(t *testing.T) {
	t.Parallel()
	a := newTestAdjuster(t, Config{EnvRequests: true, AllNamespaces: []string{"default"}})
	for _, ann := range []map[string]string{
		{"gpus.nvbind.io": "1"}, {"gpus.nvbind.io": "all", "capabilities.nvbind.io": "all"}, {"gpus.nvbind.io": "mig0:1"},
		{"gpus.nvbind.io": "none"}, {"gpus.nvbind.io": "0", "capabilities.nvbind.io": "graphics,display"},
	} {
		pod := &api.PodSandbox{Namespace: "default", Annotations: ann}
		ctr := ctrWith("c", nil, nil)
		adj, _, err := a.Adjust(pod, ctr)
		if err != nil {
			t.Fatal(err)
		}
		p := a.state.Load()
		req, err := request.Parse(input(pod, ctr), request.Options{Kind: "nvidia.com/gpu", EnvRequests: true})
		if err != nil {
			t.Fatal(err)
		}
		targets, err := p.Resolve(req)
		if err != nil {
			t.Fatal(err)
		}
		e, err := request.Edits(p.Inventory(), targets, req.Caps, a.cfg.Spec)
		if err != nil {
			t.Fatal(err)
		}
		want := toNRI(e)
		norm := func(v any) string {
			data, _ := json.Marshal(v)
			return string(data)
		}
		sortDevs := func(ds []*api.LinuxDevice) []string {
			var out []string
			for _, d := range ds {
				out = append(out, norm(d))
			}
			slices.Sort(out)
			return out
		}
		if got, w := sortDevs(adj.GetLinux().GetDevices()), sortDevs(want.devices); !slices.Equal(got, w) {
			t.Errorf("%v: devices\n got %v\nwant %v", ann, got, w)
		}
		if norm(adj.GetMounts()) != norm(want.mounts) || norm(adj.GetEnv()) != norm(want.env) || norm(adj.GetHooks().GetCreateRuntime()) != norm(want.hooks.GetCreateRuntime()) {
			t.Errorf("%v: mounts, env or hooks differ from the edit model's", ann)
		}
	}
}
