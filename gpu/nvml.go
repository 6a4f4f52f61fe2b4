package gpu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
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
			var err error
			if lib, err = d.nvmlAt(nvmlPath); err != nil {
				return err
			}
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

// MIGProfile returns the profile of a MIG device's NVML name: "1g.5gb" of
// "NVIDIA A100-SXM4-40GB MIG 1g.5gb", "" when the name has none.
func MIGProfile(name string) string {
	_, p, ok := strings.Cut(name, " MIG ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(p)
}
