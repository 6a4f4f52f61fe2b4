package hook

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
)

// Budgets of reading an image's ld.so.conf (and what it includes), which the hook does
// only to build a fresh cache for an image whose own cache is unusable.
const (
	// maxConfSize bounds one configuration file.
	maxConfSize = 64 << 10
	// maxConfFiles bounds the files read, includes and glob matches together.
	maxConfFiles = 64
	// maxConfDepth bounds nested includes.
	maxConfDepth = 8
	// maxConfDirs bounds the folders the files name.
	maxConfDirs = 256
)

// ldSoConf is one ld.so.conf file, parsed: the folders it names and the patterns it
// includes, in order.
type ldSoConf struct {
	dirs, includes []string
}

// parseLDSoConf parses an ld.so.conf file as glibc's ldconfig does: "#" starts a comment,
// "include" takes blank-separated glob patterns, "hwcap" lines are ignored, and any other
// line names a folder (an old "=TYPE" suffix and trailing slashes dropped). Relative
// folders, which ldconfig refuses too, are left out. Linear in the input.
func parseLDSoConf(data []byte) ldSoConf {
	var c ldSoConf
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if i := bytes.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = bytes.TrimSpace(line)
		switch {
		case len(line) == 0:
		case isDirective(line, "include"):
			c.includes = append(c.includes, strings.FieldsFunc(string(line[len("include"):]), isBlank)...)
		case isDirective(bytes.ToLower(line), "hwcap"):
		default:
			d, _, _ := strings.Cut(string(line), "=")
			d = strings.TrimSpace(d)
			if strings.HasPrefix(d, "/") && !strings.ContainsRune(d, 0) {
				c.dirs = append(c.dirs, path.Clean(d))
			}
		}
	}
	return c
}

func isDirective(line []byte, name string) bool {
	return len(line) > len(name) && string(line[:len(name)]) == name && isBlank(rune(line[len(name)]))
}

func isBlank(r rune) bool { return r == ' ' || r == '\t' }

// errConfBudget means the image's ld.so.conf files go beyond the hook's budget.
var errConfBudget = errors.New("the image's ld.so.conf files exceed the hook's budget")

// readLDSoConf returns the folders the image's /etc/ld.so.conf names, following its
// includes inside the root, in ldconfig's order, without duplicates. A missing file names
// none.
func readLDSoConf(r *containerRoot) ([]string, error) {
	w := confWalk{r: r, seen: map[string]bool{}}
	if err := w.file("/etc/ld.so.conf", 0); err != nil {
		return nil, err
	}
	return w.dirs, nil
}

type confWalk struct {
	r     *containerRoot
	seen  map[string]bool
	files int
	dirs  []string
}

func (w *confWalk) file(p string, depth int) error {
	if w.seen[p] {
		return nil // an include cycle: ldconfig would loop, the hook reads each file once
	}
	w.seen[p] = true
	if w.files++; w.files > maxConfFiles {
		return fmt.Errorf("%w: more than %d files", errConfBudget, maxConfFiles)
	}
	data, err := w.r.readFile(p, maxConfSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		// a FIFO, a folder, a file too large: ldconfig would complain and go on
		return nil
	}
	c := parseLDSoConf(data)
	for _, d := range c.dirs {
		if !slices.Contains(w.dirs, d) {
			if len(w.dirs) >= maxConfDirs {
				return fmt.Errorf("%w: more than %d folders", errConfBudget, maxConfDirs)
			}
			w.dirs = append(w.dirs, d)
		}
	}
	for _, pattern := range c.includes {
		if depth+1 > maxConfDepth {
			return fmt.Errorf("%w: includes nested deeper than %d", errConfBudget, maxConfDepth)
		}
		if !strings.HasPrefix(pattern, "/") {
			pattern = path.Join(path.Dir(p), pattern)
		}
		matches, err := w.glob(path.Clean(pattern))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if err := w.file(m, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// glob expands an absolute pattern inside the root, one path component at a time, as
// glob(3) does (sorted; names starting with "." only for patterns that do).
func (w *confWalk) glob(pattern string) ([]string, error) {
	out := []string{"/"}
	for _, comp := range strings.Split(strings.TrimPrefix(pattern, "/"), "/") {
		var next []string
		for _, dir := range out {
			if !strings.ContainsAny(comp, `*?[\`) {
				next = append(next, path.Join(dir, comp))
				continue
			}
			if _, err := path.Match(comp, ""); err != nil {
				return nil, nil // a bad pattern matches nothing
			}
			names, err := w.r.readDirNames(dir, maxFolderEntries)
			if err != nil {
				continue
			}
			slices.Sort(names)
			for _, n := range names {
				if strings.HasPrefix(n, ".") && !strings.HasPrefix(comp, ".") {
					continue
				}
				if ok, _ := path.Match(comp, n); ok {
					next = append(next, path.Join(dir, n))
				}
			}
		}
		if len(next) > maxConfFiles {
			return nil, fmt.Errorf("%w: an include matches more than %d files", errConfBudget, maxConfFiles)
		}
		out = next
	}
	return out, nil
}
