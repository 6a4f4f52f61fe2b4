package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
)

// Layout modes of --layout.
const (
	layoutAuto  = "auto"
	layoutMount = "mount"
	layoutFiles = "files"
)

// layoutDirUsage is --layout-dir's usage everywhere, so NVBIND_LAYOUT_DIR applies to every command.
const layoutDirUsage = "the host folder of the driver layouts (in /run: they go at reboot with the containers using them)"

// layoutFlags choose how containers get the driver's files.
type layoutFlags struct {
	mode, dir string
}

func (l *layoutFlags) register(cmd *cobra.Command, auto string) {
	fl := cmd.Flags()
	fl.StringVar(&l.mode, "layout", layoutAuto, "how containers get the driver's files: mount (one mount of a layout under --layout-dir per capability set), files (one mount per file), or auto: "+auto)
	fl.StringVar(&l.dir, "layout-dir", layout.DefaultBase, layoutDirUsage)
}

func (l *layoutFlags) check() error {
	if !slices.Contains([]string{layoutAuto, layoutMount, layoutFiles}, l.mode) {
		return fmt.Errorf("--layout %q: valid: auto, mount, files", l.mode)
	}
	if !filepath.IsAbs(l.dir) {
		return fmt.Errorf("--layout-dir %q is not an absolute path", l.dir)
	}
	return nil
}

// base resolves the mode: the layout folder, or "" for one mount per file. auto takes the
// layouts where the spec lives no longer than they do (persistent false: a spec in /run,
// or one kept by --watch) and where they will be built: by this process if it may mount,
// or, for a long-running one (canAsk), by nvbind layout build --watch beside it.
func (l *layoutFlags) base(o spec.Options, persistent, canAsk bool) (string, error) {
	if err := l.check(); err != nil {
		return "", err
	}
	hooksOn := !slices.Contains(o.DisabledHooks, spec.HookSymlinks) && !slices.Contains(o.DisabledHooks, spec.HookLDCache)
	switch l.mode {
	case layoutFiles:
		return "", nil
	case layoutMount:
		if !hooksOn {
			return "", fmt.Errorf("--layout mount needs the hook's %s and %s actions", spec.HookSymlinks, spec.HookLDCache)
		}
		if persistent {
			return "", errors.New("--layout mount: the spec would outlive the layouts, which go at reboot: write it under /run (/var/run/cdi), or use --layout files")
		}
		if !canAsk && !layout.CanBuild() {
			return "", fmt.Errorf("--layout mount: %w (run as root, or use --layout files)", layout.ErrNoPrivilege)
		}
		return l.dir, nil
	}
	if !hooksOn || persistent || !canAsk && !layout.CanBuild() {
		return "", nil
	}
	return l.dir, nil
}

// readPath maps a host path of the driver root to where this process reads it.
func (r *rootFlags) readPath(host string) string {
	if r.driverRootMount == "" || r.driverRootMount == r.driverRoot {
		return host
	}
	rel, err := filepath.Rel(r.driverRoot, host)
	if err != nil || strings.HasPrefix(rel, "..") {
		return host
	}
	return filepath.Join(r.driverRootMount, rel)
}

// ensureLayouts builds the layouts a spec names, before it is written.
func (r *rootFlags) ensureLayouts(inv *gpu.Inventory, o spec.Options) ([]layout.Plan, error) {
	plans, err := spec.Layouts(inv, o)
	if err != nil {
		return nil, err
	}
	for _, p := range plans {
		if err := layout.Ensure(o.LayoutBase, p, r.readPath); err != nil {
			return nil, err
		}
	}
	return plans, nil
}

func newLayoutCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "layout", Short: "Build and list the driver layouts containers mount",
		Long: `A driver layout holds the driver's files of one capability set, each a read-only bind mount of the
host's file, in a small tmpfs under --layout-dir (/run/nvbind/driver): a container gets them in one mount
instead of one per file. cdi generate, nvbind nri and nvbind-runtime build the layouts they name where they
can (root with CAP_SYS_ADMIN); nvbind layout build does it for a process that cannot, such as the
unprivileged NRI plugin's pod, and keeps them in step with the driver with --watch.`,
		Example: "  nvbind layout build --capability-set all --capability-set compute,utility\n  nvbind layout build --watch\n  nvbind layout list"}
	cmd.AddCommand(newLayoutBuildCommand(g), newLayoutListCommand(), newLayoutRemoveCommand())
	return cmd
}

type layoutBuildFlags struct {
	rootFlags
	dir      string
	caps     []string
	watch    bool
	interval time.Duration
}

func newLayoutBuildCommand(g *globalFlags) *cobra.Command {
	f := &layoutBuildFlags{}
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the driver layouts of capability sets (and, with --watch, those asked for in --layout-dir/.want)",
		Example: `  nvbind layout build --capability-set all
  nvbind layout build --watch --driver-root /run/nvidia/driver`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var sets []gpu.Capabilities
			for _, c := range f.caps {
				caps, err := gpu.ParseCapabilities(c)
				if err != nil {
					return fmt.Errorf("--capability-set %q: %w", c, err)
				}
				sets = append(sets, caps)
			}
			if !filepath.IsAbs(f.dir) {
				return fmt.Errorf("--layout-dir %q is not an absolute path", f.dir)
			}
			d, err := f.discoverer(gpu.WithoutCUDAVersion(), gpu.WithNVMLOnlyForMIG())
			if err != nil {
				return err
			}
			if !f.watch {
				inv, err := d.Discover(cmd.Context())
				if err != nil {
					return err
				}
				_, err = f.build(inv, sets, cmd.OutOrStdout())
				return err
			}
			if err := serveInNode(); err != nil {
				return err
			}
			return f.watchLoop(cmd.Context(), d, sets, log)
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.dir, "layout-dir", layout.DefaultBase, layoutDirUsage)
	fl.StringArrayVar(&f.caps, "capability-set", []string{"all", gpu.CapsDefault.String()}, "a capability set to build the layout of, as a list such as compute,utility (repeatable)")
	fl.BoolVar(&f.watch, "watch", false, "keep running: build again on driver changes, build the sets asked for in --layout-dir/.want, detach layouts no longer used")
	fl.DurationVar(&f.interval, "interval", 30*time.Second, "with --watch, how often discovery runs besides reacting to file events")
	return cmd
}

