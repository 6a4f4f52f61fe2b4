package hook

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestAppProfile: the container gets a profile that shows EGL only its GPUs, computed
// from the /dev/nvidiaN nodes of the bundle's config, inside the container root even when
// the image makes /etc/nvidia a link out of it.
func TestAppProfile(t *testing.T) {
	t.Parallel()
	bundle := t.TempDir()
	root := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "etc/nvidia")); err != nil {
		t.Fatal(err)
	}
	// inside the root, that absolute link names <root>/<outside>
	if err := os.MkdirAll(filepath.Join(root, outside), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := `{"root":{"path":"rootfs"},"linux":{"devices":[
		{"path":"/dev/nvidiactl","type":"c","major":195,"minor":255},
		{"path":"/dev/nvidia3","type":"c","major":195,"minor":3},
		{"path":"/dev/nvidia-uvm","type":"c","major":508,"minor":0},
		{"path":"/dev/nvidia1","type":"c","major":195,"minor":1},
		{"path":"/dev/nvidia7","type":"b","major":8,"minor":7},
		{"path":"/dev/nvidia-caps/nvidia-cap12","type":"c","major":510,"minor":12}]}}`
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := readBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.gpuMinors(); !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("GPU minors %v, want [1 3]", got)
	}
	var log bytes.Buffer
	if err := Run(context.Background(), State{Bundle: bundle}, Options{AppProfile: true, Log: &log}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("the hook wrote through the image's link to %s", outside)
	}
	data, err := os.ReadFile(filepath.Join(root, "etc/nvidia", "nvidia-application-profiles-rc.d/10-nvbind-container.conf"))
	if err == nil {
		t.Fatalf("the profile went through the link: %s", data)
	}
	// the link resolves inside the root: <root>/<outside>/...
	data, err = os.ReadFile(filepath.Join(root, outside, "nvidia-application-profiles-rc.d/10-nvbind-container.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Profiles []struct {
			Name     string `json:"name"`
			Settings []any  `json:"settings"`
		} `json:"profiles"`
		Rules []struct {
			Pattern []any  `json:"pattern"`
			Profile string `json:"profile"`
		} `json:"rules"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%v: %s", err, data)
	}
	if len(doc.Profiles) != 1 || len(doc.Rules) != 1 || doc.Rules[0].Profile != doc.Profiles[0].Name || len(doc.Rules[0].Pattern) != 0 ||
		len(doc.Profiles[0].Settings) != 2 || doc.Profiles[0].Settings[0] != "EGLVisibleDGPUDevices" || doc.Profiles[0].Settings[1] != float64(0b1010) {
		t.Fatalf("profile %s", data)
	}
}

func TestAppProfileMask(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		minors []int
		mask   uint32
	}{{nil, 0}, {[]int{0}, 1}, {[]int{31}, 1 << 31}, {[]int{2, 5}, 0b100100}, {[]int{32, 40}, 0}, {[]int{-1, 4}, 16}} {
		if _, mask := appProfile(tc.minors); mask != tc.mask {
			t.Errorf("minors %v: mask %#x, want %#x", tc.minors, mask, tc.mask)
		}
	}
	// no GPU node: no profile, which would hide every GPU from EGL
	root := t.TempDir()
	var log bytes.Buffer
	if err := RunInRoot(context.Background(), root, Options{AppProfile: true, Log: &log}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, appProfileFile)); !os.IsNotExist(err) || !strings.Contains(log.String(), "no profile written") {
		t.Errorf("a profile without GPUs: %v; log %q", err, log.String())
	}
}
