// Package hookcli builds the "hook" command shared by the nvbind binary and the small,
// static nvbind-hook binary that specs and NRI adjustments name for speed.
package hookcli

import (
	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/hook"
)

type hookFlags struct {
	links, folders            []string
	protect                   bool
	hostParams, driverVersion string
	ldconfig                  string
}

// NewCommand returns the "hook" command and its subcommands.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "hook",
		Example: "  nvbind hook all --link libcuda.so.535.261.03::/usr/lib/x86_64-linux-gnu/libcuda.so.1 --folder /usr/lib/x86_64-linux-gnu < state.json",
		Short:   "Run the OCI hooks that nvbind's specs and adjustments name",
		Long: `Run the OCI createContainer hooks that nvbind's specs and NRI adjustments name. The runtime
passes the container's OCI state on standard input. "all" runs every action its flags ask for in
one process; the other subcommands run one action each.`,
	}
	type sub struct {
		name, short                                    string
		links, folders, protect, version, ldconfigFlag bool
	}
	for _, s := range []sub{
		{"all", "Create links, update the ld cache, protect device nodes and enable CUDA compat in one process", true, true, true, true, true},
		{"create-symlinks", "Create links inside the container root", true, false, false, false, false},
		{"update-ldcache", "Add library folders to the container's ld cache", false, true, false, false, true},
		{"disable-device-node-modification", "Hide ModifyDeviceFiles: 1 from NVML in the container", false, false, true, false, false},
		{"enable-cuda-compat", "Put the image's newer CUDA forward-compat libraries first", false, false, false, true, true},
	} {
		f := &hookFlags{}
		c := &cobra.Command{
			Use:   s.name,
			Short: s.short,
			Example: `  # in a CDI spec or NRI adjustment, as a createContainer hook:
  nvbind hook all --link libcuda.so.535.261.03::/usr/lib/x86_64-linux-gnu/libcuda.so.1 \
    --folder /usr/lib/x86_64-linux-gnu --protect-device-nodes --host-driver-version 535.261.03`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				o := hook.Options{HostParams: f.hostParams, HostDriverVersion: f.driverVersion, LDConfig: f.ldconfig,
					Folders: f.folders, Log: cmd.ErrOrStderr()}
				o.ProtectDeviceNodes = f.protect || s.name == "disable-device-node-modification"
				for _, l := range f.links {
					pl, err := hook.ParseLink(l)
					if err != nil {
						return err
					}
					o.Links = append(o.Links, pl)
				}
				st, err := hook.ReadState(cmd.InOrStdin())
				if err != nil {
					return err
				}
				return hook.Run(cmd.Context(), st, o)
			},
		}
		fl := c.Flags()
		if s.links {
			fl.StringArrayVar(&f.links, "link", nil, "TARGET::LINK: make container path LINK a link to TARGET (repeatable)")
		}
		if s.folders {
			fl.StringArrayVar(&f.folders, "folder", nil, "container folder to add to the ld cache (repeatable)")
		}
		if s.protect {
			if s.name == "all" {
				fl.BoolVar(&f.protect, "protect-device-nodes", false, "hide ModifyDeviceFiles: 1 from NVML in the container")
			}
			fl.StringVar(&f.hostParams, "host-params", "/proc/driver/nvidia/params", "the host's NVIDIA params file")
		}
		if s.version {
			fl.StringVar(&f.driverVersion, "host-driver-version", "", "host driver version; the image's /usr/local/cuda/compat libraries go first when newer")
		}
		if s.ldconfigFlag {
			fl.StringVar(&f.ldconfig, "ldconfig", "", "the host's ldconfig (default /sbin/ldconfig.real, /sbin/ldconfig or /usr/sbin/ldconfig)")
		}
		cmd.AddCommand(c)
	}
	return cmd
}
