package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nvbind/nvbind/gpu"
)

// serveResource serves a resource's DevicePlugin service on a unix socket, as Run does,
// and returns a client on it, as the kubelet holds one.
func serveResource(t testing.TB, rs *resourceServer) pluginapi.DevicePluginClient {
	t.Helper()
	socket := filepath.Join(socketDir(t), "dp.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, rs)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return pluginClient(t, socket)
}

// fakeClock is the plugin's clock in tests; Run reads it from its own goroutine.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newTestPlugin is a plugin on a fake clock that nothing registers or serves yet.
func newTestPlugin(t testing.TB, c Config) (*Plugin, *fakeClock) {
	t.Helper()
	p, err := New(c, socketDir(t), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	p.now = clock.now
	return p, clock
}

// server returns the resource server Update made for a resource.
func (p *Plugin) server(t testing.TB, resource string) *resourceServer {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.servers[resource]
	if !ok {
		t.Fatalf("no server for %s; have %v", resource, slices.Sorted(maps.Keys(p.servers)))
	}
	return s.rs
}

func list(rs *resourceServer) string {
	devs, _ := rs.devices()
	return health(devs)
}

// repartition gives the MIG devices of the inventory's GPUs new UUIDs and the profile, as
// destroying and creating MIG instances does; the GPUs keep theirs.
func repartition(inv *gpu.Inventory, gen int, profile string) *gpu.Inventory {
	for i := range inv.Devices {
		for j := range inv.Devices[i].MIG {
			inv.Devices[i].MIG[j].UUID = fmt.Sprintf("MIG-%d-%d-g%d", i, j, gen)
			inv.Devices[i].MIG[j].Profile = profile
		}
	}
	return inv
}

func TestParseReplicaID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		id       string
		replicas int
		want     string // "" refused
	}{
		{"GPU-a", 1, "GPU-a"},
		{"GPU-a::999", 1, "GPU-a::999"}, // no unit has that UUID: the server refuses it
		{"", 1, ""},
		{"GPU-a::0", 4, "GPU-a"},
		{"GPU-a::3", 4, "GPU-a"},
		{"GPU-a::1::2", 4, "GPU-a::1"},
		{"GPU-a", 4, ""},
		{"GPU-a::4", 4, ""},
		{"GPU-a::999", 4, ""},
		{"GPU-a::-1", 4, ""},
		{"GPU-a::+1", 4, ""},
		{"GPU-a::01", 4, ""},
		{"GPU-a:: 1", 4, ""},
		{"GPU-a::garbage", 4, ""},
		{"GPU-a::", 4, ""},
		{"::1", 4, ""},
		{"GPU-a::99999999999999999999999", 4, ""},
	} {
		t.Run(fmt.Sprintf("%q/%d", tc.id, tc.replicas), func(t *testing.T) {
			t.Parallel()
			got, ok := ParseReplicaID(tc.id, tc.replicas)
			if ok != (tc.want != "") || got != tc.want {
				t.Errorf("ParseReplicaID = %q, %v; want %q", got, ok, tc.want)
			}
		})
	}
}

// FuzzParseReplicaID: an ID ParseReplicaID accepts is one ReplicaID writes, and every ID
// ReplicaID writes parses back.
func FuzzParseReplicaID(f *testing.F) {
	for _, s := range []string{"GPU-a", "GPU-a::3", "GPU-a::01", "::1", "GPU-a::1::2", "a:::0"} {
		f.Add(s, 4)
	}
	f.Fuzz(func(t *testing.T, id string, replicas int) {
		replicas = 1 + (replicas&0x7fffffff)%16
		uuid, ok := ParseReplicaID(id, replicas)
		if ok {
			found := false
			for n := range replicas {
				found = found || ReplicaID(uuid, n, replicas) == id
			}
			if !found {
				t.Fatalf("ParseReplicaID(%q, %d) = %q, which ReplicaID does not write", id, replicas, uuid)
			}
		}
		if id == "" {
			return
		}
		for n := range replicas {
			if got, ok := ParseReplicaID(ReplicaID(id, n, replicas), replicas); !ok || got != id {
				t.Fatalf("round trip of %q replica %d/%d: %q %v", id, n, replicas, got, ok)
			}
		}
	})
}

