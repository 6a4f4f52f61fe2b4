package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"
)

// Format is a spec file encoding.
type Format string

// Spec encodings.
const (
	FormatJSON Format = "json"
	FormatYAML Format = "yaml"
)

// ParseFormat parses --format.
func ParseFormat(v string) (Format, error) {
	switch strings.ToLower(v) {
	case "json":
		return FormatJSON, nil
	case "yaml", "yml":
		return FormatYAML, nil
	}
	return "", fmt.Errorf("unknown format %q (valid: json, yaml)", v)
}

// FormatOf picks the format from a file name's extension ("" if it has none we know).
func FormatOf(name string) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return FormatJSON
	case ".yaml", ".yml":
		return FormatYAML
	}
	return ""
}

// Marshal encodes a spec.
func Marshal(s *cdispecs.Spec, f Format) ([]byte, error) {
	switch f {
	case FormatJSON:
		b, err := json.MarshalIndent(s, "", "  ")
		if err != nil {
			return nil, err
		}
		return append(b, '\n'), nil
	case FormatYAML:
		b, err := yaml.Marshal(s)
		if err != nil {
			return nil, err
		}
		return append([]byte("---\n"), b...), nil
	}
	return nil, fmt.Errorf("unknown format %q (valid: json, yaml)", f)
}

// FileName is the conventional file name of a spec (vendor.com-class.ext).
func FileName(s *cdispecs.Spec, f Format) (string, error) {
	name, err := cdi.GenerateNameForSpec(s)
	if err != nil {
		return "", err
	}
	return name + "." + string(f), nil
}

// Validate checks a spec as runtimes will: the CDI library parses it strictly and
// validates names, version and edits.
func Validate(s *cdispecs.Spec) error {
	dir, err := os.MkdirTemp("", "nvbind-validate-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	data, err := Marshal(s, FormatJSON)
	if err != nil {
		return err
	}
	p := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return err
	}
	_, err = cdi.ReadSpec(p, 0)
	return err
}

// WriteFile validates the spec with the CDI library and writes it atomically: a temp file
// in the same folder, fsync, rename, fsync of the folder. A reader sees the old file or
// the new one, never a half-written one; on any error nothing is left behind.
func WriteFile(s *cdispecs.Spec, dst string, f Format) (err error) {
	data, err := Marshal(s, f)
	if err != nil {
		return err
	}
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // spec folders must be readable by every runtime
		return fmt.Errorf("create spec folder: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".*.tmp"+filepath.Ext(dst))
	if err != nil {
		return fmt.Errorf("create temp file beside %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if _, err = cdi.ReadSpec(tmp.Name(), 0); err != nil {
		return fmt.Errorf("generated spec is invalid, %s left unchanged: %w", dst, err)
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("replace %s: %w", dst, err)
	}
	if d, derr := os.Open(dir); derr == nil { //nolint:gosec // the folder the user chose for the spec
		derr = d.Sync()
		_ = d.Close()
		if derr != nil && !errors.Is(derr, os.ErrInvalid) {
			return fmt.Errorf("sync %s: %w", dir, derr)
		}
	}
	return nil
}
