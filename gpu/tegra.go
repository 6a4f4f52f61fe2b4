package gpu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nvbind/nvbind/internal/fileio"
)

// CSVDir is where NVIDIA's L4T (Jetson) installs the lists of host files that containers
// get: one entry per line, "dev, /dev/nvhost-ctrl", "lib, /usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1",
// "sym, /usr/lib/aarch64-linux-gnu/libcuda.so" or "dir, /usr/lib/aarch64-linux-gnu/tegra".
const CSVDir = "/etc/nvidia-container-runtime/host-files-for-container.d"

// CSVKind is the kind of one CSV entry.
type CSVKind string

// CSV entry kinds.
const (
	CSVDev    CSVKind = "dev"
	CSVLib    CSVKind = "lib"
	CSVSym    CSVKind = "sym"
	CSVFolder CSVKind = "dir"
)

// CSVEntry is one line of an L4T CSV file.
type CSVEntry struct {
	Kind CSVKind
	Path string // absolute, clean
	// Where says file:line, for messages.
	Where string
}

// maxCSVFile bounds what one CSV file may hold.
const maxCSVFile = 1 << 20

// ParseCSV reads one L4T CSV file. Blank lines and # comments are skipped; a line with
// another kind or a relative path is an error that names the file, the line and the
// valid kinds, and the other lines are still returned.
func ParseCSV(name string, data []byte) ([]CSVEntry, []error) {
	var out []CSVEntry
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, maxCSVFile)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		where := fmt.Sprintf("%s:%d", name, n)
		kind, p, ok := strings.Cut(line, ",")
		kind, p = strings.ToLower(strings.TrimSpace(kind)), strings.TrimSpace(p)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: %q is not KIND, PATH (kinds: dev, lib, sym, dir)", where, line))
			continue
		case kind != string(CSVDev) && kind != string(CSVLib) && kind != string(CSVSym) && kind != string(CSVFolder):
			errs = append(errs, fmt.Errorf("%s: unknown kind %q (valid: dev, lib, sym, dir)", where, kind))
			continue
		case !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0):
			errs = append(errs, fmt.Errorf("%s: %q is not an absolute path", where, p))
			continue
		}
		out = append(out, CSVEntry{Kind: CSVKind(kind), Path: path.Clean(p), Where: where})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	return out, errs
}

// IGPU is a Jetson's integrated GPU as L4T's CSV files describe it.
type IGPU struct {
	// CSVFiles are the files read, as host paths.
	CSVFiles []string `json:"csvFiles"`
	// Release is L4T's release (/etc/nv_tegra_release), e.g. "R36.4.3"; empty when unknown.
	Release string       `json:"release,omitempty"`
	Nodes   []DeviceNode `json:"nodes"`
	// Files are the lib entries (libraries, with their SONAME) and dir entries (folders).
	Files []File `json:"files"`
	// Links are the sym entries: container paths that are links on the host.
	Links []SymLink `json:"links,omitempty"`
}

// SymLink is a link to make in the container: Path points to Target, as on the host.
// HostPath is the file it resolves to on this host (for hookless specs).
type SymLink struct {
	Path     string `json:"path"`
	Target   string `json:"target"`
	HostPath string `json:"hostPath"`
}

// KindDir is a folder mounted whole (an L4T dir entry).
const KindDir FileKind = "dir"

