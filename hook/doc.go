// Package hook implements the OCI createContainer hooks that nvbind's specs and NRI
// adjustments name: library links, the container's ld cache, protection of the driver's
// device nodes and CUDA forward compatibility, all in one process.
//
// Hooks run as root on the host against a tree the image controls. Every container path
// is resolved inside the container root (openat2 RESOLVE_IN_ROOT, through
// filepath-securejoin), final components are created with O_EXCL/O_NOFOLLOW or replaced
// by rename, reads are bounded, and no program from the image is ever run: the hook writes
// the ld cache itself (the entries ldconfig would file for the injected folders, merged
// ahead of the image's own cache), or, for caches it cannot merge, runs the host's static
// ldconfig chrooted into the container root with an empty environment.
package hook
