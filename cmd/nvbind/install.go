package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/fileio"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/manifests"
	"github.com/nvbind/nvbind/spec"
)

var validComponents = []string{"binaries", "hook", "runtime", "units", "dev-char"}

// validEnable are what --enable turns on: systemd units, and Docker's runtime.
var validEnable = []string{"nri", "cdi-refresh", "runtime-service", "docker-runtime"}

// unitNames are the systemd units nvbind install places and nvbind uninstall removes.
var unitNames = []string{"nvbind-nri.service", "nvbind-cdi-refresh.service", "nvbind-layouts.service", "nvbind-runtime.socket", "nvbind-runtime.service"}

// Names of the runtime wrapper: nvbind-runtime, its guard name (mode guard whatever the
// configuration says), and NVIDIA's name, for configurations written for NVIDIA's runtime.
const (
	runtimeBinary = "nvbind-runtime"
	hookBinary    = "nvbind-hook"
	hookFull      = "nvbind-hook-go" // the full hook nvbind-hook hands the rest to
	runtimeEdit   = "nvbind-runtime-edit"
	guardLink     = "nvbind-guard"
	nvidiaRuntime = "nvidia-container-runtime"
)

type installFlags struct {
	rootFlags
	prefix, unitDir, dockerConfig string
	components, specDirs          []string
	enable                        []string
	asNVIDIA, dockerDefault       bool
}

func (f *installFlags) register(cmd *cobra.Command, verb string) {
	fl := cmd.Flags()
	fl.StringVar(&f.prefix, "prefix", "/usr/local", "binaries go to PREFIX/bin")
	fl.StringVar(&f.unitDir, "unit-dir", systemUnitDir, "where the systemd units go; systemctl is run only for "+systemUnitDir)
	fl.StringSliceVar(&f.components, "components", []string{"binaries", "units"}, "what to "+verb+
		": binaries (nvbind, nvbind-node, nvbind-hook with nvbind-hook-go, nvbind-runtime with nvbind-runtime-edit), hook (nvbind-hook and nvbind-hook-go only), runtime (nvbind-runtime, nvbind-runtime-edit, nvbind-hook, nvbind-hook-go), units, dev-char (/dev/char links of NVIDIA's device nodes)")
	fl.StringVar(&f.dockerConfig, "docker-config", "/etc/docker/daemon.json", "Docker's daemon.json, for --enable docker-runtime")
	fl.BoolVar(&f.asNVIDIA, "as-nvidia", false, "also as NVIDIA's runtime: PREFIX/bin/nvidia-container-runtime, and Docker's runtime name nvidia")
	f.rootFlags.register(cmd)
}

func (f *installFlags) check() error {
	for _, c := range f.components {
		if !slices.Contains(validComponents, c) {
			return fmt.Errorf("--components: unknown %q (valid: %s)", c, strings.Join(validComponents, ", "))
		}
	}
	for _, u := range f.enable {
		if !slices.Contains(validEnable, u) {
			return fmt.Errorf("--enable: unknown %q (valid: %s)", u, strings.Join(validEnable, ", "))
		}
	}
	return nil
}

// units are the systemd units --enable turns on. Docker's runtime brings the edit
// service's socket along when the units are installed for systemd.
func (f *installFlags) units() []string {
	var out []string
	for _, u := range f.enable {
		switch {
		case u == "runtime-service":
			out = append(out, "nvbind-runtime.socket")
		case u != "docker-runtime":
			out = append(out, "nvbind-"+u+".service")
		case slices.Contains(f.components, "units") && f.systemd() && !slices.Contains(f.enable, "runtime-service"):
			out = append(out, "nvbind-runtime.socket")
		}
	}
	return out
}

