package gpu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/fsnotify/fsnotify"
)

func next(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return Event{}
}

// nextInventory skips error events (a tree being written) up to the next inventory.
func nextInventory(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ev := next(t, ch); ev.Err == nil {
			return ev
		}
	}
	t.Fatal("no inventory within 10s")
	return Event{}
}

func TestWatchBootAndUpgrade(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	d, err := New(WithDriverRoot(root), WithDevRoot(root), WithDeviceStater(fakeStater{}), WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := d.Watch(ctx, 50*time.Millisecond)

	// boot: the driver is not there yet
	if ev := next(t, ch); !errors.Is(ev.Err, ErrNoDriver) {
		t.Fatalf("first event = %+v, want ErrNoDriver", ev)
	}
	// the driver finishes loading: while its files appear the watch may report other
	// errors; then it must come up with the driver
	hostTree().with(tree{lib + "/libcuda.so." + v535: "elf:libcuda.so.1", lib + "/libcuda.so.1": "link:libcuda.so." + v535}).build(t, root)
	ev := nextInventory(t, ch)
	if ev.Inventory.Driver.Version != v535 {
		t.Fatalf("after load: %+v", ev)
	}
	// upgrade to 535.309.01: new libraries, new kernel module, old files gone
	const v2 = "535.309.01"
	tree{
		lib + "/libcuda.so." + v2:     "elf:libcuda.so.1",
		"/proc/driver/nvidia/version": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  " + v2 + "  Thu Oct  2 2025\n",
	}.build(t, root)
	if err := os.Remove(filepath.Join(root, lib, "libcuda.so."+v535)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, lib, "libcuda.so.1")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("libcuda.so."+v2, filepath.Join(root, lib, "libcuda.so.1")); err != nil {
		t.Fatal(err)
	}
	ev = nextInventory(t, ch)
	for ev.Inventory.Driver.Version != v2 {
		ev = nextInventory(t, ch)
	}
	if got := libPaths(ev.Inventory); len(got) != 1 || got[0] != lib+"/libcuda.so."+v2 {
		t.Fatalf("libraries after the upgrade: %v", got)
	}
}

func TestWatchMIGChange(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dgxTree().build(t, root)
	s := migServer()
	var migs atomic.Int32
	migs.Store(1)
	dev := s.Devices[0].(*server.Device)
	orig := dev.GetMigDeviceHandleByIndexFunc
	dev.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i >= int(migs.Load()) {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return orig(i)
	}
	d, err := New(WithDriverRoot(root), WithDevRoot(root), WithDeviceStater(fakeStater{}), WithNVML(s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := d.Watch(ctx, 50*time.Millisecond)
	if ev := nextInventory(t, ch); len(ev.Inventory.Devices[0].MIG) != 1 {
		t.Fatalf("first: %+v", ev)
	}
	migs.Store(2) // an operator creates a second MIG device
	if ev := nextInventory(t, ch); len(ev.Inventory.Devices[0].MIG) != 2 {
		t.Fatalf("after the MIG change: %+v", ev)
	}
}

// TestSleepWakesOnWatcherError: an inotify queue overflow arrives as an error, not an
// event; it must wake the watch for a full rescan like an event would.
func TestSleepWakesOnWatcherError(t *testing.T) {
	t.Parallel()
	errs := make(chan error, 1)
	errs <- fsnotify.ErrEventOverflow
	done := make(chan bool, 1)
	go func() { done <- sleep(context.Background(), time.Hour, nil, errs) }()
	select {
	case ok := <-done:
		if !ok {
			t.Error("sleep reported the context ended")
		}
	case <-time.After(10 * debounce):
		t.Fatal("an overflow did not wake the watch")
	}
}
