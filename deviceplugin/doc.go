// Package deviceplugin is nvbind's Kubernetes device plugin: it advertises the node's
// GPUs (and MIG devices, by NVIDIA's none, single and mixed strategies, optionally shared
// by time-slicing replicas) to the kubelet, keeps their health in step with discovery
// (dropping the devices that are gone for good), prefers close GPUs, and answers Allocate
// with CDI device names (CRI CDIDevices) and a per-resource allocation annotation that the
// nvbind NRI plugin reads and, with --require-allocation, enforces. It is built on the
// same inventory as the CDI and NRI front ends.
package deviceplugin
