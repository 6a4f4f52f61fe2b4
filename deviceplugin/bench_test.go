package deviceplugin

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// runPlugin serves a registered plugin of an 8-GPU inventory against a fake kubelet and
// returns a client on its socket, as the kubelet holds one.
func runPlugin(b *testing.B, replicas int) (*Plugin, pluginapi.DevicePluginClient) {
	b.Helper()
	dir := socketDir(b)
	startKubelet(b, dir)
	c := cfg()
	c.Replicas = replicas
	p, err := New(c, dir, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	p.poll = 10 * time.Millisecond
	if err := p.Update(inventory(8, nil)); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	waitUntil(b, "registration", p.Registered)
	return p, pluginClient(b, filepath.Join(dir, "nvbind-nvidia.com-gpu.sock"))
}

func p99(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)*99)/100]
}

// BenchmarkAllocate times the kubelet's Allocate of one GPU over the plugin's gRPC socket
// and reports the p99.
func BenchmarkAllocate(b *testing.B) {
	_, c := runPlugin(b, 1)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		_, err := c.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
			{DevicesIds: []string{fmt.Sprintf("GPU-%04d", i%8)}}}})
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(p99(lat).Microseconds()), "p99-µs")
}

// BenchmarkListAndWatchUpdate times a health change from Update (discovery lost a GPU, or
// found it again) to the kubelet's stream receiving the new list, and reports the p99.
func BenchmarkListAndWatchUpdate(b *testing.B) {
	p, c := runPlugin(b, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		b.Fatal(err)
	}
	full, less := inventory(8, nil), inventory(7, nil)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		inv := less
		if i%2 == 1 {
			inv = full
		}
		start := time.Now()
		if err := p.Update(inv); err != nil {
			b.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.ReportMetric(float64(p99(lat).Microseconds()), "p99-µs")
}
