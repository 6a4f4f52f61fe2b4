// Package gpu discovers everything a container needs to use the host's NVIDIA GPUs: the GPUs
// and MIG devices (through NVML, or the driver's procfs files when NVML cannot start), the
// driver version and kernel module flavour, the device nodes with their real numbers, and the
// driver's files (libraries with their SONAMEs and links, binaries, firmware, IPC sockets and
// graphics configs), each classified by driver capability.
//
// Discovery reads a driver root (where the driver's user-space files live, "/" on most hosts,
// /run/nvidia/driver under the GPU Operator) and a dev root (where /dev, /proc and /sys of the
// host are seen, "/" on most hosts). It returns plain values and never logs.
package gpu