// TestRefusesIDsNotAdvertised: Allocate and GetPreferredAllocation accept exactly the IDs
// the plugin advertises, and name any other, cut short, with the resource.
func TestRefusesIDsNotAdvertised(t *testing.T) {
	t.Parallel()
	long := "GPU-0000::" + strings.Repeat("x", 1000)
	for _, replicas := range []int{1, 3} {
		c := cfg()
		c.Replicas = replicas
		rs := newResourceServer("nvidia.com/gpu", c, NewMetrics())
		res, err := Resources(inventory(2, nil), c)
		if err != nil {
			t.Fatal(err)
		}
		rs.update(res["nvidia.com/gpu"], nil, time.Time{})
		client := serveResource(t, rs)
		var advertised, refused []string
		if replicas == 1 {
			advertised = []string{"GPU-0000", "GPU-0001"}
			refused = []string{"GPU-0000::0", "GPU-0000::999", "GPU-0000::garbage", "GPU-9999", "", "gpu-0000", long}
		} else {
			advertised = []string{"GPU-0000::0", "GPU-0000::2", "GPU-0001::1"}
			refused = []string{"GPU-0000", "GPU-0000::3", "GPU-0000::-1", "GPU-0000::01", "GPU-0000::garbage", "GPU-0000::0::0", "GPU-9999::0", long}
		}
		for _, id := range slices.Concat(advertised, refused) {
			ok := slices.Contains(advertised, id)
			t.Run(fmt.Sprintf("replicas %d/%.20q", replicas, id), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				check := func(call string, err error) {
					t.Helper()
					if ok {
						if err != nil {
							t.Errorf("%s: %v", call, err)
						}
						return
					}
					msg := status.Convert(err).Message()
					if want := "nvidia.com/gpu: " + ErrNotAdvertised.Error() + ": " + quoteID(id); msg != want {
						t.Errorf("%s: %q, want %q", call, msg, want)
					}
					if len(msg) > 150 {
						t.Errorf("%s: message of %d bytes", call, len(msg))
					}
				}
				resp, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
					{DevicesIds: []string{id}}}})
				check("Allocate", err)
				if ok {
					if got, want := resp.ContainerResponses[0].Annotations[AllocationKey("nvidia.com/gpu")], strings.Split(id, "::")[0]; got != want {
						t.Errorf("allocated %q, want %q", got, want)
					}
				}
				_, err = client.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
					{AvailableDeviceIDs: []string{advertised[0], id}, AllocationSize: 2}}})
				check("GetPreferredAllocation (available)", err)
				_, err = client.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
					{AvailableDeviceIDs: []string{advertised[1]}, MustIncludeDeviceIDs: []string{id}, AllocationSize: 1}}})
				check("GetPreferredAllocation (must include)", err)
			})
		}
	}
}

func TestAllocationKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ resource, want string }{
		{"nvidia.com/gpu", "allocated.gpus.nvbind.io/gpu"},
		{"nvidia.com/mig-1g.5gb", "allocated.gpus.nvbind.io/mig-1g.5gb"},
		{"example.org/mig-3g.40gb", "allocated.gpus.nvbind.io/mig-3g.40gb"},
	} {
		t.Run(tc.resource, func(t *testing.T) {
			t.Parallel()
			got := AllocationKey(tc.resource)
			if got != tc.want {
				t.Errorf("AllocationKey = %q, want %q", got, tc.want)
			}
			if errs := validation.IsQualifiedName(got); len(errs) > 0 {
				t.Errorf("%q is no qualified name: %v", got, errs)
			}
			if !IsAllocationKey(got) {
				t.Errorf("IsAllocationKey(%q) = false", got)
			}
		})
	}
	for key, want := range map[string]bool{
		"allocated.gpus.nvbind.io":         true, // earlier versions
		"allocated.gpus.nvbind.io/gpu":     true,
		"allocated.gpus.nvbind.io/":        false,
		"allocated.gpus.nvbind.io/a/b":     false,
		"allocated.gpus.nvbind.io.evil/x":  false,
		"allocated.gpus.nvbind.iox":        false,
		"x.allocated.gpus.nvbind.io/gpu":   false,
		"replicas.gpus.nvbind.io":          false,
		"cdi.k8s.io/allocated.gpus.nvbind": false,
	} {
		if got := IsAllocationKey(key); got != want {
			t.Errorf("IsAllocationKey(%q) = %v, want %v", key, got, want)
		}
	}
}

