//go:build cgo

package gpu

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// This build loads NVIDIA's libraries (NVML, libcuda) through cgo.

// LoadsLibraries reports whether this build loads NVIDIA's libraries (NVML, libcuda).
const LoadsLibraries = true

// nvmlLib is an NVML: the library's, or the one WithNVML gives.
type nvmlLib = nvml.Interface

// loadNVML is the NVML of the library at path (loaded when first used).
func loadNVML(path string) (nvmlLib, error) { return nvml.New(nvml.WithLibraryPath(path)), nil }

// WithNVML uses the given NVML instead of loading libnvidia-ml.so.1 from the driver root.
func WithNVML(lib nvml.Interface) Option {
	return func(c *config) error { c.nvml = lib; return nil }
}

// NVML returns the NVML that listed the inventory's GPUs, or nil when NVML did not (procfs,
// L4T, or NVML failed): the health monitor waits on its XID events.
func (inv *Inventory) NVML() nvml.Interface {
	if inv == nil || inv.Source != SourceNVML {
		return nil
	}
	return inv.nvml
}

// nvmlDevices lists GPUs and MIG devices through NVML. All NVML calls live here.
func nvmlDevices(ctx context.Context, lib nvml.Interface) (devs []Device, version, cuda string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("NVML: %v", r)
		}
	}()
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, "", "", fmt.Errorf("NVML init: %s", nvml.ErrorString(ret))
	}
	defer func() { _ = lib.Shutdown() }()
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		version = v
	}
	if c, ret := lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS && c > 0 {
		cuda = fmt.Sprintf("%d.%d", c/1000, c%1000/10)
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, "", "", fmt.Errorf("NVML device count: %s", nvml.ErrorString(ret))
	}
	var errs []error
	var handles []nvml.Device
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, "", "", err
		}
		dev, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("get handle of GPU %d: %s", i, nvml.ErrorString(ret)))
			continue
		}
		g, err := nvmlDevice(i, dev)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		devs = append(devs, g)
		handles = append(handles, dev)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, "", "", err
	}
	if t := topology(handles); t != nil {
		for i := range devs {
			devs[i].Topology = t[i]
		}
	}
	return devs, version, cuda, nil
}

// topology returns, for each GPU, NVML's topology level to every GPU (in the same
// order): 0 the same board, 10 one PCIe switch, 20 several switches, 30 one host bridge,
// 40 one NUMA node, 50 across the system interconnect. It is nil when NVML cannot tell,
// which the device plugin's preferred allocation then does without.
func topology(handles []nvml.Device) (levels [][]int) {
	defer func() {
		if recover() != nil {
			levels = nil // a binding without the call: no topology
		}
	}()
	levels = make([][]int, len(handles))
	for i, a := range handles {
		levels[i] = make([]int, len(handles))
		for j, b := range handles {
			if i == j {
				continue
			}
			l, ret := a.GetTopologyCommonAncestor(b)
			if ret != nvml.SUCCESS {
				return nil
			}
			levels[i][j] = int(l)
		}
	}
	return levels
}