func newInstallCommand() *cobra.Command {
	f := &installFlags{}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install nvbind's binaries and systemd units on this host, and print what changed",
		Long: `Install nvbind, nvbind-hook, nvbind-runtime and the systemd units nvbind-nri.service (the NRI plugin, for
containerd and CRI-O) and nvbind-cdi-refresh.service (keeps /run/cdi/nvidia.com-gpu.yaml in step with the driver, for
Podman, Docker and nerdctl), both with nvbind-layouts.service (builds the driver layouts they name, so that a
container mounts the driver in one mount). --enable docker-runtime adds nvbind-runtime to Docker's daemon.json (every other
key kept), so docker run --runtime=nvbind -e NVIDIA_VISIBLE_DEVICES=0 works; with --as-nvidia also under NVIDIA's
names. With the units, it also enables nvbind-runtime.socket (runtime-service): the edit service, which spares each GPU
container nvbind-runtime starts a Go process of its own. dev-char makes the /dev/char links of NVIDIA's device nodes, without which systemd drops GPUs from
running containers on daemon-reload. Files that are already up to date are left alone.`,
		Example: `  nvbind install --enable cdi-refresh          # Podman, Docker, nerdctl hosts
  nvbind install --enable nri                  # containerd or CRI-O hosts without Kubernetes
  nvbind install --enable docker-runtime --as-nvidia --default   # docker run --runtime=nvidia, and the default
  nvbind install --components hook,runtime --prefix /host/opt/nvbind   # what the DaemonSet's init container runs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			return f.install(cmd.OutOrStdout())
		},
	}
	f.register(cmd, "install")
	cmd.Flags().StringSliceVar(&f.enable, "enable", nil, "turn on: nri, cdi-refresh and runtime-service (systemd units, enabled and started), docker-runtime (Docker's daemon.json, with runtime-service when the units are installed)")
	cmd.Flags().BoolVar(&f.dockerDefault, "default", false, "with --enable docker-runtime: make nvbind-runtime Docker's default runtime")
	return cmd
}

func newUninstallCommand() *cobra.Command {
	f := &installFlags{}
	cmd := &cobra.Command{
		Use:     "uninstall",
		Short:   "Stop and remove what nvbind install placed and the CDI specs nvbind wrote, and print what changed",
		Example: "  nvbind uninstall",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if !f.systemd() && !cmd.Flags().Changed("cdi-spec-dir") {
				f.specDirs = nil // a staging install: the host's specs are not its own
			}
			return f.uninstall(cmd.OutOrStdout())
		},
	}
	f.register(cmd, "remove")
	cmd.Flags().StringSliceVar(&f.specDirs, "cdi-spec-dir", defaultSpecDirs, "CDI spec folders to remove nvbind's own specs from when their hook, PREFIX/bin/nvbind-hook, goes (other specs stay); on a host, with "+systemUnitDir+" as --unit-dir, or when given")
	return cmd
}

// defaultSpecDirs are the CDI spec folders every runtime reads.
var defaultSpecDirs = []string{"/etc/cdi", "/var/run/cdi"}

// placeFile writes data to dst atomically with mode, unless dst already holds it.
func placeFile(w io.Writer, dst string, data []byte, mode fs.FileMode) error {
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) { //nolint:gosec // a path the user chose
		fmt.Fprintf(w, "unchanged %s\n", dst)
		return nil
	}
	if err := fileio.WriteAtomic(dst, data, mode, nil); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	fmt.Fprintf(w, "installed %s\n", dst)
	return nil
}

// systemUnitDir is the folder systemd reads administrators' units from; units placed
// anywhere else (a staging root, a test) are not systemd's, so systemctl is not run for
// them.
const systemUnitDir = "/etc/systemd/system"

func (f *installFlags) systemd() bool { return filepath.Clean(f.unitDir) == systemUnitDir }

func (f *installFlags) binaries() []string {
	var out []string
	add := func(names ...string) {
		for _, n := range names {
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	for _, c := range f.components {
		switch c {
		case "binaries":
			add("nvbind", nodeBinaryName, hookBinary, hookFull, runtimeBinary, runtimeEdit)
		case "hook":
			add(hookBinary, hookFull)
		case "runtime":
			add(runtimeBinary, runtimeEdit, hookBinary, hookFull)
		}
	}
	return out
}

// links are the other names of installed binaries: name -> the binary it runs.
func (f *installFlags) links() map[string]string {
	out := map[string]string{}
	if slices.Contains(f.binaries(), runtimeBinary) {
		out[guardLink] = runtimeBinary
		if f.asNVIDIA {
			out[nvidiaRuntime] = runtimeBinary
		}
	}
	return out
}

// placeLink makes dst a link to target (a name in the same folder), unless it is one.
func placeLink(w io.Writer, dst, target string) error {
	if got, err := os.Readlink(dst); err == nil && got == target {
		fmt.Fprintf(w, "unchanged %s\n", dst)
		return nil
	}
	tmp := dst + ".nvbind-tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("install %s: %w", dst, err)
	}
	fmt.Fprintf(w, "installed %s -> %s\n", dst, target)
	return nil
}

func (f *installFlags) install(w io.Writer) error {
	if len(f.units()) > 0 && !f.systemd() { // checked before anything is written
		return fmt.Errorf("--enable runs systemctl, which reads %s, not --unit-dir %s", systemUnitDir, f.unitDir)
	}
	if f.dockerDefault && !slices.Contains(f.enable, "docker-runtime") {
		return errors.New("--default makes nvbind-runtime Docker's default runtime: use it with --enable docker-runtime")
	}
	var nodes *gpu.Inventory
	if slices.Contains(f.components, "dev-char") {
		var err error
		if nodes, err = f.devCharNodes(); err != nil {
			return err
		}
	}
	self := selfPath()
	bindir := filepath.Join(f.prefix, "bin")
	for _, b := range f.binaries() {
		src := filepath.Join(filepath.Dir(self), b)
		if b == "nvbind" {
			src = self // the lean CLI, or the full build standing in for it
		}
		data, err := os.ReadFile(src) //nolint:gosec // our own binaries beside this one
		if err != nil {
			return fmt.Errorf("%s is not beside %s (build it with make build): %w", b, self, err)
		}
		if err := placeFile(w, filepath.Join(bindir, b), data, 0o755); err != nil {
			return err
		}
	}
	for name, target := range f.links() {
		if err := placeLink(w, filepath.Join(bindir, name), target); err != nil {
			return err
		}
	}
	if nodes != nil {
		if err := f.devChar(w, nodes); err != nil {
			return err
		}
	}
	if slices.Contains(f.enable, "docker-runtime") {
		if err := f.dockerRuntime(w, bindir); err != nil {
			return err
		}
	}
	if slices.Contains(f.components, "units") {
		for _, u := range unitNames {
			u = "systemd/" + u
			data, err := manifests.Systemd.ReadFile(u)
			if err != nil {
				return err
			}
			data = bytes.ReplaceAll(data, []byte("@BINDIR@"), []byte(bindir))
			if err := placeFile(w, filepath.Join(f.unitDir, filepath.Base(u)), data, 0o644); err != nil {
				return err
			}
		}
	}
	if f.systemd() && slices.Contains(f.binaries(), runtimeEdit) {
		// a running edit service keeps the binary it started with until it is restarted
		if _, err := exec.LookPath("systemctl"); err == nil {
			if out, err := exec.Command("systemctl", "try-restart", "nvbind-runtime.service").CombinedOutput(); err == nil {
				fmt.Fprintln(w, "ran systemctl try-restart nvbind-runtime.service")
			} else if !bytes.Contains(out, []byte("not loaded")) && !bytes.Contains(out, []byte("not found")) {
				fmt.Fprintf(w, "systemctl try-restart nvbind-runtime.service: %s\n", bytes.TrimSpace(out))
			}
		}
	}
	if len(f.units()) == 0 {
		if slices.Contains(f.components, "units") {
			fmt.Fprintln(w, "enable with: systemctl daemon-reload && systemctl enable --now nvbind-cdi-refresh (Podman, Docker, nerdctl) or nvbind-nri (containerd, CRI-O); nvbind-runtime.socket for nvbind-runtime")
		}
		return nil
	}
	args := append([]string{"enable", "--now"}, f.units()...)
	for _, c := range [][]string{{"daemon-reload"}, args} {
		out, err := exec.Command("systemctl", c...).CombinedOutput() //nolint:gosec // unit names are checked against a fixed list
		if err != nil {
			return fmt.Errorf("systemctl %s: %w: %s", strings.Join(c, " "), err, bytes.TrimSpace(out))
		}
		fmt.Fprintf(w, "ran systemctl %s\n", strings.Join(c, " "))
	}
	return nil
}

func (f *installFlags) uninstall(w io.Writer) error {
	var errs []error
	if slices.Contains(f.components, "units") {
		units := unitNames
		if _, err := exec.LookPath("systemctl"); err == nil && f.systemd() {
			if out, err := exec.Command("systemctl", append([]string{"disable", "--now"}, units...)...).CombinedOutput(); err == nil { //nolint:gosec // fixed unit names
				fmt.Fprintf(w, "ran systemctl disable --now %s\n", strings.Join(units, " "))
			} else if !bytes.Contains(out, []byte("not loaded")) && !bytes.Contains(out, []byte("does not exist")) {
				fmt.Fprintf(w, "systemctl disable: %s\n", bytes.TrimSpace(out))
			}
		}
		for _, u := range units {
			errs = append(errs, remove(w, filepath.Join(f.unitDir, u)))
		}
		if f.systemd() && layout.CanBuild() {
			// their builder and users are stopped: the driver layouts leave the host
			// (running containers keep theirs)
			gone, err := layout.Collect(layout.DefaultBase, nil)
			for _, id := range gone {
				fmt.Fprintf(w, "removed driver layout %s\n", filepath.Join(layout.DefaultBase, id))
			}
			errs = append(errs, err)
		}
	}
	// the specs nvbind wrote (cdi generate, cdi-refresh, the NRI plugin's CDI mode, the
	// device plugin's cdi-cri) name its hook: they go with it
	// with the hook they call: the specs whose hook is the nvbind-hook removed here
	hook := filepath.Join(f.prefix, "bin", hookBinary)
	for _, dir := range f.specDirs {
		if !slices.Contains(f.binaries(), hookBinary) {
			break
		}
		gone, err := spec.RemoveOwn(dir, func(sf spec.SpecFile) bool { return filepath.Clean(sf.HookPath) == hook })
		for _, p := range gone {
			fmt.Fprintf(w, "removed %s\n", p)
		}
		errs = append(errs, err)
	}
	for name := range f.links() {
		errs = append(errs, remove(w, filepath.Join(f.prefix, "bin", name)))
	}
	for _, b := range f.binaries() {
		errs = append(errs, remove(w, filepath.Join(f.prefix, "bin", b)))
	}
	if slices.Contains(f.binaries(), runtimeBinary) {
		errs = append(errs, f.removeDockerRuntime(w, filepath.Join(f.prefix, "bin")))
	}
	return errors.Join(errs...)
}

func remove(w io.Writer, p string) error {
	err := os.Remove(p)
	switch {
	case err == nil:
		fmt.Fprintf(w, "removed %s\n", p)
	case errors.Is(err, os.ErrNotExist):
		fmt.Fprintf(w, "absent %s\n", p)
	default:
		return err
	}
	return nil
}
