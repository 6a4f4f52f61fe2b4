package gpu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
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
// since it is no link; or why there is none.
type resolved struct {
	real string
	fi   fs.FileInfo
	err  error
}

func (r rootFS) resolveN(p string, hops int) (string, fs.FileInfo, error) {
	p = path.Clean("/" + p)
	if v, ok := r.dirs[p]; ok {
		return v.real, v.fi, v.err
	}
	if p == "/" {
		fi, err := os.Stat(r.host("/"))
		r.remember(p, resolved{"/", fi, err})
		return "/", fi, err
	}
	dir, err := r.resolveDir(path.Dir(p), hops)
	if err != nil {
		r.rememberMissing(p, err)
		return "", nil, err
	}
	next := path.Join(dir, path.Base(p))
	fi, err := os.Lstat(r.host(next))
	if err != nil {
		r.rememberMissing(p, err)
		return "", nil, err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		r.remember(p, resolved{next, fi, nil})
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
		r.remember(p, resolved{real, rfi, nil})
	} else {
		r.rememberMissing(p, err)
	}
	return real, rfi, err
}

// remember caches a resolution for the rest of one discovery: drivers link many names
// through the same folders and alternatives, and look for their files in folders that
// many hosts lack (/usr/local/bin, /sbin).
func (r rootFS) remember(p string, v resolved) {
	if r.dirs != nil {
		r.dirs[p] = v
	}
}

// rememberMissing caches a failed resolution whose cause is a missing file or folder,
// which a second look would meet again (a link loop depends on the links followed
// before, and other errors may pass).
func (r rootFS) rememberMissing(p string, err error) {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		r.remember(p, resolved{err: err})
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
