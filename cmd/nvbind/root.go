package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookcli"
	"github.com/nvbind/nvbind/spec"
)

// version and commit are set by the Makefile's -ldflags.
var (
	version = "dev"
	commit  = ""
)

type globalFlags struct {
	logLevel, logFormat, config string
}

// newRootCommand is nvbind's whole command tree.
func newRootCommand() *cobra.Command { return newRootCommandFor(nil) }

// topCommand is a top-level command of nvbind, built on demand.
type topCommand struct {
	name string
	make func(*globalFlags) *cobra.Command
}

// topCommands are nvbind's top-level commands, each under the name its Use gives.
var topCommands = []topCommand{
	{"version", func(*globalFlags) *cobra.Command { return newVersionCommand() }},
	{"info", newInfoCommand},
	{"cdi", newCDICommand},
	{"hook", func(*globalFlags) *cobra.Command { return hookcli.NewCommand() }},
	{"nri", newNRICommand},
	{"device-plugin", newDevicePluginCommand},
	{"dra", newDRACommand},
	{"doctor", func(*globalFlags) *cobra.Command { return newDoctorCommand() }},
	{"install", func(*globalFlags) *cobra.Command { return newInstallCommand() }},
	{"uninstall", func(*globalFlags) *cobra.Command { return newUninstallCommand() }},
	{"layout", newLayoutCommand},
}

// newRootCommandFor is the command tree that runs the command line args (os.Args[1:]).
// When args start with a top-level command's name, the tree holds that command alone:
// building every command's flags is about a millisecond of each short command's start
// (cdi generate, hook). Any other line (help, completion, a flag first, a typo) gets the
// whole tree, so that help, suggestions and flags before the command work as before.
func newRootCommandFor(args []string) *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "nvbind",
		Short:         "Hand NVIDIA GPUs to containers: CDI specs, a live NRI plugin, and the OCI hooks they use",
		SilenceUsage:  true,
		SilenceErrors: true,
		Example: `  nvbind info
  nvbind cdi generate --output /var/run/cdi/
  podman run --device nvidia.com/gpu=0 ...`,
	}
	root.PersistentFlags().StringVar(&g.config, "config", defaultConfigFile, "config file: flags as keys, a table per command ([nri], [cdi.generate]); every flag is also $NVBIND_<FLAG>; flags win")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if isHook(cmd) {
			// hooks run on every GPU container start: a bad config file or a stray
			// $NVBIND_* must not break them, so they take their arguments alone
			return nil
		}
		path, explicit := g.config, cmd.Flags().Changed("config")
		if v, ok := os.LookupEnv("NVBIND_CONFIG"); ok && !explicit {
			path, explicit = v, true
		}
		return applySettings(cmd, path, explicit)
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text, json")
	if len(args) > 0 {
		for _, c := range topCommands {
			if c.name == args[0] {
				root.AddCommand(c.make(g))
				return root
			}
		}
	}
	for _, c := range topCommands {
		root.AddCommand(c.make(g))
	}
	return root
}

// isHook reports whether cmd is "nvbind hook" or one of its subcommands.
func isHook(cmd *cobra.Command) bool {
	for c := cmd; c != nil; c = c.Parent() {
		if c.Name() == "hook" && c.Parent() != nil && c.Parent().Parent() == nil {
			return true
		}
	}
	return false
}

func (g *globalFlags) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: valid: debug, info, warn, error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: valid: text, json", g.logFormat)
}

// rootFlags are the discovery flags shared by every command that looks at the host.
type rootFlags struct {
	driverRoot, devRoot           string
	driverRootMount, devRootMount string
	noNVML                        bool
}