// kubeletMerge merges the Allocate answers of a container's resources as the kubelet's
// device manager does: the first value of an annotation wins.
func kubeletMerge(resps ...*pluginapi.ContainerAllocateResponse) map[string]string {
	out := map[string]string{}
	for _, r := range resps {
		for k, v := range r.Annotations {
			if _, ok := out[k]; !ok {
				out[k] = v
			}
		}
	}
	return out
}

// TestAllocationKeyPerResource: a container that asks for two MIG profiles and a full GPU
// keeps all three allocations after the kubelet merges the resources' annotations.
func TestAllocationKeyPerResource(t *testing.T) {
	t.Parallel()
	c := cfg()
	c.MIGStrategy, c.Replicas = MIGMixed, 2
	p, _ := newTestPlugin(t, c)
	if err := p.Update(inventory(3, map[int]string{0: "1g.5gb", 1: "2g.10gb"})); err != nil {
		t.Fatal(err)
	}
	var resps []*pluginapi.ContainerAllocateResponse
	for _, a := range []struct{ resource, id string }{
		{"nvidia.com/mig-1g.5gb", "MIG-0-1::0"},
		{"nvidia.com/mig-2g.10gb", "MIG-1-0::1"},
		{"nvidia.com/gpu", "GPU-0002::1"},
	} {
		resp, err := serveResource(t, p.server(t, a.resource)).Allocate(context.Background(),
			&pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{a.id}}}})
		if err != nil {
			t.Fatal(err)
		}
		resps = append(resps, resp.ContainerResponses[0])
	}
	merged := kubeletMerge(resps...)
	want := map[string]string{
		"allocated.gpus.nvbind.io/mig-1g.5gb":  "MIG-0-1",
		"allocated.gpus.nvbind.io/mig-2g.10gb": "MIG-1-0",
		"allocated.gpus.nvbind.io/gpu":         "GPU-0002",
		AnnotationReplicas:                     "2",
	}
	if !maps.Equal(merged, want) {
		t.Errorf("merged annotations %v, want %v", merged, want)
	}
	for k := range merged {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			t.Errorf("annotation %q: %v", k, errs)
		}
	}
}

// TestMIGRepartitionDropsOldDevices: MIG devices replaced on the same GPU leave the device
// list at once, so the kubelet's capacity stays what the node has, and a profile no GPU
// offers any more is served with an empty list.
func TestMIGRepartitionDropsOldDevices(t *testing.T) {
	t.Parallel()
	c := cfg()
	c.MIGStrategy = MIGMixed
	p, _ := newTestPlugin(t, c)
	if err := p.Update(inventory(2, map[int]string{0: "1g.5gb"})); err != nil {
		t.Fatal(err)
	}
	rs := p.server(t, "nvidia.com/mig-1g.5gb")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a list that never comes fails
	defer cancel()
	client := serveResource(t, rs)
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() string {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return health(r.Devices)
	}
	if got := next(); got != "MIG-0-0=Healthy MIG-0-1=Healthy" {
		t.Fatalf("first list %s", got)
	}
	for gen := 1; gen <= 3; gen++ {
		if err := p.Update(repartition(inventory(2, map[int]string{0: "1g.5gb"}), gen, "1g.5gb")); err != nil {
			t.Fatal(err)
		}
		if got, want := next(), fmt.Sprintf("MIG-0-0-g%d=Healthy MIG-0-1-g%d=Healthy", gen, gen); got != want {
			t.Errorf("after repartition %d: %s, want %s", gen, got, want)
		}
	}
	for _, id := range []string{"MIG-0-0", "MIG-0-0-g2"} {
		if _, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
			{DevicesIds: []string{id}}}}); err == nil || !strings.Contains(err.Error(), ErrNotAdvertised.Error()) {
			t.Errorf("Allocate of the dropped %s: %v", id, err)
		}
	}
	// another profile: this resource has no devices left; MIG off gives the full GPU back
	if err := p.Update(repartition(inventory(2, map[int]string{0: "2g.10gb"}), 4, "2g.10gb")); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "" {
		t.Errorf("after the new profile: %q, want no devices", got)
	}
	if got := list(p.server(t, "nvidia.com/mig-2g.10gb")); got != "MIG-0-0-g4=Healthy MIG-0-1-g4=Healthy" {
		t.Errorf("the new profile: %s", got)
	}
	if err := p.Update(inventory(2, nil)); err != nil {
		t.Fatal(err)
	}
	if got := list(p.server(t, "nvidia.com/mig-2g.10gb")); got != "" {
		t.Errorf("MIG off: %s, want no devices", got)
	}
	if got := list(p.server(t, "nvidia.com/gpu")); got != "GPU-0000=Healthy GPU-0001=Healthy" {
		t.Errorf("MIG off: %s", got)
	}
}

