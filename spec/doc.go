// Package spec turns a gpu.Inventory into container edits and CDI specs: the device nodes,
// read-only driver-file mounts, environment and the single nvbind hook call a container
// needs for a selection of GPUs and driver capabilities. The same edits serve the static
// CDI spec (nvbind cdi generate) and the live NRI adjustment.
package spec
