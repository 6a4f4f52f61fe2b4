// Package nriplugin is nvbind's live front end: an NRI plugin that sees every
// CreateContainer in containerd or CRI-O and, when a pod annotation, a CDI annotation or
// the container's environment asks for GPUs, adds the device nodes, driver-file mounts,
// the nvbind hook and the environment to the container's OCI spec.
//
// Parsing and adjustment are pure functions of the request and a cached, immutable
// inventory, so CreateContainer does no disk or NVML I/O.
package nriplugin
