package nriplugin

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/gpu"
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
}

// Errors of the request policy.
var (
	ErrNoInventory = errors.New("no GPU inventory yet: discovery has not succeeded on this node")
	ErrDenied      = errors.New("request denied by policy")
	// ErrUnknownDevice is a request for a GPU the node does not have.
	ErrUnknownDevice = errors.New("not on this node")
	// ErrUnmetRequirement is an NVIDIA_REQUIRE_* the node does not meet.
	ErrUnmetRequirement = errors.New("unmet requirement")
	// ErrUnsupportedHost is a request on a host whose GPUs only the CDI spec serves.
	ErrUnsupportedHost = errors.New("not served on this host")
)

// Decision says what was injected, for logs and metrics.
type Decision struct {
	Kind    SourceKind
	Source  string
	Devices []string
	Caps    gpu.Capabilities
	// Skipped explains a request that was ignored rather than failed.
	Skipped string
}

// target is one device a selector can name, with its prebuilt device entries.
type target struct {
	canonical string // "0" or "0:1"
	order     int
	nodes     []*api.LinuxDevice
	dev       gpu.Device // the full GPU (parent of a MIG device)
}

// prepared is an inventory turned into ready adjustment parts. Immutable once built,
// except for the per-capability cache, which only grows.
type prepared struct {
	inv     *gpu.Inventory
	kind    string
	byName  map[string]*target
	choices string
	common  sync.Map // gpu.Capabilities -> *commonParts
}

type commonParts struct {
	nriEdits
	err error
}

// Adjuster turns container requests into NRI adjustments against the current inventory.
type Adjuster struct {
	cfg   Config
	state atomic.Pointer[prepared]
}

// NewAdjuster checks the configuration.
func NewAdjuster(cfg Config) (*Adjuster, error) {
	if cfg.Spec.Vendor == "" {
		cfg.Spec.Vendor = spec.DefaultVendor
	}
	if cfg.Spec.Class == "" {
		cfg.Spec.Class = spec.DefaultClass
	}
	if err := cfg.Spec.Validate(); err != nil {
		return nil, err
	}
	return &Adjuster{cfg: cfg}, nil
}

// Inventory returns the inventory in use, or nil.
func (a *Adjuster) Inventory() *gpu.Inventory {
	if p := a.state.Load(); p != nil {
		return p.inv
	}
	return nil
}

// selectorNames are the names a request may use for a device; the first is canonical.
var selectorNames = []spec.NameStrategy{spec.NameIndex, spec.NameTypeIndex, spec.NameUUID}

// SetInventory prepares a new inventory and switches to it atomically.
func (a *Adjuster) SetInventory(inv *gpu.Inventory) {
	p := &prepared{inv: inv, kind: a.cfg.Spec.Vendor + "/" + a.cfg.Spec.Class, byName: map[string]*target{}}
	var names []string
	order := 0
	add := func(t *target, ns ...string) {
		for _, n := range ns {
			if n != "" {
				p.byName[n] = t
			}
		}
		names = append(names, ns[0])
	}
	for _, d := range inv.Devices {
		e := spec.DeviceEdits(d, gpu.CapsOf(gpu.CapCompute))
		t := &target{canonical: spec.Name(d, nil, spec.NameIndex), order: order, nodes: nriDevices(e.Nodes), dev: d}
		order++
		add(t, spec.Names(d, nil, selectorNames)...)
		for _, m := range d.MIG {
			me := spec.MIGEdits(d, m)
			mt := &target{canonical: spec.Name(d, &m, spec.NameIndex), order: order, nodes: nriDevices(me.Nodes), dev: d}
			order++
			add(mt, spec.Names(d, &m, selectorNames)...)
		}
	}
	p.choices = describeChoices(inv, names)
	a.state.Store(p)
}

// describeChoices lists a node's valid selectors for error messages.
func describeChoices(inv *gpu.Inventory, names []string) string {
	if len(inv.Devices) == 0 {
		return "this node has no GPUs"
	}
	var uuids []string
	for _, d := range inv.Devices {
		uuids = append(uuids, d.UUID)
	}
	s := "valid: all, none, " + strings.Join(names, ", ") + fmt.Sprintf(", gpu0-gpu%d", len(inv.Devices)-1)
	if len(uuids) <= 4 {
		s += ", " + strings.Join(uuids, ", ")
	} else {
		s += ", or a GPU UUID listed by nvbind info"
	}
	return s
}

// commonFor builds (once per capability set) the driver-file mounts, hook, control nodes
// and env of an inventory.
func (a *Adjuster) commonFor(p *prepared, caps gpu.Capabilities) *commonParts {
	if c, ok := p.common.Load(caps); ok {
		return c.(*commonParts)
	}
	cp := &commonParts{}
	e, err := spec.CommonEdits(p.inv, caps, a.cfg.Spec)
	if err != nil {
		cp.err = err
	} else {
		e.Env = append(e.Env, EnvDriverCapabilities+"="+caps.String())
		cp.nriEdits = toNRI(e)
	}
	actual, _ := p.common.LoadOrStore(caps, cp)
	return actual.(*commonParts)
}

