// Package e2e runs nvbind's specs and hooks with real runtimes: runc, Podman and
// containerd. The tests need root and NVBIND_TEST_ROOT=1 (make test sets it).
package e2e
