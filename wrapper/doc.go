// Package wrapper is nvbind-runtime, an OCI runtime that runs the real one (runc, crun)
// after editing the container's config.json: a drop-in for NVIDIA's
// nvidia-container-runtime (docker run --runtime=nvidia, Compose's runtime:, a
// RuntimeClass on nodes without NRI), and a guard for nodes with nvbind's NRI plugin.
//
// Its front, nvbind-runtime, is a small static C program (cmd/nvbind-runtime): every
// command but create and run goes straight to the real runtime with one exec, and so
// does a create whose config.json names none of the request keys, after one read of the
// file. Otherwise it runs nvbind-runtime-edit, this package's Main: a container that asks
// is read with the request parser of the NRI plugin (package request) and gets the same
// edits (request.Edits), applied with the CDI library and written back atomically; any
// error leaves config.json as it was. Its edit service (Service) does the same without a
// Go program's start per container, from a cached inventory (gpu.Cache), and runs the
// driver's steps itself on the created container instead of naming the hook, where it
// may (Config.Stage).
package wrapper