// Adjust computes the adjustment for one container. It returns (nil, nil, nil) when the
// container asks for no GPUs. Errors name the annotation or variable, the bad value and the
// valid choices; nothing is half-applied because the adjustment is only returned whole.
func (a *Adjuster) Adjust(pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, *Decision, error) {
	p := a.state.Load()
	req, err := ParseRequest(pod, ctr, a.cfg.Spec.Vendor+"/"+a.cfg.Spec.Class, a.cfg.EnvRequests)
	if err != nil {
		return nil, nil, err
	}
	if alloc := allocation(ctr); alloc != nil || a.cfg.RequireAllocation {
		if a.cfg.RequireAllocation {
			if err := checkAllocation(req, alloc, ctr.GetName()); err != nil {
				return nil, &Decision{Kind: KindAllocation, Source: "allocation"}, err
			}
		}
		// the kubelet's allocation is what the scheduler accounted for: it wins
		if req, err = fromAllocation(req, alloc, pod, ctr, a.cfg.EnvRequests); err != nil {
			return nil, nil, err
		}
	}
	if req == nil {
		return nil, nil, nil
	}
	ns := pod.GetNamespace()
	dec := &Decision{Kind: req.Kind, Source: req.Source, Caps: req.Caps}
	if len(a.cfg.AllowedNamespaces) > 0 && !slices.Contains(a.cfg.AllowedNamespaces, ns) {
		if req.FromEnv {
			dec.Skipped = fmt.Sprintf("namespace %q may not request GPUs: %s ignored", ns, req.Source)
			return nil, dec, nil
		}
		return nil, dec, fmt.Errorf("%w: %s: namespace %q may not request GPUs (allowed: %s)", ErrDenied, req.Source, ns, strings.Join(a.cfg.AllowedNamespaces, ", "))
	}
	if req.All && !slices.Contains(a.cfg.AllNamespaces, ns) {
		if req.FromEnv {
			// CUDA images set NVIDIA_VISIBLE_DEVICES=all in their own env: that is not a
			// request by the pod, so it is ignored rather than failed.
			dec.Skipped = fmt.Sprintf("%s=all ignored: namespace %q is not allowed every GPU", req.Source, ns)
			return nil, dec, nil
		}
		return nil, dec, fmt.Errorf("%w: %s asks for all GPUs, which namespace %q may not (--all-gpus-namespaces: %s)", ErrDenied, req.Source, ns, orNone(a.cfg.AllNamespaces))
	}
	if p == nil {
		return nil, dec, ErrNoInventory
	}
	if p.inv.WSL != nil || (p.inv.IGPU != nil && len(p.inv.Devices) == 0) {
		return nil, dec, fmt.Errorf("%w: %s: the NRI plugin does not serve WSL2's or a Jetson iGPU's GPUs yet; use the CDI spec of nvbind cdi generate",
			ErrUnsupportedHost, req.Source)
	}
	targets, err := p.resolve(req)
	if err != nil {
		return nil, dec, err
	}
	devs := make([]gpu.Device, 0, len(targets))
	for _, t := range targets {
		dec.Devices = append(dec.Devices, t.canonical)
		if !slices.ContainsFunc(devs, func(d gpu.Device) bool { return d.Index == t.dev.Index }) {
			devs = append(devs, t.dev)
		}
	}
	for _, r := range req.Require {
		if err := r.Check(p.inv.Driver, devs); err != nil {
			return nil, dec, err
		}
	}
	injected := injectedByRuntime(ctr, targets)
	if a.cfg.CDIMode {
		return a.cdiAdjustment(p, req, targets, injected), dec, nil
	}
	if injected {
		dec.Skipped = "the runtime already injected these GPUs from nvbind's CDI spec (the kubelet's CDI devices)"
		return nil, dec, nil
	}
	cp := a.commonFor(p, req.Caps)
	if cp.err != nil {
		return nil, dec, cp.err
	}
	adj := &api.ContainerAdjustment{}
	seen := make(map[string]bool, 8)
	for _, n := range cp.devices {
		adj.AddDevice(n)
		seen[n.Path] = true
	}
	for _, t := range targets {
		for _, n := range t.nodes {
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
	if cp.hooks != nil {
		adj.AddHooks(cp.hooks)
	}
	adj.Env = cp.env
	return adj, dec, nil
}

// drmNodes are the GPU's DRM nodes when the capabilities need them.
func drmNodes(t *target, caps gpu.Capabilities) []gpu.DeviceNode {
	if caps.Has(gpu.CapGraphics) || caps.Has(gpu.CapDisplay) {
		return t.dev.DRM
	}
	return nil
}

// cdiAdjustment names, for the runtime to resolve in nvbind's spec (written with
// spec.Options.CapabilityDevices), the GPUs (unless the runtime already injected them from
// the kubelet's CDI devices) and one device per capability asked for; the DRM nodes of
// graphics and display, which are per GPU and per request, are added directly.
func (a *Adjuster) cdiAdjustment(p *prepared, req *Request, targets []*target, injected bool) *api.ContainerAdjustment {
	adj := &api.ContainerAdjustment{}
	if !injected {
		for _, t := range targets {
			adj.AddCDIDevice(&api.CDIDevice{Name: p.kind + "=" + t.canonical})
		}
	}
	for _, n := range spec.CapabilityNames(req.Caps) {
		adj.AddCDIDevice(&api.CDIDevice{Name: p.kind + "=" + n})
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
	adj.AddEnv(EnvDriverCapabilities, req.Caps.String())
	return adj
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// resolve maps selectors to devices, in inventory order, without duplicates.
func (p *prepared) resolve(req *Request) ([]*target, error) {
	if req.None {
		return nil, nil
	}
	var out []*target
	if req.All {
		seen := map[*target]bool{}
		for _, t := range p.byName {
			if !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
		}
	} else {
		for _, s := range req.Devices {
			t, ok := p.byName[s]
			if !ok {
				return nil, fmt.Errorf("%s: GPU %q is %w (%s)", req.Source, s, ErrUnknownDevice, p.choices)
			}
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].order < out[j].order })
	return out, nil
}
