package spec

import (
	"regexp"
	"strconv"

	"github.com/nvbind/nvbind/gpu"
)

// Name is the one place device names are made: the name of the GPU d (m nil) or of its
// MIG device m under the strategy s, or "" when s gives the device none (no UUID known).
// CDI specs, the NRI plugin's selectors and the device plugin's IDs all use it.
func Name(d gpu.Device, m *gpu.MIGDevice, s NameStrategy) string {
	if m == nil {
		switch s {
		case NameIndex:
			return strconv.Itoa(d.Index)
		case NameTypeIndex:
			return "gpu" + strconv.Itoa(d.Index)
		case NameUUID:
			return d.UUID
		}
		return ""
	}
	idx := strconv.Itoa(m.Parent) + ":" + strconv.Itoa(m.Index)
	switch s {
	case NameIndex:
		return idx
	case NameTypeIndex:
		return "mig" + idx
	case NameUUID:
		return m.UUID
	}
	return ""
}

// Names returns the device's names under each strategy, leaving out empty ones.
func Names(d gpu.Device, m *gpu.MIGDevice, strategies []NameStrategy) []string {
	out := make([]string, 0, len(strategies))
	for _, s := range strategies {
		if n := Name(d, m, s); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// reName matches every form Name produces, bounded so that a request cannot make a
// lookup key of any size.
var reName = regexp.MustCompile(`^(?:[0-9]{1,4}|gpu[0-9]{1,4}|[0-9]{1,4}:[0-9]{1,4}|mig[0-9]{1,4}:[0-9]{1,4}|(?:GPU|MIG)-[0-9A-Za-z][0-9A-Za-z/_.-]{0,127})$`)

// IsName reports whether v has the form of a name that Name makes, before any inventory
// says whether such a device exists.
func IsName(v string) bool { return reName.MatchString(v) }

// CapabilityPrefix starts the names of the capability devices of a spec made with
// Options.CapabilityDevices: nvidia.com/gpu=capability-compute and so on.
const CapabilityPrefix = "capability-"

// CapabilityNames returns the capability devices that together give exactly the driver
// files of caps: one per capability, "other" (files no rule classifies) only for "all".
func CapabilityNames(caps gpu.Capabilities) []string {
	var out []string
	for _, c := range caps.List() {
		out = append(out, CapabilityPrefix+string(c))
	}
	return out
}
