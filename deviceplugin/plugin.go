package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nvbind/nvbind/gpu"
)

// DefaultDir is the kubelet's device-plugin folder: its registration socket and the
// plugins' sockets.
const DefaultDir = pluginapi.DevicePluginPath

// Plugin serves one DevicePlugin per resource name and keeps each registered with the
// kubelet.
type Plugin struct {
	cfg     Config
	dir     string
	log     *slog.Logger
	metrics *Metrics
	// poll is how often the plugin checks that the kubelet still knows it, and forgets
	// the devices gone for ForgetAfter.
	poll time.Duration
	now  func() time.Time

	mu      sync.Mutex
	servers map[string]*served
	faults  map[string]string // the GPUs out of service, for servers made later
}

type served struct {
	rs         *resourceServer
	socket     string
	srv        *grpc.Server
	registered bool
}

// New checks the configuration; dir is the kubelet's device-plugin folder.
func New(cfg Config, dir string, log *slog.Logger, m *Metrics) (*Plugin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics()
	}
	return &Plugin{cfg: cfg, dir: dir, log: log, metrics: m, poll: time.Second, now: time.Now, servers: map[string]*served{}}, nil
}

// Update takes a new inventory: new resources get a server, known ones their new unit
// list. A device whose GPU is still there but which the inventory no longer offers (MIG
// repartitioned) is dropped at once; one whose GPU vanished is advertised Unhealthy, so
// the kubelet's capacity drops, and dropped when it stays away for ForgetAfter. A resource
// left without devices keeps its server, with an empty device list.
func (p *Plugin) Update(inv *gpu.Inventory) error {
	res, err := Resources(inv, p.cfg)
	if err != nil {
		return err
	}
	gpus := make(map[string]bool, len(inv.Devices))
	for _, d := range inv.Devices {
		gpus[d.UUID] = true
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range res {
		if _, ok := p.servers[name]; !ok {
			p.servers[name] = &served{rs: newResourceServer(name, p.cfg, p.metrics), socket: filepath.Join(p.dir, socketName(name))}
			p.servers[name].rs.faults = p.faults
		}
	}
	for name, s := range p.servers {
		if s.rs.update(res[name], gpus, now) {
			p.logCount(name, s.rs)
		}
	}
	return nil
}

// SetFaults takes the GPUs out of service, by GPU UUID with why (health.Tracker's
// faults): their units, MIG devices and replicas included, are advertised Unhealthy, so
// the kubelet's allocatable count drops and allocations of them fail, until they return.
func (p *Plugin) SetFaults(faults map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = faults
	for name, s := range p.servers {
		if s.rs.setFaults(faults) {
			p.logCount(name, s.rs)
		}
	}
}

// forget drops the devices gone for ForgetAfter.
func (p *Plugin) forget() {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, s := range p.servers {
		if s.rs.forget(now) {
			p.logCount(name, s.rs)
		}
	}
}

func (p *Plugin) logCount(name string, rs *resourceServer) {
	all, healthy := rs.count()
	if all == 0 {
		p.log.Warn("every device of a resource is gone; advertised with none", "resource", name)
		return
	}
	p.log.Info("devices", "resource", name, "units", all, "healthy", healthy, "replicas", p.cfg.Replicas)
}

// socketName is the plugin's socket for a resource: nvbind-nvidia.com-gpu.sock.
func socketName(resource string) string {
	return "nvbind-" + strings.NewReplacer("/", "-").Replace(resource) + ".sock"
}

// Registered reports whether every resource is registered with the kubelet.
func (p *Plugin) Registered() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.servers) == 0 {
		return false
	}
	for _, s := range p.servers {
		if !s.registered {
			return false
		}
	}
	return true
}

// Run serves and registers every resource until ctx ends. The kubelet removes the
// plugins' sockets when it restarts, so a missing socket means serve again and register
// again. It also drops the devices gone for ForgetAfter, which no new inventory may come
// to do.
func (p *Plugin) Run(ctx context.Context) error {
	t := time.NewTicker(p.poll)
	defer t.Stop()
	defer p.stopAll()
	for {
		p.reconcile(ctx)
		p.forget()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *Plugin) reconcile(ctx context.Context) {
	p.mu.Lock()
	names := make([]string, 0, len(p.servers))
	for n := range p.servers {
		names = append(names, n)
	}
	p.mu.Unlock()
	slices.Sort(names)
	for _, name := range names {
		p.mu.Lock()
		s := p.servers[name]
		p.mu.Unlock()
		if _, err := os.Lstat(s.socket); err == nil && s.srv != nil && s.registered {
			continue
		}
		if err := p.serveAndRegister(ctx, name, s); err != nil {
			p.log.Warn("not registered with the kubelet; retrying", "resource", name, slog.Any("error", err))
		}
	}
}

func (p *Plugin) serveAndRegister(ctx context.Context, name string, s *served) error {
	p.mu.Lock()
	if s.srv != nil {
		s.srv.Stop()
		s.srv = nil
	}
	s.registered = false
	p.mu.Unlock()
	kubelet := filepath.Join(p.dir, filepath.Base(pluginapi.KubeletSocket))
	if _, err := os.Stat(kubelet); err != nil {
		return fmt.Errorf("the kubelet's registration socket: %w", err)
	}
	if err := os.Remove(s.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ln, err := net.Listen("unix", s.socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.socket, err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, s.rs)
	go func() { _ = srv.Serve(ln) }()
	p.mu.Lock()
	s.srv = srv
	p.mu.Unlock()

	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+kubelet, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	_, err = pluginapi.NewRegistrationClient(conn).Register(rctx, &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: filepath.Base(s.socket), ResourceName: name,
		Options: &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	})
	if err != nil {
		return fmt.Errorf("register %s with the kubelet: %w", name, err)
	}
	p.mu.Lock()
	s.registered = true
	p.mu.Unlock()
	p.metrics.registrations.WithLabelValues(name).Inc()
	p.log.Info("registered with the kubelet", "resource", name, "socket", s.socket)
	return nil
}

func (p *Plugin) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.servers {
		if s.srv != nil {
			s.srv.Stop()
			s.srv = nil
		}
		s.registered = false
		_ = os.Remove(s.socket)
	}
}
