package nriplugin

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// anyNode makes up device numbers for any node path, so an 8-GPU NVML mock can stand on
// a driver root that has nodes for two.
type anyNode struct{}

func (anyNode) Stat(p string) (gpu.DeviceNode, error) {
	base := filepath.Base(p)
	var minor int64
	if n, err := fmt.Sscanf(strings.TrimLeft(base, "abcdefghijklmnopqrstuvwxyz-"), "%d", &minor); n != 1 || err != nil {
		minor = 255
	}
	if strings.Contains(p, "nvidia-uvm") && !strings.HasSuffix(p, "uvm") {
		minor = 1
	}
	return gpu.DeviceNode{HostPath: p, Major: 195, Minor: minor, FileMode: fs.FileMode(0o666)}, nil
}

// benchInventory is go-nvml's DGX A100 (8 GPUs) with the full library set of the
// debian-535 driver root.
func benchInventory(b *testing.B) *gpu.Inventory {
	root := testutil.DriverRoot(b, "debian-535")
	d, err := gpu.New(gpu.WithDriverRoot(root), gpu.WithDevRoot(root), gpu.WithNVML(dgxa100.New()), gpu.WithDeviceStater(anyNode{}))
	if err != nil {
		b.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	if len(inv.Devices) != 8 || len(inv.Files) < 40 {
		b.Fatalf("inventory: %d GPUs, %d files", len(inv.Devices), len(inv.Files))
	}
	return inv
}

// BenchmarkCreateContainer times the plugin's CreateContainer handler (request parsing,
// policy, resolution, adjustment, metrics) on an 8-GPU inventory with the full library
// set, and reports the 99th percentile of single calls.
func BenchmarkCreateContainer(b *testing.B) {
	inv := benchInventory(b)
	for _, tc := range []struct {
		name string
		ann  map[string]string
		env  []string
	}{
		{"annotation-1-gpu", map[string]string{"gpus.nvbind.io": "3"}, nil},
		{"env-8-gpus-all-caps", nil, []string{"PATH=/usr/bin", "NVIDIA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7", "NVIDIA_DRIVER_CAPABILITIES=all",
			"NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla,driver>=470"}},
		{"no-request", nil, []string{"PATH=/usr/bin", "HOME=/root"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			a, err := NewAdjuster(Config{EnvRequests: true, Spec: spec.Options{HookPath: "/usr/local/bin/nvbind-hook"}})
			if err != nil {
				b.Fatal(err)
			}
			a.SetInventory(inv)
			p := NewPlugin(a, nil, nil)
			pod := &api.PodSandbox{Namespace: "default", Name: "p", Annotations: tc.ann}
			ctr := &api.Container{Name: "c", Env: tc.env}
			ctx := context.Background()
			lat := make([]time.Duration, 0, 1<<20)
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				if _, _, err := p.CreateContainer(ctx, pod, ctr); err != nil {
					b.Fatal(err)
				}
				if len(lat) < cap(lat) {
					lat = append(lat, time.Since(start))
				}
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
			}
		})
	}
}

// BenchmarkCreateContainer100k runs 100,000 calls per iteration and reports how much the
// live heap grew across them: the handler must not accumulate memory.
func BenchmarkCreateContainer100k(b *testing.B) {
	inv := benchInventory(b)
	a, err := NewAdjuster(Config{EnvRequests: true, Spec: spec.Options{HookPath: "/usr/local/bin/nvbind-hook"}})
	if err != nil {
		b.Fatal(err)
	}
	a.SetInventory(inv)
	p := NewPlugin(a, nil, nil)
	pod := &api.PodSandbox{Namespace: "default", Annotations: map[string]string{"gpus.nvbind.io": "0,5"}}
	ctr := &api.Container{Name: "c"}
	ctx := context.Background()
	_, _, _ = p.CreateContainer(ctx, pod, ctr) // build the per-capability cache first
	var before, after runtime.MemStats
	var growth int64
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := 0; i < 100_000; i++ {
			if _, _, err := p.CreateContainer(ctx, pod, ctr); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		growth = int64(after.HeapAlloc) - int64(before.HeapAlloc)
	}
	b.ReportMetric(float64(growth), "heap-growth-bytes")
}

// BenchmarkWorstRequest sends the largest requests an image or a pod author can build
// through NRI's own runtime side (pkg/adaptation, over the socket, as containerd embeds
// it) and reports the 99th percentile of the round trips: each must come back far within
// the runtime's 2 s request timeout, whatever its size.
func BenchmarkWorstRequest(b *testing.B) {
	inv := benchInventory(b)
	huge := strings.Repeat("0,", 150_000)
	uuids := make([]string, request.MaxDevices)
	for i := range uuids {
		uuids[i] = fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i)
	}
	manyEnv := make([]string, 0, 100_001)
	for i := range 100_000 {
		manyEnv = append(manyEnv, fmt.Sprintf("VAR_%d=%d", i, i))
	}
	manyAnn := map[string]string{"gpus.nvbind.io/pod": strings.Join(uuids[:8], ",")}
	for i := range 200 {
		manyAnn[fmt.Sprintf("example.com/a%d", i)] = strings.Repeat("x", 1000)
	}
	for _, tc := range []struct {
		name string
		ns   string
		ann  map[string]string
		env  []string
	}{
		{"env-150000-entries", "default", nil, []string{"NVIDIA_VISIBLE_DEVICES=" + huge}},
		{"env-150000-entries-namespace-not-allowed", "other", nil, []string{"NVIDIA_VISIBLE_DEVICES=" + huge}},
		{"annotation-150000-entries", "default", map[string]string{"gpus.nvbind.io": huge}, nil},
		{"annotation-1024-unknown-uuids", "default", map[string]string{"gpus.nvbind.io": strings.Join(uuids, ",")}, nil},
		{"100000-env-vars-1-gpu", "default", nil, append(manyEnv, "NVIDIA_VISIBLE_DEVICES=0")},
		{"200-annotations-of-1kb", "default", manyAnn, nil},
	} {
		b.Run(tc.name, func(b *testing.B) {
			a, err := NewAdjuster(Config{EnvRequests: true, AllowedNamespaces: []string{"default"}, Spec: spec.Options{HookPath: "/usr/local/bin/nvbind-hook"}})
			if err != nil {
				b.Fatal(err)
			}
			a.SetInventory(inv)
			rt, _ := startRuntimeSide(b, NewPlugin(a, nil, nil))
			ctx := context.Background()
			pod := &api.PodSandbox{Id: "pod", Name: "p", Uid: "u", Namespace: tc.ns, Annotations: tc.ann}
			if err := rt.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: pod}); err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, 1<<16)
			n := 0
			for b.Loop() {
				n++
				ctr := &api.Container{Id: fmt.Sprint("c", n), PodSandboxId: "pod", Name: "c", Env: tc.env}
				start := time.Now()
				_, err := rt.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr})
				took := time.Since(start)
				if err != nil && len(err.Error()) > 1000 {
					b.Fatalf("an error of %d bytes", len(err.Error()))
				}
				if len(lat) < cap(lat) {
					lat = append(lat, took)
				}
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}