func (r *rootFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&r.driverRoot, "driver-root", "/",
		"where the driver's user-space files are (/run/nvidia/driver under the GPU Operator) [$NVBIND_DRIVER_ROOT]")
	cmd.Flags().StringVar(&r.devRoot, "dev-root", "/",
		"where the host's /dev, /proc and /sys are seen [$NVBIND_DEV_ROOT]")
	cmd.Flags().StringVar(&r.driverRootMount, "driver-root-mount", "",
		"where nvbind reads the driver root when it runs in a container that mounts it elsewhere (default: --driver-root) [$NVBIND_DRIVER_ROOT_MOUNT]")
	cmd.Flags().StringVar(&r.devRootMount, "dev-root-mount", "",
		"where nvbind reads /dev, /proc and /sys when they are mounted elsewhere (default: --dev-root) [$NVBIND_DEV_ROOT_MOUNT]")
	cmd.Flags().BoolVar(&r.noNVML, "no-nvml", false, "list GPUs from /proc/driver/nvidia instead of NVML")
}

// readDevRoot is where this process reads the dev root: --dev-root-mount, else --dev-root.
func (r *rootFlags) readDevRoot() string {
	if r.devRootMount != "" {
		return r.devRootMount
	}
	return r.devRoot
}

func (r *rootFlags) discoverer(extra ...gpu.Option) (*gpu.Discoverer, error) {
	readDriver, readDev := r.driverRoot, r.devRoot
	if r.driverRootMount != "" {
		readDriver = r.driverRootMount
	}
	if r.devRootMount != "" {
		readDev = r.devRootMount
	}
	for _, d := range []struct{ flag, dir string }{{"--driver-root", readDriver}, {"--dev-root", readDev}} {
		fi, err := os.Stat(d.dir)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", d.flag, d.dir, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("%s %s: not a directory", d.flag, d.dir)
		}
	}
	opts := []gpu.Option{gpu.WithDriverRoot(r.driverRoot), gpu.WithDevRoot(r.devRoot),
		gpu.WithDriverRootMount(readDriver), gpu.WithDevRootMount(readDev)}
	if r.noNVML {
		opts = append(opts, gpu.WithoutNVML())
	}
	return gpu.New(append(opts, extra...)...)
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print nvbind's version and build commit",
		Example: "  nvbind version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := commit
			if bi, ok := debug.ReadBuildInfo(); ok && c == "" {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						c = s.Value
					}
				}
			}
			if c == "" {
				c = "unknown"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "nvbind %s (commit %s)\n", version, c)
			return nil
		},
	}
}

// selfPath is the absolute path of the running binary.
func selfPath() string {
	p, err := os.Executable()
	if err != nil {
		return ""
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return p
}

// defaultHookPath is the nvbind-hook binary beside this one when it is there (static,
// small, fast to start: it runs on every container start), else this binary.
func defaultHookPath() string {
	self := selfPath()
	if self == "" {
		return ""
	}
	h := filepath.Join(filepath.Dir(self), "nvbind-hook")
	if fi, err := os.Stat(h); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return h
	}
	return self
}

// specFlags are the flags of every command that builds container edits (cdi generate,
// nri): the CDI kind, the hook binary and the hooks left out.
type specFlags struct {
	vendor, class, hookPath, disableHooks string
}

func (s *specFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&s.vendor, "vendor", spec.DefaultVendor, "CDI vendor of the devices")
	fl.StringVar(&s.class, "class", spec.DefaultClass, "CDI class of the devices")
	fl.StringVar(&s.hookPath, "hook-path", "", "absolute path of the binary the hook runs (default: nvbind-hook beside nvbind when it is there, else nvbind)")
	fl.StringVar(&s.disableHooks, "disable-hooks", "", "hook actions to leave out (all, or a comma list of: create-symlinks, update-ldcache, disable-device-node-modification, enable-cuda-compat, update-application-profile); without create-symlinks the library links become bind mounts")
}

func (s *specFlags) options() (spec.Options, error) {
	hookPath := s.hookPath
	if hookPath == "" {
		hookPath = defaultHookPath() // here, not at flag registration: --help shows no path of this machine
	}
	o := spec.Options{Vendor: s.vendor, Class: s.class, HookPath: hookPath}
	var err error
	if o.DisabledHooks, err = spec.ParseHookNames(s.disableHooks); err != nil {
		return o, fmt.Errorf("--disable-hooks: %w", err)
	}
	return o, nil
}

// checkFormat validates the --format of commands that print text or JSON.
func checkFormat(format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("--format %q: valid: text, json", format)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