// discoverIGPU reads L4T's CSV files under the driver root. Every path is resolved inside
// the driver root; an entry that is missing there or resolves to the wrong kind of file
// is reported and left out. It returns nil when the host has no CSV files.
func (d *Discoverer) discoverIGPU(r rootFS) (*IGPU, []Warning, error) {
	names, err := filepath.Glob(filepath.Join(r.host(CSVDir), "*.csv"))
	if err != nil || len(names) == 0 {
		return nil, nil, nil
	}
	sort.Strings(names)
	ig := &IGPU{}
	var warns []Warning
	warn := func(format string, args ...any) {
		warns = append(warns, Warning{WarnUnrecognised, fmt.Sprintf(format, args...)})
	}
	seen := map[string]bool{}
	for _, name := range names {
		data, err := fileio.ReadFile(name, maxCSVFile)
		if err != nil {
			return nil, nil, err
		}
		ig.CSVFiles = append(ig.CSVFiles, name)
		entries, errs := ParseCSV(name, data)
		for _, e := range errs {
			warn("%v", e)
		}
		for _, e := range entries {
			if seen[string(e.Kind)+e.Path] {
				continue
			}
			seen[string(e.Kind)+e.Path] = true
			switch e.Kind {
			case CSVDev:
				n, ok, err := d.node(strings.TrimPrefix(e.Path, "/dev/"))
				if !strings.HasPrefix(e.Path, "/dev/") {
					warn("%s: device %s is not under /dev: skipped", e.Where, e.Path)
				} else if err != nil {
					warn("%s: device %s: %v: skipped", e.Where, e.Path, err)
				} else if ok {
					ig.Nodes = append(ig.Nodes, n)
				}
				// a node the board does not have (another module's list) is no problem
			case CSVLib:
				real, fi, err := r.stat(e.Path)
				switch {
				case errors.Is(err, fs.ErrNotExist):
					warn("%s: %s is not under the driver root: skipped", e.Where, e.Path)
				case err != nil:
					warn("%s: %s: %v: skipped", e.Where, e.Path, err)
				case !fi.Mode().IsRegular():
					warn("%s: %s is not a file: skipped", e.Where, e.Path)
				default:
					f := File{Kind: KindLibrary, Path: e.Path, HostPath: r.emitPath(real), Capabilities: CapsAll}
					if soname, bits, err := elfInfo(r.host(real)); err == nil {
						f.SONAME, f.Bits = soname, bits
					} else {
						f.Kind = KindConfig // a data file listed as lib (L4T lists a few)
					}
					ig.Files = append(ig.Files, f)
				}
			case CSVFolder:
				real, fi, err := r.stat(e.Path)
				switch {
				case err != nil:
					warn("%s: folder %s: %v: skipped", e.Where, e.Path, err)
				case !fi.IsDir():
					warn("%s: %s is not a folder: skipped", e.Where, e.Path)
				default:
					ig.Files = append(ig.Files, File{Kind: KindDir, Path: e.Path, HostPath: r.emitPath(real), Capabilities: CapsAll})
				}
			case CSVSym:
				target, err := os.Readlink(r.host(e.Path))
				if err != nil {
					warn("%s: %s is not a link: skipped", e.Where, e.Path)
					continue
				}
				// the link must lead to a file inside the driver root, as in the container
				real, _, err := r.stat(e.Path)
				if err != nil {
					warn("%s: link %s -> %s does not resolve inside the driver root: skipped", e.Where, e.Path, target)
					continue
				}
				ig.Links = append(ig.Links, SymLink{Path: e.Path, Target: target, HostPath: r.emitPath(real)})
			}
		}
	}
	for i := range ig.Files {
		ig.Files[i].Caps = ig.Files[i].Capabilities.List()
	}
	if data, err := os.ReadFile(r.host("/etc/nv_tegra_release")); err == nil {
		ig.Release = tegraRelease(data)
	}
	return ig, warns, nil
}

// tegraRelease reads "# R36 (release), REVISION: 4.3, ..." as "R36.4.3".
func tegraRelease(data []byte) string {
	line, _, _ := strings.Cut(string(data), "\n")
	line = strings.TrimSpace(strings.TrimPrefix(line, "#"))
	major, rest, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(major, "R") {
		return ""
	}
	_, rev, ok := strings.Cut(rest, "REVISION:")
	if !ok {
		return major
	}
	rev, _, _ = strings.Cut(rev, ",")
	return major + "." + strings.TrimSpace(rev)
}
