package wrapper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/hook"
	"github.com/nvbind/nvbind/internal/fileio"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
)

// Annotations of the CRI in config.json: the container's name, and the container type
// that marks a pod's sandbox (pause) container, in containerd's and CRI-O's spelling.
const (
	criContainerName  = "io.kubernetes.cri.container-name"
	criContainerType  = "io.kubernetes.cri.container-type"
	crioContainerType = "io.kubernetes.cri-o.ContainerType"
)

// maxSpecSize bounds config.json.
const maxSpecSize = 32 << 20

// discoveryTimeout bounds discovery on create: the runtime's caller waits for it.
const discoveryTimeout = 20 * time.Second

// ErrUnhandled is a container that asks for GPUs which nvbind's NRI plugin did not handle.
var ErrUnhandled = errors.New("nvbind's NRI plugin did not handle this container")

// GuardName is the wrapper's name in guard mode, whatever the configuration says: a
// runtime handler whose BinaryName is nvbind-guard (a link to nvbind-runtime) guards,
// while another handler of the same node injects.
const GuardName = "nvbind-guard"

// Main runs the wrapper on a runtime command line: name is the program name it was run as
// (nvbind-guard guards), args the rest. For create and run it edits the bundle's
// config.json as the container asks, then it replaces itself with the real runtime. It
// returns only on failure, with the exit code.
func Main(name string, args []string, stderr io.Writer) int {
	call := ParseCall(args)
	cfg, err := configFor(name)
	if err == nil {
		var rt string
		if rt, err = cfg.RealRuntime(); err == nil {
			if call.Command == "create" || call.Command == "run" {
				var lock *os.File
				if lock, err = lockBundle(context.Background(), call.Bundle); err == nil {
					err = Prepare(context.Background(), call, cfg)
					_ = lock.Close()
				}
			}
			if err == nil {
				err = syscall.Exec(rt, append([]string{rt}, args...), os.Environ()) //nolint:gosec // the configured runtime
				err = fmt.Errorf("run %s: %w", rt, err)
			}
		}
	}
	report(call, stderr, err)
	return 1
}

// lockWait bounds the wait for a bundle's lock.
const lockWait = 30 * time.Second