// TestVanishedGPUForgotten: a GPU gone from discovery, with its MIG devices, is advertised
// Unhealthy for ForgetAfter, then dropped; one that returns before is Healthy again.
func TestVanishedGPUForgotten(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		forget time.Duration
		grace  time.Duration
	}{
		{"default", 0, DefaultForgetAfter},
		{"one minute", time.Minute, time.Minute},
		{"at once", -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := cfg()
			c.MIGStrategy, c.Replicas, c.ForgetAfter = MIGMixed, 2, tc.forget
			p, clock := newTestPlugin(t, c)
			both, one := inventory(2, map[int]string{1: "1g.5gb"}), inventory(1, nil)
			lists := func() string {
				return list(p.server(t, "nvidia.com/gpu")) + " | " + list(p.server(t, "nvidia.com/mig-1g.5gb"))
			}
			const (
				healthy   = "GPU-0000::0=Healthy GPU-0000::1=Healthy | MIG-1-0::0=Healthy MIG-1-0::1=Healthy MIG-1-1::0=Healthy MIG-1-1::1=Healthy"
				unhealthy = "GPU-0000::0=Healthy GPU-0000::1=Healthy | MIG-1-0::0=Unhealthy MIG-1-0::1=Unhealthy MIG-1-1::0=Unhealthy MIG-1-1::1=Unhealthy"
				dropped   = "GPU-0000::0=Healthy GPU-0000::1=Healthy | "
			)
			if err := p.Update(both); err != nil {
				t.Fatal(err)
			}
			if err := p.Update(one); err != nil {
				t.Fatal(err)
			}
			if tc.grace == 0 {
				if got := lists(); got != dropped {
					t.Fatalf("gone: %s, want %s", got, dropped)
				}
				return
			}
			if got := lists(); got != unhealthy {
				t.Fatalf("gone: %s, want %s", got, unhealthy)
			}
			// back before the grace period ends: Healthy, and the clock starts again
			clock.add(tc.grace - time.Second)
			p.forget()
			if err := p.Update(both); err != nil {
				t.Fatal(err)
			}
			if got := lists(); got != healthy {
				t.Fatalf("back: %s, want %s", got, healthy)
			}
			clock.add(time.Hour)
			p.forget()
			if got := lists(); got != healthy {
				t.Fatalf("back, an hour later: %s, want %s", got, healthy)
			}
			// gone for good
			if err := p.Update(one); err != nil {
				t.Fatal(err)
			}
			clock.add(tc.grace - time.Nanosecond)
			p.forget()
			if got := lists(); got != unhealthy {
				t.Fatalf("just before the grace period ends: %s, want %s", got, unhealthy)
			}
			clock.add(time.Nanosecond)
			p.forget()
			if got := lists(); got != dropped {
				t.Fatalf("after the grace period: %s, want %s", got, dropped)
			}
			_, err := p.server(t, "nvidia.com/mig-1g.5gb").allocate([]string{"MIG-1-0::0"})
			if !errors.Is(err, ErrNotAdvertised) {
				t.Errorf("Allocate of a forgotten device: %v", err)
			}
		})
	}
}