func nvmlDevice(i int, dev nvml.Device) (Device, error) {
	g := Device{Index: i}
	var ret nvml.Return
	if g.UUID, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return g, fmt.Errorf("get UUID of GPU %d: %s", i, nvml.ErrorString(ret))
	}
	if g.Minor, ret = dev.GetMinorNumber(); ret != nvml.SUCCESS {
		return g, fmt.Errorf("get minor number of GPU %d: %s", i, nvml.ErrorString(ret))
	}
	if pci, ret := dev.GetPciInfo(); ret == nvml.SUCCESS {
		g.PCIBusID = normaliseBusID(pci.BusId)
	}
	if name, ret := dev.GetName(); ret == nvml.SUCCESS {
		g.Model = name
	}
	if major, minor, ret := dev.GetCudaComputeCapability(); ret == nvml.SUCCESS {
		g.Arch = fmt.Sprintf("%d.%d", major, minor)
	}
	if b, ret := dev.GetBrand(); ret == nvml.SUCCESS {
		g.Brand = brandName(b)
	}
	if a, ret := dev.GetArchitecture(); ret == nvml.SUCCESS {
		g.Architecture = archName(a)
	}
	if mem, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
		g.Memory = mem.Total
	}
	mode, _, ret := dev.GetMigMode()
	if ret != nvml.SUCCESS || mode != nvml.DEVICE_MIG_ENABLE {
		return g, nil
	}
	g.MIGMode = true
	max, ret := dev.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return g, fmt.Errorf("get MIG device count of GPU %d: %s", i, nvml.ErrorString(ret))
	}
	for j := 0; j < max; j++ {
		mig, ret := dev.GetMigDeviceHandleByIndex(j)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != nvml.SUCCESS {
			return g, fmt.Errorf("get MIG device %d of GPU %d: %s", j, i, nvml.ErrorString(ret))
		}
		m := MIGDevice{Parent: i, Index: j}
		if m.UUID, ret = mig.GetUUID(); ret != nvml.SUCCESS {
			return g, fmt.Errorf("get UUID of MIG device %d:%d: %s", i, j, nvml.ErrorString(ret))
		}
		if m.GI, ret = mig.GetGpuInstanceId(); ret != nvml.SUCCESS {
			return g, fmt.Errorf("get GPU instance of MIG device %d:%d: %s", i, j, nvml.ErrorString(ret))
		}
		if m.CI, ret = mig.GetComputeInstanceId(); ret != nvml.SUCCESS {
			return g, fmt.Errorf("get compute instance of MIG device %d:%d: %s", i, j, nvml.ErrorString(ret))
		}
		if name, ret := mig.GetName(); ret == nvml.SUCCESS {
			m.Profile = MIGProfile(name)
		}
		if mem, ret := mig.GetMemoryInfo(); ret == nvml.SUCCESS {
			m.Memory = mem.Total
		}
		g.MIG = append(g.MIG, m)
	}
	sort.Slice(g.MIG, func(a, b int) bool { return g.MIG[a].Index < g.MIG[b].Index })
	return g, nil
}

// normaliseBusID turns NVML's "00000000:3B:00.0" into the kernel's "0000:3b:00.0".
func normaliseBusID(b [32]int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c)) //nolint:gosec // a C char: the bit pattern is the byte
	}
	s := strings.ToLower(sb.String())
	if len(s) == 16 && strings.HasPrefix(s, "0000") {
		s = s[4:]
	}
	return s
}

// archName is the name of NVML's architecture, lower case ("" when NVML names none known).
func archName(a nvml.DeviceArchitecture) string {
	switch a {
	case nvml.DEVICE_ARCH_KEPLER:
		return "kepler"
	case nvml.DEVICE_ARCH_MAXWELL:
		return "maxwell"
	case nvml.DEVICE_ARCH_PASCAL:
		return "pascal"
	case nvml.DEVICE_ARCH_VOLTA:
		return "volta"
	case nvml.DEVICE_ARCH_TURING:
		return "turing"
	case nvml.DEVICE_ARCH_AMPERE:
		return "ampere"
	case nvml.DEVICE_ARCH_ADA:
		return "ada"
	case nvml.DEVICE_ARCH_HOPPER:
		return "hopper"
	case nvml.DEVICE_ARCH_BLACKWELL:
		return "blackwell"
	}
	return ""
}

// brandName maps NVML's brand to the names NVIDIA_REQUIRE_BRAND uses.
func brandName(b nvml.BrandType) string {
	switch b {
	case nvml.BRAND_QUADRO:
		return "quadro"
	case nvml.BRAND_TESLA:
		return "tesla"
	case nvml.BRAND_NVS:
		return "nvs"
	case nvml.BRAND_GRID:
		return "grid"
	case nvml.BRAND_GEFORCE:
		return "geforce"
	case nvml.BRAND_TITAN:
		return "titan"
	case nvml.BRAND_NVIDIA_VAPPS:
		return "vapps"
	case nvml.BRAND_NVIDIA_VPC:
		return "vpc"
	case nvml.BRAND_NVIDIA_VCS:
		return "vcs"
	case nvml.BRAND_NVIDIA_VWS:
		return "vws"
	case nvml.BRAND_NVIDIA_CLOUD_GAMING:
		return "cloudgaming"
	case nvml.BRAND_QUADRO_RTX:
		return "quadrortx"
	case nvml.BRAND_NVIDIA_RTX:
		return "nvidiartx"
	case nvml.BRAND_NVIDIA:
		return "nvidia"
	case nvml.BRAND_GEFORCE_RTX:
		return "geforcertx"
	case nvml.BRAND_TITAN_RTX:
		return "titanrtx"
	}
	return "unknown"
}
