package nriplugin

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

// nriRuntime starts NRI's runtime side (what containerd and CRI-O embed) on a socket.
func nriRuntime(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nvbsvc") //nolint:usetesting // a unix socket path must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "nri.sock")
	rt, err := adaptation.New("test-runtime", "0.0.1",
		func(ctx context.Context, cb adaptation.SyncCB) error { _, err := cb(ctx, nil, nil); return err },
		func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
			return nil, nil
		},
		adaptation.WithSocketPath(sock), adaptation.WithPluginPath(filepath.Join(dir, "plugins")), adaptation.WithPluginConfigPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Stop)
	return sock
}

func status(t *testing.T, h http.Handler, path string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code
}

// TestServiceWaitsForDiscoveryThenRegisters: with a fake event source, the plugin does
// not register before discovery has answered; /readyz turns 200 once it has registered,
// and /livez answers all along.
func TestServiceWaitsForDiscoveryThenRegisters(t *testing.T) {
	sock := nriRuntime(t)
	adj, err := NewAdjuster(Config{Spec: spec.Options{HookPath: "/usr/local/bin/nvbind-hook"}})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan gpu.Event)
	svc := &Service{Plugin: NewPlugin(adj, nil, nil), Metrics: NewMetrics("", ""), Events: events,
		Run: RunOptions{Name: "nvbind", Index: "10", Socket: sock, Reconnect: true}}
	h := svc.Handler()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		close(events)
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	time.Sleep(200 * time.Millisecond)
	if svc.Plugin.Registered() || status(t, h, "/readyz") != http.StatusServiceUnavailable || status(t, h, "/livez") != http.StatusOK {
		t.Fatal("the plugin registered, or /readyz answered 200, before discovery answered")
	}
	events <- gpu.Event{Inventory: testInventory()}
	deadline := time.Now().Add(10 * time.Second)
	for status(t, h, "/readyz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("/readyz never answered 200 after registration")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status(t, h, "/healthz") != http.StatusOK || status(t, h, "/metrics") != http.StatusOK {
		t.Error("/healthz or /metrics")
	}
}

// TestServiceApply: inventories replace each other, a failed rescan keeps the last good
// one and the spec on disk, and the CDI spec follows the inventory.
func TestServiceApply(t *testing.T) {
	t.Parallel()
	adj, err := NewAdjuster(Config{Spec: spec.Options{HookPath: "/usr/local/bin/nvbind-hook"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	svc := &Service{Plugin: NewPlugin(adj, nil, nil), CDISpecDir: dir, SpecOptions: spec.Options{HookPath: "/usr/local/bin/nvbind-hook"}}
	first := testInventory()
	svc.Apply(gpu.Event{Inventory: first})
	if adj.Inventory() != first {
		t.Fatal("the first inventory is not in use")
	}
	specFile := filepath.Join(dir, "nvidia.com-gpu.yaml")
	before, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatalf("no CDI spec written: %v", err)
	}
	svc.Apply(gpu.Event{Err: errors.New("driver not ready")})
	if adj.Inventory() != first {
		t.Error("a failed rescan replaced the inventory")
	}
	second := testInventory()
	second.Devices = second.Devices[:1]
	svc.Apply(gpu.Event{Inventory: second})
	if adj.Inventory() != second {
		t.Error("the new inventory is not in use")
	}
	after, err := os.ReadFile(specFile)
	if err != nil || string(after) == string(before) {
		t.Errorf("the spec did not follow the inventory: %v", err)
	}
}
