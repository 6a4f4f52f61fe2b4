package hook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	data, err := io.ReadAll(io.LimitReader(r, maxStateSize+1))
	if err != nil {
		return s, fmt.Errorf("read OCI state from stdin: %w", err)
	}
	if len(data) > maxStateSize {
		return s, fmt.Errorf("OCI state on stdin is larger than %d bytes", maxStateSize)
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
	f, err := os.Open(p) //nolint:gosec // config.json of the bundle the runtime names
	if err != nil {
		return "", fmt.Errorf("open bundle config: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	if len(data) > maxConfigSize {
		return "", fmt.Errorf("%s is larger than %d bytes", p, maxConfigSize)
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
