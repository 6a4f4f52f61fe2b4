package ociimage

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// DriverNeeds are the system libraries that the driver libraries nvbind loads with dlopen
// (libnvidia-ml.so.1, and libcuda.so.1 when NVML is absent) link against. nvbind's image
// carries them, since those libraries come from the host's driver root and their
// dependencies are resolved inside the image. The fixtures' tests check this list
// against the real libraries of every supported driver branch.
var DriverNeeds = []string{"libc.so.6", "libdl.so.2", "libm.so.6", "libpthread.so.0", "librt.so.1"}

// Rootfs describes the folder that becomes nvbind's image.
type Rootfs struct {
	// Binaries are copied into /usr/local/bin under their base names.
	Binaries []string
	// Needs are further sonames to carry (DriverNeeds for nvbind's image).
	Needs []string
	// LibDirs are where sonames are looked up, in order: the build host's (or the
	// cross toolchain's) library folders.
	LibDirs []string
	// LibDir is the folder the libraries go to inside the image: the platform's
	// multiarch folder, on the dynamic loader's default path (/lib/x86_64-linux-gnu).
	LibDir string
	// Dirs are empty folders to create: mount points of a read-only root filesystem.
	Dirs []string
	// Links are symbolic links to create, path → target.
	Links map[string]string
}

// Build lays the image out in dst and returns the paths it wrote, relative to dst, sorted.
// Libraries are those the binaries' dynamic sections name, transitively, plus Needs and
// theirs, and each binary's program interpreter at the path it names. Static binaries
// need nothing.
func (r Rootfs) Build(dst string) ([]string, error) {
	var wrote []string
	put := func(rel, src string, mode os.FileMode) error {
		data, err := os.ReadFile(src) //nolint:gosec // build input chosen by the caller
		if err != nil {
			return err
		}
		p := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil { //nolint:gosec // image folders are world-readable
			return err
		}
		if err := os.WriteFile(p, data, mode); err != nil { //nolint:gosec // image files are world-readable
			return err
		}
		wrote = append(wrote, rel)
		return nil
	}
	queue := slices.Clone(r.Needs)
	for _, b := range r.Binaries {
		if err := put(path.Join("usr/local/bin", filepath.Base(b)), b, 0o755); err != nil {
			return nil, err
		}
		needed, interp, err := dynamic(b)
		if err != nil {
			return nil, err
		}
		queue = append(queue, needed...)
		if interp != "" && !slices.Contains(wrote, strings.TrimPrefix(interp, "/")) {
			// the host's own loader, or, for another architecture, the cross toolchain's
			src := interp
			if _, err := os.Stat(src); err != nil {
				if src, err = r.find(path.Base(interp)); err != nil {
					return nil, fmt.Errorf("program interpreter of %s: %w", b, err)
				}
			}
			if err := put(strings.TrimPrefix(interp, "/"), src, 0o755); err != nil {
				return nil, fmt.Errorf("program interpreter of %s: %w", b, err)
			}
		}
	}
	done := map[string]bool{}
	for len(queue) > 0 {
		soname := queue[0]
		queue = queue[1:]
		if done[soname] {
			continue
		}
		done[soname] = true
		src, err := r.find(soname)
		if err != nil {
			return nil, err
		}
		rel := path.Join(strings.TrimPrefix(r.LibDir, "/"), soname)
		if !slices.Contains(wrote, rel) {
			if err := put(rel, src, 0o755); err != nil {
				return nil, err
			}
		}
		needed, _, err := dynamic(src)
		if err != nil {
			return nil, err
		}
		queue = append(queue, needed...)
	}
	for _, d := range r.Dirs {
		if err := os.MkdirAll(filepath.Join(dst, d), 0o755); err != nil { //nolint:gosec // mount points
			return nil, err
		}
	}
	for p, target := range r.Links {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, p)), 0o755); err != nil { //nolint:gosec // image folders
			return nil, err
		}
		if err := os.Symlink(target, filepath.Join(dst, p)); err != nil {
			return nil, err
		}
		wrote = append(wrote, p)
	}
	slices.Sort(wrote)
	return wrote, nil
}

func (r Rootfs) find(soname string) (string, error) {
	for _, d := range r.LibDirs {
		p := filepath.Join(d, soname)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("library %s not found in %s", soname, strings.Join(r.LibDirs, ", "))
}

// dynamic returns an ELF file's DT_NEEDED entries and program interpreter; both are
// empty for a static binary.
func dynamic(p string) ([]string, string, error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, "", fmt.Errorf("read ELF %s: %w", p, err)
	}
	defer func() { _ = f.Close() }()
	needed, err := f.ImportedLibraries()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, "", fmt.Errorf("dynamic section of %s: %w", p, err)
	}
	interp := ""
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				return nil, "", fmt.Errorf("program interpreter of %s: %w", p, err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	return needed, interp, nil
}

// Needed is the DT_NEEDED list of an ELF file.
func Needed(p string) ([]string, error) {
	n, _, err := dynamic(p)
	return n, err
}
