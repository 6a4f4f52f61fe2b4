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
// and ".." never climbs above it. Debian's /etc/alternatives links need this.
type rootFS struct {
	root string // where the tree is read
	emit string // where the host sees it (differs when nvbind runs in a container)
}

func newRootFS(read, host string) rootFS {
	return rootFS{root: filepath.Clean(read), emit: filepath.Clean(host)}
}

// emit turns a rooted path into the path the host sees, for specs and adjustments.
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
	hops := 0
	todo := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
	cur := "/"
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		fi, err := os.Lstat(r.host(next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		hops++
		if hops > maxLinkHops {
			return "", fmt.Errorf("resolve %s: %w", p, errLinkLoop)
		}
		target, err := os.Readlink(r.host(next))
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return cur, nil
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
