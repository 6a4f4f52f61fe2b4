// Package hook implements the OCI createContainer hooks that nvbind's specs and NRI
// adjustments name: library links, the container's ld cache, protection of the driver's
// device nodes and CUDA forward compatibility, all in one process.
//
// Hooks run as root on the host against a tree the image controls. Every container path
// is resolved inside the container root (openat2 RESOLVE_IN_ROOT, through
// filepath-securejoin), final components are created with O_EXCL/O_NOFOLLOW or replaced
// by rename, reads are bounded, and no program from the image is ever run: the ld cache
// is built by the host's static ldconfig chrooted into the container root, with an
// empty environment.
package hook
