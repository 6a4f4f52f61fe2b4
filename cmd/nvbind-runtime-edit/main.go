// Command nvbind-runtime-edit is the part of nvbind's OCI runtime wrapper that edits a
// container's config.json: nvbind-runtime (a small C front, so that the containers that
// ask for nothing pay one exec) runs it for create and run when config.json names a
// request key. It gives the container the GPUs its environment or annotations ask for
// (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_*, CDI annotations)
// with the NRI plugin's request parser and edit model, or, run as nvbind-guard, refuses
// a container that asks for GPUs which nvbind's NRI plugin did not handle; then it runs
// the real runtime with the same arguments. Settings: /etc/nvbind/runtime.toml.
//
// `nvbind-runtime-edit serve` is the edit service: the same work for the front over a
// socket, without a process start per container (nvbind-runtime.socket starts it).
package main

import (
	"os"

	"github.com/nvbind/nvbind/wrapper"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		os.Exit(wrapper.ServeMain(os.Args[2:], os.Stderr))
	}
	os.Exit(wrapper.Main(os.Args[0], os.Args[1:], os.Stderr))
}
