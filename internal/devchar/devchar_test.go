package devchar

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/driverroot"
)

func inventory(t *testing.T) *gpu.Inventory {
	t.Helper()
	r := driverroot.Open(t, "debian-535")
	d, err := gpu.New(r.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func TestEnsure(t *testing.T) {
	t.Parallel()
	links := Links(inventory(t))
	var paths []string
	for _, l := range links {
		paths = append(paths, l.Path+" -> "+l.Target)
	}
	for _, want := range []string{"/dev/char/195:0 -> ../nvidia0", "/dev/char/195:1 -> ../nvidia1", "/dev/char/195:255 -> ../nvidiactl"} {
		if !slices.Contains(paths, want) {
			t.Errorf("links lack %s: %v", want, paths)
		}
	}
	if !slices.ContainsFunc(paths, func(p string) bool { return strings.HasSuffix(p, " -> ../nvidia-uvm") }) {
		t.Errorf("no link for nvidia-uvm (a dynamic major): %v", paths)
	}
	root := t.TempDir()
	// udev's own link for a node is kept; a stale one is replaced; a file is left alone
	if err := os.MkdirAll(filepath.Join(root, "dev/char"), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Symlink("../nvidia0", filepath.Join(root, "dev/char/195:0"))
	_ = os.Symlink("../sda", filepath.Join(root, "dev/char/195:1"))
	_ = os.WriteFile(filepath.Join(root, "dev/char/195:255"), nil, 0o644)
	before := Check(root, links)
	for i, l := range links {
		want, ok := map[string]State{"/dev/char/195:0": OK, "/dev/char/195:1": Wrong, "/dev/char/195:255": Wrong}[l.Path]
		if !ok {
			want = Missing
		}
		if before[i] != want {
			t.Errorf("%s: state %v, want %v", l.Path, before[i], want)
		}
	}
	made, err := Ensure(root, links)
	if err == nil || !strings.Contains(err.Error(), "195:255 exists and is not a link") {
		t.Errorf("err = %v", err)
	}
	if len(made) != len(links)-2 {
		t.Errorf("made %d links of %d", len(made), len(links))
	}
	if got, _ := os.Readlink(filepath.Join(root, "dev/char/195:1")); got != "../nvidia1" {
		t.Errorf("stale link not replaced: %s", got)
	}
	_ = os.Remove(filepath.Join(root, "dev/char/195:255"))
	if made, err := Ensure(root, links); err != nil || len(made) != 1 {
		t.Fatalf("second run made %v, %v", made, err)
	}
	for i, st := range Check(root, links) {
		if st != OK {
			t.Errorf("%s: %v", links[i].Path, st)
		}
	}
}
