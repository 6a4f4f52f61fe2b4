package main

import (
	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/doctor"
	"github.com/nvbind/nvbind/spec"
)

func newDoctorCommand() *cobra.Command {
	var rf rootFlags
	var format string
	c := doctor.Config{}
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
			if err := checkFormat(format); err != nil {
				return err
			}
			d, err := rf.discoverer()
			if err != nil {
				return err
			}
			c.Discoverer = d
			rs := doctor.Run(cmd.Context(), c)
			if format == "json" {
				if err := writeJSON(cmd.OutOrStdout(), rs); err != nil {
					return err
				}
			} else {
				doctor.Print(cmd.OutOrStdout(), rs)
			}
			if doctor.Failed(rs) {
				return exitError{code: 1}
			}
			return nil
		},
	}
	rf.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&format, "format", "text", "output format: text, json")
	fl.StringSliceVar(&c.SpecDirs, "spec-dir", []string{"/etc/cdi", "/var/run/cdi"}, "CDI spec folders to check")
	fl.StringVar(&c.Vendor, "vendor", spec.DefaultVendor, "CDI vendor of the GPU specs")
	fl.StringVar(&c.Class, "class", spec.DefaultClass, "CDI class of the GPU specs")
	fl.StringVar(&c.ContainerdConfig, "containerd-config", "/etc/containerd/config.toml", "containerd's configuration")
	fl.StringVar(&c.ContainerdSocket, "containerd-address", "/run/containerd/containerd.sock", "the running containerd's API socket, asked for its version, plugins and CRI settings")
	fl.StringVar(&c.ContainerdBinary, "containerd-binary", "", "the containerd whose `config dump` gives the effective configuration (default: containerd in PATH)")
	fl.StringSliceVar(&c.CRIOConfigs, "crio-config", nil, "CRI-O configuration files (default /etc/crio/crio.conf and crio.conf.d/*.conf)")
	fl.StringVar(&c.DockerConfig, "docker-config", "/etc/docker/daemon.json", "Docker's daemon.json")
	fl.StringVar(&c.NRISocket, "nri-socket", "/var/run/nri/nri.sock", "the runtime's NRI socket")
	fl.StringVar(&c.HealthURL, "health-url", "http://127.0.0.1:9402/readyz", "nvbind nri's /readyz")
	return cmd
}
