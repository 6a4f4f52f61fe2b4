package layout

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/nvbind/nvbind/gpu"
)

// wantDir is the folder under the base where a process that cannot build layouts (the
// unprivileged NRI plugin) asks for one: an empty file named by the capability set. The
// builder plans the layout from its own inventory: a want file names capabilities only,
// never a file to mount.
const wantDir = ".want"

// maxWanted bounds the want files read.
const maxWanted = 64

// Want asks for the layout of caps.
func Want(base string, caps gpu.Capabilities) error {
	dir := filepath.Join(base, wantDir)
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // world-readable
		return err
	}
	return os.WriteFile(filepath.Join(dir, NameOf(caps)), nil, 0o644) //nolint:gosec // an empty marker
}

// Wanted are the capability sets asked for; names that are no capability set are ignored.
func Wanted(base string) []gpu.Capabilities {
	entries, err := os.ReadDir(filepath.Join(base, wantDir))
	if err != nil {
		return nil
	}
	var out []gpu.Capabilities
	for i, e := range entries {
		if i == maxWanted {
			break
		}
		if caps, ok := CapsOfName(e.Name()); ok {
			out = append(out, caps)
		}
	}
	return out
}

// CapsOfName is the capability set whose layout is named name (NameOf), if any.
func CapsOfName(name string) (gpu.Capabilities, bool) {
	if name == "all" {
		return gpu.CapsAll, true
	}
	caps, err := gpu.ParseCapabilities(strings.ReplaceAll(name, "+", ","))
	return caps, err == nil && NameOf(caps) == name
}

// ClearWanted removes the asks the plans answer.
func ClearWanted(base string, plans []Plan) {
	for _, p := range plans {
		_ = os.Remove(filepath.Join(base, wantDir, p.Name))
	}
}
