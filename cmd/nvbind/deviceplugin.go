package main

import (
	"time"

	"github.com/spf13/cobra"
)

// Defaults of the device plugin's flags, as package deviceplugin names them (a test of
// the full build compares): this file is also in the lean build, which links no kubelet API.
const (
	dpDefaultMIGStrategy  = "none"
	dpDefaultListStrategy = "cdi-cri"
	dpDefaultKubeletDir   = "/var/lib/kubelet/device-plugins/"
	dpDefaultForgetAfter  = 5 * time.Minute
	dpDefaultXIDRecover   = 10 * time.Minute
)

// dpFlags configure the device plugin, alone (nvbind device-plugin) or in nvbind nri
// (--device-plugin).
type dpFlags struct {
	resource, migStrategy, listStrategy, kubeletDir string
	replicas                                        int
	forgetAfter                                     time.Duration
	xidIgnore, xidEvents                            string
	xidRecover                                      time.Duration
}

func (d *dpFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&d.resource, "resource-name", "nvidia.com/gpu", "resource name of full GPUs; MIG resources (mixed strategy) take its domain: nvidia.com/mig-1g.5gb")
	fl.StringVar(&d.migStrategy, "mig-strategy", dpDefaultMIGStrategy, "MIG strategy: none, single or mixed (as NVIDIA's device plugin)")
	fl.IntVar(&d.replicas, "replicas", 1, "time-slicing: advertise each GPU or MIG device this many times")
	fl.StringVar(&d.listStrategy, "device-list-strategy", dpDefaultListStrategy,
		"how Allocate hands devices to the runtime: cdi-cri (CDI names in the CRI; the plugin keeps nvbind's spec in --cdi-spec-dir) or annotations (for the nvbind NRI plugin)")
	fl.StringVar(&d.kubeletDir, "kubelet-device-plugins-dir", dpDefaultKubeletDir, "the kubelet's device-plugin folder (kubelet.sock)")
	fl.DurationVar(&d.forgetAfter, "forget-after", dpDefaultForgetAfter,
		"how long a GPU that vanished stays advertised Unhealthy (it may come back) before it is dropped and capacity falls; 0 drops it at once")
	fl.StringVar(&d.xidIgnore, "xid-ignore", "", "XIDs that leave a GPU in service, beside NVIDIA's application-caused ones (13,31,43,45,68,109): a comma-separated list")
	fl.DurationVar(&d.xidRecover, "xid-recover-after", dpDefaultXIDRecover,
		"a GPU out of service for a critical XID returns after this long without another, if the driver still answers for it; 0 keeps it out until the plugin restarts")
	fl.StringVar(&d.xidEvents, "xid-events", "", "also take XID events from lines \"<GPU UUID or index> <XID>\" appended to this file (other monitors; tests without a GPU)")
}

type devicePluginFlags struct {
	rootFlags
	specFlags
	dpFlags
	cdiSpecDir string
	rescan     time.Duration
	// draGPUs are the GPUs a DRA driver beside this plugin serves (nvbind dra --dra-gpus)
	draGPUs draFlags
}

func newDevicePluginCommand(g *globalFlags) *cobra.Command {
	f := &devicePluginFlags{}
	cmd := &cobra.Command{
		Use:   "device-plugin",
		Short: "Run the Kubernetes device plugin that advertises GPUs to the kubelet",
		Long: `Run the device plugin: it registers nvidia.com/gpu (and, with --mig-strategy mixed, nvidia.com/mig-<profile>)
with the kubelet, so the scheduler counts GPUs, and registers again when the kubelet restarts. A GPU that
discovery no longer finds turns Unhealthy until it returns; so does a GPU whose driver reports a critical XID
(NVML's events; NVIDIA's application-caused XIDs and --xid-ignore leave it in service), with its MIG devices and
replicas, until it has gone --xid-recover-after without one and still answers. Allocate answers with CDI device names
(--device-list-strategy cdi-cri, the default: containerd 2.x and CRI-O resolve them from the spec this command
keeps in --cdi-spec-dir) and always with the container annotation allocated.gpus.nvbind.io, which the nvbind NRI
plugin reads (--device-list-strategy annotations) and enforces (nvbind nri --require-allocation).
In a cluster, run it inside the NRI plugin's pod instead: nvbind nri --device-plugin.`,
		Example: `  nvbind device-plugin
  nvbind device-plugin --mig-strategy mixed
  nvbind device-plugin --replicas 4      # time-slicing: each GPU shared by up to 4 containers`,
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
	fl.StringVar(&f.cdiSpecDir, "cdi-spec-dir", "/var/run/cdi", "where the spec that cdi-cri's names refer to is kept")
	fl.DurationVar(&f.rescan, "rescan-interval", 30*time.Second, "how often discovery runs again (GPU health, MIG changes)")
	fl.StringVar(&f.draGPUs.gpus, "dra-gpus", "", "the GPUs a DRA driver beside this plugin serves (nvbind dra --dra-gpus, the same list): this plugin advertises the others")
	return cmd
}
