package gpu

import (
	"fmt"
	"slices"
	"strings"
)

// Capability is one of the driver capabilities that NVIDIA_DRIVER_CAPABILITIES names.
type Capability string

// The driver capabilities. CapOther holds driver files that no rule classifies; they are
// mounted only when every capability is asked for.
const (
	CapCompute  Capability = "compute"
	CapCompat32 Capability = "compat32"
	CapGraphics Capability = "graphics"
	CapUtility  Capability = "utility"
	CapVideo    Capability = "video"
	CapDisplay  Capability = "display"
	CapNGX      Capability = "ngx"
	CapOther    Capability = "other"
)

// AllCapabilities lists every capability a user can name, in a stable order.
var allCapabilities = []Capability{CapCompute, CapCompat32, CapGraphics, CapUtility, CapVideo, CapDisplay, CapNGX}

// Capabilities is a set of capabilities.
type Capabilities uint16

func capBit(c Capability) Capabilities {
	switch c {
	case CapCompute:
		return 1 << 0
	case CapCompat32:
		return 1 << 1
	case CapGraphics:
		return 1 << 2
	case CapUtility:
		return 1 << 3
	case CapVideo:
		return 1 << 4
	case CapDisplay:
		return 1 << 5
	case CapNGX:
		return 1 << 6
	case CapOther:
		return 1 << 7
	}
	return 0
}

// CapsAll is every capability, including files that no rule classifies.
const CapsAll Capabilities = 0xff

// CapsDefault is what NVIDIA_DRIVER_CAPABILITIES means when unset.
var CapsDefault = CapsOf(CapUtility, CapCompute)

// CapsOf builds a set.
func CapsOf(cs ...Capability) Capabilities {
	var s Capabilities
	for _, c := range cs {
		s |= capBit(c)
	}
	return s
}

// Has reports whether c is in the set.
func (s Capabilities) Has(c Capability) bool { return s&capBit(c) != 0 }

// Intersects reports whether the two sets share a capability.
func (s Capabilities) Intersects(o Capabilities) bool { return s&o != 0 }

// List returns the members in a stable order.
func (s Capabilities) List() []Capability {
	var out []Capability
	for _, c := range append(slices.Clone(allCapabilities), CapOther) {
		if s.Has(c) {
			out = append(out, c)
		}
	}
	return out
}

// String renders the set as NVIDIA_DRIVER_CAPABILITIES does: "all" or a comma list.
func (s Capabilities) String() string {
	if s&^capBit(CapOther) == CapsAll&^capBit(CapOther) {
		return "all"
	}
	parts := make([]string, 0, 8)
	for _, c := range s.List() {
		if c != CapOther {
			parts = append(parts, string(c))
		}
	}
	return strings.Join(parts, ",")
}

// ValidCapabilities is the help text for the accepted names.
const ValidCapabilities = "all, compute, compat32, graphics, utility, video, display, ngx"

// ParseCapabilities parses a comma list such as NVIDIA_DRIVER_CAPABILITIES or --capabilities.
// "all" selects every capability. Blank items are ignored; an empty list is an error so that
// callers decide what "unset" means.
func ParseCapabilities(v string) (Capabilities, error) {
	var s Capabilities
	seen := false
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		seen = true
		if item == "all" {
			s |= CapsAll
			continue
		}
		c := Capability(item)
		if capBit(c) == 0 || c == CapOther {
			return 0, fmt.Errorf("unknown driver capability %q (valid: %s)", item, ValidCapabilities)
		}
		s |= capBit(c)
	}
	if !seen {
		return 0, fmt.Errorf("empty capability list (valid: %s)", ValidCapabilities)
	}
	return s, nil
}

// classifyLibrary returns the capabilities a driver library serves, from its file name.
// The rules follow the library families of NVIDIA's driver; unknown NVIDIA libraries are
// "other", so they are never silently dropped from a full spec.
func classifyLibrary(name string) Capabilities {
	base := name
	if i := strings.Index(base, ".so"); i >= 0 {
		base = base[:i]
	}
	// a family with a version in its name (libnvidia-nvvm70) classifies as the family
	if c := classifyBase(base); c != 0 {
		return c
	}
	if c := classifyBase(strings.TrimRight(base, "0123456789")); c != 0 {
		return c
	}
	return CapsOf(CapOther)
}

func classifyBase(base string) Capabilities {
	switch base {
	case "libnvidia-ml", "libnvidia-cfg", "libnvidia-api", "libnvidia-nscq":
		return CapsOf(CapUtility)
	case "libcuda", "libcudadebugger", "libnvidia-ptxjitcompiler", "libnvidia-nvvm", "libnvidia-opencl",
		"libnvidia-compiler", "libnvidia-allocator", "libnvidia-pkcs11", "libnvidia-pkcs11-openssl3",
		"libnvidia-fatbinaryloader", "libnvidia-gpucomp", "libnvidia-sandboxutils":
		return CapsOf(CapCompute)
	case "libnvcuvid", "libnvidia-encode", "libnvidia-opticalflow", "libvdpau_nvidia":
		return CapsOf(CapVideo)
	case "libnvidia-eglcore", "libnvidia-glcore", "libnvidia-tls", "libnvidia-glsi", "libnvidia-fbc", "libnvidia-ifr",
		"libnvidia-rtcore", "libnvoptix", "libGLX_nvidia", "libEGL_nvidia", "libGLESv2_nvidia", "libGLESv1_CM_nvidia",
		"libnvidia-glvkspirv", "libnvidia-cbl", "libnvidia-vulkan-producer", "libnvidia-gtk2", "libnvidia-gtk3",
		"libnvidia-wayland-client", "nvidia-drm_gbm":
		return CapsOf(CapGraphics)
	case "libnvidia-ngx":
		return CapsOf(CapNGX)
	case "libglxserver_nvidia", "nvidia_drv":
		return CapsOf(CapDisplay)
	case "libnvidia-present", "libnvidia-gpucomp-vk":
		return CapsOf(CapGraphics)
	}
	return 0
}
