package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
	"tags.cncf.io/container-device-interface/pkg/parser"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/internal/fileio"
)

// yamlMarker opens every YAML spec nvbind writes. With the hook's arguments of JSON specs
// it is how nvbind knows its own specs: the ones its writers replace and uninstall removes.
const yamlMarker = "# written by nvbind, which keeps one spec file per kind: it replaces and removes this file itself\n"

// writerPrefix starts the YAML spec's second line, which names its writer (Options.Writer).
const writerPrefix = "# writer: "

// Budgets of a spec folder's scan: the folder is root's, but a runtime reads every file in
// it, and so do nvbind's writers and doctor.
const (
	maxSpecFiles    = 4096
	maxSpecFileSize = 32 << 20
)

// SpecFile is one spec file in a CDI spec folder, as nvbind's writers and doctor see it.
type SpecFile struct {
	Path string
	Kind string
	// Own tells a spec nvbind wrote: a YAML spec under nvbind's first line, or one whose
	// hooks run nvbind's hook ("nvbind-hook hook ..."). A symbolic link is never own:
	// nvbind neither moves nor removes what a link points at.
	Own bool
	// Link tells a symbolic link (which the CDI library follows).
	Link bool
	// Writer is the nvbind command that wrote it, when its YAML says.
	Writer string
	// HookPath is the path of the nvbind hook it runs, if any.
	HookPath string
	// Devices are the names of its devices.
	Devices []string
}

// ScanDir lists the spec files of a CDI spec folder as the CDI library reads them: every
// entry that is not a folder and whose name ends in .json or .yaml (hidden ones and links
// included), in name order. A missing folder holds none. A file that does not parse as a
// spec is left out, with its error joined into the returned one, next to the files read.
func ScanDir(dir string) ([]SpecFile, error) { return scanDir(dir, "") }

// scanDir is ScanDir, except that the file at replaced (the spec Install writes over,
// never moved), when it is a YAML spec under nvbind's first line, is read for its kind and
// writer only (what Install reports of it), without parsing it, where its top-level kind
// line is as nvbind writes it. Every other file is parsed: a kind misread there could move
// another kind's spec or hide a conflict.
func scanDir(dir, replaced string) ([]SpecFile, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(ents) > maxSpecFiles {
		return nil, fmt.Errorf("CDI spec folder %s holds %d entries, more than %d", dir, len(ents), maxSpecFiles)
	}
	var out []SpecFile
	var errs []error
	for _, e := range ents {
		if ext := filepath.Ext(e.Name()); (ext != ".json" && ext != ".yaml") || e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		// a link is no spec of nvbind's own (below): its devices are needed
		sf, err := readSpecFile(p, p == replaced && e.Type()&fs.ModeSymlink == 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if e.Type()&fs.ModeSymlink != 0 {
			sf.Link, sf.Own = true, false
		}
		out = append(out, sf)
	}
	return out, errors.Join(errs...)
}

func readSpecFile(p string, kindsOnly bool) (SpecFile, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return SpecFile{}, err
	}
	if fi.IsDir() {
		return SpecFile{}, fmt.Errorf("%s: a folder", p)
	}
	if !fi.Mode().IsRegular() {
		return SpecFile{}, fmt.Errorf("%s: not a regular file", p) // a FIFO would block the read
	}
	data, err := fileio.ReadFile(p, maxSpecFileSize)
	if err != nil {
		return SpecFile{}, err
	}
	if kindsOnly && bytes.HasPrefix(data, []byte(yamlMarker)) {
		if kind := topLevelKind(data); kind != "" {
			return SpecFile{Path: p, Kind: kind, Own: true, Writer: writerOf(data)}, nil
		}
	}
	var s cdispecs.Spec
	if err := yaml.Unmarshal(data, &s); err != nil {
		return SpecFile{}, fmt.Errorf("%s: %w", p, err)
	}
	if s.Kind == "" {
		return SpecFile{}, fmt.Errorf("%s: no kind", p)
	}
	hook := ourHook(&s)
	sf := SpecFile{Path: p, Kind: s.Kind, Own: bytes.HasPrefix(data, []byte(yamlMarker)) || hook != "", HookPath: hook, Writer: writerOf(data)}
	for _, d := range s.Devices {
		sf.Devices = append(sf.Devices, d.Name)
	}
	return sf, nil
}

// writerOf is the writer a YAML spec of nvbind's names on its second line, or "".
func writerOf(data []byte) string {
	if rest, ok := bytes.CutPrefix(data, []byte(yamlMarker+writerPrefix)); ok {
		if line, _, ok := bytes.Cut(rest, []byte("\n")); ok && len(line) <= 256 {
			return string(line)
		}
	}
	return ""
}

// topLevelKind is the kind of a YAML spec as nvbind writes it: one top-level line
// "kind: vendor/class", unquoted, of a valid CDI kind; "" when there is not exactly one
// such line (the spec is parsed then).
func topLevelKind(data []byte) string {
	var kind string
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		v, ok := bytes.CutPrefix(line, []byte("kind:"))
		if !ok {
			continue
		}
		if kind != "" {
			return ""
		}
		kind = string(bytes.TrimSpace(v))
		if vendor, class, ok := strings.Cut(kind, "/"); !ok || parser.ValidateVendorName(vendor) != nil || parser.ValidateClassName(class) != nil {
			return ""
		}
	}
	return kind
}

