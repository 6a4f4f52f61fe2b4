package main

import (
	"os"
	"time"

	"github.com/spf13/cobra"
)

// Defaults of the DRA driver's folders: the kubelet's (the plugin folder is the driver's,
// plugins/gpu.nvbind.io).
const (
	draDefaultPluginDir    = "/var/lib/kubelet/plugins/gpu.nvbind.io"
	draDefaultRegistrarDir = "/var/lib/kubelet/plugins_registry"
)

// draFlags configure the DRA driver, alone (nvbind dra) or in nvbind nri (--dra).
type draFlags struct {
	nodeName, kubeconfig    string
	pluginDir, registrarDir string
	gpus                    string
}

func (d *draFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&d.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name, the pool of its ResourceSlices [$NODE_NAME, from the downward API]")
	fl.StringVar(&d.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the API server (default: the pod's service account) [$KUBECONFIG]")
	fl.StringVar(&d.pluginDir, "kubelet-plugin-dir", draDefaultPluginDir, "the driver's folder under the kubelet's plugins folder: its socket and checkpoint")
	fl.StringVar(&d.registrarDir, "kubelet-registrar-dir", draDefaultRegistrarDir, "the kubelet's plugin registration folder")
	fl.StringVar(&d.gpus, "dra-gpus", "", "the GPUs the DRA driver publishes, by index or UUID (a comma-separated list, or all; default all): the device plugin serves the others (nvbind nri --device-plugin; give nvbind device-plugin run apart the same --dra-gpus)")
}

type draCommandFlags struct {
	rootFlags
	specFlags
	draFlags
	cdiSpecDir string
	rescan     time.Duration
}

func newDRACommand(g *globalFlags) *cobra.Command {
	f := &draCommandFlags{}
	cmd := &cobra.Command{
		Use:   "dra",
		Short: "Run the Kubernetes DRA driver gpu.nvbind.io",
		Long: `Run the DRA driver gpu.nvbind.io: it publishes this node's GPUs and MIG devices as ResourceSlices, with
their attributes (type, uuid, index, minor, productName, brand, architecture, driverVersion, cudaDriverVersion,
cudaComputeCapability, resource.kubernetes.io/pciBusID; MIG: parentUUID, profile; capacity memory where NVML
knows it), and follows discovery: a GPU lost or back, a driver upgrade, a MIG change. For each claim the scheduler
allocated here, the kubelet asks it to prepare the devices: it discovers the GPUs again, writes the claim's CDI
spec (k8s.gpu.nvbind.io-claim_<claim UID>.yaml in --cdi-spec-dir: the devices, the driver files of the claim's
capabilities, the hook) and records it in a checkpoint, so that a restarted driver removes it when the claim goes.
Capabilities come from opaque configuration (apiVersion: gpus.nvbind.io/v1alpha1, kind: GpuConfig,
capabilities: [compute, utility]; default compute,utility).
In a cluster, run it inside the NRI plugin's pod instead: nvbind nri --dra.`,
		Example: `  nvbind dra --node-name $NODE_NAME
  nvbind dra --dra-gpus 0,1          # GPUs 0 and 1 only: run nvbind device-plugin --dra-gpus 0,1 for the others`,
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
	f.draFlags.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.cdiSpecDir, "cdi-spec-dir", "/var/run/cdi", "where the claims' CDI specs go")
	fl.DurationVar(&f.rescan, "rescan-interval", 30*time.Second, "how often discovery runs again (GPUs lost or back, MIG changes) besides reacting to file events")
	return cmd
}
