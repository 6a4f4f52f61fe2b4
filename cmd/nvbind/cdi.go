package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/devchar"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
)

func newCDICommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "cdi", Short: "Generate, list and validate CDI specs",
		Example: "  nvbind cdi generate --output /var/run/cdi/\n  nvbind cdi list\n  nvbind cdi validate /var/run/cdi/nvidia.com-gpu.yaml"}
	cmd.AddCommand(newGenerateCommand(g), newListCommand(), newValidateCommand())
	return cmd
}

type generateFlags struct {
	rootFlags
	specFlags
	layoutFlags
	output, format, names, caps string
	watch, capDevices, devChar  bool
	interval                    time.Duration
}

func newGenerateCommand(g *globalFlags) *cobra.Command {
	f := &generateFlags{}
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Write a CDI spec for this host's GPUs",
		Long: `Write a CDI spec for this host's GPUs. Podman, Docker (25+), containerd and CRI-O read it
from /etc/cdi or /var/run/cdi. Without --output the spec goes to standard output. With --output
naming a folder, a host with IMEX channels also gets nvidia.com-imex-channel.yaml
(--device nvidia.com/imex-channel=0).`,
		Example: `  nvbind cdi generate --output /var/run/cdi/
  nvbind cdi generate --output /etc/cdi/nvidia.json --capabilities compute,utility
  nvbind cdi generate --driver-root /run/nvidia/driver --output /var/run/cdi/
  podman run --device nvidia.com/gpu=0 ...   # or gpu0, GPU-<uuid>, all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, format, err := f.options()
			if err != nil {
				return err
			}
			d, err := f.discoverer(gpu.WithoutCUDAVersion(), gpu.WithNVMLOnlyForMIG())
			if err != nil {
				return err
			}
			if f.watch {
				if err := serveInNode(); err != nil {
					return err
				}
				log, err := g.logger(cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				return f.watchLoop(cmd.Context(), d, o, format, log)
			}
			inv, err := d.Discover(cmd.Context())
			if err != nil {
				return fmt.Errorf("cannot generate a spec: %w", err)
			}
			s, err := spec.Generate(inv, o)
			if err != nil {
				return err
			}
			finishing()
			if _, err := f.ensureLayouts(inv, o); err != nil {
				return err
			}
			if f.output == "" || f.output == "-" {
				if err := spec.Validate(s); err != nil {
					return fmt.Errorf("generated spec is invalid: %w", err)
				}
				data, err := spec.Marshal(s, format)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			return f.writeAll(inv, s, o, format, func(w spec.Written) {
				did := "wrote"
				if w.Unchanged {
					did = "unchanged"
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s %s: %d devices of %s, cdiVersion %s\n", did, w.Path, len(w.Spec.Devices), w.Spec.Kind, w.Spec.Version)
				for _, r := range w.Replaced {
					fmt.Fprintf(cmd.ErrOrStderr(), "replaced nvbind's spec %s: one spec file per kind\n", r)
				}
				for _, other := range w.Others {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: replaced the spec %q keeps: two nvbind writers of one kind take turns in its one file; run one of them\n", other)
				}
				for _, c := range w.Foreign {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s also defines devices of %s, and nvbind did not write it: runtimes refuse those devices while both are there; remove it\n", c, w.Spec.Kind)
				}
			})
		},
	}
	f.rootFlags.register(cmd)
	f.specFlags.register(cmd)
	f.layoutFlags.register(cmd, "mount for a spec under /run (it goes at reboot with the layouts) when the layouts get built: here if nvbind may mount (root), else, with --watch, by nvbind layout build --watch")
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "", "spec file, or folder (ending in / or existing) to write the conventionally named spec in; default standard output")
	fl.StringVar(&f.format, "format", "", "json or yaml; default from the output file's extension, else yaml")
	fl.StringVar(&f.names, "device-name-strategy", "index,type-index,uuid", "device names to emit, comma list of: "+spec.ValidNameStrategies)
	fl.StringVar(&f.caps, "capabilities", "all", "driver capabilities whose files the spec mounts: "+gpu.ValidCapabilities)
	fl.BoolVar(&f.capDevices, "capability-devices", false,
		"GPU devices bring only their nodes; the driver files come from one device per capability (nvidia.com/gpu=capability-compute, ...), the layout nvbind nri --cdi-mode writes")
	fl.BoolVar(&f.watch, "watch", false, "keep running: write the spec again whenever the driver, its device nodes or the MIG layout change; a failed discovery keeps the old spec")
	fl.DurationVar(&f.interval, "interval", 30*time.Second, "with --watch, how often discovery runs besides reacting to file events")
	fl.BoolVar(&f.devChar, "dev-char-links", true, "with --watch, also keep /dev/char/<major>:<minor> links for NVIDIA's device nodes under the dev root (without them systemctl daemon-reload takes GPUs from running containers)")
	return cmd
}

func (f *generateFlags) options() (spec.Options, spec.Format, error) {
	o, err := f.specFlags.options()
	if err != nil {
		return o, "", err
	}
	if o.NameStrategies, err = spec.ParseNameStrategies(f.names); err != nil {
		return o, "", fmt.Errorf("--device-name-strategy: %w", err)
	}
	if o.Capabilities, err = gpu.ParseCapabilities(f.caps); err != nil {
		return o, "", fmt.Errorf("--capabilities: %w", err)
	}
	if f.capDevices && o.Capabilities != gpu.CapsAll {
		return o, "", fmt.Errorf("--capabilities %s conflicts with --capability-devices, which puts every capability in a device of its own", f.caps)
	}
	o.CapabilityDevices = f.capDevices
	var format spec.Format
	if f.format != "" {
		if format, err = spec.ParseFormat(f.format); err != nil {
			return o, "", fmt.Errorf("--format: %w", err)
		}
	}
	if f.output != "" && f.output != "-" && !isDirArg(f.output) {
		ext := spec.FormatOf(f.output)
		if ext == "" {
			return o, "", fmt.Errorf("--output %s: a spec file must end in .json or .yaml (runtimes ignore other names)", f.output)
		}
		if format != "" && format != ext {
			return o, "", fmt.Errorf("--format %s conflicts with --output %s", format, f.output)
		}
		format = ext
	}
	if format == "" {
		format = spec.FormatYAML
	}
	// a layout lives in /run: a spec that outlives it (in /etc/cdi, or printed) gets one
	// mount per file
	if o.LayoutBase, err = f.base(o, !layout.Volatile(f.output), f.watch); err != nil {
		return o, "", err
	}
	o.Writer = "nvbind cdi generate"
	if f.watch {
		o.Writer += " --watch"
	}
	return o, format, o.Validate()
}

// watchLoop keeps the spec at --output in step with the host. With driver layouts, the
// spec names them once they are complete (built here, or by nvbind layout build --watch),
// and one mount per file until then.
func (f *generateFlags) watchLoop(ctx context.Context, d *gpu.Discoverer, o spec.Options, format spec.Format, log *slog.Logger) error {
	if f.output == "" || f.output == "-" {
		return errors.New("--watch needs --output: a spec file or folder to keep fresh")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var layouts *layout.Provider
	inventories := make(chan *gpu.Inventory, 1)
	completed := make(chan *gpu.Inventory, 1)
	if o.LayoutBase != "" {
		layouts = &layout.Provider{Base: o.LayoutBase, Read: f.readPath, Build: layout.CanBuild(), Log: log}
		go layouts.Run(ctx, inventories, func(inv *gpu.Inventory) { latest(completed, inv) })
	}
	var current *gpu.Inventory
	events := d.Watch(ctx, f.interval)
	for {
		select {
		case <-ctx.Done():
			return nil
		case inv := <-completed:
			if inv == current {
				f.refresh(inv, o, format, layouts, log)
			}
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if ev.Err != nil {
				log.Error("discovery failed; the spec on disk stays as it is", slog.Any("error", ev.Err))
				continue
			}
			current = ev.Inventory
			if layouts != nil && layouts.Build {
				// built before the spec names them, so the first spec has them
				if _, err := f.ensureLayouts(current, o); err != nil {
					log.Error("driver layouts not built: the spec mounts one file at a time", slog.Any("error", err))
				}
			}
			f.refresh(current, o, format, layouts, log)
			if layouts != nil {
				latest(inventories, current)
			}
			if f.devChar {
				made, err := devchar.Ensure(f.readDevRoot(), devchar.Links(current))
				for _, l := range made {
					log.Info("/dev/char link made", "link", l.Path, "target", l.Target)
				}
				if err != nil {
					log.Warn("/dev/char links not all made: systemctl daemon-reload may take GPUs from running containers", slog.Any("error", err))
				}
			}
		}
	}
}

// latest puts inv on ch, in place of one not yet taken.
func latest(ch chan *gpu.Inventory, inv *gpu.Inventory) {
	select {
	case <-ch:
	default:
	}
	ch <- inv
}

// refresh writes the spec of inv, naming the driver layouts if they are all complete.
func (f *generateFlags) refresh(inv *gpu.Inventory, o spec.Options, format spec.Format, layouts *layout.Provider, log *slog.Logger) {
	if layouts != nil {
		plans, err := spec.Layouts(inv, o)
		if err != nil || !layouts.ReadyAll(inv, plans) {
			o.LayoutBase = ""
		}
	}
	s, err := spec.Generate(inv, o)
	if err != nil {
		log.Error("spec not generated; the spec on disk stays as it is", slog.Any("error", err))
		return
	}
	err = f.writeAll(inv, s, o, format, func(w spec.Written) {
		msg := "spec written"
		if w.Unchanged {
			msg = "spec unchanged"
		}
		log.Info(msg, "path", w.Path, "driver", inv.Driver.Version, "gpus", len(inv.Devices), "devices", len(w.Spec.Devices), "layouts", o.LayoutBase != "")
		w.Log(log)
	})
	if err != nil {
		log.Error("spec not written", slog.Any("error", err))
	}
}

// writeAll writes the GPU spec to the --output file, or every spec (the IMEX channels'
// beside the GPUs') into the --output folder, each as the one nvbind spec of its kind there.
func (f *generateFlags) writeAll(inv *gpu.Inventory, s *cdispecs.Spec, o spec.Options, format spec.Format, done func(spec.Written)) error {
	if !isDirArg(f.output) {
		w, err := spec.Install(s, f.output, format, o.Writer)
		if err != nil {
			return err
		}
		done(w)
		return nil
	}
	written, err := spec.WriteDir(inv, o, f.output, format)
	if err != nil {
		return err
	}
	for _, w := range written {
		done(w)
	}
	return nil
}

func isDirArg(p string) bool {
	if strings.HasSuffix(p, "/") {
		return true
	}
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func newListCommand() *cobra.Command {
	var dirs []string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the CDI devices in the spec folders",
		Example: "  nvbind cdi list\n  nvbind cdi list --spec-dir /etc/cdi",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(dirs...))
			if err != nil && c == nil {
				return err
			}
			for _, d := range c.ListDevices() {
				fmt.Fprintln(cmd.OutOrStdout(), d)
			}
			var bad []string
			for p, errs := range c.GetErrors() {
				for _, e := range errs {
					bad = append(bad, fmt.Sprintf("%s: %v", p, e))
				}
			}
			sort.Strings(bad)
			for _, b := range bad {
				fmt.Fprintln(cmd.ErrOrStderr(), "error:", b)
			}
			if len(bad) > 0 {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&dirs, "spec-dir", []string{"/etc/cdi", "/var/run/cdi"}, "spec folders, later ones win")
	return cmd
}

func newValidateCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "validate FILE...",
		Short:   "Check CDI spec files as runtimes will read them",
		Example: "  nvbind cdi validate /var/run/cdi/nvidia.com-gpu.yaml",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			for _, p := range args {
				s, err := cdi.ReadSpec(p, 0)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", p, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid, cdiVersion %s, kind %s, %d devices\n", p, s.Version, s.Kind, len(s.Devices))
			}
			return errors.Join(errs...)
		},
	}
}
