// Package ociimage writes single-layer OCI image archives (an OCI image layout in a tar,
// which `ctr images import` and `podman load` read) from a folder, and lays out the
// folder for nvbind's own image: its binaries and exactly the shared objects they and the
// driver libraries nvbind loads with dlopen need. `make image` and the test images use it.
package ociimage
