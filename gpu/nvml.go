package gpu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// discoverDevices fills inv.Devices from NVML, or from procfs when NVML is absent or
// fails to start ("driver not loaded", missing library). It records which source was used.
func (d *Discoverer) discoverDevices(ctx context.Context, inv *Inventory, nvmlPath string) error {
	proc := procFiles{root: d.cfg.devRootMount}
	skipNVML := d.cfg.noNVML
	var procGPUs []procGPU
	if !skipNVML && d.cfg.nvmlForMIG {
		if gpus, err := proc.gpus(); err == nil && len(gpus) > 0 && !proc.hasMIGInstances(gpus) {
			skipNVML, procGPUs = true, gpus
			inv.NVMLError = "not started: /proc/driver/nvidia lists every GPU and no MIG instance"
		}
	}
	if !skipNVML {
		lib := d.cfg.nvml
		switch {
		case lib != nil:
		case nvmlPath == "":
			inv.NVMLError = "libnvidia-ml.so.1 not found under the driver root"
		case !kernelModuleLoaded():
			// NVML talks to this kernel's driver whatever the roots say; without one it
			// fails, and on its way creates /dev/nvidiactl on the host
			inv.NVMLError = "not started: no NVIDIA kernel module is loaded (" + hostModuleVersion + " is missing)"
		default:
			lib = d.nvmlAt(nvmlPath)
		}
		if lib != nil {
			devs, ver, cuda, err := nvmlDevices(ctx, lib)
			if err == nil {
				inv.Source = SourceNVML
				inv.Devices = devs
				inv.nvml = lib
				if ver != "" && ver != inv.Driver.Version {
					inv.Warnings = append(inv.Warnings, Warning{WarnVersionMismatch, fmt.Sprintf("NVML reports driver %s but the driver files under %s are %s: user-space and kernel module do not match",
						ver, d.cfg.driverRoot, inv.Driver.Version)})
				}
				inv.Driver.CUDAVersion = cuda
				return nil
			}
			inv.NVMLError = err.Error()
		}
	}
	if d.cfg.noNVML {
		inv.NVMLError = "not used (--no-nvml)"
	}
	inv.Source = SourceProcfs
	gpus, err := procGPUs, error(nil)
	if gpus == nil {
		gpus, err = proc.gpus()
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no GPU list at all: Discover reports ErrNoDevices
	}
	if err != nil {
		return err
	}
	for i, g := range gpus {
		// MIG devices need NVML; /proc still tells a GPU with MIG instances (MIG mode)
		inv.Devices = append(inv.Devices, Device{Index: i, Minor: g.Minor, UUID: g.UUID, PCIBusID: g.BusID, Model: g.Model,
			MIGMode: proc.hasMIGInstances([]procGPU{g})})
	}
	return nil
}

// hostModuleVersion is this kernel's NVIDIA module version file, where NVML looks: not
// under the dev root, which may be a sample or another host's tree.
const hostModuleVersion = "/proc/driver/nvidia/version"

// kernelModuleLoaded reports whether this kernel runs an NVIDIA driver NVML can talk to.
func kernelModuleLoaded() bool {
	_, err := os.Stat(hostModuleVersion)
	return err == nil
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

// MIGProfile returns the profile of a MIG device's NVML name: "1g.5gb" of
// "NVIDIA A100-SXM4-40GB MIG 1g.5gb", "" when the name has none.
func MIGProfile(name string) string {
	_, p, ok := strings.Cut(name, " MIG ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(p)
}
