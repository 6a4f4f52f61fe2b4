package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

// TestPluginWithNRIRuntimeSide connects the real plugin, through NRI's stub, to NRI's own
// runtime side (pkg/adaptation) on a socket, as containerd and CRI-O embed it, and sends
// CreateContainer requests through it.
func TestPluginWithNRIRuntimeSide(t *testing.T) {
	p := NewPlugin(newTestAdjuster(t, Config{EnvRequests: true}), nil, nil)
	rt, _ := startRuntimeSide(t, p)
	ctx := context.Background()

	pod := &api.PodSandbox{Id: "pod1", Name: "p", Uid: "u1", Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "1"}}
	if err := rt.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: pod}); err != nil {
		t.Fatal(err)
	}
	ctr := &api.Container{Id: "c1", PodSandboxId: "pod1", Name: "c", State: api.ContainerState_CONTAINER_UNKNOWN}
	resp, err := rt.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr})
	if err != nil {
		t.Fatal(err)
	}
	var devs []string
	for _, d := range resp.GetAdjust().GetLinux().GetDevices() {
		devs = append(devs, d.Path)
	}
	if strings.Join(devs, " ") != "/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia1" {
		t.Errorf("devices = %v", devs)
	}
	if len(resp.GetAdjust().GetHooks().GetCreateRuntime()) != 1 || len(resp.GetAdjust().GetMounts()) == 0 {
		t.Errorf("adjustment = %v", resp.GetAdjust())
	}

	bad := &api.PodSandbox{Id: "pod2", Name: "q", Uid: "u2", Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "9"}}
	if err := rt.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: bad}); err != nil {
		t.Fatal(err)
	}
	_, err = rt.CreateContainer(ctx, &api.CreateContainerRequest{Pod: bad, Container: &api.Container{Id: "c2", PodSandboxId: "pod2", Name: "c"}})
	if err == nil || !strings.Contains(err.Error(), `GPU "9" is not on this node`) {
		t.Fatalf("a bad request reached the runtime as: %v", err)
	}
}

// startRuntimeSide starts NRI's own runtime side (pkg/adaptation) on a socket, as
// containerd and CRI-O embed it, and connects the plugin to it; it returns once the
// plugin is registered, with a function that stops the plugin and waits for Run.
func startRuntimeSide(t testing.TB, p *Plugin) (*adaptation.Adaptation, func()) {
	t.Helper()
	dir, err := os.MkdirTemp("", "nvbnri") //nolint:usetesting // a unix socket path must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "nri.sock")
	syncFn := func(ctx context.Context, cb adaptation.SyncCB) error {
		_, err := cb(ctx, nil, nil)
		return err
	}
	updateFn := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	rt, err := adaptation.New("test-runtime", "0.0.1", syncFn, updateFn,
		adaptation.WithSocketPath(sock), adaptation.WithPluginPath(filepath.Join(dir, "plugins")), adaptation.WithPluginConfigPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Stop)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, RunOptions{Name: "nvbind", Index: "10", Socket: sock, Reconnect: true}) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for !p.Registered() {
		if time.Now().After(deadline) {
			t.Fatal("the plugin did not register")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// the runtime side calls the plugin once it has taken its answer to Synchronize, a
	// moment after the plugin counts itself registered: a probe container asks until the
	// plugin's adjustment comes back
	probe := &api.PodSandbox{Id: "probe", Name: "probe", Uid: "probe", Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0"}}
	if err := rt.RunPodSandbox(context.Background(), &api.RunPodSandboxRequest{Pod: probe}); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		resp, err := rt.CreateContainer(context.Background(), &api.CreateContainerRequest{Pod: probe,
			Container: &api.Container{Id: fmt.Sprintf("probe-%d", i), PodSandboxId: "probe", Name: "probe"}})
		if err == nil && len(resp.GetAdjust().GetLinux().GetDevices()) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the runtime side does not call the plugin: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return rt, stop
}

// TestStopDrains: told to stop, the plugin answers the calls in flight before it closes
// the connection, and refuses new GPU requests meanwhile (the runtime would otherwise
// create them without its GPUs); containers that ask for nothing are not held up.
func TestStopDrains(t *testing.T) {
	p := NewPlugin(newTestAdjuster(t, Config{EnvRequests: true}), nil, nil)
	_, stop := startRuntimeSide(t, p)
	p.inflight.Add(1) // a call in flight
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	deadline := time.Now().Add(5 * time.Second)
	for !p.draining.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the plugin does not drain")
		}
		time.Sleep(time.Millisecond)
	}
	gpuPod := &api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0"}}
	if _, _, err := p.CreateContainer(context.Background(), gpuPod, &api.Container{Name: "c"}); !errors.Is(err, ErrStopping) {
		t.Errorf("a GPU request while draining: %v", err)
	}
	if adj, _, err := p.CreateContainer(context.Background(), &api.PodSandbox{Namespace: "default"}, &api.Container{Name: "c"}); err != nil || adj != nil {
		t.Errorf("a plain container while draining: %v %v", adj, err)
	}
	select {
	case <-stopped:
		t.Fatal("the plugin closed the connection with a call in flight")
	case <-time.After(100 * time.Millisecond):
	}
	p.inflight.Add(-1)
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the plugin did not stop once the call was answered")
	}
}
