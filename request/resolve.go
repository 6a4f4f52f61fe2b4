package request

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

// Errors of resolving a request against a node's inventory.
var (
	// ErrUnknownDevice is a request for a GPU the node does not have.
	ErrUnknownDevice = errors.New("not on this node")
	// ErrUnsupportedHost is a request on a host whose GPUs only the CDI spec serves.
	ErrUnsupportedHost = errors.New("not served on this host")
)

// Target is one device a request resolved to: a full GPU, or a MIG device of it.
type Target struct {
	// Name is the device's canonical name: "0", or "0:1" for a MIG device.
	Name string
	// Device is the GPU, or the MIG device's parent.
	Device gpu.Device
	// MIG is the MIG device, or nil for a full GPU.
	MIG *gpu.MIGDevice
	// Order is the device's position in the inventory.
	Order int
}

// Edits are the device's own edits: its nodes, and its DRM nodes when caps need them.
func (t *Target) Edits(caps gpu.Capabilities) spec.Edits {
	if t.MIG != nil {
		return spec.MIGEdits(t.Device, *t.MIG)
	}
	return spec.DeviceEdits(t.Device, caps)
}

// Resolver maps requests to the devices of one inventory. It is immutable once built
// and safe for concurrent use.
type Resolver struct {
	inv     *gpu.Inventory
	byName  map[string]*Target
	targets []*Target
	choices string
}

// selectorNames are the names a request may use for a device; the first is canonical.
var selectorNames = []spec.NameStrategy{spec.NameIndex, spec.NameTypeIndex, spec.NameUUID}

// NewResolver indexes an inventory's GPUs and MIG devices by every name a request may
// use: index, gpuN/migN:M and UUID.
func NewResolver(inv *gpu.Inventory) *Resolver {
	r := &Resolver{inv: inv, byName: map[string]*Target{}}
	var names []string
	add := func(t *Target, ns []string) {
		for _, n := range ns {
			r.byName[n] = t
		}
		names = append(names, t.Name)
		r.targets = append(r.targets, t)
	}
	for _, d := range inv.Devices {
		add(&Target{Name: spec.Name(d, nil, spec.NameIndex), Device: d, Order: len(r.targets)}, spec.Names(d, nil, selectorNames))
		for i := range d.MIG {
			m := &d.MIG[i]
			add(&Target{Name: spec.Name(d, m, spec.NameIndex), Device: d, MIG: m, Order: len(r.targets)}, spec.Names(d, m, selectorNames))
		}
	}
	r.choices = describeChoices(inv, names)
	return r
}

// Inventory is the inventory the resolver indexes.
func (r *Resolver) Inventory() *gpu.Inventory { return r.inv }

// Targets are every device, in inventory order.
func (r *Resolver) Targets() []*Target { return r.targets }

// Choices lists the node's valid selectors, for error messages.
func (r *Resolver) Choices() string { return r.choices }

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

// Supported refuses requests on hosts whose GPUs only the CDI spec serves (WSL2, a
// Jetson's iGPU alone).
func (r *Resolver) Supported(req *Request) error {
	if r.inv.WSL != nil || (r.inv.IGPU != nil && len(r.inv.Devices) == 0) {
		return fmt.Errorf("%w: %s: nvbind serves WSL2's or a Jetson iGPU's GPUs through its CDI spec only; use nvbind cdi generate",
			ErrUnsupportedHost, req.Source)
	}
	return nil
}

// Resolve maps the request's selectors to devices, in inventory order, without
// duplicates, and checks its requirements against the driver and the GPUs chosen. A
// request for a device the node lacks names the node's choices.
func (r *Resolver) Resolve(req *Request) ([]*Target, error) {
	var out []*Target
	switch {
	case req.None:
	case req.All:
		out = slices.Clone(r.targets)
	default:
		seen := make(map[*Target]bool, len(req.Devices))
		for _, s := range req.Devices {
			t, ok := r.byName[s]
			if !ok {
				return nil, fmt.Errorf("%s: GPU %q is %w (%s)", req.Source, truncate(s, 64), ErrUnknownDevice, r.choices)
			}
			if !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Order < out[j].Order })
	}
	devs := GPUs(out)
	for _, q := range req.Require {
		if err := q.Check(r.inv.Driver, devs); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// GPUs are the GPUs of the targets (a MIG device's parent), once each.
func GPUs(targets []*Target) []gpu.Device {
	devs := make([]gpu.Device, 0, len(targets))
	for _, t := range targets {
		if !slices.ContainsFunc(devs, func(d gpu.Device) bool { return d.Index == t.Device.Index }) {
			devs = append(devs, t.Device)
		}
	}
	return devs
}

// Edits are everything a container that made the request gets: the driver's edits for
// its capabilities (control nodes, driver files, the hook, the env) and each device's
// nodes, with NVIDIA_DRIVER_CAPABILITIES set. This is the one edit model of a request:
// the NRI plugin converts it to an adjustment and the runtime wrapper applies it to
// config.json.
func Edits(inv *gpu.Inventory, targets []*Target, caps gpu.Capabilities, o spec.Options) (spec.Edits, error) {
	e, err := spec.CommonEdits(inv, caps, o)
	if err != nil {
		return e, err
	}
	e.Env = append(e.Env, EnvDriverCapabilities+"="+caps.String())
	for _, t := range targets {
		e.AddNodes(t.Edits(caps).Nodes...)
	}
	return e, nil
}
