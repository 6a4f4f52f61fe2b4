// Package hook implements the OCI hooks that nvbind's specs and NRI adjustments name:
// library links, the container's ld cache, protection of the driver's device nodes, CUDA
// forward compatibility and the EGL application profile, all in one process. They run at
// createRuntime, entering the container's mount namespace first
// (--enter-mount-namespace), or at createContainer, already in it.
//
// Hooks run as root on the host against a tree the image controls. Every container path
// is resolved inside the container root (openat2 RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS,
// or filepath-securejoin where the kernel lacks openat2), final components are created
// with O_EXCL/O_NOFOLLOW or replaced by rename, every read is bounded, and no program is
// ever run: the hook writes the ld cache itself, merging the entries ldconfig would file
// for the injected folders ahead of the image's own cache, or, where the image's cache is
// unusable, building a fresh one from the image's ld.so.conf and default folders, all
// read inside the root within the budgets named in ldsoconf.go, ldcache.go and
// internal/ldcache.
package hook
