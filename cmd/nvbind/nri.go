package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/nriplugin"
	"github.com/nvbind/nvbind/spec"
)

type nriFlags struct {
	rootFlags
	specFlags
	dpFlags
	devicePlugin, requireAllocation bool
	socket, name, index             string
	metricsAddr, cdiSpecDir         string
	cdiMode, envRequests            bool
	allowed, allNS                  []string
	rescan                          time.Duration
}

func newNRICommand(g *globalFlags) *cobra.Command {
	f := &nriFlags{}
	cmd := &cobra.Command{
		Use:   "nri",
		Short: "Run the NRI plugin that injects GPUs into containers of containerd and CRI-O",
		Long: `Run the NRI plugin. It registers with containerd or CRI-O, sees every CreateContainer, and gives
GPUs to containers that ask for them, in this order (the first that asks wins):

  1. the pod annotation gpus.nvbind.io (also gpus.nvbind.io/container.<name> and gpus.nvbind.io/pod):
     all, none, or a list of 0, gpu0, GPU-<uuid>, 0:1 (MIG), MIG-<uuid>;
     capabilities.nvbind.io picks the driver capabilities (default compute,utility)
  2. CDI annotations: cdi.k8s.io/<key>: nvidia.com/gpu=0 on the container, nvidia.cdi.k8s.io/container.<name>
  3. the container's NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES and NVIDIA_REQUIRE_* (--env-requests)

Launched by the runtime from /opt/nri/plugins (NRI_PLUGIN_* set), it uses the connection it is given;
otherwise it dials --socket and dials again whenever the runtime restarts.`,
		Example: `  nvbind nri
  nvbind nri --socket /var/run/nri/nri.sock --metrics-address :9402 --all-gpus-namespaces ml-admin
  nvbind nri --cdi-mode --cdi-spec-dir /var/run/cdi     # containerd 2.1+, CRI-O 1.34+`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return f.run(cmd.Context(), log)
		},
	}
	f.rootFlags.register(cmd)
	f.specFlags.register(cmd)
	f.dpFlags.register(cmd)
	fl := cmd.Flags()
	fl.BoolVar(&f.devicePlugin, "device-plugin", false, "also run the device plugin (the flags of nvbind device-plugin apply), so a node needs one pod")
	fl.BoolVar(&f.requireAllocation, "require-allocation", false,
		"give each container exactly the GPUs the kubelet allocated to it (nvbind's device plugin) and refuse other requests; a container without an allocation gets no GPU")
	fl.StringVar(&f.socket, "socket", api.DefaultSocketPath, "the runtime's NRI socket")
	fl.StringVar(&f.name, "plugin-name", "nvbind", "plugin name")
	fl.StringVar(&f.index, "plugin-index", "10", "plugin index (00-99): plugins run in ascending order")
	fl.BoolVar(&f.cdiMode, "cdi-mode", false, "add CDI device names for the runtime to resolve, and keep the spec in --cdi-spec-dir fresh")
	fl.StringVar(&f.cdiSpecDir, "cdi-spec-dir", "/var/run/cdi", "where --cdi-mode writes the spec")
	fl.BoolVar(&f.envRequests, "env-requests", true, "let NVIDIA_VISIBLE_DEVICES in a container's env request GPUs (any pod can set env)")
	fl.StringSliceVar(&f.allowed, "allowed-namespaces", nil, "namespaces that may request GPUs (default: all)")
	fl.StringSliceVar(&f.allNS, "all-gpus-namespaces", nil, "namespaces that may request every GPU with \"all\" (default: none; an env request of all elsewhere is ignored)")
	fl.StringVar(&f.metricsAddr, "metrics-address", ":9402", "address of /metrics, /readyz, /livez and /healthz (empty: off)")
	fl.DurationVar(&f.rescan, "rescan-interval", 30*time.Second, "how often discovery runs again to pick up driver and MIG changes")
	return cmd
}

