package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Failures of the kubelet's requests, which name the resource and the device ID.
var (
	// ErrNotAdvertised is a device ID the plugin does not advertise (now).
	ErrNotAdvertised = errors.New("device ID not advertised")
	// ErrUnhealthy is a device advertised Unhealthy: discovery no longer finds its GPU.
	ErrUnhealthy = errors.New("device unhealthy (its GPU is no longer found on this node)")
	// ErrFaulty is a device advertised Unhealthy because its GPU reported a critical
	// fault (an XID event), which the error names.
	ErrFaulty = errors.New("device unhealthy (its GPU reported a critical fault)")
)

// resourceServer is the DevicePlugin service of one resource name.
type resourceServer struct {
	pluginapi.UnimplementedDevicePluginServer
	resource string
	cfg      Config
	metrics  *Metrics

	mu      sync.Mutex
	units   map[string]Unit      // by UUID, the units advertised
	healthy map[string]bool      // by UUID
	gone    map[string]time.Time // by UUID, the Unhealthy units: since when
	faults  map[string]string    // by GPU UUID, the GPUs out of service: why
	order   []string             // UUIDs in index order
	version uint64               // bumped on every change; ListAndWatch streams wait on it
	changed chan struct{}
}

func newResourceServer(resource string, cfg Config, m *Metrics) *resourceServer {
	return &resourceServer{resource: resource, cfg: cfg, metrics: m, units: map[string]Unit{}, healthy: map[string]bool{},
		gone: map[string]time.Time{}, faults: map[string]string{}, changed: make(chan struct{})}
}

// update sets the units discovery found now, with gpus the UUIDs of every GPU found: new
// units are added healthy, returning ones turn healthy again. A missing unit whose GPU is
// still there (MIG repartitioned, or MIG turned on or off) is dropped; one whose GPU
// vanished turns Unhealthy (the kubelet stops allocating it) and is dropped when it stays
// away for ForgetAfter. It reports whether anything changed.
func (s *resourceServer) update(units []Unit, gpus map[string]bool, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	present := map[string]bool{}
	changed := false
	for _, u := range units {
		present[u.UUID] = true
		if old, ok := s.units[u.UUID]; !ok || !sameUnit(old, u) {
			changed = true
			if !ok {
				s.order = append(s.order, u.UUID)
			}
		}
		s.units[u.UUID] = u
		if !s.healthy[u.UUID] {
			changed = true
		}
		s.healthy[u.UUID] = true
		delete(s.gone, u.UUID)
	}
	for uuid, u := range s.units {
		switch {
		case present[uuid]:
		case gpus[u.Parent]:
			s.drop(uuid)
			changed = true
		case s.healthy[uuid]:
			s.healthy[uuid], s.gone[uuid], changed = false, now, true
		}
	}
	changed = s.forgetLocked(now) || changed
	if changed {
		sort.SliceStable(s.order, func(i, j int) bool { return less(s.units[s.order[i]], s.units[s.order[j]]) })
		s.notify()
	}
	return changed
}

// forget drops the units that have been Unhealthy for ForgetAfter, and reports whether
// there were any.
func (s *resourceServer) forget(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.forgetLocked(now) {
		return false
	}
	s.notify()
	return true
}

func (s *resourceServer) forgetLocked(now time.Time) bool {
	changed := false
	for uuid, since := range s.gone {
		if now.Sub(since) >= s.cfg.forgetAfter() {
			s.drop(uuid)
			changed = true
		}
	}
	return changed
}

func (s *resourceServer) drop(uuid string) {
	delete(s.units, uuid)
	delete(s.healthy, uuid)
	delete(s.gone, uuid)
	s.order = slices.DeleteFunc(s.order, func(u string) bool { return u == uuid })
}

// notify wakes the ListAndWatch streams.
func (s *resourceServer) notify() {
	s.version++
	close(s.changed)
	s.changed = make(chan struct{})
}

// setFaults sets the GPUs out of service (by GPU UUID, why): every unit of such a GPU,
// its MIG devices and replicas, is advertised Unhealthy. It reports whether any unit's
// health changed.
func (s *resourceServer) setFaults(faults map[string]string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	for _, u := range s.units {
		if (s.faults[u.Parent] != "") != (faults[u.Parent] != "") {
			changed = true
		}
	}
	s.faults = faults
	if changed {
		s.notify()
	}
	return changed
}

