package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nvbind/nvbind/internal/ociimage"
)

// OCIImageTar writes an OCI image layout tar of one layer made from rootfs, with the
// index annotation io.containerd.image.name set to name, for `ctr images import`.
func OCIImageTar(t testing.TB, rootfs, name string, entrypoint []string, out string) {
	t.Helper()
	c := ociimage.Config{Name: name, Entrypoint: entrypoint, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}}
	if err := ociimage.Write(rootfs, c, out); err != nil {
		t.Fatal(err)
	}
}

const pauseSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
`

// PauseImageTar writes a pod sandbox ("pause") image: a static program that waits for
// SIGTERM, built with the Go toolchain.
func PauseImageTar(t testing.TB, name, out string) {
	t.Helper()
	work := t.TempDir()
	root := filepath.Join(work, "rootfs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(work, "pause.go")
	if err := os.WriteFile(src, []byte(pauseSource), 0o644); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(root, "pause"), src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Dir = work
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	OCIImageTar(t, root, name, []string{"/pause"}, out)
}
