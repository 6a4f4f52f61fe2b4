// Package request reads what a container asks of nvbind: which GPUs, which driver
// capabilities and which requirements, from the env contract NVIDIA's users have
// (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_*, the volume-mounts
// list), CDI annotations and nvbind's own annotations.
//
// Parse is one pure function of a container's env, annotations and mounts: the NRI
// plugin, the OCI runtime wrapper and the DRA driver's configuration all use it, so a
// request means the same whichever front end serves it.
//
// Everything it reads is controlled by an image or a pod author. Every value has a
// budget (MaxListBytes, MaxDevices, MaxValueBytes, MaxRequirements), checked before the
// value is parsed, and parsing is linear in its input, so a request of any size is
// answered in microseconds; errors quote input only truncated.
package request
