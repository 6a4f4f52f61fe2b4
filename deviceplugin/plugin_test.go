package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nvbind/nvbind/gpu"
)

// inventory is a node of n GPUs on buses 07, 0f, 47, 4e, 87, 90, b7, bd (a DGX A100's
// layout); the GPUs listed in mig carry two MIG devices of the profile.
func inventory(n int, mig map[int]string) *gpu.Inventory {
	buses := []string{"07", "0f", "47", "4e", "87", "90", "b7", "bd"}
	inv := &gpu.Inventory{}
	for i := range n {
		d := gpu.Device{Index: i, UUID: fmt.Sprintf("GPU-%04d", i), PCIBusID: "0000:" + buses[i] + ":00.0"}
		if p, ok := mig[i]; ok {
			for j := range 2 {
				d.MIG = append(d.MIG, gpu.MIGDevice{Parent: i, Index: j, UUID: fmt.Sprintf("MIG-%d-%d", i, j), Profile: p})
			}
		}
		inv.Devices = append(inv.Devices, d)
	}
	return inv
}

func cfg() Config {
	return Config{Resource: "nvidia.com/gpu", MIGStrategy: MIGNone, Replicas: 1, ListStrategy: ListCDICRI, Kind: "nvidia.com/gpu"}
}

func uuids(us []Unit) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.UUID)
	}
	return out
}

func TestResourcesByMIGStrategy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		strategy string
		inv      *gpu.Inventory
		want     map[string]string
		err      string
	}{
		{"none ignores MIG", MIGNone, inventory(2, map[int]string{0: "3g.20gb"}), map[string]string{"nvidia.com/gpu": "GPU-0000 GPU-0001"}, ""},
		{"single", MIGSingle, inventory(2, map[int]string{0: "3g.20gb", 1: "3g.20gb"}),
			map[string]string{"nvidia.com/gpu": "MIG-0-0 MIG-0-1 MIG-1-0 MIG-1-1"}, ""},
		{"single without MIG is full GPUs", MIGSingle, inventory(2, nil), map[string]string{"nvidia.com/gpu": "GPU-0000 GPU-0001"}, ""},
		{"single refuses a mix", MIGSingle, inventory(2, map[int]string{0: "3g.20gb"}), nil, "use mixed"},
		{"single refuses two profiles", MIGSingle, inventory(2, map[int]string{0: "3g.20gb", 1: "1g.5gb"}), nil, "profiles 1g.5gb, 3g.20gb"},
		{"mixed", MIGMixed, inventory(3, map[int]string{0: "3g.20gb", 2: "1g.5gb"}),
			map[string]string{"nvidia.com/gpu": "GPU-0001", "nvidia.com/mig-3g.20gb": "MIG-0-0 MIG-0-1", "nvidia.com/mig-1g.5gb": "MIG-2-0 MIG-2-1"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := cfg()
			c.MIGStrategy = tc.strategy
			res, err := Resources(tc.inv, c)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for r, us := range res {
				got[r] = strings.Join(uuids(us), " ")
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("resources = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestConfigValidateNamesChoices(t *testing.T) {
	t.Parallel()
	err := Config{Resource: "gpu", MIGStrategy: "some", ListStrategy: "envvar", Replicas: 0}.Validate()
	for _, want := range []string{"valid: none, single, mixed", "valid: cdi-cri, annotations", "valid: 1 to 1024", "nvidia.com/gpu"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

func TestAllocate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		list     string
		replicas int
		ids      []string
		cdi      string
		ann      string
		env      string
	}{
		{"cdi-cri", ListCDICRI, 1, []string{"GPU-0001", "GPU-0000"}, "nvidia.com/gpu=GPU-0001 nvidia.com/gpu=GPU-0000", "GPU-0001,GPU-0000", ""},
		{"annotations", ListAnnotations, 1, []string{"GPU-0002"}, "", "GPU-0002", ""},
		{"time-sliced", ListCDICRI, 4, []string{"GPU-0003::2"}, "nvidia.com/gpu=GPU-0003", "GPU-0003", "4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := cfg()
			c.ListStrategy, c.Replicas = tc.list, tc.replicas
			s := newResourceServer("nvidia.com/gpu", c, NewMetrics())
			res, _ := Resources(inventory(4, nil), c)
			s.update(res["nvidia.com/gpu"], nil, time.Time{})
			resp, err := s.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: tc.ids}}})
			if err != nil {
				t.Fatal(err)
			}
			cr := resp.ContainerResponses[0]
			var cdi []string
			for _, d := range cr.CdiDevices {
				cdi = append(cdi, d.Name)
			}
			if strings.Join(cdi, " ") != tc.cdi || cr.Annotations[AllocationKey("nvidia.com/gpu")] != tc.ann || cr.Envs[EnvReplicas] != tc.env {
				t.Errorf("response %+v", cr)
			}
			if tc.env != "" && cr.Annotations[AnnotationReplicas] != tc.env {
				t.Errorf("replicas annotation %q", cr.Annotations[AnnotationReplicas])
			}
		})
	}
	s := newResourceServer("nvidia.com/gpu", cfg(), NewMetrics())
	s.update([]Unit{{UUID: "GPU-0000", Parent: "GPU-0000"}, {UUID: "GPU-0001", GPU: 1, Parent: "GPU-0001"}}, nil, time.Time{})
	s.update([]Unit{{UUID: "GPU-0000", Parent: "GPU-0000"}}, map[string]bool{"GPU-0000": true}, time.Time{})
	for id, want := range map[string]error{"GPU-9999": ErrNotAdvertised, "GPU-0001": ErrUnhealthy} {
		if _, err := s.allocate([]string{id}); !errors.Is(err, want) || !strings.Contains(err.Error(), `"`+id+`"`) {
			t.Errorf("allocate %s: %v, want %v", id, err, want)
		}
	}
}

