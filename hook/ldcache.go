package hook

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/internal/ldcache"
)

// Budgets of the ld cache update, whose inputs (the image's cache, its ld.so.conf files
// and library folders) the image controls. Beyond them the hook stops with a short error
// (the container does not start) rather than spend memory or time on the host.
const (
	// maxFolderEntries bounds the names read from one library folder.
	maxFolderEntries = 1 << 16
	// maxLibraries bounds the libraries a fresh cache files (ldcache.MaxEntries bounds
	// the image's own cache).
	maxLibraries = ldcache.MaxEntries
)

// updateLDCache writes the container's /etc/ld.so.cache without running any program: the
// entries ldconfig would file for the injected folders (scanned inside the root), ahead of
// the image's own cache entries, in the loader's order. An image cache that cannot be read
// (not a regular file, too large, not a cache glibc writes) is replaced by a fresh cache of
// the injected folders, the folders the image's ld.so.conf names and the loader's default
// folders, all scanned by the hook inside the root; the log says so. Where the image has
// /etc/ld.so.conf.d, the folders are also written there, so an ldconfig run inside the
// container keeps them.
//
// With the entries of a driver layout's ld cache (of the folders after compat), the
// folders' entries come from it instead of from each library.
func updateLDCache(r *containerRoot, folders []string, compat string, in ldInputs, log io.Writer) error {
	for _, f := range folders {
		if _, _, err := cleanAbs(f); err != nil {
			return err
		}
	}
	if _, err := r.dir("/etc", true); err != nil {
		return err
	}
	if r.isDir("/etc/ld.so.conf.d") {
		conf := "# written by nvbind hook: NVIDIA driver libraries\n" + strings.Join(folders, "\n") + "\n"
		if err := r.writeFile("/etc/ld.so.conf.d/00-nvbind.conf", []byte(conf)); err != nil {
			return err
		}
	}
	image, err := in.image, in.imageErr
	if err != nil {
		// the image's cache is unusable, so the loader ignored it: a fresh cache loses
		// nothing the image had working
		fmt.Fprintf(log, "update-ldcache: the image's /etc/ld.so.cache is unusable (%v): writing a fresh cache of the image's folders\n", err)
		image, err = freshCache(r, folders)
		if err != nil {
			return err
		}
	}
	ours, err := folderEntries(r, folders, compat, in)
	if err != nil {
		return err
	}
	return r.writeFile("/etc/ld.so.cache", ldcache.Encode(merge(ours, image)))
}

// ldInputs is what the ld cache update reads of the image and of the layout.
type ldInputs struct {
	image    []ldcache.Entry
	imageErr error
	// listed are the entries file's, when it is a cache the hook can read (listedOK)
	listed   []ldcache.Entry
	listedOK bool
}

// readLDInputs reads the image's cache and the layout's entries file (a file that is not a
// cache the hook can read is left: the folders are scanned then).
func readLDInputs(r *containerRoot, entries string) ldInputs {
	var in ldInputs
	in.image, in.imageErr = readImageCache(r)
	if entries == "" {
		return in
	}
	if data, err := r.readFile(entries, ldcache.MaxSize); err == nil {
		if listed, err := ldcache.Parse(data); err == nil {
			in.listed, in.listedOK = listed, true
		}
	}
	return in
}

// folderEntries lists the libraries of the folders: the compat folder's scanned, then the
// others' from the layout's entries where they were read, else scanned.
func folderEntries(r *containerRoot, folders []string, compat string, in ldInputs) ([]ldcache.Entry, error) {
	if !in.listedOK {
		return scanFolders(r, folders)
	}
	var out []ldcache.Entry
	if compat != "" {
		var err error
		if out, err = scanFolder(r, compat); err != nil {
			return nil, err
		}
	}
	if len(out)+len(in.listed) > maxLibraries {
		return nil, fmt.Errorf("more than %d libraries in the ld cache's folders", maxLibraries)
	}
	return append(out, in.listed...), nil
}

