package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/dra"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/health"
	"github.com/nvbind/nvbind/internal/devchar"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
)

// Service is `nvbind nri` as a whole: it feeds discovery's events to the adjuster (and
// the device plugin), keeps nvbind's CDI spec where names in CRI or NRI refer to it,
// serves /metrics, /readyz, /livez and /healthz, and runs the NRI plugin once the first
// discovery has answered.
type Service struct {
	Plugin  *Plugin
	Metrics *Metrics
	// Events are discovery's events (gpu.Discoverer.Watch).
	Events <-chan gpu.Event
	// MetricsAddr is the address of the HTTP endpoints; empty: none.
	MetricsAddr string
	// Run says how the plugin connects to the runtime.
	Run RunOptions
	// CDISpecDir, when set, is where the service keeps nvbind's CDI spec, written with
	// SpecOptions (CDI mode; the device plugin's cdi-cri strategy).
	CDISpecDir  string
	SpecOptions spec.Options
	// DevicePlugin, when set, gets every inventory and runs beside the NRI plugin.
	DevicePlugin *deviceplugin.Plugin
	// DRA, when set, is the DRA driver: it gets every inventory and runs beside the NRI
	// plugin.
	DRA *dra.Driver
	// Health, when set, follows every inventory's GPUs and runs beside the device plugin
	// and the DRA driver.
	Health *health.Monitor
	// DevCharRoot, when set, is where the service keeps the /dev/char links of NVIDIA's
	// device nodes (the host's "/", or where it is mounted), after every inventory.
	DevCharRoot string
	// Layouts, when set, are the driver layouts of the plugin's edits (Config.Layouts).
	Layouts *layout.Provider
	Log     *slog.Logger

	inventories chan *gpu.Inventory
	// mu orders Apply and layoutsChanged: an inventory never replaces a newer one, and
	// spec writes never interleave
	mu sync.Mutex
}

// Serve runs until ctx ends or the plugin stops.
func (s *Service) Serve(ctx context.Context) error {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.Layouts != nil {
		s.inventories = make(chan *gpu.Inventory, 1)
		go s.Layouts.Run(ctx, s.inventories, s.layoutsChanged)
	}
	ready := make(chan struct{})
	go s.consume(ready)
	select {
	case <-ready:
	case <-ctx.Done():
		return nil
	}
	if s.MetricsAddr != "" {
		if err := s.serveHTTP(ctx); err != nil {
			return err
		}
	}
	if s.Health != nil {
		go s.Health.Run(ctx)
	}
	if s.DevicePlugin != nil {
		go func() {
			if err := s.DevicePlugin.Run(ctx); err != nil {
				s.Log.Error("device plugin stopped", slog.Any("error", err))
			}
		}()
	}
	if s.DRA != nil {
		go func() {
			if err := s.DRA.Run(ctx); err != nil {
				s.Log.Error("DRA driver stopped", slog.Any("error", err))
			}
		}()
	}
	return s.Plugin.Run(ctx, s.Run)
}

// consume applies discovery's events; ready closes after the first, failed or not, so
// that the plugin registers only with an answer from discovery.
func (s *Service) consume(ready chan<- struct{}) {
	first := true
	for ev := range s.Events {
		s.Apply(ev)
		if first {
			first = false
			close(ready)
		}
	}
	if first {
		close(ready)
	}
}

// Apply takes one discovery event: a new inventory replaces the old one everywhere; a
// failed discovery keeps the last good inventory and the spec on disk.
func (s *Service) Apply(ev gpu.Event) {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if ev.Err != nil {
		s.Log.Error("discovery failed; keeping the last inventory", slog.Any("error", ev.Err))
		return
	}
	inv := ev.Inventory
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Layouts != nil {
		// where this process builds them, the usual layouts are there before the
		// inventory serves a container, which then gets them at once
		s.Layouts.Prepare(inv)
	}
	s.Plugin.adj.SetInventory(inv)
	s.Log.Info("inventory", "driver", inv.Driver.Version, "gpus", len(inv.Devices), "source", string(inv.Source), "files", len(inv.Files))
	if s.CDISpecDir != "" {
		s.writeSpec(inv)
	}
	if s.inventories != nil {
		select { // the latest inventory replaces one not yet taken
		case <-s.inventories:
		default:
		}
		s.inventories <- inv
	}
	if s.DevCharRoot != "" {
		made, err := devchar.Ensure(s.DevCharRoot, devchar.Links(inv))
		for _, l := range made {
			s.Log.Info("/dev/char link made", "link", l.Path, "target", l.Target)
		}
		if err != nil {
			s.Log.Warn("/dev/char links not all made: systemctl daemon-reload may take GPUs from running containers", slog.Any("error", err))
		}
	}
	if s.DevicePlugin != nil {
		if err := s.DevicePlugin.Update(inv); err != nil {
			s.Log.Error("device plugin: devices not updated", slog.Any("error", err))
		}
	}
	if s.DRA != nil {
		s.DRA.Update(inv)
	}
	if s.Health != nil {
		s.Health.Update(inv)
	}
}

// layoutsChanged makes the edits of an inventory again once its layouts are complete.
func (s *Service) layoutsChanged(inv *gpu.Inventory) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Plugin.adj.Inventory() != inv {
		return // a newer inventory came meanwhile
	}
	s.Plugin.adj.SetInventory(inv)
	if s.CDISpecDir != "" {
		s.writeSpec(inv)
	}
}

// writeSpec keeps the spec that CDI names refer to in step with the inventory, with the
// same hook options as the direct edits; a failure leaves the old spec. It names the
// driver layouts once they are complete, and one mount per file until then.
func (s *Service) writeSpec(inv *gpu.Inventory) {
	so := s.SpecOptions
	if s.Layouts != nil && layout.Volatile(s.CDISpecDir) {
		so.LayoutBase = s.Layouts.Base
		plans, err := spec.Layouts(inv, so)
		if err != nil {
			s.Log.Error("CDI spec not refreshed; the old one stays", slog.Any("error", err))
			return
		}
		if !s.Layouts.ReadyAll(inv, plans) {
			so.LayoutBase = ""
		}
	}
	written, err := spec.WriteDir(inv, so, s.CDISpecDir, spec.FormatYAML)
	if err != nil {
		s.Log.Error("CDI spec not refreshed; the old one stays", slog.Any("error", err))
		return
	}
	for _, w := range written {
		msg := "CDI spec refreshed"
		if w.Unchanged {
			msg = "CDI spec unchanged"
		}
		s.Log.Info(msg, "path", w.Path, "kind", w.Spec.Kind, "devices", len(w.Spec.Devices))
		w.Log(s.Log)
	}
}

// Handler serves /metrics, /livez (the process answers), and /readyz (200 while
// registered with the runtime, and with the kubelet when the device plugin runs), with
// /healthz kept as the same check for older probes.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.Metrics.Handler())
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	ready := func(w http.ResponseWriter, _ *http.Request) {
		if !s.Plugin.Ready() {
			http.Error(w, "not registered with the runtime (or, with the device plugin, the kubelet)", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	}
	mux.HandleFunc("/readyz", ready)
	mux.HandleFunc("/healthz", ready)
	return mux
}

func (s *Service) serveHTTP(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.MetricsAddr)
	if err != nil {
		return fmt.Errorf("--metrics-address %s: %w", s.MetricsAddr, err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.Log.Error("metrics server stopped", slog.Any("error", err))
		}
	}()
	s.Log.Info("serving /metrics, /readyz and /livez", "address", ln.Addr().String())
	return nil
}
