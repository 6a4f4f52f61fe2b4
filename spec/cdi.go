package spec

import (
	"fmt"
	"slices"
	"strconv"

	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/layout"
)

// ToCDI converts the edits for a CDI spec: the one place CDI types are built.
func (e Edits) ToCDI() cdispecs.ContainerEdits {
	var c cdispecs.ContainerEdits
	c.Env = slices.Clone(e.Env)
	for _, n := range e.Nodes {
		c.DeviceNodes = append(c.DeviceNodes, cdiNode(n))
	}
	for _, m := range e.Mounts {
		c.Mounts = append(c.Mounts, &cdispecs.Mount{HostPath: m.HostPath, ContainerPath: m.Path, Type: "bind", Options: slices.Clone(m.Options)})
	}
	for _, h := range e.Hooks {
		c.Hooks = append(c.Hooks, &cdispecs.Hook{HookName: HookStage, Path: h.Path, Args: slices.Clone(h.Args), Env: slices.Clone(h.Env)})
	}
	return c
}

func cdiNode(n gpu.DeviceNode) *cdispecs.DeviceNode {
	mode := n.FileMode
	d := &cdispecs.DeviceNode{Path: n.Path, Type: "c", Major: n.Major, Minor: n.Minor, FileMode: &mode, Permissions: "rw"}
	if n.HostPath != n.Path {
		d.HostPath = n.HostPath
	}
	if n.UID != 0 {
		uid := n.UID
		d.UID = &uid
	}
	if n.GID != 0 {
		gid := n.GID
		d.GID = &gid
	}
	return d
}

// Generate builds a CDI spec for every GPU and MIG device of the inventory, plus "all".
// The output is deterministic and carries the minimum cdiVersion its contents need.
//
// By default every device brings the driver files of o.Capabilities (the spec's own
// edits). With o.CapabilityDevices the GPU devices bring only their nodes, and the driver
// files come from one device per capability (capability-compute, capability-graphics,
// ...), so that a container names exactly the capabilities it gets.
func Generate(inv *gpu.Inventory, o Options) (*cdispecs.Spec, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(inv.Devices) == 0 && inv.IGPU == nil && inv.WSL == nil {
		return nil, fmt.Errorf("%w: nothing to put in a spec", gpu.ErrNoDevices)
	}
	if inv.WSL != nil {
		return generateWSL(inv, o)
	}
	s := &cdispecs.Spec{Kind: o.Vendor + "/" + o.Class}
	nodeCaps := o.Capabilities
	if o.CapabilityDevices {
		nodeCaps = gpu.CapsOf(gpu.CapCompute) // DRM nodes are per GPU and per request
	} else {
		s.ContainerEdits = commonEdits(inv, o.Capabilities, o).ToCDI()
	}
	var all Edits
	devs := slices.Clone(inv.Devices)
	slices.SortFunc(devs, func(a, b gpu.Device) int { return a.Index - b.Index })
	for _, d := range devs {
		e := DeviceEdits(d, nodeCaps)
		for _, name := range Names(d, nil, o.NameStrategies) {
			s.Devices = append(s.Devices, cdispecs.Device{Name: name, ContainerEdits: e.ToCDI()})
		}
		all.AddNodes(e.Nodes...)
		for _, m := range d.MIG {
			me := MIGEdits(d, m)
			for _, name := range Names(d, &m, o.NameStrategies) {
				s.Devices = append(s.Devices, cdispecs.Device{Name: name, ContainerEdits: me.ToCDI()})
			}
			all.AddNodes(me.Nodes...)
		}
	}
	if inv.IGPU != nil {
		ie := IGPUEdits(inv, o)
		names := []string{IGPUName}
		if len(inv.Devices) == 0 {
			// alone on the board it is also GPU 0, as NVIDIA's CSV mode names it
			var idx []NameStrategy
			for _, st := range o.NameStrategies {
				if st != NameUUID {
					idx = append(idx, st)
				}
			}
			names = append(Names(gpu.Device{Index: 0}, nil, idx), IGPUName)
		}
		for _, name := range names {
			s.Devices = append(s.Devices, cdispecs.Device{Name: name, ContainerEdits: ie.ToCDI()})
		}
		all.AddNodes(ie.Nodes...)
		all.Mounts = append(all.Mounts, ie.Mounts...)
		all.Hooks = append(all.Hooks, ie.Hooks...)
		if len(all.Env) == 0 {
			all.Env = ie.Env
		}
	}
	s.Devices = append(s.Devices, cdispecs.Device{Name: "all", ContainerEdits: all.ToCDI()})
	if o.CapabilityDevices {
		for _, c := range gpu.CapsAll.List() {
			e := commonEdits(inv, gpu.CapsOf(c), o)
			s.Devices = append(s.Devices, cdispecs.Device{Name: CapabilityPrefix + string(c), ContainerEdits: e.ToCDI()})
		}
	}
	return withMinimumVersion(s)
}

