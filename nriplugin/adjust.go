package nriplugin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/dra"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
)

// Config is the plugin's policy and output form.
type Config struct {
	// Spec gives the CDI kind (for CDI annotations and CDI mode), the hook path and the
	// disabled hooks.
	Spec spec.Options
	// CDIMode adds qualified CDI device names for the runtime to resolve (containerd
	// 2.1+, CRI-O 1.34+) instead of editing the spec directly.
	CDIMode bool
	// EnvRequests lets NVIDIA_VISIBLE_DEVICES and friends request GPUs. Any pod can set
	// env, so this can be turned off.
	EnvRequests bool
	// AllowedNamespaces may request GPUs; empty means every namespace.
	AllowedNamespaces []string
	// AllNamespaces may request every GPU ("all"); empty means none may.
	AllNamespaces []string
	// RequireAllocation gives a container exactly the GPUs the kubelet allocated to it
	// through nvbind's device plugin, and refuses requests for others.
	RequireAllocation bool
	// Layouts, when set, gives containers the driver's files in one mount of a layout
	// (package layout) once it is complete, and one mount per file until then.
	Layouts *layout.Provider
	// StageInPlugin has the plugin run the hook's actions (links, ld cache, params, CUDA
	// compat, application profile) on each container it gives the driver, at
	// StartContainer (hook.RunInContainer), instead of naming the hook in the adjustment:
	// no hook process in the container's start. A container with a user namespace of its
	// own still gets the hook, which alone can join it. It takes effect with containerd,
	// which fails a container's start when a plugin's StartContainer fails, or with
	// StageAnyRuntime: CRI-O logs such a failure and starts the container.
	StageInPlugin   bool
	StageAnyRuntime bool
}

// Errors of the request policy; request.ErrUnknownDevice, request.ErrUnmetRequirement
// and request.ErrUnsupportedHost come from resolving a request.
var (
	ErrNoInventory = errors.New("no GPU inventory yet: discovery has not succeeded on this node")
	ErrDenied      = errors.New("request denied by policy")
	// ErrStopping is a GPU request that arrives while the plugin drains before it stops.
	ErrStopping = errors.New("nvbind is stopping")
)

// Decision says what was injected, for logs and metrics.
type Decision struct {
	Kind    request.SourceKind
	Source  string
	Devices []string
	Caps    gpu.Capabilities
	// Skipped explains a request that was ignored rather than failed.
	Skipped string
	// Stage is the hook's arguments, where the plugin runs them at StartContainer instead
	// of naming the hook.
	Stage *hookargs.Args
}

// prepared is an inventory turned into ready adjustment parts: the resolver, each
// device's nodes in NRI's types, and the driver's edits per capability set. Immutable
// once built, except for the per-capability cache, which only grows.
type prepared struct {
	*request.Resolver
	nodes  map[*request.Target][]*api.LinuxDevice
	common sync.Map // gpu.Capabilities -> *commonParts
}

type commonParts struct {
	nriEdits
	// the container paths of the mounts of each way a runtime may have injected the
	// driver from nvbind's spec (the layout, or one mount per file), to tell whether it did
	paths []map[string]bool
	// layoutMount is the layout's mount, if the edits use one
	layoutMount string
	// plan is the layout of caps, when the plugin gives layouts; layoutOthers are the
	// mounts that go with a layout (sockets): a runtime may have given a spec's layout of
	// a larger set (all) with them
	plan         *layout.Plan
	layoutOthers map[string]bool
	caps         gpu.Capabilities
	err          error
	// stage is the hook's arguments of these edits, when the plugin may run them itself;
	// stageID names them (the first 16 hex digits of the SHA-256 of the command line)
	stage   *hookargs.Args
	stageID string
}

// Adjuster turns container requests into NRI adjustments against the current inventory.
type Adjuster struct {
	cfg   Config
	kind  string
	state atomic.Pointer[prepared]
	// staging is set once the runtime is one where the plugin runs the steps
	// (Config.StageInPlugin, Plugin.Configure)
	staging atomic.Bool
}

// stageFor decides, for the runtime that configures the plugin, whether the plugin runs
// the driver's steps itself, and returns it.
func (a *Adjuster) stageFor(runtime string) bool {
	// containerd 2.0.0 to 2.0.3 name themselves "v2"
	on := a.cfg.StageInPlugin && (a.cfg.StageAnyRuntime || runtime == "containerd" || runtime == "v2")
	a.staging.Store(on)
	return on
}

// NewAdjuster checks the configuration.
func NewAdjuster(cfg Config) (*Adjuster, error) {
	if cfg.Spec.Vendor == "" {
		cfg.Spec.Vendor = spec.DefaultVendor
	}
	if cfg.Spec.Class == "" {
		cfg.Spec.Class = spec.DefaultClass
	}
	if cfg.Layouts != nil {
		cfg.Spec.LayoutBase = cfg.Layouts.Base
	}
	if err := cfg.Spec.Validate(); err != nil {
		return nil, err
	}
	return &Adjuster{cfg: cfg, kind: cfg.Spec.Vendor + "/" + cfg.Spec.Class}, nil
}

