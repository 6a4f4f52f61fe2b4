package main

import (
	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/spec"
)

// doctorFlags are doctor's settings; the full build turns them into a doctor.Config.
type doctorFlags struct {
	rootFlags
	format                                            string
	specDirs, crioConfigs                             []string
	vendor, class                                     string
	containerdConfig, containerdSocket, containerdBin string
	dockerConfig, nriSocket, healthURL                string
}

func newDoctorCommand() *cobra.Command {
	f := &doctorFlags{}
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what GPU containers need, with a fix for each problem",
		Long: `Check the driver, device nodes, NVML, driver libraries per capability, the CDI specs (present, valid,
fresh), the runtimes' NRI and CDI settings, nvbind's NRI plugin, and leftovers of NVIDIA's container
runtime. One line per check, a fix under each problem; exit status 1 when something blocks GPU containers.`,
		Example: `  nvbind doctor
  nvbind doctor --format json | jq '.[] | select(.status != "ok")'
  nvbind doctor --driver-root /run/nvidia/driver`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(f.format); err != nil {
				return err
			}
			return f.run(cmd)
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.format, "format", "text", "output format: text, json")
	fl.StringSliceVar(&f.specDirs, "spec-dir", []string{"/etc/cdi", "/var/run/cdi"}, "CDI spec folders to check")
	fl.StringVar(&f.vendor, "vendor", spec.DefaultVendor, "CDI vendor of the GPU specs")
	fl.StringVar(&f.class, "class", spec.DefaultClass, "CDI class of the GPU specs")
	fl.StringVar(&f.containerdConfig, "containerd-config", "/etc/containerd/config.toml", "containerd's configuration")
	fl.StringVar(&f.containerdSocket, "containerd-address", "/run/containerd/containerd.sock", "the running containerd's API socket, asked for its version, plugins and CRI settings")
	fl.StringVar(&f.containerdBin, "containerd-binary", "", "the containerd program whose config dump (drop-ins and defaults merged) gives the effective configuration (default: containerd in PATH)")
	fl.StringSliceVar(&f.crioConfigs, "crio-config", nil, "CRI-O configuration files (default /etc/crio/crio.conf and crio.conf.d/*.conf)")
	fl.StringVar(&f.dockerConfig, "docker-config", "/etc/docker/daemon.json", "Docker's daemon.json")
	fl.StringVar(&f.nriSocket, "nri-socket", nriDefaultSocket, "the runtime's NRI socket")
	fl.StringVar(&f.healthURL, "health-url", "http://127.0.0.1:9402/readyz", "nvbind nri's /readyz")
	return cmd
}