func TestPreferredAllocation(t *testing.T) {
	t.Parallel()
	all := func(replicas int) []string {
		var out []string
		for g := range 8 {
			for n := range replicas {
				out = append(out, ReplicaID(fmt.Sprintf("GPU-%04d", g), n, replicas))
			}
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		replicas  int
		available []string
		must      []string
		size      int
		want      string
	}{
		{"index order", 1, all(1), nil, 2, "GPU-0000 GPU-0001"},
		{"close to a must-include GPU", 1, all(1), []string{"GPU-0005"}, 2, "GPU-0005 GPU-0004"},
		{"closest bus first", 1, []string{"GPU-0000", "GPU-0002", "GPU-0006", "GPU-0007"}, []string{"GPU-0006"}, 3, "GPU-0006 GPU-0007 GPU-0002"},
		{"NVML topology over bus distance", -1, all(1), []string{"GPU-0000"}, 3, "GPU-0000 GPU-0003 GPU-0002"},
		{"replicas spread over GPUs", 2, all(2), nil, 3, "GPU-0000::0 GPU-0001::0 GPU-0002::0"},
		{"replicas on the least-used GPU", 2, slices.DeleteFunc(all(2), func(id string) bool { return id == "GPU-0000::0" }), nil, 1, "GPU-0001::0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := cfg()
			inv := inventory(8, nil)
			if c.Replicas = tc.replicas; tc.replicas < 0 {
				// GPU 0 shares a PCIe switch with GPU 3 (not its bus neighbour); 1 and 2, one
				// NUMA node away, tie, and the bus (2 is nearer 3) decides
				c.Replicas = 1
				for i := range inv.Devices {
					for j := range 8 {
						l := 50
						switch {
						case i == j:
							l = 0
						case i+j == 3 && i/4 == 0:
							l = 10
						case i/4 == j/4:
							l = 40
						}
						inv.Devices[i].Topology = append(inv.Devices[i].Topology, l)
					}
				}
			}
			s := newResourceServer("nvidia.com/gpu", c, NewMetrics())
			res, _ := Resources(inv, c)
			s.update(res["nvidia.com/gpu"], nil, time.Time{})
			resp, err := s.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
				{AvailableDeviceIDs: tc.available, MustIncludeDeviceIDs: tc.must, AllocationSize: int32(tc.size)}}})
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(resp.ContainerResponses[0].DeviceIDs, " "); got != tc.want {
				t.Errorf("preferred %s, want %s", got, tc.want)
			}
		})
	}
}

