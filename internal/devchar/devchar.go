// Package devchar keeps /dev/char/<major>:<minor> links for NVIDIA's device nodes.
//
// With systemd's cgroup driver, runc gives each container's unit DeviceAllow= rules that
// name its devices as /dev/char/<major>:<minor>. systemd resolves those paths again on
// every `systemctl daemon-reload`; a device without such a link (udev makes none for the
// nodes NVIDIA's driver creates itself) is then dropped from the container's allow list,
// and CUDA fails in running containers with "Failed to initialize NVML: Unknown Error".
package devchar

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/gpu"
)

// Link is one /dev/char link: Path (/dev/char/195:0) points to Target (../nvidia0).
type Link struct {
	Path, Target string
}

// Links are the links every NVIDIA node of the inventory needs: control nodes, GPUs,
// MIG capability and control nodes, IMEX channels. DRM nodes have udev's.
func Links(inv *gpu.Inventory) []Link {
	var nodes []gpu.DeviceNode
	nodes = append(nodes, inv.ControlNodes...)
	for _, d := range inv.Devices {
		nodes = append(nodes, d.Node)
		for _, m := range d.MIG {
			nodes = append(nodes, m.Caps...)
		}
	}
	nodes = append(nodes, inv.MIGControl...)
	nodes = append(nodes, inv.IMEXChannels...)
	var out []Link
	for _, n := range nodes {
		if n.Path == "" || n.Major == 0 && n.Minor == 0 {
			continue
		}
		p := "/dev/char/" + strconv.FormatInt(n.Major, 10) + ":" + strconv.FormatInt(n.Minor, 10)
		rel, err := filepath.Rel("/dev/char", n.Path)
		if err != nil || slices.ContainsFunc(out, func(l Link) bool { return l.Path == p }) {
			continue
		}
		out = append(out, Link{Path: p, Target: rel})
	}
	return out
}

// State says how a link stands on the host.
type State int

// Link states.
const (
	OK State = iota
	Missing
	// Wrong is a link that points elsewhere, or something that is not a link.
	Wrong
)

// Check reports the state of each link under devRoot (the host's "/", or where it is
// mounted).
func Check(devRoot string, links []Link) []State {
	out := make([]State, len(links))
	for i, l := range links {
		got, err := os.Readlink(filepath.Join(devRoot, l.Path))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out[i] = Missing
		case err != nil || !sameTarget(l, got):
			out[i] = Wrong
		}
	}
	return out
}

// sameTarget accepts udev's relative target and an absolute one to the same node.
func sameTarget(l Link, got string) bool {
	if !path.IsAbs(got) {
		got = path.Join(path.Dir(l.Path), got)
	}
	return got == path.Join(path.Dir(l.Path), l.Target)
}

// Ensure makes the missing links under devRoot and replaces links that point elsewhere;
// it never replaces what is not a link. It returns the links it made.
func Ensure(devRoot string, links []Link) ([]Link, error) {
	if len(links) == 0 {
		return nil, nil
	}
	dir := filepath.Join(devRoot, "dev/char")
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // /dev/char is world-readable
		return nil, err
	}
	var made []Link
	var errs []error
	for i, st := range Check(devRoot, links) {
		l := links[i]
		p := filepath.Join(devRoot, l.Path)
		switch st {
		case OK:
			continue
		case Wrong:
			var s unix.Stat_t
			if err := unix.Lstat(p, &s); err != nil || s.Mode&unix.S_IFMT != unix.S_IFLNK {
				errs = append(errs, fmt.Errorf("%s exists and is not a link: left as it is", p))
				continue
			}
			// replaced by rename, so the path never goes missing
			tmp := p + ".nvbind"
			_ = os.Remove(tmp)
			if err := os.Symlink(l.Target, tmp); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := os.Rename(tmp, p); err != nil {
				_ = os.Remove(tmp)
				errs = append(errs, err)
				continue
			}
		case Missing:
			if err := os.Symlink(l.Target, p); err != nil && !errors.Is(err, fs.ErrExist) {
				errs = append(errs, err)
				continue
			}
		}
		made = append(made, l)
	}
	return made, errors.Join(errs...)
}