// build builds the layouts of the capability sets and of the sets asked for in the want
// folder (layout.Wanted), and returns them.
func (f *layoutBuildFlags) build(inv *gpu.Inventory, sets []gpu.Capabilities, w io.Writer) ([]layout.Plan, error) {
	var plans []layout.Plan
	var errs []error
	for _, caps := range append(slices.Clone(sets), layout.Wanted(f.dir)...) {
		p := layout.For(inv, caps)
		if len(p.Entries) == 0 || slices.ContainsFunc(plans, func(o layout.Plan) bool { return o.ID == p.ID }) {
			continue
		}
		b, err := layout.Build(f.dir, p, f.readPath)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		plans = append(plans, p)
		if b.Made {
			fmt.Fprintf(w, "built %s: %d entries, mounted by containers at %s\n", p.HostPath(f.dir), len(p.Entries), p.Mount())
			for _, c := range b.Whole {
				fmt.Fprintf(w, "  %s: the host's folder, bound whole\n", c)
			}
			for _, n := range b.PerFile {
				fmt.Fprintf(w, "  %s: one mount per file: %s\n", n.Folder, n.Why)
			}
		}
	}
	return plans, errors.Join(errs...)
}

func (f *layoutBuildFlags) watchLoop(ctx context.Context, d *gpu.Discoverer, sets []gpu.Capabilities, log *slog.Logger) error {
	r := layout.NewRetirer(f.dir, time.Minute)
	// the want folder exists from the start, so a sandboxed requester may be given
	// write access to it alone (nvbind-nri.service: ReadWritePaths)
	if err := layout.PrepareWants(f.dir); err != nil {
		return err
	}
	var inv *gpu.Inventory
	events := d.Watch(ctx, f.interval)
	tick := time.NewTicker(time.Second) // the want folder is polled: the plugin asks from another pod
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if ev.Err != nil {
				log.Error("discovery failed; the layouts stay as they are", slog.Any("error", ev.Err))
				continue
			}
			inv = ev.Inventory
		case <-tick.C:
			if inv == nil || len(layout.Wanted(f.dir)) == 0 {
				continue
			}
		}
		// a set once asked for is kept for as long as this builder runs: a spec or a
		// plugin's cached edits may name its layout
		for _, caps := range layout.Wanted(f.dir) {
			if !slices.Contains(sets, caps) {
				sets = append(sets, caps)
			}
		}
		plans, err := f.build(inv, sets, logWriter{log})
		if err != nil {
			log.Error("driver layouts not all built", slog.Any("error", err))
		}
		layout.ClearWanted(f.dir, plans)
		gone, err := r.Use(inv.Driver.Version, plans)
		for _, id := range gone {
			log.Info("driver layout detached", "layout", id)
		}
		if err != nil {
			log.Warn("driver layouts not all detached", slog.Any("error", err))
		}
	}
}

// logWriter turns the build's lines into log records.
type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Info(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newLayoutListCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the driver layouts on this host",
		Example: "  nvbind layout list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			entries, err := os.ReadDir(dir)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LAYOUT\tSTATE")
			for _, e := range entries {
				if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
					continue
				}
				state := "incomplete"
				if _, err := os.Stat(filepath.Join(dir, e.Name(), ".complete")); err == nil {
					state = "complete"
				}
				fmt.Fprintf(tw, "%s\t%s\n", e.Name(), state)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&dir, "layout-dir", layout.DefaultBase, layoutDirUsage)
	return cmd
}

func newLayoutRemoveCommand() *cobra.Command {
	var dir string
	var all bool
	cmd := &cobra.Command{
		Use:   "remove (LAYOUT... | --all)",
		Short: "Detach driver layouts from the host (running containers keep theirs)",
		Long: `Detach driver layouts from the host: their mounts leave the host's mount table and their folders
are removed; a running container keeps its own copy until it ends. A spec or a plugin that still names a
removed layout fails to start containers until it is generated again, so remove a layout in use only when
its users are stopped (nvbind install --uninstall does it after stopping them).`,
		Example: "  nvbind layout remove --all\n  nvbind layout remove 535.261.03-all-0123456789ab",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return errors.New("name the layouts to remove (see nvbind layout list), or pass --all")
			}
			keep := map[string]bool{}
			if !all {
				entries, err := os.ReadDir(dir)
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				names := map[string]bool{}
				for _, e := range entries {
					names[e.Name()] = true
					keep[e.Name()] = !slices.Contains(args, e.Name())
				}
				for _, a := range args {
					if !names[a] || strings.HasPrefix(a, ".") {
						return fmt.Errorf("no layout %q in %s (see nvbind layout list)", a, dir)
					}
				}
			}
			gone, err := layout.Collect(dir, keep)
			for _, id := range gone {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", id)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "layout-dir", layout.DefaultBase, layoutDirUsage)
	cmd.Flags().BoolVar(&all, "all", false, "remove every layout")
	return cmd
}