// Inventory returns the inventory in use, or nil.
func (a *Adjuster) Inventory() *gpu.Inventory {
	if p := a.state.Load(); p != nil {
		return p.Inventory()
	}
	return nil
}

// SetInventory prepares a new inventory and switches to it atomically.
func (a *Adjuster) SetInventory(inv *gpu.Inventory) {
	p := &prepared{Resolver: request.NewResolver(inv), nodes: map[*request.Target][]*api.LinuxDevice{}}
	for _, t := range p.Targets() {
		p.nodes[t] = nriDevices(t.Edits(gpu.CapsOf(gpu.CapCompute)).Nodes)
	}
	a.state.Store(p)
}

// commonFor builds (once per capability set) the driver-file mounts, hook, control nodes
// and env of an inventory: request.Edits without devices, in NRI's types.
func (a *Adjuster) commonFor(p *prepared, caps gpu.Capabilities) *commonParts {
	if c, ok := p.common.Load(caps); ok {
		cp := c.(*commonParts)
		// one stat per container: the edits follow their layout, built since (one mount
		// then) or detached since (one mount per file again, and asked for)
		if cp.plan == nil || layout.Complete(a.cfg.Layouts.Base, *cp.plan) == (cp.layoutMount != "") {
			return cp
		}
		p.common.CompareAndDelete(caps, cp)
	}
	cp := &commonParts{caps: caps}
	so := a.cfg.Spec
	files := so
	files.LayoutBase = ""
	if so.LayoutBase != "" {
		plan := layout.For(p.Inventory(), caps)
		cp.plan = &plan
		if !a.cfg.Layouts.Ready(p.Inventory(), caps) {
			so.LayoutBase = "" // one mount per file until the layout is complete
		}
	}
	e, err := request.Edits(p.Inventory(), nil, caps, so)
	if err != nil {
		cp.err = err
		actual, _ := p.common.LoadOrStore(caps, cp)
		return actual.(*commonParts)
	}
	cp.nriEdits = toNRI(e)
	cp.paths = append(cp.paths, mountPaths(e))
	cp.stage, cp.stageID = stageOf(e, so.HookPath)
	if cp.plan != nil {
		// what a spec may have given instead: its layout, or one mount per file (a spec
		// not in /run)
		other := files
		if so.LayoutBase == "" {
			other = a.cfg.Spec
		}
		if oe, err := request.Edits(p.Inventory(), nil, caps, other); err == nil {
			cp.paths = append(cp.paths, mountPaths(oe))
			if so.LayoutBase == "" {
				cp.layoutOthers = layoutOthers(oe)
			}
		}
		if so.LayoutBase != "" {
			cp.layoutOthers = layoutOthers(e)
			for _, m := range e.Mounts {
				if path.Dir(m.Path) == layout.Dest {
					cp.layoutMount = m.Path
				}
			}
		}
	}
	actual, _ := p.common.LoadOrStore(caps, cp)
	return actual.(*commonParts)
}

// stageOf returns the arguments of edits e's hook, where e has one hook, nvbind's, and
// their name: the first 16 hex digits of the SHA-256 of the command line; nil where the
// plugin cannot run it itself.
func stageOf(e spec.Edits, hookPath string) (*hookargs.Args, string) {
	a, argv, ok := e.Steps(hookPath)
	if !ok {
		return nil, ""
	}
	sum := sha256.Sum256([]byte(strings.Join(argv, "\x00")))
	return &a, hex.EncodeToString(sum[:8])
}

// layoutOthers are the paths of the layout edits' mounts besides the layout (sockets).
func layoutOthers(e spec.Edits) map[string]bool {
	out := map[string]bool{}
	for _, m := range e.Mounts {
		if path.Dir(m.Path) != layout.Dest {
			out[m.Path] = true
		}
	}
	return out
}

// mountPaths are the container paths of the edits' mounts.
func mountPaths(e spec.Edits) map[string]bool {
	paths := make(map[string]bool, len(e.Mounts))
	for _, m := range e.Mounts {
		paths[m.Path] = true
	}
	return paths
}

// input is what the request parser reads of a pod and a container.
func input(pod *api.PodSandbox, ctr *api.Container) request.Input {
	in := request.Input{Container: ctr.GetName(), PodAnnotations: pod.GetAnnotations(), Annotations: ctr.GetAnnotations(), Env: ctr.GetEnv()}
	for _, m := range ctr.GetMounts() {
		in.Mounts = append(in.Mounts, m.GetDestination())
	}
	return in
}

