package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvbind/nvbind/test/testutil"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !waitUntil(cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitUntil polls cond for up to 20 s.
func waitUntil(cond func() bool) bool {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestGenerateWatchFollowsUpgrade runs generate --watch on a copy of the debian-535 root,
// breaks it (the spec stays), then upgrades it in place to Debian's 535.309.01 packages
// (the spec follows without a restart).
func TestGenerateWatchFollowsUpgrade(t *testing.T) {
	testutil.RequiresRoot(t) // copies device nodes
	src := testutil.DriverRoot(t, "debian-535")
	upgraded := testutil.DriverRoot(t, "debian-535-upgrade")
	root := filepath.Join(t.TempDir(), "host")
	copyTree := func(from string) {
		t.Helper()
		if err := os.RemoveAll(root); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", "-a", from, root).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v\n%s", err, out)
		}
	}
	copyTree(src)
	out := filepath.Join(t.TempDir(), "cdi", "nvidia.yaml")
	read := func() string { data, _ := os.ReadFile(out); return string(data) }

	cmd := newRootCommand()
	var logs syncBuffer
	cmd.SetOut(&logs)
	cmd.SetErr(&logs)
	cmd.SetArgs([]string{"cdi", "generate", "--watch", "--interval", "100ms", "--no-nvml", "--driver-root", root, "--dev-root", root,
		"--hook-path", "/usr/bin/nvbind-hook", "--output", out, "--layout", "files"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor(t, "the first spec", func() bool { return strings.Contains(read(), "libcuda.so.535.261.03") })
	// and the /dev/char links of the driver's device nodes
	waitFor(t, "/dev/char/195:1", func() bool { l, _ := os.Readlink(filepath.Join(root, "dev/char/195:1")); return l == "../nvidia1" })

	// a broken driver (module unloaded, libraries removed): once discovery fails, the spec
	// on disk stays as the last good one while the failure lasts
	if err := os.Remove(filepath.Join(root, "proc/driver/nvidia/version")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, "usr/lib/x86_64-linux-gnu/nvidia/current")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failure to be logged", func() bool { return strings.Contains(logs.String(), "the spec on disk stays") })
	before := read()
	time.Sleep(500 * time.Millisecond) // several rounds of failing discovery
	if read() != before {
		t.Fatal("a failed discovery changed the spec")
	}
	if _, err := cdi.ReadSpec(out, 0); err != nil || !strings.Contains(before, "nvidia.com/gpu") {
		t.Fatalf("the spec left in place is not a valid spec: %v", err)
	}

	// the upgrade lands
	copyTree(upgraded)
	waitFor(t, "the upgraded spec", func() bool { return strings.Contains(read(), "libcuda.so.535.309.01") })
	if strings.Contains(read(), "535.261.03") {
		t.Error("the upgraded spec still names the old driver")
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
		t.Errorf("spec folder holds %d entries: temp files left behind", len(ents))
	}
}