// lockBundle takes an exclusive lock (flock) on the bundle folder for an edit's read,
// change and write of config.json, so that the service's and nvbind-runtime-edit's edits
// of one bundle never interleave (a service that edits after its front gave up and ran
// nvbind-runtime-edit). An edit that comes second finds the first's: edited (nothing to
// do), or marked for the service's steps without the hook (refused).
func lockBundle(ctx context.Context, bundle string) (*os.File, error) {
	if bundle == "" {
		bundle = "."
	}
	fd, err := unix.Open(bundle, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", bundle, err)
	}
	f := os.NewFile(uintptr(fd), bundle)
	deadline := time.Now().Add(lockWait)
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("lock bundle %s: %w", bundle, err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = f.Close()
			return nil, fmt.Errorf("bundle %s: another edit of it held its lock for %s", bundle, lockWait)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// configFor is the configuration of the wrapper run as name: nvbind-guard guards.
func configFor(name string) (Config, error) {
	cfg, _, err := LoadConfig()
	return guarded(cfg, name), err
}

// configFrom is configFor for the edit service, which is told the front's configuration
// file.
func configFrom(name, path string, explicit bool) (Config, error) {
	cfg, err := loadConfigFile(path, explicit)
	if err != nil {
		return cfg, err
	}
	return guarded(cfg, name), nil
}

// guarded sets guard mode for the wrapper run as nvbind-guard.
func guarded(cfg Config, name string) Config {
	if filepath.Base(name) == GuardName {
		cfg.Mode = ModeGuard
	}
	return cfg
}

// report writes the error where the runtime's caller looks: standard error, and the
// --log file in runc's JSON format, which containerd's shim and Docker show to users.
func report(call Call, stderr io.Writer, err error) {
	msg := "nvbind-runtime: " + err.Error()
	fmt.Fprintln(stderr, msg)
	if call.Log == "" {
		return
	}
	f, oerr := os.OpenFile(call.Log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if oerr != nil {
		return
	}
	defer func() { _ = f.Close() }()
	if call.LogFormat == "json" {
		line, _ := json.Marshal(map[string]string{"level": "error", "msg": msg, "time": time.Now().Format(time.RFC3339Nano)})
		_, _ = f.Write(append(line, '\n'))
		return
	}
	fmt.Fprintf(f, "time=%q level=error msg=%q\n", time.Now().Format(time.RFC3339Nano), msg)
}

// mayAsk is the cheap test every container passes first: config.json names none of the
// keys a GPU request uses. Most containers end here, with one read of config.json.
func mayAsk(data []byte) bool {
	for _, k := range [][]byte{[]byte(request.EnvVisibleDevices), []byte(request.AnnotationGPUs), []byte("cdi.k8s.io/"),
		[]byte(request.AnnotationRequiredPlugins)} {
		if bytes.Contains(data, k) {
			return true
		}
	}
	return false
}

// container is what the wrapper reads of config.json to find a request.
type container struct {
	Process *struct {
		Env []string `json:"env"`
	} `json:"process"`
	Annotations map[string]string `json:"annotations"`
	Mounts      []struct {
		Destination string `json:"destination"`
	} `json:"mounts"`
	Linux *struct {
		Namespaces []struct {
			Type string `json:"type"`
			Path string `json:"path"`
		} `json:"namespaces"`
		CgroupsPath string `json:"cgroupsPath"`
	} `json:"linux"`
	Hooks *struct {
		CreateRuntime []struct {
			Path string `json:"path"`
		} `json:"createRuntime"`
	} `json:"hooks"`
}

// hasHook reports whether config.json names nvbind's hook (at hookPath, or any program
// named nvbind-hook) at createRuntime: its edits, or a CDI spec's that the runtime's
// caller applied (Docker, Podman).
func (c container) hasHook(hookPath string) bool {
	if c.Hooks == nil {
		return false
	}
	for _, h := range c.Hooks.CreateRuntime {
		if isOurHook(h.Path, hookPath) {
			return true
		}
	}
	return false
}

// isOurHook reports whether a hook's program is nvbind's hook.
func isOurHook(path, hookPath string) bool {
	return path == hookPath || filepath.Base(path) == "nvbind-hook"
}

// stageable reports whether a host process may run the driver's steps on the created
// container id: it has no user namespace of its own (a process with threads cannot join
// one), and its cgroup path names its id (runc's default path does), which
// hook.RunInContainer checks of the process.
func (c container) stageable(id string) bool {
	if c.Linux == nil {
		return false
	}
	ownMounts := false
	for _, ns := range c.Linux.Namespaces {
		switch ns.Type {
		case "user":
			return false
		case "mount":
			// a new one: the process's root and mounts are the container's, not the host's
			ownMounts = ns.Path == ""
		}
	}
	return ownMounts && cgroupNames(c.Linux.CgroupsPath, id)
}

// cgroupNames reports whether an OCI cgroupsPath names the container's id as
// hook.RunInContainer checks the process's cgroup; runc's default path (none given) is
// the id's.
func cgroupNames(path, id string) bool {
	return path == "" || hook.CgroupPathNames(path, id)
}

func (c container) input() request.Input {
	in := request.Input{Container: c.Annotations[criContainerName], PodAnnotations: c.Annotations, Annotations: c.Annotations}
	if c.Process != nil {
		in.Env = c.Process.Env
	}
	for _, m := range c.Mounts {
		in.Mounts = append(in.Mounts, m.Destination)
	}
	return in
}

// Prepare edits the bundle's config.json for the container's request (inject mode), or
// refuses a request nvbind's NRI plugin did not handle (guard mode). A container that
// asks for nothing is left as it is; a failure leaves config.json untouched. Extra
// discovery options come after the configuration's (tests read synthetic roots).
func Prepare(ctx context.Context, call Call, cfg Config, extra ...gpu.Option) error {
	_, err := prepare(ctx, call, cfg, false, discovery{extra: extra})
	return err
}

// Steps are the driver's steps of a container created without its hook, which the edit
// service runs on it once the runtime has created it (hook.RunInContainer).
type Steps struct {
	// ID is the container's ID, Options the hook's actions.
	ID      string
	Options hook.Options
}

// prepare is Prepare; with stage, for a container the edit service may run the driver's
// steps on, it leaves out the hook and returns the steps instead (nil where the hook
// stays, or nothing was edited).
func prepare(ctx context.Context, call Call, cfg Config, stage bool, disc discovery) (*Steps, error) {
	bundle := call.Bundle
	if bundle == "" {
		bundle = "."
	}
	p := filepath.Join(bundle, "config.json")
	data, err := fileio.ReadFile(p, maxSpecSize)
	if err != nil {
		return nil, fmt.Errorf("bundle config: %w", err)
	}
	if !mayAsk(data) {
		return nil, nil
	}
	var c container
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if c.Annotations[criContainerType] == "sandbox" || c.Annotations[crioContainerType] == "sandbox" {
		// a pod's sandbox carries the pod's annotations, but it is no container of the pod:
		// NRI does not ask plugins about it, and it never gets GPUs
		return nil, nil
	}
	if _, handled := c.Annotations[request.AnnotationHandled]; handled {
		return nil, nil // nvbind's NRI plugin gave it what it asked for
	}
	if c.Annotations[request.AnnotationRuntimeSteps] != "" {
		so, err := cfg.specOptions()
		if err != nil {
			return nil, err
		}
		if !c.hasHook(so.HookPath) {
			// given the driver by the service for its steps, which then did not answer (or
			// a second create of the same bundle): without its hook, the container would
			// start without them
			return nil, fmt.Errorf("%s names %s, which the edit service sets on a container whose driver steps it runs, and no nvbind hook: the service edited it and did not answer, the bundle was created before, or the annotation was set by hand; create the container again from a new config.json",
				p, request.AnnotationRuntimeSteps)
		}
	}
	in := c.input()
	opts := request.Options{Kind: spec.DefaultVendor + "/" + spec.DefaultClass, EnvRequests: *cfg.EnvRequests}
	kind, _ := request.Which(in, opts)
	stage = stage && call.Command == "create" && call.ID != "" && call.PidFile != "" && cfg.Stage == StageAuto && c.stageable(call.ID)
	if kind == "" && (cfg.Mode != ModeGuard || !request.RequiresPlugin(in, "nvbind")) {
		return nil, nil
	}
	if cfg.Mode == ModeGuard {
		what := "names nvbind a required plugin"
		if kind != "" {
			what = "asks for GPUs (" + string(kind) + ")"
		}
		return nil, fmt.Errorf("%w: the container %s, but the plugin was not running or lost the request; it is refused so that it does not start without its GPUs, and is created again once the plugin is back",
			ErrUnhandled, what)
	}
	req, err := request.Parse(in, opts)
	if err != nil || req == nil {
		return nil, err
	}
	steps, err := inject(ctx, p, data, req, cfg, stage, disc)
	if steps != nil {
		steps.ID = call.ID
	}
	return steps, err
}

// inject discovers the host's GPUs, resolves the request and applies its edits to
// config.json, replacing the file atomically. Discovery runs for every container, as the
// runtime is asked (the edit service's reuses an inventory while the driver's procfs and
// folders say it holds: gpu.Cache), so that a MIG or driver change is never missed. With stage, the hook
// is left out where the edits' one hook is nvbind's, and its actions come back as the
// steps; config.json is then marked (request.AnnotationRuntimeSteps), so that an edit asked
// again (the front's fallback, nvbind-runtime-edit, after the service failed to answer)
// refuses the container instead of finding it edited and starting it without its steps.
func inject(ctx context.Context, p string, data []byte, req *request.Request, cfg Config, stage bool, disc discovery) (*Steps, error) {
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	gopts := []gpu.Option{gpu.WithDriverRoot(cfg.DriverRoot), gpu.WithDevRoot(cfg.DevRoot), gpu.WithNVMLOnlyForMIG()}
	if cfg.NoNVML {
		gopts = append(gopts, gpu.WithoutNVML())
	}
	if !needsCUDAVersion(req) {
		gopts = append(gopts, gpu.WithoutCUDAVersion())
	}
	inv, err := disc.discover(ctx, append(gopts, disc.extra...))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.Source, err)
	}
	r := request.NewResolver(inv)
	if err := r.Supported(req); err != nil {
		return nil, err
	}
	targets, err := r.Resolve(req)
	if err != nil {
		return nil, err
	}
	so, err := cfg.specOptions()
	if err != nil {
		return nil, err
	}
	if so.LayoutBase != "" {
		plan := layout.For(inv, req.Caps)
		if err := layout.Ensure(so.LayoutBase, plan, nil); err != nil {
			// the files one by one, still right, only slower to start
			fmt.Fprintf(os.Stderr, "nvbind-runtime: driver layout %s not built, one mount per file: %v\n", plan.ID, err)
			so.LayoutBase = ""
		} else {
			_, _ = layout.CollectOtherVersions(so.LayoutBase, inv.Driver.Version, 10*time.Minute)
		}
	}
	edits, err := request.Edits(inv, targets, req.Caps, so)
	if err != nil {
		return nil, err
	}
	var steps *Steps
	mark := ""
	if args, _, ok := edits.Steps(so.HookPath); ok && stage {
		steps = &Steps{Options: hook.OptionsOf(args)}
		edits.Hooks = nil
		mark = req.Caps.String()
	}
	out, s, changed, err := applyEdits(data, edits, mark)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if !changed {
		return nil, nil
	}
	if steps != nil && steps.Options.AppProfile && s.Linux != nil {
		for _, d := range s.Linux.Devices {
			if hook.IsGPUNode(d.Path, d.Type) && !slices.Contains(steps.Options.GPUMinors, int(d.Minor)) {
				steps.Options.GPUMinors = append(steps.Options.GPUMinors, int(d.Minor))
			}
		}
		slices.Sort(steps.Options.GPUMinors)
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(p); err == nil {
		mode = fi.Mode().Perm()
	}
	// atomic for the runtime, which reads it next; no fsync: it does not outlive the
	// container's creation
	return steps, fileio.ReplaceAtomic(p, out, mode)
}

// discovery is how an edit gets its inventory: discovery options after the
// configuration's (tests read synthetic roots), and the edit service's caches (nil: a
// discovery of its own).
type discovery struct {
	extra  []gpu.Option
	caches *inventoryCaches
}

// discover returns the inventory of a discovery with opts.
func (d discovery) discover(ctx context.Context, opts []gpu.Option) (*gpu.Inventory, error) {
	if d.caches != nil {
		return d.caches.discover(ctx, opts)
	}
	g, err := gpu.New(opts...)
	if err != nil {
		return nil, err
	}
	return g.Discover(ctx)
}

// needsCUDAVersion reports whether a requirement asks for the driver's CUDA version,
// which costs discovery a read of libcuda.
func needsCUDAVersion(req *request.Request) bool {
	for _, r := range req.Require {
		for _, all := range r.Any {
			for _, c := range all {
				if c.Name == "cuda" {
					return true
				}
			}
		}
	}
	return false
}

func (c Config) specOptions() (spec.Options, error) {
	o := spec.Options{HookPath: c.HookPath}
	if o.HookPath == "" {
		if self, err := os.Executable(); err == nil {
			if r, err := filepath.EvalSymlinks(self); err == nil {
				self = r
			}
			o.HookPath = filepath.Join(filepath.Dir(self), "nvbind-hook")
		}
	}
	var err error
	if o.DisabledHooks, err = spec.ParseHookNames(c.DisableHooks); err != nil {
		return o, fmt.Errorf("disable-hooks: %w", err)
	}
	if c.Layout != "files" && !slices.Contains(o.DisabledHooks, spec.HookSymlinks) && !slices.Contains(o.DisabledHooks, spec.HookLDCache) {
		o.LayoutBase = c.LayoutDir
	}
	return o, o.Validate()
}
