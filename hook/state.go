package hook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nvbind/nvbind/internal/fileio"
)

// Bounds on what a hook reads.
const (
	maxStateSize  = 1 << 20
	maxConfigSize = 16 << 20
	maxSmallFile  = 64 << 10
)

// State is the part of the OCI state that hooks use.
type State struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Pid    int    `json:"pid"`
	Bundle string `json:"bundle"`
}

// ReadState decodes the OCI state a runtime writes to a hook's stdin.
func ReadState(r io.Reader) (State, error) {
	var s State
	data, err := fileio.ReadAll(r, maxStateSize, "the OCI state on stdin")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("OCI state on stdin is not JSON: %w", err)
	}
	if s.Bundle == "" || !filepath.IsAbs(s.Bundle) {
		return s, fmt.Errorf("OCI state has no absolute bundle path (got %q)", s.Bundle)
	}
	return s, nil
}

// RootPath reads the bundle's config.json and returns the container root's host path.
func RootPath(bundle string) (string, error) {
	cfg, err := readBundle(bundle)
	return cfg.root, err
}

// bundleConfig is what hooks read of a bundle's config.json.
type bundleConfig struct {
	root    string
	devices []struct {
		Path  string `json:"path"`
		Type  string `json:"type"`
		Minor int64  `json:"minor"`
	}
}

func readBundle(bundle string) (bundleConfig, error) {
	var out bundleConfig
	p := filepath.Join(bundle, "config.json")
	data, err := fileio.ReadFile(p, maxConfigSize)
	if err != nil {
		return out, fmt.Errorf("bundle config: %w", err)
	}
	var cfg struct {
		Root *struct {
			Path string `json:"path"`
		} `json:"root"`
		Linux *struct {
			Devices json.RawMessage `json:"devices"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return out, fmt.Errorf("%s: %w", p, err)
	}
	if cfg.Root == nil || cfg.Root.Path == "" {
		return out, errors.New(p + " has no root.path")
	}
	out.root = cfg.Root.Path
	if !filepath.IsAbs(out.root) {
		out.root = filepath.Join(bundle, out.root)
	}
	out.root = filepath.Clean(out.root)
	if cfg.Linux != nil && len(cfg.Linux.Devices) > 0 {
		if err := json.Unmarshal(cfg.Linux.Devices, &out.devices); err != nil {
			return out, fmt.Errorf("%s: linux.devices: %w", p, err)
		}
	}
	return out, nil
}

// gpuMinors are the minors of the container's GPU nodes: character devices named
// /dev/nvidiaN.
func (c bundleConfig) gpuMinors() []int {
	var out []int
	for _, d := range c.devices {
		if IsGPUNode(d.Path, d.Type) && !slices.Contains(out, int(d.Minor)) {
			out = append(out, int(d.Minor))
		}
	}
	slices.Sort(out)
	return out
}

// IsGPUNode reports whether a container's device (path and OCI type) is a GPU's node,
// /dev/nvidiaN: the application profile shows EGL and Vulkan the GPUs of these minors.
func IsGPUNode(path, typ string) bool {
	n, ok := strings.CutPrefix(path, "/dev/nvidia")
	return ok && typ == "c" && n != "" && strings.Trim(n, "0123456789") == ""
}
