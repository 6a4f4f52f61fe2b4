// Package layout lays the driver's files out for containers in one folder on the host,
// so that a container gets them in one mount instead of one per file.
//
// A layout is a small tmpfs under Base (/run/nvbind/driver), one per driver install and
// capability set, named by a hash of what it holds. It holds every file of the capability
// set at its container path, each a read-only bind mount of the host's file (no copy),
// with the libraries' links, and is read-only itself once built. A container mounts it
// read-only, recursively and privately at Dest/<name>: the runtime's per-mount work, which
// is what a GPU container's start costs (1.3 ms a file for runc under Docker), is paid
// once. Mounted privately, a container keeps the files it started with: a driver upgrade
// builds a new layout and detaches the old one from the host, and the kernel frees it
// when its last container ends.
//
// Plans are pure (what goes where, from an inventory). Ensure builds a plan (root, with
// CAP_SYS_ADMIN, in the host's mount namespace); Collect detaches layouts no longer kept.
package layout

import (
	"crypto/sha256"
	"encoding/hex"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
)

const (
	// DefaultBase is the host folder of the layouts: a tmpfs on every system, so the
	// layouts go at reboot with the containers that used them, and are built again.
	DefaultBase = "/run/nvbind/driver"
	// Dest is the container folder layouts are mounted under: Dest/<plan name>.
	Dest = "/usr/local/nvbind"
	// format changes when a layout's shape does, so that old layouts are not reused.
	format = "2"
	// EntriesFile is the ld cache, in a layout's root, of its library folders as a
	// container that mounts it sees them (the hook's --folder-entries).
	EntriesFile = ".ld.so.cache"
)

// MountOptions are the options of a layout's mount in a container: the whole tree
// (rbind: the files are mounts of their own), read-only, and private, so that the host
// detaching an old layout never takes it from a running container.
var MountOptions = []string{"rbind", "ro", "nosuid", "nodev", "rprivate"}

// Entry is one thing in a layout: a driver file (Host set) or a link (Target set), at its
// container path.
type Entry struct {
	Path   string `json:"path"`
	Host   string `json:"host,omitempty"`
	Target string `json:"target,omitempty"`
}

// Plan is what one layout holds.
type Plan struct {
	// Name is its folder in the container, under Dest: "all", or the capabilities joined
	// by "+" ("compute+utility").
	Name string `json:"name"`
	// ID names its folder on the host: driver version, name, and a hash of the entries.
	ID      string  `json:"id"`
	Entries []Entry `json:"entries"`
	// Folders are the container folders of the layout's libraries, for the ld cache.
	Folders []string `json:"folders"`
	// Caps is the capability set laid out.
	Caps gpu.Capabilities `json:"-"`
}

// NameOf is the name of a capability set's layout.
func NameOf(caps gpu.Capabilities) string {
	if caps.String() == "all" {
		return "all"
	}
	var parts []string
	for _, c := range caps.List() {
		parts = append(parts, string(c))
	}
	return strings.Join(parts, "+")
}

// Mountable reports whether a file goes into a layout: sockets and folders (the MPS pipe
// folder) are live host objects, which the runtime mounts on their own.
func Mountable(f gpu.File) bool { return f.Kind != gpu.KindSocket }

// For plans the layout of the driver files that serve caps, with their links.
func For(inv *gpu.Inventory, caps gpu.Capabilities) Plan {
	var files []gpu.File
	for _, f := range inv.FilesFor(caps) {
		if Mountable(f) {
			files = append(files, f)
		}
	}
	p := Plan{Name: NameOf(caps), Caps: caps}
	for _, f := range files {
		p.Entries = append(p.Entries, Entry{Path: f.Path, Host: f.HostPath})
	}
	links := LibraryLinks(files)
	for _, l := range links {
		p.Entries = append(p.Entries, Entry{Path: l.Link, Target: l.Target})
	}
	for _, d := range LibraryFolders(files, links) {
		p.Folders = append(p.Folders, path.Join(Dest, p.Name, d))
	}
	h := sha256.New()
	h.Write([]byte(format + "\x00" + p.Name + "\x00"))
	for _, e := range p.Entries {
		h.Write([]byte(e.Path + "\x00" + e.Host + "\x00" + e.Target + "\x00"))
	}
	p.ID = VersionOf(inv.Driver.Version) + "-" + p.Name + "-" + hex.EncodeToString(h.Sum(nil))[:12]
	return p
}

// Volatile reports whether a file at p goes at reboot with the layouts (it is under /run):
// only such a spec may name layouts, or it would outlive them.
func Volatile(p string) bool {
	p = filepath.Clean(p)
	return strings.HasPrefix(p, "/run/") || strings.HasPrefix(p, "/var/run/")
}

// VersionOf is the driver version as layout IDs begin with it.
func VersionOf(version string) string {
	if version == "" {
		return "unknown"
	}
	return version
}

// HostPath is the layout's folder on the host.
func (p Plan) HostPath(base string) string { return filepath.Join(base, p.ID) }

// Mount is where a container gets the layout.
func (p Plan) Mount() string { return path.Join(Dest, p.Name) }

// byPath are the folders whose programs load libraries by path, not through the ld
// cache: VDPAU drivers, GBM backends and X server modules.
var byPath = []string{"/vdpau/", "/gbm/", "/xorg/"}

