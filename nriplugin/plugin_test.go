package nriplugin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

// TestPluginWithNRIRuntimeSide connects the real plugin, through NRI's stub, to NRI's own
// runtime side (pkg/adaptation) on a socket, as containerd and CRI-O embed it, and sends
// CreateContainer requests through it.
func TestPluginWithNRIRuntimeSide(t *testing.T) {
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

	p := NewPlugin(newTestAdjuster(t, Config{EnvRequests: true}), nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, RunOptions{Name: "nvbind", Index: "10", Socket: sock, Reconnect: true}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !p.Registered() {
		if time.Now().After(deadline) {
			t.Fatal("the plugin did not register")
		}
		time.Sleep(10 * time.Millisecond)
	}

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
	if len(resp.GetAdjust().GetHooks().GetCreateContainer()) != 1 || len(resp.GetAdjust().GetMounts()) == 0 {
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