// handled is the adjustment that only marks a container as seen by nvbind (for
// nvbind-runtime's guard), with what was decided.
func handled(adj *api.ContainerAdjustment, what string) *api.ContainerAdjustment {
	if adj == nil {
		adj = &api.ContainerAdjustment{}
	}
	adj.AddAnnotation(request.AnnotationHandled, what)
	return adj
}

// Asks reports, without parsing any value, whether a container asks for GPUs, carries a
// kubelet allocation or names nvbind a required plugin.
func (a *Adjuster) Asks(pod *api.PodSandbox, ctr *api.Container) bool {
	in := input(pod, ctr)
	kind, _ := request.Which(in, request.Options{Kind: a.kind, EnvRequests: a.cfg.EnvRequests})
	return kind != "" || allocation(ctr) != nil || hasClaims(ctr) || request.RequiresPlugin(in, "nvbind")
}

// hasClaims tells, without a lookup, whether the kubelet passed CDI devices of nvbind's
// DRA claims.
func hasClaims(ctr *api.Container) bool {
	for _, d := range ctr.GetCDIDevices() {
		if strings.HasPrefix(d.GetName(), dra.ClaimKind+"=") {
			return true
		}
	}
	return false
}

// Adjust computes the adjustment for one container. It returns (nil, nil, nil) when the
// container asks for no GPUs. Policy comes first and needs no request value parsed; every
// value is read within request's budgets. Errors name the annotation or variable, the bad
// value and the valid choices; nothing is half-applied because the adjustment is only
// returned whole. A container that asks, or names nvbind a required plugin, is marked
// handled (request.AnnotationHandled), whatever the decision.
func (a *Adjuster) Adjust(pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, *Decision, error) {
	in := input(pod, ctr)
	ropts := request.Options{Kind: a.kind, EnvRequests: a.cfg.EnvRequests}
	kind, source := request.Which(in, ropts)
	alloc := allocation(ctr)
	var claims []string
	if hasClaims(ctr) {
		claims = claimed(ctr, a.Inventory())
	}
	if kind == "" && alloc == nil && claims == nil {
		if request.RequiresPlugin(in, "nvbind") {
			return handled(nil, "none"), nil, nil
		}
		return nil, nil, nil
	}
	ns := pod.GetNamespace()
	if len(a.cfg.AllowedNamespaces) > 0 && !slices.Contains(a.cfg.AllowedNamespaces, ns) {
		// decided before any value is parsed, so a request of any size costs nothing here
		if alloc == nil && claims == nil && kind == request.KindEnv {
			return handled(nil, "ignored"), &Decision{Kind: kind, Source: source,
				Skipped: fmt.Sprintf("namespace %q may not request GPUs: %s ignored", ns, source)}, nil
		}
		if alloc != nil || claims != nil {
			kind, source = request.KindAllocation, "kubelet allocation"
		}
		return nil, &Decision{Kind: kind, Source: source}, fmt.Errorf("%w: %s: namespace %q may not request GPUs (allowed: %s)",
			ErrDenied, source, ns, strings.Join(a.cfg.AllowedNamespaces, ", "))
	}
	req, err := request.Parse(in, ropts)
	if err != nil {
		return nil, &Decision{Kind: kind, Source: source}, err
	}
	if claims != nil {
		// the runtime injected the claims' devices and driver files from their specs: a
		// request may name no GPU beyond them (--require-allocation), and adds nothing
		if a.cfg.RequireAllocation {
			if err := checkAllocation(req, append(claims, alloc...), ctr.GetName()); err != nil {
				return nil, &Decision{Kind: request.KindAllocation, Source: "DRA claim"}, err
			}
		}
		if alloc == nil {
			return handled(nil, "injected"), &Decision{Kind: request.KindAllocation, Source: "DRA claim", Devices: claims,
				Skipped: "the runtime injected the claim's devices from its CDI spec"}, nil
		}
	}
	if alloc != nil || a.cfg.RequireAllocation {
		if a.cfg.RequireAllocation && claims == nil {
			if err := checkAllocation(req, alloc, ctr.GetName()); err != nil {
				return nil, &Decision{Kind: request.KindAllocation, Source: "allocation"}, err
			}
		}
		// the kubelet's allocation is what the scheduler accounted for: it wins
		if req, err = fromAllocation(req, alloc, in, ropts, ctr); err != nil {
			return nil, nil, err
		}
	}
	if req == nil {
		return handled(nil, "none"), nil, nil
	}
	dec := &Decision{Kind: req.Kind, Source: req.Source, Caps: req.Caps}
	if req.All && !slices.Contains(a.cfg.AllNamespaces, ns) {
		if req.FromEnv {
			// CUDA images set NVIDIA_VISIBLE_DEVICES=all in their own env: that is not a
			// request by the pod, so it is ignored rather than failed.
			dec.Skipped = fmt.Sprintf("%s=all ignored: namespace %q is not allowed every GPU", req.Source, ns)
			return handled(nil, "ignored"), dec, nil
		}
		return nil, dec, fmt.Errorf("%w: %s asks for all GPUs, which namespace %q may not (--all-gpus-namespaces: %s)", ErrDenied, req.Source, ns, orNone(a.cfg.AllNamespaces))
	}
	p := a.state.Load()
	if p == nil {
		return nil, dec, ErrNoInventory
	}
	if err := p.Supported(req); err != nil {
		return nil, dec, err
	}
	targets, err := p.Resolve(req)
	if err != nil {
		return nil, dec, err
	}
	for _, t := range targets {
		dec.Devices = append(dec.Devices, t.Name)
	}
	if a.cfg.CDIMode {
		// the runtime injected the GPUs' own CDI devices (the kubelet's cdi-cri names, or a
		// privileged container's host devices): name the capabilities only
		return handled(a.cdiAdjustment(req, targets, nodesInjected(ctr, p, targets)), "injected"), dec, nil
	}
	cp := a.commonFor(p, req.Caps)
	if cp.err != nil {
		return nil, dec, cp.err
	}
	if nodesInjected(ctr, p, targets) && mountsInjected(ctr, cp) {
		dec.Skipped = "the runtime already injected these GPUs from nvbind's CDI spec (the kubelet's CDI devices)"
		return handled(nil, "injected"), dec, nil
	}
	adj := &api.ContainerAdjustment{}
	seen := make(map[string]bool, 8)
	for _, n := range cp.devices {
		adj.AddDevice(n)
		seen[n.Path] = true
	}
	for _, t := range targets {
		for _, n := range p.nodes[t] {
			if !seen[n.Path] {
				seen[n.Path] = true
				adj.AddDevice(n)
			}
		}
		for _, n := range drmNodes(t, req.Caps) {
			if !seen[n.Path] {
				seen[n.Path] = true
				adj.AddDevice(nriDevice(n))
			}
		}
	}
	adj.Mounts = cp.mounts
	switch {
	case cp.hooks == nil:
	case a.staging.Load() && cp.stage != nil && !hasUserNamespace(ctr) && slices.Contains(stageHandlers, pod.GetRuntimeHandler()):
		// the plugin runs the hook's actions at StartContainer, from its own record: the
		// annotation marks the container, and names them for whoever reads its spec
		adj.AddAnnotation(request.AnnotationStage, req.Caps.String()+"@"+cp.stageID)
		dec.Stage = cp.stage
	default:
		adj.AddHooks(cp.hooks)
	}
	adj.Env = cp.env
	return handled(adj, "injected"), dec, nil
}

