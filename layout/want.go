package layout

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"

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
	f, err := os.OpenFile(filepath.Join(dir, NameOf(caps)), os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o644) //nolint:gosec // an empty marker
	if err != nil {
		return err
	}
	return f.Close()
}

// PrepareWants makes the want folder under base, for a builder that answers asks.
func PrepareWants(base string) error {
	if err := os.MkdirAll(filepath.Join(base, wantDir), 0o755); err != nil { //nolint:gosec // world-readable
		return err
	}
	return checkBase(filepath.Join(base, wantDir))
}

// wantFolder is the want folder, unless it is not a plain folder (a link planted there).
func wantFolder(base string) (string, bool) {
	dir := filepath.Join(base, wantDir)
	fi, err := os.Lstat(dir)
	return dir, err == nil && fi.IsDir()
}

// Wanted are the capability sets asked for; names that are no capability set are ignored.
func Wanted(base string) []gpu.Capabilities {
	dir, ok := wantFolder(base)
	if !ok {
		return nil
	}
	entries, err := os.ReadDir(dir)
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
	dir, ok := wantFolder(base)
	if !ok {
		return
	}
	for _, p := range plans {
		_ = os.Remove(filepath.Join(dir, p.Name))
	}
}