func (f *nriFlags) run(ctx context.Context, log *slog.Logger) error {
	so, err := f.options()
	if err != nil {
		return err
	}
	adj, err := nriplugin.NewAdjuster(nriplugin.Config{
		Spec:              so,
		CDIMode:           f.cdiMode,
		EnvRequests:       f.envRequests,
		AllowedNamespaces: f.allowed,
		AllNamespaces:     f.allNS,
		RequireAllocation: f.requireAllocation,
	})
	if err != nil {
		return err
	}
	d, err := f.discoverer()
	if err != nil {
		return err
	}
	metrics := nriplugin.NewMetrics(version, commit)
	p := nriplugin.NewPlugin(adj, log, metrics)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var dp *deviceplugin.Plugin
	if f.devicePlugin {
		dm := deviceplugin.NewMetrics()
		metrics.Register(dm.Collectors()...)
		if dp, err = f.plugin(so, log, dm); err != nil {
			return err
		}
		p.AlsoReady(dp.Registered)
	}

	// Discovery: once before registering, then on every change.
	events := d.Watch(ctx, f.rescan)
	ready := make(chan struct{})
	go func() {
		first := true
		for ev := range events {
			switch {
			case ev.Err != nil:
				log.Error("discovery failed; keeping the last inventory", slog.Any("error", ev.Err))
			default:
				adj.SetInventory(ev.Inventory)
				log.Info("inventory", "driver", ev.Inventory.Driver.Version, "gpus", len(ev.Inventory.Devices),
					"source", string(ev.Inventory.Source), "files", len(ev.Inventory.Files))
				if f.cdiMode {
					writeCDIModeSpec(ev.Inventory, so, f.cdiSpecDir, log)
				}
				if dp != nil {
					listStrategy := f.listStrategy
					if f.cdiMode {
						listStrategy = "" // the spec is written above
					}
					feedDevicePlugin(dp, listStrategy, ev.Inventory, so, f.cdiSpecDir, log)
				}
			}
			if first {
				first = false
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-ctx.Done():
		return nil
	}
	if f.metricsAddr != "" {
		if err := serveMetrics(ctx, f.metricsAddr, metrics, p, log); err != nil {
			return err
		}
	}
	preRegistered := os.Getenv(api.PluginSocketEnvVar) != ""
	o := nriplugin.RunOptions{Socket: f.socket, Reconnect: !preRegistered}
	if os.Getenv(api.PluginNameEnvVar) == "" {
		o.Name, o.Index = f.name, f.index
	}
	log.Info("starting NRI plugin", "socket", f.socket, "pre_registered", preRegistered, "cdi_mode", f.cdiMode)
	if dp != nil {
		go func() {
			if err := dp.Run(ctx); err != nil {
				log.Error("device plugin stopped", slog.Any("error", err))
			}
		}()
	}
	return p.Run(ctx, o)
}

// writeCDIModeSpec keeps the spec that --cdi-mode's device names refer to in step with
// the inventory, with the same hook options as the direct edits.
func writeCDIModeSpec(inv *gpu.Inventory, o spec.Options, dir string, log *slog.Logger) {
	s, err := spec.Generate(inv, o)
	if err == nil {
		var name string
		if name, err = spec.FileName(s, spec.FormatYAML); err == nil {
			err = spec.WriteFile(s, filepath.Join(dir, name), spec.FormatYAML)
		}
	}
	if err != nil {
		log.Error("CDI spec not refreshed; the old one stays", slog.Any("error", err))
		return
	}
	log.Info("CDI spec refreshed", "dir", dir, "devices", len(s.Devices))
}

// serveMetrics serves /metrics, /livez (the process answers), and /readyz (200 while
// registered with the runtime, and with --device-plugin with the kubelet), with /healthz
// kept as the same check for older probes.
func serveMetrics(ctx context.Context, addr string, m *nriplugin.Metrics, p *nriplugin.Plugin, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	ready := func(w http.ResponseWriter, _ *http.Request) {
		if !p.Ready() {
			http.Error(w, "not registered with the runtime (or, with --device-plugin, the kubelet)", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	}
	mux.HandleFunc("/readyz", ready)
	mux.HandleFunc("/healthz", ready)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-address %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", slog.Any("error", err))
		}
	}()
	log.Info("serving /metrics, /readyz and /livez", "address", ln.Addr().String())
	return nil
}
