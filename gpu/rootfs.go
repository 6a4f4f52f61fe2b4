package gpu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// maxLinkHops bounds symlink resolution, as the kernel does (ELOOP after 40).
const maxLinkHops = 40

var errLinkLoop = errors.New("too many levels of symbolic links")

// rootFS reads a tree as if it were mounted at "/": absolute links resolve under the root
// and ".." never climbs above it. Debian's /etc/alternatives links need this. Resolved
// folders are remembered for the life of the value (one discovery).
type rootFS struct {
	root string              // where the tree is read
	emit string              // where the host sees it (differs when nvbind runs in a container)
	dirs map[string]resolved // resolutions so far (nil: none kept)
}

func newRootFS(read, host string) rootFS {
	return rootFS{root: filepath.Clean(read), emit: filepath.Clean(host), dirs: map[string]resolved{}}
}

// emitPath turns a rooted path into the path the host sees, for specs and adjustments.
func (r rootFS) emitPath(p string) string {
	return rootFS{root: r.emit}.host(p)
}

// host turns a rooted path into a path on this host.
func (r rootFS) host(p string) string {
	if r.root == "/" {
		return path.Clean("/" + p)
	}
	return filepath.Join(r.root, path.Clean("/"+p))
}

// resolve follows every link in p (a rooted path) inside the root and returns the rooted
// path of the final file.
func (r rootFS) resolve(p string) (string, error) {
	real, _, err := r.resolveN(p, 0)
	return real, err
}

// resolved is a path's resolution: the rooted real path and its Lstat, which is its Stat
// since it is no link.
type resolved struct {
	real string
	fi   fs.FileInfo
}

func (r rootFS) resolveN(p string, hops int) (string, fs.FileInfo, error) {
	p = path.Clean("/" + p)
	if p == "/" {
		fi, err := os.Stat(r.host("/"))
		return "/", fi, err
	}
	if v, ok := r.dirs[p]; ok {
		return v.real, v.fi, nil
	}
	dir, err := r.resolveDir(path.Dir(p), hops)
	if err != nil {
		return "", nil, err
	}
	next := path.Join(dir, path.Base(p))
	fi, err := os.Lstat(r.host(next))
	if err != nil {
		return "", nil, err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		r.remember(p, next, fi)
		return next, fi, nil
	}
	if hops++; hops > maxLinkHops {
		return "", nil, fmt.Errorf("resolve %s: %w", p, errLinkLoop)
	}
	target, err := os.Readlink(r.host(next))
	if err != nil {
		return "", nil, err
	}
	if !strings.HasPrefix(target, "/") {
		// dir has no links left in it, so ".." can be cleaned lexically
		target = path.Join(dir, target)
	}
	real, rfi, err := r.resolveN(target, hops)
	if err == nil {
		r.remember(p, real, rfi)
	}
	return real, rfi, err
}

// remember caches a resolution for the rest of one discovery: drivers link many names
// through the same folders and alternatives.
func (r rootFS) remember(p, real string, fi fs.FileInfo) {
	if r.dirs != nil {
		r.dirs[p] = resolved{real, fi}
	}
}

func (r rootFS) resolveDir(dir string, hops int) (string, error) {
	real, _, err := r.resolveN(dir, hops)
	return real, err
}

// stat resolves p inside the root and stats the result.
func (r rootFS) stat(p string) (string, fs.FileInfo, error) {
	return r.resolveN(p, 0)
}

// readDir lists a rooted directory; a missing directory is empty.
func (r rootFS) readDir(dir string) []fs.DirEntry {
	real, err := r.resolve(dir)
	if err != nil {
		return nil
	}
	ents, err := os.ReadDir(r.host(real))
	if err != nil {
		return nil
	}
	return ents
}
