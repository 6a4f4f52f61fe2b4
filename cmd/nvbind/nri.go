package main

import (
	"time"

	"github.com/spf13/cobra"
)

// nriDefaultSocket is NRI's default socket (api.DefaultSocketPath, which a test of the
// full build compares): this file is also in the lean build, which links no NRI.
const nriDefaultSocket = "/var/run/nri/nri.sock"

type nriFlags struct {
	rootFlags
	specFlags
	dpFlags
	draFlags
	layoutFlags
	devicePlugin, requireAllocation bool
	dra                             bool
	socket, name, index, stage      string
	metricsAddr, cdiSpecDir         string
	cdiMode, envRequests, devChar   bool
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
  nvbind nri --device-plugin --require-allocation       # GPUs the scheduler accounts for
  nvbind nri --dra --require-allocation                 # GPUs claimed through DRA (gpu.nvbind.io)`,
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
	f.draFlags.register(cmd)
	f.layoutFlags.register(cmd, "mount, with the layouts built here when nvbind may mount (root), else by nvbind layout build --watch beside it; one mount per file until a layout is complete")
	fl := cmd.Flags()
	fl.BoolVar(&f.devicePlugin, "device-plugin", false, "also run the device plugin (the flags of nvbind device-plugin apply), so a node needs one pod")
	fl.BoolVar(&f.dra, "dra", false, "also run the DRA driver gpu.nvbind.io (the flags of nvbind dra apply), so a node needs one pod")
	fl.BoolVar(&f.requireAllocation, "require-allocation", false,
		"give each container exactly the GPUs the kubelet allocated to it (nvbind's device plugin, or its DRA claims) and refuse other requests; a container without an allocation gets no GPU")
	fl.StringVar(&f.socket, "socket", nriDefaultSocket, "the runtime's NRI socket")
	fl.StringVar(&f.name, "plugin-name", "nvbind", "plugin name")
	fl.StringVar(&f.index, "plugin-index", "10", "plugin index (00-99): plugins run in ascending order")
	fl.BoolVar(&f.cdiMode, "cdi-mode", false, "add CDI device names for the runtime to resolve, and keep the spec in --cdi-spec-dir fresh")
	fl.StringVar(&f.cdiSpecDir, "cdi-spec-dir", "/var/run/cdi", "where --cdi-mode writes the spec")
	fl.BoolVar(&f.envRequests, "env-requests", true, "let NVIDIA_VISIBLE_DEVICES in a container's env request GPUs (any pod can set env)")
	fl.StringSliceVar(&f.allowed, "allowed-namespaces", nil, "namespaces that may request GPUs (default: all)")
	fl.StringSliceVar(&f.allNS, "all-gpus-namespaces", nil, "namespaces that may request every GPU with \"all\" (default: none; an env request of all elsewhere is ignored)")
	fl.StringVar(&f.metricsAddr, "metrics-address", ":9402", "address of /metrics, /readyz, /livez and /healthz (empty: off)")
	fl.DurationVar(&f.rescan, "rescan-interval", 30*time.Second, "how often discovery runs again to pick up driver and MIG changes")
	fl.StringVar(&f.stage, "stage", stageAuto, "who runs the driver's steps in a GPU container (links, ld cache, params): hook (nvbind-hook, a process in the runtime's createRuntime stage), plugin (the plugin itself at StartContainer, before the container's process runs), or auto: plugin with containerd where it may (root in the host's namespaces), else hook (CRI-O starts a container whose plugin steps failed); a container with a user namespace of its own always gets the hook")
	fl.BoolVar(&f.devChar, "dev-char-links", true, "keep /dev/char/<major>:<minor> links for NVIDIA's device nodes under the dev root (without them systemctl daemon-reload takes GPUs from running containers)")
	return cmd
}

// The values of nri --stage.
const (
	stageAuto   = "auto"
	stageHook   = "hook"
	stagePlugin = "plugin"
)
