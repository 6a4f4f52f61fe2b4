package spec

import (
	"strconv"
	"strings"

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

// IsName reports whether v has the form of a name that Name makes, before any inventory
// says whether such a device exists: N, gpuN, N:M, migN:M (N and M of 1 to 4 digits),
// or GPU-/MIG- and up to 128 characters of [0-9A-Za-z/_.-] starting alphanumeric, or igpu
// (a Jetson's integrated GPU). The
// bounds keep a request from making lookup keys of any size.
func IsName(v string) bool {
	switch {
	case v == IGPUName:
		return true
	case strings.HasPrefix(v, "GPU-"), strings.HasPrefix(v, "MIG-"):
		id := v[4:]
		if len(id) == 0 || len(id) > 128 || !isAlnum(id[0]) {
			return false
		}
		for i := 1; i < len(id); i++ {
			if c := id[i]; !isAlnum(c) && c != '/' && c != '_' && c != '.' && c != '-' {
				return false
			}
		}
		return true
	case strings.HasPrefix(v, "gpu"):
		return isIndex(v[3:])
	case strings.HasPrefix(v, "mig"):
		v = v[3:]
		a, b, ok := strings.Cut(v, ":")
		return ok && isIndex(a) && isIndex(b)
	}
	if a, b, ok := strings.Cut(v, ":"); ok {
		return isIndex(a) && isIndex(b)
	}
	return isIndex(v)
}

func isIndex(s string) bool {
	if len(s) == 0 || len(s) > 4 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

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
