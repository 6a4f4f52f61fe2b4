package spec

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/fileio"
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

// FormatOf picks the format from a spec file name's extension: "" for any but .json and
// .yaml, the only names the CDI library reads (.yml and .YAML are skipped).
func FormatOf(name string) Format {
	switch filepath.Ext(name) {
	case ".json":
		return FormatJSON
	case ".yaml":
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
		b, err := marshalYAML(s)
		if err != nil {
			return nil, err
		}
		return append([]byte(yamlMarker+"---\n"), b...), nil
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

// WriteFile validates the spec with the CDI library and writes it atomically (temp file,
// fsync, rename, fsync of the folder): a reader sees the old file or the new one, never a
// half-written one, and an invalid spec leaves the old file as it was. A file that
// already holds the spec byte for byte (a regular file of one link, mode 0644, this
// user's) is left as it is, after the same check and syncs: runtimes that watch the folder
// see no event.
func WriteFile(s *cdispecs.Spec, dst string, f Format) error {
	_, err := writeFile(s, dst, f, "", nil)
	return err
}

// WriteFileAs is WriteFile for a writer that keeps a spec of its own per file (the DRA
// driver's one spec per claim): writer goes into the YAML's writer line, and no other
// spec of the kind is touched.
func WriteFileAs(s *cdispecs.Spec, dst string, f Format, writer string) error {
	_, err := writeFile(s, dst, f, writer, nil)
	return err
}

// writeFile is WriteFile with the writer's line (YAML) and valid, when set, run once the
// new spec proved valid and before it replaces dst; its error leaves dst as valid left it.
// Without valid, a dst that already holds the spec is kept (changed is false).
func writeFile(s *cdispecs.Spec, dst string, f Format, writer string, valid func() error) (changed bool, err error) {
	data, err := Marshal(s, f)
	if err != nil {
		return false, err
	}
	if f == FormatYAML && writer != "" {
		line := writerPrefix + strings.Map(func(r rune) rune {
			if r < ' ' || r == 0x7f {
				return ' '
			}
			return r
		}, writer) + "\n"
		data = append([]byte(yamlMarker+line), data[len(yamlMarker):]...)
	}
	if valid == nil {
		// the file's bytes are the new spec's: checked as a new file would be
		held, err := fileio.Holds(dst, data, specMode, func(p string) error {
			if _, err := cdi.ReadSpec(p, 0); err != nil {
				return fmt.Errorf("generated spec is invalid, %s left unchanged: %w", dst, err)
			}
			return nil
		})
		if held {
			return false, err
		}
	}
	return true, fileio.WriteAtomic(dst, data, specMode, func(tmp string) error {
		if _, err := cdi.ReadSpec(tmp, 0); err != nil {
			return fmt.Errorf("generated spec is invalid, %s left unchanged: %w", dst, err)
		}
		if valid != nil {
			return valid()
		}
		return nil
	})
}

// specMode is the mode of the spec files nvbind writes: runtimes read them as any user.
const specMode = 0o644

// Written is one spec file that WriteDir or Install wrote.
type Written struct {
	Path string
	Spec *cdispecs.Spec
	// Replaced are nvbind's own specs of the kind under other names in the folder, moved
	// onto Path before it was written.
	Replaced []string
	// Foreign are specs of the kind in the folder that nvbind did not write and that
	// define some of its devices: while they are there, runtimes refuse those devices as
	// conflicting.
	Foreign []string
	// Unreadable is why some files of the folder could not be read (they did not stop
	// the write).
	Unreadable error
	// Others are the other nvbind writers whose spec of the kind this write replaced.
	Others []string
	// Unchanged says the file already held the spec, and was left as it was.
	Unchanged bool
}

// WriteDir generates every spec of the inventory and writes each into dir under its
// conventional name: the GPU spec and, on a host with IMEX channels, the IMEX channels'
// spec. It is the writer of `cdi generate --output DIR/`, of the NRI plugin's CDI mode and
// of the device plugin's cdi-cri strategy. A failure leaves the old files.
func WriteDir(inv *gpu.Inventory, o Options, dir string, f Format) ([]Written, error) {
	s, err := Generate(inv, o)
	if err != nil {
		return nil, err
	}
	specs := []*cdispecs.Spec{s}
	imex, err := GenerateIMEX(inv, o)
	if err != nil {
		return nil, err
	}
	if imex != nil {
		specs = append(specs, imex)
	}
	// generate and name every spec before writing any, so that one bad spec writes none
	out := make([]Written, 0, len(specs))
	for _, s := range specs {
		name, err := FileName(s, f)
		if err != nil {
			return nil, err
		}
		out = append(out, Written{Path: filepath.Join(dir, name), Spec: s})
	}
	for i, w := range out {
		iw, err := Install(w.Spec, w.Path, f, o.Writer)
		if err != nil {
			return nil, err
		}
		out[i] = iw
	}
	return out, nil
}