// ourHook returns the path of the nvbind hook a spec runs ("" for none): a hook with the
// arguments "<program> hook all ...", as Edits.ToCDI writes them whatever the hook's name
// (nvbind-hook, nvbind, or a link under another name); NVIDIA's hooks take "hook <action>"
// or "<action>".
func ourHook(s *cdispecs.Spec) string {
	ours := func(e cdispecs.ContainerEdits) string {
		for _, h := range e.Hooks {
			if h != nil && len(h.Args) >= 3 && h.Args[1] == "hook" && h.Args[2] == "all" {
				return h.Path
			}
		}
		return ""
	}
	if p := ours(s.ContainerEdits); p != "" {
		return p
	}
	for _, d := range s.Devices {
		if p := ours(d.ContainerEdits); p != "" {
			return p
		}
	}
	return ""
}

// Install writes a spec to dst as WriteFile does, so that the folder then holds one spec
// of its kind written by nvbind. Once the new spec is written and valid, nvbind's own
// specs of the kind under other names are moved onto dst (renames: at no moment do two of
// them define the kind, which would make runtimes refuse their devices), and then dst is
// replaced by the new spec; a spec that fails validation moves nothing. Where there is
// nothing to move and dst already holds the spec, dst stays as it is (Unchanged). Specs of the
// kind that nvbind did not write stay: those that define one of its devices are reported
// in Foreign. Files of the folder that cannot be read are reported in Unreadable and never
// stop the write.
//
// writer names who writes (Options.Writer): an nvbind spec of the kind that another
// writer wrote, replaced here, is reported in Others, since two writers of one kind take
// turns in its one file.
func Install(s *cdispecs.Spec, dst string, f Format, writer string) (Written, error) {
	dst = filepath.Clean(dst)
	w := Written{Path: dst, Spec: s}
	files, err := scanDir(filepath.Dir(dst), dst)
	if err != nil {
		w.Unreadable = err
	}
	names := map[string]bool{}
	for _, d := range s.Devices {
		names[d.Name] = true
	}
	var moves []string
	for _, sf := range files {
		if sf.Kind != s.Kind {
			continue
		}
		if sf.Own && writer != "" && sf.Writer != "" && sf.Writer != writer && !slices.Contains(w.Others, sf.Writer) {
			w.Others = append(w.Others, sf.Writer)
		}
		if sf.Path == dst {
			continue
		}
		if sf.Own {
			moves = append(moves, sf.Path)
		} else if slices.ContainsFunc(sf.Devices, func(n string) bool { return names[n] }) {
			w.Foreign = append(w.Foreign, sf.Path)
		}
	}
	var move func() error
	if len(moves) > 0 {
		move = func() error {
			for _, p := range moves {
				if err := os.Rename(p, dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("replace nvbind's spec %s of %s by %s: %w", p, s.Kind, dst, err)
				}
				w.Replaced = append(w.Replaced, p)
			}
			return nil
		}
	}
	changed, err := writeFile(s, dst, f, writer, move)
	w.Unchanged = err == nil && !changed
	return w, err
}

// RemoveOwn removes nvbind's own specs from a CDI spec folder for which which, when set,
// says yes, and returns their paths. Specs nvbind did not write stay.
func RemoveOwn(dir string, which func(SpecFile) bool) ([]string, error) {
	files, err := ScanDir(dir)
	var gone []string
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, sf := range files {
		if !sf.Own || (which != nil && !which(sf)) {
			continue
		}
		if err := os.Remove(sf.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, sf.Path)
	}
	return gone, errors.Join(errs...)
}

// Conflict is a device that more than one spec of a folder defines: the CDI library
// (every runtime) then refuses the device.
type Conflict struct {
	Dir, Kind string
	// Files are the kind's spec files in Dir; Devices the names more than one defines.
	Files   []SpecFile
	Devices []string
}

// Conflicts finds, in each folder, the kinds whose devices are defined by more than one
// spec file; CDI resolves a device found in two folders by the folders' order, but two
// files of one folder conflict.
func Conflicts(dirs []string) ([]Conflict, error) {
	var out []Conflict
	var errs []error
	for _, dir := range dirs {
		files, err := ScanDir(dir)
		if err != nil {
			errs = append(errs, err)
		}
		byDevice := map[string][]SpecFile{}
		for _, sf := range files {
			for _, d := range sf.Devices {
				name := sf.Kind + "=" + d
				if n := len(byDevice[name]); n == 0 || byDevice[name][n-1].Path != sf.Path {
					byDevice[name] = append(byDevice[name], sf)
				}
			}
		}
		shared := map[string][]string{} // by kind, the names more than one file defines
		for name, with := range byDevice {
			if len(with) > 1 {
				shared[with[0].Kind] = append(shared[with[0].Kind], strings.SplitN(name, "=", 2)[1])
			}
		}
		for kind, devs := range shared {
			var all []SpecFile
			for _, o := range files {
				if o.Kind == kind {
					all = append(all, o)
				}
			}
			sort.Strings(devs)
			out = append(out, Conflict{Dir: dir, Kind: kind, Files: all, Devices: devs})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Dir+out[i].Kind < out[j].Dir+out[j].Kind })
	return out, errors.Join(errs...)
}

// Log logs what writing the spec replaced, and the specs of its kind it had to leave.
func (w Written) Log(log *slog.Logger) {
	for _, r := range w.Replaced {
		log.Info("nvbind's spec of the kind under another name replaced: one spec file per kind", "path", r, "by", w.Path)
	}
	for _, c := range w.Foreign {
		log.Warn("a spec nvbind did not write defines devices of the same kind: runtimes refuse those devices while both are there; remove it",
			"path", c, "kind", w.Spec.Kind)
	}
	for _, o := range w.Others {
		log.Warn("replaced the spec another nvbind writer keeps: two writers of one kind on a host take turns in its one file; run one of them",
			"path", w.Path, "kind", w.Spec.Kind, "other", o)
	}
	if w.Unreadable != nil {
		log.Warn("spec files of the folder could not be read (runtimes skip them too)", "folder", filepath.Dir(w.Path), slog.Any("error", w.Unreadable))
	}
}