// drmNodes are the GPU's DRM nodes when the capabilities need them.
func drmNodes(t *request.Target, caps gpu.Capabilities) []gpu.DeviceNode {
	if t.MIG == nil && (caps.Has(gpu.CapGraphics) || caps.Has(gpu.CapDisplay)) {
		return t.Device.DRM
	}
	return nil
}

// cdiAdjustment names, for the runtime to resolve in nvbind's spec (written with
// spec.Options.CapabilityDevices), the GPUs (unless the runtime already injected them)
// and one device per capability asked for; the DRM nodes of graphics and display, which
// are per GPU and per request, are added directly.
func (a *Adjuster) cdiAdjustment(req *request.Request, targets []*request.Target, injected bool) *api.ContainerAdjustment {
	adj := &api.ContainerAdjustment{}
	if !injected {
		for _, t := range targets {
			adj.AddCDIDevice(&api.CDIDevice{Name: a.kind + "=" + t.Name})
		}
	}
	for _, n := range spec.CapabilityNames(req.Caps) {
		adj.AddCDIDevice(&api.CDIDevice{Name: a.kind + "=" + n})
	}
	seen := map[string]bool{}
	for _, t := range targets {
		for _, n := range drmNodes(t, req.Caps) {
			if !seen[n.Path] {
				seen[n.Path] = true
				adj.AddDevice(nriDevice(n))
			}
		}
	}
	adj.AddEnv(request.EnvDriverCapabilities, req.Caps.String())
	return adj
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// stageHandlers are the runtime handlers whose containers' processes are the host's
// (runc, crun; "" is the runtime's default): the plugin runs the steps of their
// containers. Others (a sandboxed runtime's, whose container runs in a virtual machine, or
// one of a name nvbind does not know) get the hook.
var stageHandlers = []string{"", "runc", "crun"}

// hasUserNamespace reports whether the container has a user namespace of its own (or its
// pod's): only the hook can join one.
func hasUserNamespace(ctr *api.Container) bool {
	for _, ns := range ctr.GetLinux().GetNamespaces() {
		if ns.GetType() == "user" {
			return true
		}
	}
	return false
}
