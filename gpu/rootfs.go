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
	root string // where the tree is read
	emit string // where the host sees it (differs when nvbind runs in a container)
	dirs map[string]string
}

func newRootFS(read, host string) rootFS {
	return rootFS{root: filepath.Clean(read), emit: filepath.Clean(host), dirs: map[string]string{}}
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
func (r rootFS) resolve(p string) (string, error) { return r.resolveN(p, 0) }

func (r rootFS) resolveN(p string, hops int) (string, error) {
	p = path.Clean("/" + p)
	if p == "/" {
		return "/", nil
	}
	dir, err := r.resolveDir(path.Dir(p), hops)
	if err != nil {
		return "", err
	}
	next := path.Join(dir, path.Base(p))
	fi, err := os.Lstat(r.host(next))
	if err != nil {
		return "", err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		return next, nil
	}
	if hops++; hops > maxLinkHops {
		return "", fmt.Errorf("resolve %s: %w", p, errLinkLoop)
	}
	target, err := os.Readlink(r.host(next))
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(target, "/") {
		// dir has no links left in it, so ".." can be cleaned lexically
		target = path.Join(dir, target)
	}
	return r.resolveN(target, hops)
}

func (r rootFS) resolveDir(dir string, hops int) (string, error) {
	if dir == "/" {
		return "/", nil
	}
	if v, ok := r.dirs[dir]; ok {
		return v, nil
	}
	v, err := r.resolveN(dir, hops)
	if err != nil {
		return "", err
	}
	if r.dirs != nil {
		r.dirs[dir] = v
	}
	return v, nil
}

// stat resolves p inside the root and stats the result.
func (r rootFS) stat(p string) (string, fs.FileInfo, error) {
	real, err := r.resolve(p)
	if err != nil {
		return "", nil, err
	}
	fi, err := os.Stat(r.host(real))
	return real, fi, err
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
