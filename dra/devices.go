package dra

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/nvbind/nvbind/gpu"
)

// DriverName is the driver's name, the domain of its attributes and the name of its
// GPU DeviceClass.
const DriverName = "gpu.nvbind.io"

// Device types, the type attribute.
const (
	TypeGPU = "gpu"
	TypeMIG = "mig"
)

// GPUName is the device name of a full GPU in the slice: gpu-<index>.
func GPUName(d gpu.Device) string { return "gpu-" + strconv.Itoa(d.Index) }

// MIGName is the device name of a MIG device: gpu-<parent index>-mig-<GI>-<CI>.
func MIGName(parent gpu.Device, m gpu.MIGDevice) string {
	return fmt.Sprintf("gpu-%d-mig-%d-%d", parent.Index, m.GI, m.CI)
}

// Target is one device of the inventory a slice names: a GPU, or one of its MIG devices.
type Target struct {
	Name string
	GPU  gpu.Device
	MIG  *gpu.MIGDevice
}

// UUID is the target's own UUID (the MIG device's for a MIG device).
func (t Target) UUID() string {
	if t.MIG != nil {
		return t.MIG.UUID
	}
	return t.GPU.UUID
}

// Targets lists the devices the driver publishes from an inventory: every GPU that serve
// says is the driver's (nil: all), as itself when MIG is off, else as its MIG devices
// (a GPU in MIG mode cannot be handed out whole), sorted by GPU index.
func Targets(inv *gpu.Inventory, serve func(gpu.Device) bool) []Target {
	if inv == nil {
		return nil
	}
	devs := slices.Clone(inv.Devices)
	slices.SortFunc(devs, func(a, b gpu.Device) int { return a.Index - b.Index })
	var out []Target
	for _, d := range devs {
		if serve != nil && !serve(d) {
			continue
		}
		if len(d.MIG) == 0 {
			if d.MIGMode {
				continue // MIG on, no MIG device made yet: nothing to hand out
			}
			out = append(out, Target{Name: GPUName(d), GPU: d})
			continue
		}
		for i := range d.MIG {
			m := d.MIG[i]
			out = append(out, Target{Name: MIGName(d, m), GPU: d, MIG: &m})
		}
	}
	return out
}

// Lookup finds a published device by name in an inventory.
func Lookup(targets []Target, name string) (Target, bool) {
	for _, t := range targets {
		if t.Name == name {
			return t, true
		}
	}
	return Target{}, false
}

// Device is the ResourceSlice entry of a target, with what the inventory knows of it and
// nothing more: without NVML (the unprivileged pod reads procfs) there is no memory,
// architecture, brand or compute capability, and none is invented.
func Device(inv *gpu.Inventory, t Target) resourceapi.Device {
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{}
	str := func(k, v string) {
		if v != "" {
			for len(v) > resourceapi.DeviceAttributeMaxValueLength {
				// cut whole characters
				_, size := utf8.DecodeLastRuneInString(v)
				v = v[:len(v)-size]
			}
			attrs[resourceapi.QualifiedName(k)] = resourceapi.DeviceAttribute{StringValue: &v}
		}
	}
	ver := func(k, v string) {
		if s, ok := semver(v); ok {
			attrs[resourceapi.QualifiedName(k)] = resourceapi.DeviceAttribute{VersionValue: &s}
		}
	}
	num := func(k string, v int) {
		n := int64(v)
		attrs[resourceapi.QualifiedName(k)] = resourceapi.DeviceAttribute{IntValue: &n}
	}
	d := t.GPU
	typ := TypeGPU
	if t.MIG != nil {
		typ = TypeMIG
	}
	str("type", typ)
	str("uuid", t.UUID())
	num("index", d.Index)
	num("minor", d.Minor)
	str("productName", d.Model)
	str("brand", d.Brand)
	str("architecture", d.Architecture)
	ver("driverVersion", inv.Driver.Version)
	ver("cudaDriverVersion", inv.Driver.CUDAVersion)
	ver("cudaComputeCapability", d.Arch)
	if d.PCIBusID != "" {
		str("resource.kubernetes.io/pciBusID", d.PCIBusID)
	}
	mem := d.Memory
	if t.MIG != nil {
		str("parentUUID", d.UUID)
		str("profile", t.MIG.Profile)
		num("parentIndex", d.Index)
		mem = t.MIG.Memory
	}
	dev := resourceapi.Device{Name: t.Name, Attributes: attrs}
	if mem > 0 && mem <= 1<<62 {
		dev.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			"memory": {Value: *resource.NewQuantity(int64(mem), resource.BinarySI)},
		}
	}
	return dev
}

// semver makes a version attribute of a driver or CUDA version: "535.261.03" becomes
// 535.261.3 and "12.2" 12.2.0 (semantic versions have three numbers without leading
// zeros). Anything else is not published.
func semver(v string) (string, bool) {
	parts := strings.Split(v, ".")
	if v == "" || len(parts) > 3 {
		return "", false
	}
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	for i, p := range parts {
		if p == "" || len(p) > 9 || strings.Trim(p, "0123456789") != "" {
			return "", false
		}
		n, _ := strconv.Atoi(p)
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, "."), true
}
