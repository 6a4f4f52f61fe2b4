package spec

import (
	"path"
	"path/filepath"
	"slices"
	"sort"

	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
)

// Mount options of driver files and of IPC sockets.
var (
	fileMountOptions   = []string{"ro", "nosuid", "nodev", "bind"}
	socketMountOptions = []string{"nosuid", "nodev", "noexec", "bind"}
)

// hookEnv is the whole environment of the hook process: runtimes pass exactly this (and
// never the container's), so an image's LD_PRELOAD cannot reach a root process on the host.
var hookEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}

// Link is one symbolic link to make in the container: Link points to Target (relative).
type Link = hookargs.Link

// libraryLinks returns the links that make the mounted libraries usable: each library's
// SONAME link in its own folder, and the names the host gives it elsewhere (development
// links, Debian's alternatives), each pointing straight at the mounted file.
func libraryLinks(files []gpu.File) []Link {
	mounted := map[string]bool{}
	for _, f := range files {
		mounted[f.Path] = true
	}
	seen := map[string]bool{}
	var out []Link
	add := func(f gpu.File, link string) {
		if link == f.Path || mounted[link] || seen[link] {
			return
		}
		seen[link] = true
		// both are clean absolute container paths, so Rel cannot fail
		target, _ := filepath.Rel(path.Dir(link), f.Path)
		out = append(out, Link{Target: target, Link: link})
	}
	for _, f := range files {
		if f.Kind != gpu.KindLibrary {
			continue
		}
		if f.SONAME != "" && f.SONAME != path.Base(f.Path) {
			add(f, path.Join(path.Dir(f.Path), f.SONAME))
		}
		for _, l := range f.Links {
			add(f, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Link < out[j].Link })
	return out
}

// libraryFolders returns the container folders that hold libraries with a SONAME or their
// links, for the ld cache.
func libraryFolders(files []gpu.File, links []Link) []string {
	set := map[string]bool{}
	display := map[string]bool{}
	for _, f := range files {
		switch {
		case f.Kind != gpu.KindLibrary:
		case f.Capabilities.Has(gpu.CapDisplay) || f.SONAME == "":
			// X server modules are loaded by path, not through the ld cache
			display[f.Path] = true
		default:
			set[path.Dir(f.Path)] = true
		}
	}
	for _, l := range links {
		if !display[path.Join(path.Dir(l.Link), l.Target)] {
			set[path.Dir(l.Link)] = true
		}
	}
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

func deviceNode(n gpu.DeviceNode) *cdispecs.DeviceNode {
	major, minor := n.Major, n.Minor
	mode := n.FileMode
	d := &cdispecs.DeviceNode{Path: n.Path, Type: "c", Major: major, Minor: minor, FileMode: &mode, Permissions: "rw"}
	if n.HostPath != n.Path {
		d.HostPath = n.HostPath
	}
	if n.UID != 0 {
		uid := n.UID
		d.UID = &uid
	}
	if n.GID != 0 {
		gid := n.GID
		d.GID = &gid
	}
	return d
}

// CommonEdits are the edits every GPU container gets, whatever GPUs it has: control
// nodes, the driver files of the chosen capabilities, the env and the hook.
func CommonEdits(inv *gpu.Inventory, caps gpu.Capabilities, o Options) (cdispecs.ContainerEdits, error) {
	o, err := o.withDefaults()
	if err != nil {
		return cdispecs.ContainerEdits{}, err
	}
	return commonEdits(inv, caps, o), nil
}

func commonEdits(inv *gpu.Inventory, caps gpu.Capabilities, o Options) cdispecs.ContainerEdits {
	var e cdispecs.ContainerEdits
	e.Env = []string{"NVIDIA_VISIBLE_DEVICES=void"}
	for _, n := range inv.ControlNodes {
		if n.Path == "/dev/nvidia-modeset" && !caps.Has(gpu.CapGraphics) && !caps.Has(gpu.CapDisplay) && caps != gpu.CapsAll {
			// modeset serves display and graphics only
			continue
		}
		e.DeviceNodes = append(e.DeviceNodes, deviceNode(n))
	}
	files := inv.FilesFor(caps)
	for _, f := range files {
		opts := fileMountOptions
		if f.Kind == gpu.KindSocket {
			opts = socketMountOptions
		}
		e.Mounts = append(e.Mounts, &cdispecs.Mount{HostPath: f.HostPath, ContainerPath: f.Path, Type: "bind", Options: opts})
	}
	links := libraryLinks(files)
	if !o.enabled(HookSymlinks) {
		// Hookless: the links become bind mounts of the same host files, so the loader
		// still finds libcuda.so.1; what is lost is the ld cache entry (ldconfig -p).
		byPath := map[string]string{}
		for _, f := range files {
			byPath[f.Path] = f.HostPath
		}
		for _, l := range links {
			host := byPath[path.Join(path.Dir(l.Link), l.Target)]
			e.Mounts = append(e.Mounts, &cdispecs.Mount{HostPath: host, ContainerPath: l.Link, Type: "bind", Options: fileMountOptions})
		}
	}
	if h := hookArgs(inv, files, links, o); h != nil {
		e.Hooks = []*cdispecs.Hook{h}
	}
	return e
}

// hookArgs builds the one createContainer hook that runs every enabled action; its
// command line is hookargs' encoding, which the hook decodes with the same definitions.
func hookArgs(inv *gpu.Inventory, files []gpu.File, links []Link, o Options) *cdispecs.Hook {
	var a hookargs.Args
	if o.enabled(HookSymlinks) {
		a.Links = links
	}
	if o.enabled(HookLDCache) {
		a.Folders = libraryFolders(files, links)
	}
	if o.enabled(HookDeviceNodes) && inv.Driver.ModifyDeviceFiles != nil && *inv.Driver.ModifyDeviceFiles {
		a.ProtectDeviceNodes, a.HostParams = true, path.Join(inv.DevRoot, "proc/driver/nvidia/params")
	}
	if o.enabled(HookCUDACompat) && inv.Driver.Version != "" {
		a.HostDriverVersion = inv.Driver.Version
	}
	if a.Empty() {
		return nil
	}
	return &cdispecs.Hook{HookName: "createContainer", Path: o.HookPath, Args: append([]string{path.Base(o.HookPath)}, a.Encode()...), Env: slices.Clone(hookEnv)}
}

// DeviceEdits are the edits of one full GPU: its node, and its DRM nodes when graphics
// or display is asked for.
func DeviceEdits(d gpu.Device, caps gpu.Capabilities) cdispecs.ContainerEdits {
	var e cdispecs.ContainerEdits
	e.DeviceNodes = append(e.DeviceNodes, deviceNode(d.Node))
	if caps.Has(gpu.CapGraphics) || caps.Has(gpu.CapDisplay) {
		for _, n := range d.DRM {
			e.DeviceNodes = append(e.DeviceNodes, deviceNode(n))
		}
	}
	return e
}

// MIGEdits are the edits of one MIG device: the parent GPU's node and the GI and CI
// access capabilities.
func MIGEdits(parent gpu.Device, m gpu.MIGDevice) cdispecs.ContainerEdits {
	var e cdispecs.ContainerEdits
	e.DeviceNodes = append(e.DeviceNodes, deviceNode(parent.Node))
	for _, c := range m.Caps {
		e.DeviceNodes = append(e.DeviceNodes, deviceNode(c))
	}
	return e
}
