package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/devchar"
	"github.com/nvbind/nvbind/internal/fileio"
)

// maxDaemonJSON bounds Docker's daemon.json.
const maxDaemonJSON = 1 << 20

// dockerNames are the runtime names --enable docker-runtime adds to daemon.json, with the
// program each runs.
func (f *installFlags) dockerNames(bindir string) map[string]string {
	out := map[string]string{"nvbind": filepath.Join(bindir, runtimeBinary)}
	if f.asNVIDIA {
		out["nvidia"] = filepath.Join(bindir, nvidiaRuntime)
	}
	return out
}

// readDaemonJSON reads daemon.json as its top-level keys, each kept as written; a
// missing file is empty. Invalid JSON is an error that names the file and the place.
func readDaemonJSON(p string) (map[string]json.RawMessage, error) {
	data, err := fileio.ReadFile(p, maxDaemonJSON)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]json.RawMessage{}, nil
	}
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return map[string]json.RawMessage{}, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := 1 + bytes.Count(data[:se.Offset], []byte("\n"))
			return nil, fmt.Errorf("%s is not valid JSON (line %d: %w): fix it first; nothing was changed", p, line, err)
		}
		return nil, fmt.Errorf("%s is not a JSON object (%w): fix it first; nothing was changed", p, err)
	}
	if m == nil {
		m = map[string]json.RawMessage{}
	}
	return m, nil
}

// dockerRuntimeEntry is a runtime of daemon.json's "runtimes".
type dockerRuntimeEntry struct {
	Path        string   `json:"path"`
	RuntimeArgs []string `json:"runtimeArgs,omitempty"`
}

func runtimesOf(p string, m map[string]json.RawMessage) (map[string]json.RawMessage, error) {
	rts := map[string]json.RawMessage{}
	if raw, ok := m["runtimes"]; ok {
		if err := json.Unmarshal(raw, &rts); err != nil || rts == nil {
			return nil, fmt.Errorf("%s: \"runtimes\" is not an object: fix it first; nothing was changed", p)
		}
	}
	return rts, nil
}

// writeDaemonJSON writes daemon.json atomically, keys sorted, indented as Docker's docs.
func writeDaemonJSON(p string, m map[string]json.RawMessage) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(p); err == nil {
		mode = fi.Mode().Perm()
	}
	return fileio.WriteAtomic(p, append(data, '\n'), mode, nil)
}

// dockerRuntime adds nvbind-runtime to daemon.json under its names (and as the default
// runtime with --default), keeping every other key.
func (f *installFlags) dockerRuntime(w io.Writer, bindir string) error {
	p := f.dockerConfig
	m, err := readDaemonJSON(p)
	if err != nil {
		return err
	}
	rts, err := runtimesOf(p, m)
	if err != nil {
		return err
	}
	names := f.dockerNames(bindir)
	changed := false
	for _, name := range sortedKeys(names) {
		entry, _ := json.Marshal(dockerRuntimeEntry{Path: names[name]})
		if old, ok := rts[name]; ok && bytes.Equal(compact(old), entry) {
			continue
		}
		rts[name], changed = entry, true
	}
	if f.dockerDefault {
		def, _ := json.Marshal("nvbind")
		if !bytes.Equal(compact(m["default-runtime"]), def) {
			m["default-runtime"], changed = def, true
		}
	}
	if !changed {
		fmt.Fprintf(w, "unchanged %s\n", p)
		return nil
	}
	m["runtimes"], _ = json.Marshal(rts)
	if err := writeDaemonJSON(p, m); err != nil {
		return err
	}
	fmt.Fprintf(w, "updated %s: runtimes %s%s\n", p, strings.Join(sortedKeys(names), ", "), map[bool]string{true: ", default-runtime nvbind"}[f.dockerDefault])
	fmt.Fprintln(w, "restart dockerd to use it: systemctl restart docker; then docker run --runtime=nvbind -e NVIDIA_VISIBLE_DEVICES=0 ...")
	return nil
}

// removeDockerRuntime removes from daemon.json the runtimes that run nvbind's binaries in
// bindir (and default-runtime when it names one of them); other keys stay.
func (f *installFlags) removeDockerRuntime(w io.Writer, bindir string) error {
	p := f.dockerConfig
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	m, err := readDaemonJSON(p)
	if err != nil {
		return err
	}
	rts, err := runtimesOf(p, m)
	if err != nil {
		return err
	}
	ours := map[string]bool{filepath.Join(bindir, runtimeBinary): true, filepath.Join(bindir, nvidiaRuntime): true, filepath.Join(bindir, guardLink): true}
	var removed []string
	for name, raw := range rts {
		var e dockerRuntimeEntry
		if json.Unmarshal(raw, &e) == nil && ours[e.Path] {
			delete(rts, name)
			removed = append(removed, name)
		}
	}
	if len(removed) == 0 {
		return nil
	}
	var def string
	if raw, ok := m["default-runtime"]; ok && json.Unmarshal(raw, &def) == nil {
		for _, r := range removed {
			if def == r {
				delete(m, "default-runtime")
			}
		}
	}
	if len(rts) == 0 {
		delete(m, "runtimes")
	} else {
		m["runtimes"], _ = json.Marshal(rts)
	}
	if err := writeDaemonJSON(p, m); err != nil {
		return err
	}
	sort.Strings(removed)
	fmt.Fprintf(w, "updated %s: removed runtimes %s (restart dockerd)\n", p, strings.Join(removed, ", "))
	return nil
}

func compact(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// devCharNodes discovers the device nodes whose /dev/char links devChar makes. install
// runs it before it writes anything: where the lean build hands the command to
// nvbind-node (MIG instances, which only NVML lists), nothing is then done twice.
func (f *installFlags) devCharNodes() (*gpu.Inventory, error) {
	d, err := f.discoverer(gpu.WithoutCUDAVersion(), gpu.WithNVMLOnlyForMIG()) // the nodes alone
	if err != nil {
		return nil, err
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		return nil, fmt.Errorf("dev-char: %w", err)
	}
	return inv, nil
}

// devChar makes the /dev/char links of every NVIDIA device node of inv.
func (f *installFlags) devChar(w io.Writer, inv *gpu.Inventory) error {
	root := f.readDevRoot()
	links := devchar.Links(inv)
	made, err := devchar.Ensure(root, links)
	for _, l := range made {
		fmt.Fprintf(w, "installed %s -> %s\n", filepath.Join(root, l.Path), l.Target)
	}
	if len(made) == 0 && err == nil {
		fmt.Fprintf(w, "unchanged %s (%d links)\n", filepath.Join(root, "dev/char"), len(links))
	}
	return err
}