// LibraryEntries are the ld cache entries ldconfig would file for the folders of the tree
// at root (paths inside it, in order), with prefix before each path: what a driver
// layout, mounted at prefix in containers, holds for the hook's --folder-entries.
func LibraryEntries(root, prefix string, folders []string) ([]ldcache.Entry, error) {
	r, err := openRoot(root)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Close() }()
	es, err := scanFolders(r, folders)
	if err != nil {
		return nil, err
	}
	for i := range es {
		es[i].Path = path.Join(prefix, es[i].Path)
	}
	return es, nil
}

// readImageCache reads the image's own cache; a missing cache is empty.
func readImageCache(r *containerRoot) ([]ldcache.Entry, error) {
	data, err := r.readFile("/etc/ld.so.cache", ldcache.MaxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ldcache.Parse(data)
}

// merge puts ours ahead of the image's entries (an entry of both is kept once) in the
// loader's order: entries that tie keep their order, which is their priority.
func merge(ours, image []ldcache.Entry) []ldcache.Entry {
	type key struct{ name, path, hwcaps string }
	have := make(map[key]bool, len(ours))
	for _, e := range ours {
		have[key{e.Name, e.Path, e.HWCaps}] = true
	}
	merged := slices.Grow(slices.Clip(ours), len(image))
	for _, e := range image {
		if !have[key{e.Name, e.Path, e.HWCaps}] {
			merged = append(merged, e)
		}
	}
	ldcache.Sort(merged)
	return merged
}

// freshCache builds the cache ldconfig would build from the image's configuration, by the
// hook's own code: the folders its ld.so.conf names (read inside the root, within
// ldSoConfBudget) and the loader's default folders. The injected folders are left to the
// caller.
func freshCache(r *containerRoot, injected []string) ([]ldcache.Entry, error) {
	conf, err := readLDSoConf(r)
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, d := range append(conf, imageLibDirs...) {
		if !slices.Contains(injected, d) && !slices.Contains(dirs, d) && r.isDir(d) {
			dirs = append(dirs, d)
		}
	}
	return scanFolders(r, dirs)
}

// scanFolders lists the libraries ldconfig would file from the folders, in order.
func scanFolders(r *containerRoot, dirs []string) ([]ldcache.Entry, error) {
	var out []ldcache.Entry
	for _, dir := range dirs {
		es, err := scanFolder(r, dir)
		if err != nil {
			return nil, err
		}
		if len(out)+len(es) > maxLibraries {
			return nil, fmt.Errorf("more than %d libraries in the ld cache's folders", maxLibraries)
		}
		out = append(out, es...)
	}
	return out, nil
}

// scanFolder lists the libraries ldconfig would file from one folder of the root.
func scanFolder(r *containerRoot, dir string) ([]ldcache.Entry, error) {
	names, err := r.readDirNames(dir, maxFolderEntries)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	h, err := r.dir(dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var out []ldcache.Entry
	seen := map[string]bool{}
	for _, name := range names {
		if !ldcache.IsDSOName(name) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(int(h.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
		if !isLink && st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		soname, flags, ok := elfLibrary(r, path.Join(dir, name))
		if !ok {
			continue
		}
		key := ldcache.Key(name, isLink, soname)
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, ldcache.Entry{Name: key, Path: path.Join(dir, key), Flags: flags})
	}
	return out, nil
}

// elfLibrary reads a shared library's SONAME and cache flags, resolving p inside the root.
func elfLibrary(r *containerRoot, p string) (string, int32, bool) {
	f, err := r.openRead(p)
	if err != nil {
		return "", 0, false
	}
	defer func() { _ = f.Close() }()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return "", 0, false
	}
	lib, err := ldcache.ReadLibrary(f)
	if err != nil {
		return "", 0, false
	}
	flags, ok := ldcache.Flags(lib.Class, lib.Machine)
	return lib.SONAME, flags, ok
}