// up reports whether a unit is advertised Healthy: its GPU is found and in service.
func (s *resourceServer) up(u Unit) bool { return s.healthy[u.UUID] && s.faults[u.Parent] == "" }

// count returns how many units are advertised, and how many of them are healthy.
func (s *resourceServer) count() (all, healthy int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.units {
		if s.up(u) {
			healthy++
		}
	}
	return len(s.units), healthy
}

// unit returns the unit of a device ID the plugin advertises.
func (s *resourceServer) unit(id string) (Unit, error) {
	if uuid, ok := ParseReplicaID(id, s.cfg.Replicas); ok {
		if u, ok := s.units[uuid]; ok {
			return u, nil
		}
	}
	return Unit{}, fmt.Errorf("%s: %w: %s", s.resource, ErrNotAdvertised, quoteID(id))
}

// less orders units by GPU index, then MIG index.
func less(a, b Unit) bool {
	if a.GPU != b.GPU {
		return a.GPU < b.GPU
	}
	return migIndex(a.Index) < migIndex(b.Index)
}

func migIndex(index string) int {
	_, m, ok := strings.Cut(index, ":")
	if !ok {
		return -1
	}
	n, _ := strconv.Atoi(m)
	return n
}

// devices is the list the kubelet sees, and a channel that closes on the next change.
func (s *resourceServer) devices() ([]*pluginapi.Device, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*pluginapi.Device, 0, len(s.order)*s.cfg.Replicas)
	for _, uuid := range s.order {
		health := pluginapi.Healthy
		if !s.up(s.units[uuid]) {
			health = pluginapi.Unhealthy
		}
		for n := range s.cfg.Replicas {
			out = append(out, &pluginapi.Device{ID: ReplicaID(uuid, n, s.cfg.Replicas), Health: health})
		}
	}
	return out, s.changed
}

// GetDevicePluginOptions says the plugin ranks allocations.
func (s *resourceServer) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

