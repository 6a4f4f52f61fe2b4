package main

import (
	"strings"
	"testing"

	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/test/testutil"
)

// TestLayoutBuildSaysWhy: nvbind layout build names, for each driver folder of a layout it
// builds, whether it went in whole and, where not, why; a layout already complete is not
// built again, and says nothing.
func TestLayoutBuildSaysWhy(t *testing.T) {
	testutil.RequiresRoot(t) // mounts
	root := testutil.DriverRoot(t, "debian-535")
	base := t.TempDir()
	t.Cleanup(func() {
		if _, err := layout.Collect(base, nil); err != nil {
			t.Errorf("detach the layouts: %v", err)
		}
	})
	args := []string{"layout", "build", "--driver-root", root, "--dev-root", root, "--no-nvml", "--layout-dir", base, "--capability-set", "all"}
	out, _, err := run(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("layout build:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "built "+base+"/") || !strings.Contains(lines[0], "mounted by containers at /usr/local/nvbind/all") {
		t.Fatalf("no built line first:\n%s", out)
	}
	// the fixture is a folder of an ordinary (writable) file system: its 64-bit driver
	// folder, which holds NGX's DLLs too, goes one file at a time, and says why
	const want = "  /usr/lib/x86_64-linux-gnu/nvidia: one mount per file: "
	var found bool
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, "  /") || !strings.Contains(l, ": one mount per file: ") && !strings.HasSuffix(l, ": the host's folder, bound whole") {
			t.Errorf("a line that is no driver folder's: %q", l)
		}
		found = found || strings.HasPrefix(l, want) && len(l) > len(want)
	}
	if !found {
		t.Errorf("no line says why the 64-bit folder goes one file at a time:\n%s", out)
	}
	if out, _, err := run(t, args...); err != nil || out != "" {
		t.Errorf("a second build: %q, %v; want nothing said", out, err)
	}
}