// fakeKubelet is the kubelet's registration service on kubelet.sock in dir; it records
// every registration and connects back to the plugin, as the kubelet does.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	dir  string
	srv  *grpc.Server
	mu   sync.Mutex
	regs []*pluginapi.RegisterRequest
}

func startKubelet(t testing.TB, dir string) *fakeKubelet {
	t.Helper()
	k := &fakeKubelet{dir: dir, srv: grpc.NewServer()}
	pluginapi.RegisterRegistrationServer(k.srv, k)
	ln, err := net.Listen("unix", filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = k.srv.Serve(ln) }()
	t.Cleanup(k.srv.Stop)
	return k
}

func (k *fakeKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	if r.Version != pluginapi.Version {
		return nil, fmt.Errorf("version %s", r.Version)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.regs = append(k.regs, r)
	return &pluginapi.Empty{}, nil
}

func (k *fakeKubelet) registrations() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for _, r := range k.regs {
		out = append(out, r.ResourceName+"@"+r.Endpoint)
	}
	return out
}

// socketDir is a folder for unix sockets, whose paths must stay short (108 bytes): a
// test's t.TempDir() is named after the test.
func socketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nvbdp") //nolint:usetesting // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func waitUntil(t testing.TB, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pluginClient dials the plugin's socket as the kubelet does.
func pluginClient(t testing.TB, socket string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

func health(devs []*pluginapi.Device) string {
	var out []string
	for _, d := range devs {
		out = append(out, d.ID+"="+d.Health)
	}
	return strings.Join(out, " ")
}

// TestRegisterWatchAndReregister runs the plugin against a fake kubelet: registration,
// the device list over ListAndWatch, a GPU that discovery loses turning Unhealthy and
// back, and registering again after a kubelet restart removes the plugin's socket.
func TestRegisterWatchAndReregister(t *testing.T) {
	t.Parallel()
	dir := socketDir(t)
	k := startKubelet(t, dir)
	p, err := New(cfg(), dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.poll = 20 * time.Millisecond
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
	if got := k.registrations(); len(got) != 1 || got[0] != "nvidia.com/gpu@nvbind-nvidia.com-gpu.sock" {
		t.Fatalf("registrations %v", got)
	}
	c := pluginClient(t, filepath.Join(dir, "nvbind-nvidia.com-gpu.sock"))
	opts, err := c.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil || !opts.GetPreferredAllocationAvailable {
		t.Fatalf("options %v %v", opts, err)
	}
	stream, err := c.ListAndWatch(ctx, &pluginapi.Empty{})
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
		t.Errorf("first list %s", got)
	}
	if err := p.Update(inventory(1, nil)); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "GPU-0000=Healthy GPU-0001=Unhealthy" {
		t.Errorf("after GPU 1 went away: %s", got)
	}
	if err := p.Update(inventory(2, nil)); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "GPU-0000=Healthy GPU-0001=Healthy" {
		t.Errorf("after GPU 1 came back: %s", got)
	}
	// a kubelet restart wipes the plugin sockets
	if err := os.Remove(filepath.Join(dir, "nvbind-nvidia.com-gpu.sock")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "registration after the kubelet restart", func() bool { return len(k.registrations()) == 2 && p.Registered() })
}

// TestNoKubeletKeepsTrying: without the kubelet's socket the plugin is not registered and
// does not fail.
func TestNoKubeletKeepsTrying(t *testing.T) {
	t.Parallel()
	dir := socketDir(t)
	p, err := New(cfg(), dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.poll = 10 * time.Millisecond
	if err := p.Update(inventory(1, nil)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Run(ctx); err != nil || p.Registered() {
		t.Errorf("Run = %v, registered %v", err, p.Registered())
	}
	k := startKubelet(t, dir)
	ctx2, cancel2 := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx2) }()
	waitUntil(t, "registration once the kubelet is up", func() bool { return len(k.registrations()) == 1 })
	cancel2()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
