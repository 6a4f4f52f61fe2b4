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
		name := e.Name()
		if name == "all" {
			out = append(out, gpu.CapsAll)
			continue
		}
		if caps, err := gpu.ParseCapabilities(strings.ReplaceAll(name, "+", ",")); err == nil && NameOf(caps) == name {
			out = append(out, caps)
		}
	}
	return out
}

// ClearWanted removes the asks the plans answer.
func ClearWanted(base string, plans []Plan) {
	for _, p := range plans {
		_ = os.Remove(filepath.Join(base, wantDir, p.Name))
	}
}
