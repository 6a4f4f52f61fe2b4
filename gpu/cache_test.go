package gpu_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/driverroot"
)

// TestCache: an inventory is reused while nothing it was made from changed, once a
// discovery ran with its folders watched from the start; each kind of change (a GPU
// gone from procfs, the driver's version, a MIG instance, one made again with the same
// ID, a node in /dev, a file beside the libraries, the ld cache's folder) makes the next
// call discover again, and see it; so do age and Close.
func TestCache(t *testing.T) {
	t.Parallel()
	root := driverroot.Synthetic(t, "debian-535")
	d, err := gpu.New(root.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	c := gpu.NewCache(d, time.Hour)
	defer func() { _ = c.Close() }()
	ctx := context.Background()
	discover := func() (*gpu.Inventory, bool) {
		t.Helper()
		inv, reused, err := c.Discover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return inv, reused
	}
	// settle: discovers until the watched folders hold, then reuses
	settle := func(what string) *gpu.Inventory {
		t.Helper()
		for range 5 {
			// file events arrive asynchronously: give them a moment before asking
			time.Sleep(50 * time.Millisecond)
			if inv, reused := discover(); reused {
				return inv
			}
		}
		t.Fatalf("%s: never reused after", what)
		return nil
	}
	if _, reused := discover(); reused {
		t.Fatal("the first discovery reused an inventory")
	}
	first := settle("first discovery")
	if again, reused := discover(); !reused || again != first {
		t.Fatal("an unchanged driver was discovered again")
	}
	if len(first.Devices) != 2 {
		t.Fatalf("devices %d, want 2", len(first.Devices))
	}

	gpus := filepath.Join(root.Path, "proc/driver/nvidia/gpus")
	ents, err := os.ReadDir(gpus)
	if err != nil || len(ents) != 2 {
		t.Fatalf("%s: %v %v", gpus, ents, err)
	}
	if err := os.RemoveAll(filepath.Join(gpus, ents[1].Name())); err != nil {
		t.Fatal(err)
	}
	if inv, reused := discover(); reused || len(inv.Devices) != 1 {
		t.Fatalf("a GPU gone from procfs: reused %v, %d devices", reused, len(inv.Devices))
	}
	settle("a GPU gone")

	mig := filepath.Join(root.Path, "proc/driver/nvidia/capabilities/gpu0/mig/gi1")
	if err := os.MkdirAll(mig, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, reused := discover(); reused {
		t.Fatal("a MIG instance: the inventory was reused")
	}
	settle("a MIG instance")
	// destroyed and made again with the same ID: a new procfs entry (a new UUID)
	if err := os.Mkdir(mig+".new", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(mig); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(mig+".new", mig); err != nil {
		t.Fatal(err)
	}
	if _, reused := discover(); reused {
		t.Fatal("a MIG instance made again with the same ID: the inventory was reused")
	}
	if err := os.RemoveAll(filepath.Dir(mig)); err != nil {
		t.Fatal(err)
	}
	settle("MIG")

	version := filepath.Join(root.Path, "proc/driver/nvidia/version")
	data, err := os.ReadFile(version)
	if err != nil {
		t.Fatal(err)
	}
	old := first.Driver.Version
	newer := strings.Replace(string(data), old, "535.999.01", 1)
	if newer == string(data) {
		t.Fatalf("version %s not in %q", old, data)
	}
	if err := os.WriteFile(version, []byte(newer), 0o644); err != nil {
		t.Fatal(err)
	}
	if inv, reused, err := c.Discover(ctx); reused || err == nil && inv.Driver.Version != "535.999.01" {
		t.Fatalf("a new driver version: reused %v, version %v, %v", reused, inv, err)
	}
	if err := os.WriteFile(version, data, 0o644); err != nil {
		t.Fatal(err)
	}
	settle("the version back")

	libDir := filepath.Dir(first.Files[0].HostPath)
	for name, p := range map[string]string{
		"a node in /dev":            filepath.Join(root.Path, "dev", "nvidia-new"),
		"a file beside the drivers": filepath.Join(libDir, "libnvidia-new.so.1"),
		"the ld cache's folder":     filepath.Join(root.Path, "etc", "ld.so.cache.new"),
	} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if _, reused := discover(); reused {
			t.Fatalf("%s: the inventory was reused", name)
		}
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		settle(name)
	}

	young := gpu.NewCache(d, time.Nanosecond)
	defer func() { _ = young.Close() }()
	for range 3 {
		if _, reused, err := young.Discover(ctx); err != nil || reused {
			t.Fatalf("an inventory older than maxAge: reused %v, %v", reused, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, reused, err := c.Discover(ctx); err != nil || reused {
		t.Fatalf("after Close: reused %v, %v", reused, err)
	}
}