// generateWSL builds a WSL2 host's spec: "all" always, and the GPUs NVML names, each
// the whole paravirtual access (/dev/dxg is shared), limited for CUDA to that GPU by
// CUDA_VISIBLE_DEVICES when the host has more than one.
func generateWSL(inv *gpu.Inventory, o Options) (*cdispecs.Spec, error) {
	s := &cdispecs.Spec{Kind: o.Vendor + "/" + o.Class}
	e := WSLEdits(inv, o)
	devs := slices.Clone(inv.Devices)
	slices.SortFunc(devs, func(a, b gpu.Device) int { return a.Index - b.Index })
	for _, d := range devs {
		de := e
		if len(devs) > 1 && d.UUID != "" {
			de.Env = append(slices.Clone(e.Env), "CUDA_VISIBLE_DEVICES="+d.UUID)
		}
		for _, name := range Names(d, nil, o.NameStrategies) {
			s.Devices = append(s.Devices, cdispecs.Device{Name: name, ContainerEdits: de.ToCDI()})
		}
	}
	s.Devices = append(s.Devices, cdispecs.Device{Name: "all", ContainerEdits: e.ToCDI()})
	return withMinimumVersion(s)
}

// IMEXClass is the CDI class of IMEX channels (nvidia.com/imex-channel=0), as NVIDIA's
// multi-node NVLink tooling names them.
const IMEXClass = "imex-channel"

// GenerateIMEX builds the spec of the host's IMEX channels (/dev/nvidia-caps-imex-
// channels/channelN), named by channel number. It returns nil when the host has none.
func GenerateIMEX(inv *gpu.Inventory, o Options) (*cdispecs.Spec, error) {
	if len(inv.IMEXChannels) == 0 {
		return nil, nil
	}
	vendor := o.Vendor
	if vendor == "" {
		vendor = DefaultVendor
	}
	s := &cdispecs.Spec{Kind: vendor + "/" + IMEXClass}
	chans := slices.Clone(inv.IMEXChannels)
	slices.SortFunc(chans, func(a, b gpu.DeviceNode) int { return int(a.Minor - b.Minor) })
	var all Edits
	for _, c := range chans {
		e := Edits{Nodes: []gpu.DeviceNode{c}}
		s.Devices = append(s.Devices, cdispecs.Device{Name: strconv.FormatInt(c.Minor, 10), ContainerEdits: e.ToCDI()})
		all.AddNodes(c)
	}
	s.Devices = append(s.Devices, cdispecs.Device{Name: "all", ContainerEdits: all.ToCDI()})
	return withMinimumVersion(s)
}

// WithMinimumVersion sets the lowest cdiVersion that can express a spec built outside
// Generate (the DRA driver's claims).
func WithMinimumVersion(s *cdispecs.Spec) (*cdispecs.Spec, error) { return withMinimumVersion(s) }

// withMinimumVersion sets the lowest cdiVersion that can express the spec, so the
// oldest runtimes read it (Podman 4.3 stops at 0.5.0).
func withMinimumVersion(s *cdispecs.Spec) (*cdispecs.Spec, error) {
	v, err := cdispecs.MinimumRequiredVersion(s)
	if err != nil {
		return nil, fmt.Errorf("compute CDI version: %w", err)
	}
	s.Version = v
	return s, nil
}

// Layouts are the driver layouts the spec of Generate mounts (o.LayoutBase set): the one
// of o.Capabilities, or, with o.CapabilityDevices, one per capability. The caller builds
// them (layout.Ensure) before a runtime reads the spec.
func Layouts(inv *gpu.Inventory, o Options) ([]layout.Plan, error) {
	o, err := o.withDefaults()
	if err != nil || o.LayoutBase == "" || inv.WSL != nil || len(inv.Files) == 0 {
		return nil, err
	}
	sets := []gpu.Capabilities{o.Capabilities}
	if o.CapabilityDevices {
		sets = nil
		for _, c := range gpu.CapsAll.List() {
			sets = append(sets, gpu.CapsOf(c))
		}
	}
	var out []layout.Plan
	for _, caps := range sets {
		if p := layout.For(inv, caps); len(p.Entries) > 0 {
			out = append(out, p)
		}
	}
	return out, nil
}
