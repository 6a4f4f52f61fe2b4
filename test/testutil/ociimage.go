package testutil

import (
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
