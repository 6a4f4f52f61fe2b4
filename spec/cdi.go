package spec

import (
	"fmt"
	"slices"
	"strconv"

	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/gpu"
)

// DeviceNames returns the names a full GPU gets under the strategies.
func DeviceNames(d gpu.Device, strategies []NameStrategy) []string {
	var out []string
	for _, s := range strategies {
		switch s {
		case NameIndex:
			out = append(out, strconv.Itoa(d.Index))
		case NameTypeIndex:
			out = append(out, "gpu"+strconv.Itoa(d.Index))
		case NameUUID:
			if d.UUID != "" {
				out = append(out, d.UUID)
			}
		}
	}
	return out
}

// MIGNames returns the names a MIG device gets under the strategies.
func MIGNames(m gpu.MIGDevice, strategies []NameStrategy) []string {
	var out []string
	for _, s := range strategies {
		switch s {
		case NameIndex:
			out = append(out, fmt.Sprintf("%d:%d", m.Parent, m.Index))
		case NameTypeIndex:
			out = append(out, fmt.Sprintf("mig%d:%d", m.Parent, m.Index))
		case NameUUID:
			if m.UUID != "" {
				out = append(out, m.UUID)
			}
		}
	}
	return out
}

// Generate builds a CDI spec for every GPU and MIG device of the inventory, plus "all".
// The output is deterministic and carries the minimum cdiVersion its contents need.
func Generate(inv *gpu.Inventory, o Options) (*cdispecs.Spec, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(inv.Devices) == 0 {
		return nil, fmt.Errorf("%w: nothing to put in a spec", gpu.ErrNoDevices)
	}
	s := &cdispecs.Spec{Kind: o.Vendor + "/" + o.Class, ContainerEdits: commonEdits(inv, o.Capabilities, o)}
	var all cdispecs.ContainerEdits
	seen := map[string]bool{}
	addNodes := func(dst *cdispecs.ContainerEdits, e cdispecs.ContainerEdits) {
		for _, n := range e.DeviceNodes {
			if !seen[n.Path] {
				seen[n.Path] = true
				dst.DeviceNodes = append(dst.DeviceNodes, n)
			}
		}
	}
	devs := slices.Clone(inv.Devices)
	slices.SortFunc(devs, func(a, b gpu.Device) int { return a.Index - b.Index })
	for _, d := range devs {
		e := DeviceEdits(d, o.Capabilities)
		for _, name := range DeviceNames(d, o.NameStrategies) {
			s.Devices = append(s.Devices, cdispecs.Device{Name: name, ContainerEdits: e})
		}
		addNodes(&all, e)
		for _, m := range d.MIG {
			me := MIGEdits(d, m)
			for _, name := range MIGNames(m, o.NameStrategies) {
				s.Devices = append(s.Devices, cdispecs.Device{Name: name, ContainerEdits: me})
			}
			addNodes(&all, me)
		}
	}
	s.Devices = append(s.Devices, cdispecs.Device{Name: "all", ContainerEdits: all})
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
	var all cdispecs.ContainerEdits
	for _, c := range chans {
		e := cdispecs.ContainerEdits{DeviceNodes: []*cdispecs.DeviceNode{deviceNode(c)}}
		s.Devices = append(s.Devices, cdispecs.Device{Name: strconv.FormatInt(c.Minor, 10), ContainerEdits: e})
		all.DeviceNodes = append(all.DeviceNodes, e.DeviceNodes...)
	}
	s.Devices = append(s.Devices, cdispecs.Device{Name: "all", ContainerEdits: all})
	return withMinimumVersion(s)
}

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