// Reached says whether a file or link of a layout is reached through the ld cache
// (libraries with a SONAME in the layout's folders); everything else (binaries, config
// files, firmware, modules loaded by path) also needs a link at its usual path.
func Reached(p string, f *gpu.File) bool {
	if f != nil && (f.Kind != gpu.KindLibrary || f.SONAME == "") {
		return false
	}
	for _, b := range byPath {
		if strings.Contains(p, b) {
			return false
		}
	}
	return true
}

// DriverFolder returns the shallowest folder above container path p that only the
// driver's packages fill, or "": one named nvidia in a library or share folder
// (/usr/share/nvidia, /usr/lib/nvidia, /usr/lib/x86_64-linux-gnu/nvidia), or one named
// for the driver's version (/lib/firmware/nvidia/535.261.03; /lib/firmware/nvidia holds
// other firmware too). The hook links such a folder whole to the layout's where the
// image has nothing there, one link instead of its folders and a link per file: on an
// overlay root each is a write, which is most of what the hook costs.
func DriverFolder(p, version string) string {
	parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
	at := func(i int) string { // parts[i], "" before the first
		if i < 0 {
			return ""
		}
		return parts[i]
	}
	for i := range len(parts) - 1 { // parts[i] names a folder above p
		name, parent := parts[i], at(i-1)
		if (version != "" && name == version) ||
			(name == "nvidia" && (libOrShare[parent] || (strings.HasSuffix(parent, "-linux-gnu") && libOrShare[at(i-2)]))) {
			return "/" + strings.Join(parts[:i+1], "/")
		}
	}
	return ""
}

// FolderLinks returns the driver folders (DriverFolder) of plan's links that the hook may
// link whole to the plan's: those where plan holds everything the driver has, so that
// another layout in the same container (a capability device's, another spec's) finds
// every file of its own there too; and none that an image could see as one folder with
// another driver folder of any layout (/lib and /usr/lib, lib64 and lib), whose links
// would go through one another's.
func FolderLinks(inv *gpu.Inventory, plan Plan, links []hookargs.Link) []string {
	var folders []string
	seen := map[string]bool{}
	for _, l := range links {
		if f := DriverFolder(l.Link, inv.Driver.Version); f != "" && !seen[f] {
			seen[f] = true
			folders = append(folders, f)
		}
	}
	if len(folders) == 0 {
		return nil
	}
	under := func(p Plan, f string) []string {
		var out []string
		for _, e := range p.Entries {
			if strings.HasPrefix(e.Path, f+"/") {
				out = append(out, e.Path+"\x00"+e.Host+"\x00"+e.Target)
			}
		}
		sort.Strings(out)
		return out
	}
	full := plan
	if plan.Name != NameOf(gpu.CapsAll) {
		full = For(inv, gpu.CapsAll)
	}
	// the driver folders of every layout of the driver (the full plan's), by the folder an
	// image may see them as
	aliases := map[string]map[string]bool{}
	addAlias := func(f string) {
		k := aliasKey(f)
		if aliases[k] == nil {
			aliases[k] = map[string]bool{}
		}
		aliases[k][f] = true
	}
	for _, e := range full.Entries {
		if f := DriverFolder(e.Path, inv.Driver.Version); f != "" {
			addAlias(f)
		}
	}
	for _, f := range folders {
		addAlias(f)
	}
	var out []string
	for _, f := range folders {
		if len(aliases[aliasKey(f)]) == 1 && slices.Equal(under(plan, f), under(full, f)) {
			out = append(out, f)
		}
	}
	return out
}

// aliasKey names the folder an image may see at p under other names: /lib is /usr/lib on
// merged-/usr systems, and lib64, lib32 and libx32 are lib on some.
func aliasKey(p string) string {
	parts := strings.Split(strings.TrimPrefix(strings.TrimPrefix(p, "/usr/"), "/"), "/")
	for i, s := range parts {
		if s == "lib64" || s == "lib32" || s == "libx32" {
			parts[i] = "lib"
		}
	}
	return strings.Join(parts, "/")
}

// libOrShare are the folder names library and data folders end in.
var libOrShare = map[string]bool{"lib": true, "lib32": true, "lib64": true, "libx32": true, "share": true}

// LibraryLinks returns the links that make libraries usable: each library's SONAME link
// in its own folder, and the names the host gives it elsewhere (development links,
// Debian's alternatives), each pointing straight at the library, relatively.
func LibraryLinks(files []gpu.File) []hookargs.Link {
	mounted := map[string]bool{}
	for _, f := range files {
		mounted[f.Path] = true
	}
	seen := map[string]bool{}
	var out []hookargs.Link
	add := func(f gpu.File, link string) {
		if link == f.Path || mounted[link] || seen[link] {
			return
		}
		seen[link] = true
		// both are clean absolute container paths, so Rel cannot fail
		target, _ := filepath.Rel(path.Dir(link), f.Path)
		out = append(out, hookargs.Link{Target: target, Link: link})
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

// LibraryFolders returns the container folders that hold libraries with a SONAME or their
// links, for the ld cache.
func LibraryFolders(files []gpu.File, links []hookargs.Link) []string {
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
	slices.Sort(out)
	return out
}
