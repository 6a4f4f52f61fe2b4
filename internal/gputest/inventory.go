// Package gputest holds inventories for tests of the packages that build edits from one.
package gputest

import (
	"io/fs"

	"github.com/nvbind/nvbind/gpu"
)

// Node is a device node at path, the same on the host.
func Node(path string, major, minor int64) gpu.DeviceNode {
	return gpu.DeviceNode{Path: path, HostPath: path, Major: major, Minor: minor, FileMode: fs.FileMode(0o666)}
}

// Inventory is a node with two GPUs (the first in MIG mode with two MIG devices) and a
// small driver: libcuda with its links, libnvidia-ml, a graphics library, nvidia-smi and
// the persistenced socket.
func Inventory() *gpu.Inventory {
	const lib = "/usr/lib/x86_64-linux-gnu"
	return &gpu.Inventory{
		DriverRoot: "/", DevRoot: "/", Source: gpu.SourceNVML,
		Driver: gpu.Driver{Version: "535.261.03", Flavour: gpu.FlavourOpen, CUDAVersion: "12.2", ModifyDeviceFiles: boolPtr(true)},
		Devices: []gpu.Device{
			{Index: 0, Minor: 0, UUID: "GPU-aaaaaaaa-0000-0000-0000-000000000000", PCIBusID: "0000:3b:00.0", Model: "NVIDIA A100", Arch: "8.0", Brand: "tesla",
				Node: Node("/dev/nvidia0", 195, 0), DRM: []gpu.DeviceNode{Node("/dev/dri/card0", 226, 0)},
				MIG: []gpu.MIGDevice{
					{Parent: 0, Index: 0, GI: 1, CI: 0, UUID: "MIG-11111111-0000-0000-0000-000000000000",
						Caps: []gpu.DeviceNode{Node("/dev/nvidia-caps/nvidia-cap12", 510, 12), Node("/dev/nvidia-caps/nvidia-cap13", 510, 13)}},
					{Parent: 0, Index: 1, GI: 2, CI: 0, UUID: "MIG-22222222-0000-0000-0000-000000000000",
						Caps: []gpu.DeviceNode{Node("/dev/nvidia-caps/nvidia-cap21", 510, 21), Node("/dev/nvidia-caps/nvidia-cap22", 510, 22)}},
				}},
			{Index: 1, Minor: 1, UUID: "GPU-bbbbbbbb-0000-0000-0000-000000000000", PCIBusID: "0000:86:00.0", Model: "NVIDIA A100", Arch: "8.0", Brand: "tesla",
				Node: Node("/dev/nvidia1", 195, 1)},
		},
		ControlNodes: []gpu.DeviceNode{Node("/dev/nvidiactl", 195, 255), Node("/dev/nvidia-uvm", 508, 0), Node("/dev/nvidia-uvm-tools", 508, 1), Node("/dev/nvidia-modeset", 195, 254)},
		Files: []gpu.File{
			{Kind: gpu.KindSocket, Path: "/run/nvidia-persistenced/socket", HostPath: "/run/nvidia-persistenced/socket", Capabilities: gpu.CapsOf(gpu.CapUtility)},
			{Kind: gpu.KindBinary, Path: "/usr/bin/nvidia-smi", HostPath: "/usr/bin/nvidia-smi", Capabilities: gpu.CapsOf(gpu.CapUtility)},
			{Kind: gpu.KindLibrary, Path: lib + "/libcuda.so.535.261.03", HostPath: lib + "/libcuda.so.535.261.03", SONAME: "libcuda.so.1", Bits: 64,
				Links: []string{lib + "/libcuda.so"}, Capabilities: gpu.CapsOf(gpu.CapCompute)},
			{Kind: gpu.KindLibrary, Path: lib + "/libnvidia-glcore.so.535.261.03", HostPath: lib + "/libnvidia-glcore.so.535.261.03",
				SONAME: "libnvidia-glcore.so.535.261.03", Bits: 64, Capabilities: gpu.CapsOf(gpu.CapGraphics)},
			{Kind: gpu.KindLibrary, Path: lib + "/libnvidia-ml.so.535.261.03", HostPath: lib + "/libnvidia-ml.so.535.261.03", SONAME: "libnvidia-ml.so.1", Bits: 64,
				Capabilities: gpu.CapsOf(gpu.CapUtility)},
		},
	}
}

func boolPtr(b bool) *bool { return &b }
