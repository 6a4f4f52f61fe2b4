package hook

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/internal/ldcache"
)

// errNeedLDConfig means the image's cache uses features the merge does not reproduce
// (an old-format-only cache, glibc-hwcaps entries): ldconfig has to rebuild it.
var errNeedLDConfig = errors.New("the image's ld cache needs ldconfig")

// mergeLDCache builds the container's new ld.so.cache without running a program: the
// entries ldconfig would file for the injected folders (scanned inside the root), ahead of
// the image's own cache entries, in the loader's order. It returns errNeedLDConfig when
// the image's cache cannot be merged faithfully.
func mergeLDCache(r *containerRoot, folders []string) ([]byte, error) {
	var image []ldcache.Entry
	data, err := r.readFile("/etc/ld.so.cache", ldcache.MaxSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, errors.Join(errNeedLDConfig, err)
	default:
		if image, err = ldcache.Parse(data); err != nil {
			return nil, errors.Join(errNeedLDConfig, err)
		}
		for _, e := range image {
			if e.HWCap != 0 {
				return nil, fmt.Errorf("%w: hwcap entries", errNeedLDConfig)
			}
		}
	}
	var ours []ldcache.Entry
	for _, dir := range folders {
		es, err := scanFolder(r, dir)
		if err != nil {
			return nil, err
		}
		ours = append(ours, es...)
	}
	merged := ours
	for _, e := range image {
		if !slices.ContainsFunc(ours, func(o ldcache.Entry) bool { return o.Name == e.Name && o.Path == e.Path }) {
			merged = append(merged, e)
		}
	}
	ldcache.Sort(merged)
	return ldcache.Encode(merged), nil
}

// scanFolder lists the libraries ldconfig would file from one folder of the root.
func scanFolder(r *containerRoot, dir string) ([]ldcache.Entry, error) {
	names, err := r.readDirNames(dir)
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
