// Package hookcli builds the "hook" command shared by the nvbind binary and the full hook,
// nvbind-hook-go, which the small C nvbind-hook that specs and adjustments name hands the rest to.
package hookcli

import (
	"bytes"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/hook"
	"github.com/nvbind/nvbind/internal/hookargs"
)

// NewCommand returns the "hook" command and its subcommands.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "hook",
		Example: "  nvbind hook all --link libcuda.so.535.261.03::/usr/lib/x86_64-linux-gnu/libcuda.so.1 --folder /usr/lib/x86_64-linux-gnu < state.json",
		Short:   "Run the OCI hooks that nvbind's specs and adjustments name",
		Long: `Run the OCI hooks that nvbind's specs and NRI adjustments name. The runtime passes the
container's OCI state on standard input. At createRuntime, --enter-mount-namespace makes the hook
enter the container's mount namespace (of the state's pid) first; at createContainer it is in it. "all" runs every action its flags ask for in
one process; the other subcommands run one action each.`,
	}
	type sub struct {
		name, short string
		flags       hookargs.Which
	}
	for _, s := range []sub{
		{"all", "Create links, update the ld cache, protect device nodes, enable CUDA compat and limit EGL to the container's GPUs in one process", hookargs.All},
		{"create-symlinks", "Create links inside the container root", hookargs.Which{Links: true}},
		{"update-ldcache", "Add library folders to the container's ld cache", hookargs.Which{Folders: true}},
		{"disable-device-node-modification", "Hide ModifyDeviceFiles: 1 from NVML in the container", hookargs.Which{HostParams: true}},
		{"enable-cuda-compat", "Put the image's newer CUDA forward-compat libraries first", hookargs.Which{Version: true}},
		{"update-application-profile", "Show EGL and Vulkan only the container's GPUs (a driver application profile)", hookargs.Which{}},
	} {
		r := &hookargs.Raw{}
		c := &cobra.Command{
			Use:   s.name,
			Short: s.short,
			Example: `  # in a CDI spec or NRI adjustment, as a createRuntime hook:
  nvbind hook all --enter-mount-namespace --link libcuda.so.535.261.03::/usr/lib/x86_64-linux-gnu/libcuda.so.1 \
    --folder /usr/lib/x86_64-linux-gnu --protect-device-nodes --host-driver-version 535.261.03`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				a, err := r.Args()
				if err != nil {
					return err
				}
				// the actions' notes are written when the hook succeeds: a hook that fails
				// says only why, in one short line
				var notes bytes.Buffer
				o := hook.OptionsOf(a)
				o.Log = &notes
				o.ProtectDeviceNodes = o.ProtectDeviceNodes || s.name == "disable-device-node-modification"
				o.AppProfile = o.AppProfile || s.name == "update-application-profile"
				st, err := hook.ReadState(cmd.InOrStdin())
				if err != nil {
					return err
				}
				if err := hook.Run(cmd.Context(), st, o); err != nil {
					return err
				}
				_, _ = cmd.ErrOrStderr().Write(notes.Bytes())
				return nil
			},
		}
		hookargs.Register(c.Flags(), r, s.flags)
		cmd.AddCommand(c)
	}
	return cmd
}