// TestRunForgetsVanishedGPU: Run drops a vanished GPU when its grace period ends, with no
// new inventory to prompt it, and a resource left without devices stays registered with
// an empty list, which takes the kubelet's capacity to 0.
func TestRunForgetsVanishedGPU(t *testing.T) {
	t.Parallel()
	c := cfg()
	c.ForgetAfter = time.Minute
	p, clock := newTestPlugin(t, c)
	k := startKubelet(t, p.dir)
	p.poll = 10 * time.Millisecond
	if err := p.Update(inventory(2, nil)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitUntil(t, "registration", p.Registered)
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second) // a list that never comes fails
	defer scancel()
	stream, err := pluginClient(t, filepath.Join(p.dir, "nvbind-nvidia.com-gpu.sock")).ListAndWatch(sctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() string {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return health(r.Devices)
	}
	if got := next(); got != "GPU-0000=Healthy GPU-0001=Healthy" {
		t.Fatalf("first list %s", got)
	}
	if err := p.Update(inventory(1, nil)); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "GPU-0000=Healthy GPU-0001=Unhealthy" {
		t.Fatalf("GPU 1 gone: %s", got)
	}
	clock.add(time.Minute)
	if got := next(); got != "GPU-0000=Healthy" {
		t.Fatalf("GPU 1 gone for a minute: %s", got)
	}
	if err := p.Update(&gpu.Inventory{}); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "GPU-0000=Unhealthy" {
		t.Fatalf("every GPU gone: %s", got)
	}
	clock.add(time.Minute)
	if got := next(); got != "" {
		t.Fatalf("every GPU gone for a minute: %q, want no devices", got)
	}
	if !p.Registered() || len(k.registrations()) != 1 {
		t.Errorf("registered %v, registrations %v", p.Registered(), k.registrations())
	}
}

// TestFaultyGPUOutOfService: a GPU taken out of service for an XID (SetFaults) takes its
// replicas and MIG devices with it, in every resource: the kubelet sees them Unhealthy,
// and an Allocate of one fails naming the fault; the other GPU's units stay Healthy, a
// resource made after the fault starts with it, and the GPU's return restores them all.
func TestFaultyGPUOutOfService(t *testing.T) {
	t.Parallel()
	c := cfg()
	c.MIGStrategy, c.Replicas = MIGMixed, 2
	p, _ := newTestPlugin(t, c)
	inv := inventory(2, map[int]string{1: "1g.5gb"})
	if err := p.Update(inventory(1, nil)); err != nil {
		t.Fatal(err)
	}
	p.SetFaults(map[string]string{"GPU-0001": "XID 79 at 2026-12-01T12:00:00Z"})
	if err := p.Update(inv); err != nil { // the MIG resource is made now, with the fault
		t.Fatal(err)
	}
	lists := func() string {
		return list(p.server(t, "nvidia.com/gpu")) + " | " + list(p.server(t, "nvidia.com/mig-1g.5gb"))
	}
	const (
		out = "GPU-0000::0=Healthy GPU-0000::1=Healthy | MIG-1-0::0=Unhealthy MIG-1-0::1=Unhealthy MIG-1-1::0=Unhealthy MIG-1-1::1=Unhealthy"
		in  = "GPU-0000::0=Healthy GPU-0000::1=Healthy | MIG-1-0::0=Healthy MIG-1-0::1=Healthy MIG-1-1::0=Healthy MIG-1-1::1=Healthy"
	)
	if got := lists(); got != out {
		t.Fatalf("GPU 1 out of service: %s, want %s", got, out)
	}
	mig := p.server(t, "nvidia.com/mig-1g.5gb")
	if all, healthy := mig.count(); all != 2 || healthy != 0 {
		t.Errorf("count = %d, %d healthy; want 2, 0", all, healthy)
	}
	_, err := mig.allocate([]string{"MIG-1-1::1"})
	if !errors.Is(err, ErrFaulty) || !strings.Contains(err.Error(), `"MIG-1-1::1"`) || !strings.Contains(err.Error(), "XID 79 at 2026-12-01T12:00:00Z") {
		t.Errorf("Allocate of a unit of a faulty GPU: %v", err)
	}
	if _, err := p.server(t, "nvidia.com/gpu").allocate([]string{"GPU-0000::1"}); err != nil {
		t.Errorf("Allocate of the healthy GPU: %v", err)
	}
	// the kubelet's stream gets the change
	_, changed := mig.devices()
	p.SetFaults(nil)
	select {
	case <-changed:
	default:
		t.Error("ListAndWatch not woken by the return")
	}
	if got := lists(); got != in {
		t.Fatalf("GPU 1 back: %s, want %s", got, in)
	}
	if _, err := mig.allocate([]string{"MIG-1-1::1"}); err != nil {
		t.Errorf("Allocate after the return: %v", err)
	}
}
