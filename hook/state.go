package hook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"

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
	p := filepath.Join(bundle, "config.json")
	data, err := fileio.ReadFile(p, maxConfigSize)
	if err != nil {
		return "", fmt.Errorf("bundle config: %w", err)
	}
	var cfg struct {
		Root *struct {
			Path string `json:"path"`
		} `json:"root"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	if cfg.Root == nil || cfg.Root.Path == "" {
		return "", errors.New(p + " has no root.path")
	}
	root := cfg.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(bundle, root)
	}
	return filepath.Clean(root), nil
}
