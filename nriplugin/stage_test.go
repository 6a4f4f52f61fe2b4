package nriplugin

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/request"
)

// TestStageInPlugin: with StageInPlugin, a GPU container's adjustment names no hook but
// carries the stage annotation, and the decision holds exactly the hook's arguments the
// adjustment would have named; a container with a user namespace gets the hook.
func TestStageInPlugin(t *testing.T) {
	t.Parallel()
	withHook := newTestAdjuster(t, Config{EnvRequests: true, AllNamespaces: []string{"default"}})
	inPlugin := newTestAdjuster(t, Config{EnvRequests: true, AllNamespaces: []string{"default"}, StageInPlugin: true})
	inPlugin.stageFor("containerd")
	for _, ann := range []map[string]string{
		{"gpus.nvbind.io": "1"}, {"gpus.nvbind.io": "all", "capabilities.nvbind.io": "all"}, {"gpus.nvbind.io": "mig0:1"},
		{"gpus.nvbind.io": "0", "capabilities.nvbind.io": "graphics,display"},
	} {
		pod := &api.PodSandbox{Namespace: "default", Annotations: ann}
		hooked, _, err := withHook.Adjust(pod, ctrWith("c", nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		staged, dec, err := inPlugin.Adjust(pod, ctrWith("c", nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		hooks := hooked.GetHooks().GetCreateRuntime()
		if len(hooks) != 1 {
			t.Fatalf("%v: the hook's adjustment has %d hooks", ann, len(hooks))
		}
		if n := len(staged.GetHooks().GetCreateRuntime()); n != 0 {
			t.Errorf("%v: the plugin runs the steps, yet the adjustment names %d hooks", ann, n)
		}
		v := staged.GetAnnotations()[request.AnnotationStage]
		if _, ok := hooked.GetAnnotations()[request.AnnotationStage]; ok || v == "" {
			t.Fatalf("%v: stage annotation %q with the plugin's steps; with the hook: %v", ann, v, hooked.GetAnnotations())
		}
		if norm(staged.GetMounts()) != norm(hooked.GetMounts()) || norm(staged.GetLinux().GetDevices()) != norm(hooked.GetLinux().GetDevices()) ||
			norm(staged.GetEnv()) != norm(hooked.GetEnv()) {
			t.Errorf("%v: the mounts, devices or env differ from the hook's adjustment", ann)
		}
		if dec.Stage == nil {
			t.Fatalf("%v: no steps in the decision", ann)
		}
		got := *dec.Stage
		want, err := hookargs.Decode(hooks[0].GetArgs()[1:])
		if err != nil {
			t.Fatal(err)
		}
		if norm(got) != norm(want) {
			t.Errorf("%v: the steps\n got %+v\nwant %+v", ann, got, want)
		}

		// a sandboxed runtime's container (Kata's: its process is a virtual machine's), or
		// one of a handler nvbind does not know: the hook
		for _, h := range []string{"kata", "kata-qemu", "gvisor"} {
			adj, _, err := inPlugin.Adjust(&api.PodSandbox{Namespace: "default", Annotations: ann, RuntimeHandler: h}, ctrWith("c", nil, nil))
			if err != nil {
				t.Fatal(err)
			}
			if norm(adj.GetHooks()) != norm(hooked.GetHooks()) || adj.GetAnnotations()[request.AnnotationStage] != "" {
				t.Errorf("%v: a container of runtime handler %s did not get the hook", ann, h)
			}
		}
		if adj, _, _ := inPlugin.Adjust(&api.PodSandbox{Namespace: "default", Annotations: ann, RuntimeHandler: "runc"}, ctrWith("c", nil, nil)); adj.GetAnnotations()[request.AnnotationStage] == "" {
			t.Errorf("%v: a container of runtime handler runc got the hook", ann)
		}

		// a user namespace of its own: the hook, which alone can join it
		userns := ctrWith("c", nil, nil)
		userns.Linux = &api.LinuxContainer{Namespaces: []*api.LinuxNamespace{{Type: "user", Path: "/proc/42/ns/user"}}}
		adj, _, err := inPlugin.Adjust(pod, userns)
		if err != nil {
			t.Fatal(err)
		}
		if norm(adj.GetHooks()) != norm(hooked.GetHooks()) || adj.GetAnnotations()[request.AnnotationStage] != "" {
			t.Errorf("%v: a container with a user namespace did not get the hook", ann)
		}
	}

}

// TestStartContainerStage: StartContainer leaves a container without the stage annotation
// alone, and fails the start of one whose steps cannot run (no pid from the runtime, or
// no steps recorded for it), counting the failure.
func TestStartContainerStage(t *testing.T) {
	t.Parallel()
	// CRI-O starts a container whose plugin's StartContainer failed (it logs a warning):
	// there the hook runs the steps, unless the plugin is told to (StageAnyRuntime)
	for _, c := range []struct {
		runtime string
		any     bool
		want    bool
	}{{"cri-o", false, false}, {"cri-o", true, true}, {"containerd", false, true}} {
		p := NewPlugin(newTestAdjuster(t, Config{StageInPlugin: true, StageAnyRuntime: c.any}), nil, nil)
		mask, err := p.Configure(context.Background(), "", c.runtime, "1")
		if err != nil || mask.IsSet(api.Event_START_CONTAINER) != c.want || !mask.IsSet(api.Event_CREATE_CONTAINER) {
			t.Errorf("%s, any runtime %v: events %v, %v: want StartContainer %v", c.runtime, c.any, mask, err, c.want)
		}
		adj, _, err := p.adj.Adjust(&api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0"}}, ctrWith("c", nil, nil))
		if err != nil || (adj.GetAnnotations()[request.AnnotationStage] != "") != c.want || (len(adj.GetHooks().GetCreateRuntime()) == 0) != c.want {
			t.Errorf("%s, any runtime %v: the adjustment's stage annotation and hooks: %v, %v", c.runtime, c.any, adj, err)
		}
	}
	a := newTestAdjuster(t, Config{StageInPlugin: true})
	p := NewPlugin(a, nil, nil)
	if _, err := p.Configure(context.Background(), "", "containerd", "2.4.2"); err != nil {
		t.Fatal(err)
	}
	pod := &api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0"}}
	if err := p.StartContainer(context.Background(), pod, &api.Container{Id: "plain", Name: "c"}); err != nil {
		t.Fatalf("a container without the annotation: %v", err)
	}
	ctr := &api.Container{Id: "c1", Name: "c"}
	adj, _, err := p.CreateContainer(context.Background(), pod, ctr)
	if err != nil {
		t.Fatal(err)
	}
	ctr.Annotations = adj.GetAnnotations()
	if err := p.StartContainer(context.Background(), pod, ctr); err == nil || !strings.Contains(err.Error(), "is no created container's") {
		t.Errorf("no pid: %v", err)
	}
	// the record is taken by the first start; a container the plugin has no record of
	// (a forged or stale annotation, another plugin process's) is refused
	for _, id := range []string{"c1", "c2"} {
		ctr := &api.Container{Id: id, Name: "c", Pid: 42, Annotations: adj.GetAnnotations()}
		if err := p.StartContainer(context.Background(), pod, ctr); err == nil || !strings.Contains(err.Error(), "for container "+id+": none recorded") {
			t.Errorf("%s without a record: %v", id, err)
		}
	}
	if m := metricsText(t, p.metrics); !strings.Contains(m, "nvbind_start_container_failures_total 3") || !strings.Contains(m, "nvbind_start_container_duration_seconds_count 3") {
		t.Errorf("metrics:\n%s", m)
	}

	withHook := NewPlugin(newTestAdjuster(t, Config{}), nil, nil)
	if mask, _ := withHook.Configure(context.Background(), "", "containerd", "1"); mask.IsSet(api.Event_START_CONTAINER) {
		t.Error("a plugin whose hook runs the steps subscribed to StartContainer")
	}
}

func norm(v any) string {
	data, _ := json.Marshal(v)
	return string(data)
}

func metricsText(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// TestStopWaitsForStagedStarts: a stop waits for the StartContainer of a container whose
// steps the plugin runs (created, not started): started once the plugin is gone, it would
// get none.
func TestStopWaitsForStagedStarts(t *testing.T) {
	p := NewPlugin(newTestAdjuster(t, Config{StageInPlugin: true, StageAnyRuntime: true}), nil, nil)
	_, stop := startRuntimeSide(t, p)
	pod := &api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0"}}
	ctr := &api.Container{Id: "c1", Name: "c"}
	adj, _, err := p.CreateContainer(context.Background(), pod, ctr)
	if err != nil || adj.GetAnnotations()[request.AnnotationStage] == "" {
		t.Fatalf("no stage annotation: %v, %v", adj, err)
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("the plugin stopped before the created container's start")
	case <-time.After(200 * time.Millisecond):
	}
	ctr.Annotations = adj.GetAnnotations()
	_ = p.StartContainer(context.Background(), pod, ctr) // no pid here: it fails, and is done
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the plugin did not stop once the container's start was answered")
	}
}
