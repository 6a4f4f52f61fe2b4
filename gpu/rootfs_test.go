package gpu

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestRootFSRemembers: one discovery's rootFS resolves each path once, found or missing
// (a host without /usr/local is asked for a dozen programs there), and a link loop is not
// remembered, since it depends on the links followed before; a new rootFS sees the tree
// as it is now.
func TestRootFSRemembers(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("loop", filepath.Join(root, "usr/bin/loop")); err != nil {
		t.Fatal(err)
	}
	r := newRootFS(root, root)
	for _, p := range []string{"/usr/local/bin/nvidia-smi", "/usr/local/sbin/nvidia-smi", "/usr/bin/nvidia-smi"} {
		if _, _, err := r.stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: %v", p, err)
		}
	}
	if _, _, err := r.stat("/usr/bin/loop"); !errors.Is(err, errLinkLoop) {
		t.Fatalf("loop: %v", err)
	}
	for _, p := range []string{"/usr/local", "/usr/local/bin", "/usr/local/bin/nvidia-smi", "/usr/bin/nvidia-smi", "/", "/usr", "/usr/bin"} {
		if _, ok := r.dirs[p]; !ok {
			t.Errorf("%s not remembered", p)
		}
	}
	if _, ok := r.dirs["/usr/bin/loop"]; ok {
		t.Error("a link loop was remembered")
	}
	// the tree changes: this discovery keeps what it saw, the next one sees the change
	if err := os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/local/bin/nvidia-smi"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.stat("/usr/local/bin/nvidia-smi"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the same discovery: %v", err)
	}
	if real, fi, err := newRootFS(root, root).stat("/usr/local/bin/nvidia-smi"); err != nil || real != "/usr/local/bin/nvidia-smi" || !fi.Mode().IsRegular() {
		t.Errorf("a new discovery: %q %v", real, err)
	}
}
