package main

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/nriplugin"
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
  nvbind nri --cdi-mode --cdi-spec-dir /var/run/cdi     # containerd 2.1+, CRI-O 1.34+
  nvbind nri --device-plugin --require-allocation       # GPUs the scheduler accounts for`,
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
	svc := &nriplugin.Service{Plugin: p, Metrics: metrics, MetricsAddr: f.metricsAddr, SpecOptions: so, Log: log}
	if f.cdiMode {
		// the plugin names GPUs and capabilities separately, so the spec holds both
		svc.CDISpecDir, svc.SpecOptions.CapabilityDevices = f.cdiSpecDir, true
	}
	if f.devicePlugin {
		dm := deviceplugin.NewMetrics()
		metrics.Register(dm.Collectors()...)
		if svc.DevicePlugin, err = f.plugin(so, log, dm); err != nil {
			return err
		}
		p.AlsoReady(svc.DevicePlugin.Registered)
		if f.listStrategy == deviceplugin.ListCDICRI {
			svc.CDISpecDir = f.cdiSpecDir // the names the kubelet passes refer to this spec
		}
	}
	preRegistered := os.Getenv(api.PluginSocketEnvVar) != ""
	svc.Run = nriplugin.RunOptions{Socket: f.socket, Reconnect: !preRegistered}
	if os.Getenv(api.PluginNameEnvVar) == "" {
		svc.Run.Name, svc.Run.Index = f.name, f.index
	}
	log.Info("starting NRI plugin", "socket", f.socket, "pre_registered", preRegistered, "cdi_mode", f.cdiMode, "device_plugin", f.devicePlugin)
	// discovery: once before registering, then on every change
	svc.Events = d.Watch(ctx, f.rescan)
	return svc.Serve(ctx)
}