// ListAndWatch sends the devices, then again on every change, until the kubelet or the
// plugin ends the stream.
func (s *resourceServer) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	for {
		devs, changed := s.devices()
		if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
			return err
		}
		s.metrics.listAndWatchSent(s.resource)
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// GetPreferredAllocation picks, for each container, the must-include devices, then
// from the available ones: for whole GPUs, those closest to the ones already picked (PCI
// bus distance), then by index; for time-sliced replicas, a GPU not picked yet and with
// the most free replicas first, so that load spreads over the GPUs.
func (s *resourceServer) GetPreferredAllocation(_ context.Context, r *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, cr := range r.GetContainerRequests() {
		ids, err := s.prefer(cr.GetAvailableDeviceIDs(), cr.GetMustIncludeDeviceIDs(), int(cr.GetAllocationSize()))
		if err != nil {
			return nil, err
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

func (s *resourceServer) prefer(available, must []string, size int) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if size > len(available) {
		return nil, fmt.Errorf("%s: %d devices asked for, %d available", s.resource, size, len(available))
	}
	units := make(map[string]Unit, len(available)+len(must))
	for _, id := range slices.Concat(available, must) {
		u, err := s.unit(id)
		if err != nil {
			return nil, err
		}
		units[id] = u
	}
	free := map[int]int{} // free replicas per GPU
	for _, id := range available {
		free[units[id].GPU]++
	}
	chosen := slices.Clone(must)
	gpus := map[int]bool{}
	for _, id := range must {
		gpus[units[id].GPU] = true
	}
	rest := slices.DeleteFunc(slices.Clone(available), func(id string) bool { return slices.Contains(must, id) })
	for len(chosen) < size && len(rest) > 0 {
		best := 0
		for i := 1; i < len(rest); i++ {
			if s.better(rest[i], rest[best], units, gpus, free) {
				best = i
			}
		}
		chosen = append(chosen, rest[best])
		gpus[units[rest[best]].GPU] = true
		rest = slices.Delete(rest, best, best+1)
	}
	return chosen, nil
}

// better reports whether device a is a better next pick than b; units has the unit of
// each.
func (s *resourceServer) better(a, b string, units map[string]Unit, chosen map[int]bool, free map[int]int) bool {
	ua, ub := units[a], units[b]
	if s.cfg.Replicas > 1 {
		if chosen[ua.GPU] != chosen[ub.GPU] {
			return !chosen[ua.GPU]
		}
		if free[ua.GPU] != free[ub.GPU] {
			return free[ua.GPU] > free[ub.GPU]
		}
	} else if len(chosen) > 0 {
		da, db := distance(ua, chosen, s.units), distance(ub, chosen, s.units)
		if da != db {
			return da < db
		}
	}
	if less(ua, ub) != less(ub, ua) {
		return less(ua, ub)
	}
	return a < b
}

// distance is how far a unit is from the nearest chosen GPU: NVML's topology level when
// discovery has it (same board, PCIe switch, host bridge, NUMA node, system), else the
// PCI bus distance (GPUs on nearby buses share switches and root complexes).
func distance(u Unit, chosen map[int]bool, units map[string]Unit) int {
	best := 1 << 30
	for _, c := range units {
		if !chosen[c.GPU] {
			continue
		}
		d := busDistance(u.PCIBusID, c.PCIBusID)
		if c.Pos < len(u.Topology) {
			d = u.Topology[c.Pos]<<20 + d // the level decides; the bus breaks ties
		}
		if d < best {
			best = d
		}
	}
	return best
}

// busDistance compares two bus IDs (0000:07:00.0): a different domain is far; else the
// difference of the bus numbers.
func busDistance(a, b string) int {
	ad, ab, ok1 := splitBus(a)
	bd, bb, ok2 := splitBus(b)
	if !ok1 || !ok2 {
		return 1 << 20
	}
	if ad != bd {
		return 1 << 16
	}
	if ab > bb {
		return ab - bb
	}
	return bb - ab
}

func splitBus(id string) (string, int, bool) {
	parts := strings.Split(id, ":")
	if len(parts) != 3 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(parts[1], 16, 16)
	if err != nil {
		return "", 0, false
	}
	return strings.ToLower(parts[0]), int(n), true
}

// Allocate answers each container request with its units: CDI names in CDIDevices
// (cdi-cri), and always the resource's allocation annotation (AllocationKey), plus the
// sharing env and annotation when the units are time-sliced. An ID the plugin does not
// advertise, or advertises Unhealthy, fails the request.
func (s *resourceServer) Allocate(_ context.Context, r *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	defer s.metrics.allocateTimer(s.resource)()
	resp := &pluginapi.AllocateResponse{}
	for _, cr := range r.GetContainerRequests() {
		c, err := s.allocate(cr.GetDevicesIds())
		if err != nil {
			return nil, err
		}
		resp.ContainerResponses = append(resp.ContainerResponses, c)
	}
	return resp, nil
}

func (s *resourceServer) allocate(ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var uuids []string
	for _, id := range ids {
		u, err := s.unit(id)
		if err != nil {
			return nil, err
		}
		if !s.healthy[u.UUID] {
			return nil, fmt.Errorf("%s: %w: %s", s.resource, ErrUnhealthy, quoteID(id))
		}
		if why := s.faults[u.Parent]; why != "" {
			return nil, fmt.Errorf("%s: %w: %s: %s", s.resource, ErrFaulty, quoteID(id), why)
		}
		if !slices.Contains(uuids, u.UUID) {
			uuids = append(uuids, u.UUID)
		}
	}
	c := &pluginapi.ContainerAllocateResponse{Annotations: map[string]string{AllocationKey(s.resource): strings.Join(uuids, ",")}}
	if s.cfg.ListStrategy == ListCDICRI {
		for _, u := range uuids {
			c.CdiDevices = append(c.CdiDevices, &pluginapi.CDIDevice{Name: CDIName(s.cfg.Kind, u)})
		}
	}
	if s.cfg.Replicas > 1 {
		c.Annotations[AnnotationReplicas] = strconv.Itoa(s.cfg.Replicas)
		c.Envs = map[string]string{EnvReplicas: strconv.Itoa(s.cfg.Replicas)}
	}
	return c, nil
}

// PreStartContainer is not used (the options do not ask for it).
func (s *resourceServer) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}
