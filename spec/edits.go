package spec

import (
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/layout"
)

// Edits are what a container gets, in nvbind's own terms. CDI specs get them through
// ToCDI and the NRI plugin through its one conversion; nothing else builds runtime types.
type Edits struct {
	// Env holds KEY=VALUE entries.
	Env    []string
	Nodes  []gpu.DeviceNode
	Mounts []Mount
	// Hooks run at HookStage, in order.
	Hooks []Hook
}

// Mount is a bind mount of a host file into the container.
type Mount struct {
	HostPath, Path string
	Options        []string
}

// HookStage is the OCI hook stage of nvbind's hook. At createRuntime the runtime has made
// the container's mounts (runc and crun both) and runs the hook from its own process on
// the host; the hook enters the container's mount namespace first
// (--enter-mount-namespace), so it sees what a createContainer hook would. runc runs
// createContainer hooks from its container-side init, limited to one Go thread, where
// writing a hook's state on its stdin waits for the Go scheduler, up to tens of ms.
const HookStage = "createRuntime"

// Hook is one OCI hook, run at HookStage: the runtime runs Path with exactly Args and Env.
type Hook struct {
	Path      string
	Args, Env []string
}

// Steps returns the decoded arguments of the edits' hook, where the edits have one hook
// and it is nvbind's (hookPath), with its command line after the program name: the
// driver's steps, which a process of the host may run on the created container instead of
// the runtime's running the hook (the NRI plugin, the runtime wrapper's service).
func (e Edits) Steps(hookPath string) (hookargs.Args, []string, bool) {
	if len(e.Hooks) != 1 || e.Hooks[0].Path != hookPath || len(e.Hooks[0].Args) < 1 {
		return hookargs.Args{}, nil, false
	}
	argv := e.Hooks[0].Args[1:]
	a, err := hookargs.Decode(argv)
	if err != nil {
		return hookargs.Args{}, nil, false
	}
	return a, argv, true
}

// AddNodes appends nodes whose container path is not there yet.
func (e *Edits) AddNodes(nodes ...gpu.DeviceNode) {
	for _, n := range nodes {
		if !slices.ContainsFunc(e.Nodes, func(o gpu.DeviceNode) bool { return o.Path == n.Path }) {
			e.Nodes = append(e.Nodes, n)
		}
	}
}

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

// libraryLinks are the links that make the mounted libraries usable (layout.LibraryLinks).
func libraryLinks(files []gpu.File) []Link { return layout.LibraryLinks(files) }

// libraryFolders are the folders of the libraries and their links, for the ld cache
// (layout.LibraryFolders).
func libraryFolders(files []gpu.File, links []Link) []string {
	return layout.LibraryFolders(files, links)
}

// CommonEdits are the edits every GPU container gets, whatever GPUs it has: control
// nodes, the driver files of the chosen capabilities, the env and the hook.
func CommonEdits(inv *gpu.Inventory, caps gpu.Capabilities, o Options) (Edits, error) {
	o, err := o.withDefaults()
	if err != nil {
		return Edits{}, err
	}
	return commonEdits(inv, caps, o), nil
}

func commonEdits(inv *gpu.Inventory, caps gpu.Capabilities, o Options) Edits {
	var e Edits
	e.Env = []string{"NVIDIA_VISIBLE_DEVICES=void"}
	for _, n := range inv.ControlNodes {
		if n.Path == "/dev/nvidia-modeset" && !caps.Has(gpu.CapGraphics) && !caps.Has(gpu.CapDisplay) && caps != gpu.CapsAll {
			// modeset serves display and graphics only
			continue
		}
		e.Nodes = append(e.Nodes, n)
	}
	files := inv.FilesFor(caps)
	if o.LayoutBase != "" {
		return layoutEdits(inv, caps, files, e, o)
	}
	for _, f := range files {
		opts := fileMountOptions
		if f.Kind == gpu.KindSocket {
			opts = socketMountOptions
		}
		e.Mounts = append(e.Mounts, Mount{HostPath: f.HostPath, Path: f.Path, Options: opts})
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
			e.Mounts = append(e.Mounts, Mount{HostPath: host, Path: l.Link, Options: fileMountOptions})
		}
	}
	if h := hookArgs(inv, files, links, o); h != nil {
		e.Hooks = []Hook{*h}
	}
	return e
}

// layoutEdits give the driver's files of caps in one mount, the layout of package layout
// under o.LayoutBase (which the caller builds), and the hook makes the links that programs
// look for by path (binaries, config files, modules loaded by path) and adds the layout's
// library folders to the ld cache. Sockets are mounted on their own.
func layoutEdits(inv *gpu.Inventory, caps gpu.Capabilities, files []gpu.File, e Edits, o Options) Edits {
	for _, f := range files {
		if !layout.Mountable(f) {
			e.Mounts = append(e.Mounts, Mount{HostPath: f.HostPath, Path: f.Path, Options: socketMountOptions})
		}
	}
	plan := layout.For(inv, caps)
	if len(plan.Entries) > 0 {
		e.Mounts = append(e.Mounts, Mount{HostPath: plan.HostPath(o.LayoutBase), Path: plan.Mount(), Options: slices.Clone(layout.MountOptions)})
	}
	byPath := make(map[string]*gpu.File, len(files))
	for i := range files {
		byPath[files[i].Path] = &files[i]
	}
	a := hookargs.Args{Folders: plan.Folders}
	if len(plan.Folders) > 0 {
		a.FolderEntries = path.Join(plan.Mount(), layout.EntriesFile)
	}
	for _, en := range plan.Entries {
		if !layout.Reached(en.Path, byPath[en.Path]) {
			a.Links = append(a.Links, Link{Target: path.Join(plan.Mount(), en.Path), Link: en.Path})
		}
	}
	for _, f := range layout.FolderLinks(inv, plan, a.Links) {
		a.FolderLinks = append(a.FolderLinks, Link{Target: path.Join(plan.Mount(), f), Link: f})
	}
	withDriverActions(&a, inv, files, o)
	e.addHook(a, o)
	return e
}

// hookArgs builds the one hook that runs every enabled action; its
// command line is hookargs' encoding, which the hook decodes with the same definitions.
func hookArgs(inv *gpu.Inventory, files []gpu.File, links []Link, o Options) *Hook {
	var a hookargs.Args
	if o.enabled(HookSymlinks) {
		a.Links = links
	}
	if o.enabled(HookLDCache) {
		a.Folders = libraryFolders(files, links)
	}
	withDriverActions(&a, inv, files, o)
	return hookOf(a, o)
}

// withDriverActions adds the hook actions every driver's edits carry: the params
// protection, CUDA forward compatibility and the application profile.
func withDriverActions(a *hookargs.Args, inv *gpu.Inventory, files []gpu.File, o Options) {
	if o.enabled(HookDeviceNodes) && inv.Driver.ModifyDeviceFiles != nil && *inv.Driver.ModifyDeviceFiles {
		a.ProtectDeviceNodes, a.HostParams = true, path.Join(inv.DevRoot, "proc/driver/nvidia/params")
	}
	if o.enabled(HookCUDACompat) && inv.Driver.Version != "" && inv.Driver.Flavour != gpu.FlavourTegra {
		a.HostDriverVersion = inv.Driver.Version
	}
	if o.enabled(HookAppProfile) && slices.ContainsFunc(files, isAppProfileDB) {
		// with the driver's EGL (graphics), EGL and Vulkan see only the container's GPUs
		a.AppProfile = true
	}
}

// hookOf is the one hook that runs the actions a asks for (nil: none); its command line
// is hookargs' encoding, which the hook decodes with the same definitions.
func hookOf(a hookargs.Args, o Options) *Hook {
	if a.Empty() {
		return nil
	}
	a.EnterMountNamespace = true // it runs at HookStage
	return &Hook{Path: o.HookPath, Args: append([]string{path.Base(o.HookPath)}, a.Encode()...), Env: slices.Clone(hookEnv)}
}

// addHook appends the hook of a, if it asks for anything.
func (e *Edits) addHook(a hookargs.Args, o Options) {
	if h := hookOf(a, o); h != nil {
		e.Hooks = append(e.Hooks, *h)
	}
}

// addLinks makes host links in the container: by the hook, or, hookless, as bind mounts
// of the files they resolve to. It returns the folders the links are in.
func (e *Edits) addLinks(links []gpu.SymLink, a *hookargs.Args, o Options) []string {
	var dirs []string
	for _, l := range links {
		if o.enabled(HookSymlinks) {
			a.Links = append(a.Links, Link{Target: l.Target, Link: l.Path})
			dirs = append(dirs, path.Dir(l.Path))
		} else {
			e.Mounts = append(e.Mounts, Mount{HostPath: l.HostPath, Path: l.Path, Options: fileMountOptions})
		}
	}
	return dirs
}

// isAppProfileDB reports the driver's application-profile database
// (/usr/share/nvidia/nvidia-application-profiles-VERSION-rc), mounted with graphics.
func isAppProfileDB(f gpu.File) bool {
	b := path.Base(f.Path)
	return strings.HasPrefix(b, "nvidia-application-profiles-") && strings.HasSuffix(b, "-rc")
}

// DeviceEdits are the edits of one full GPU: its node, and its DRM nodes when graphics
// or display is asked for.
func DeviceEdits(d gpu.Device, caps gpu.Capabilities) Edits {
	var e Edits
	e.AddNodes(d.Node)
	if caps.Has(gpu.CapGraphics) || caps.Has(gpu.CapDisplay) {
		e.AddNodes(d.DRM...)
	}
	return e
}

// MIGEdits are the edits of one MIG device: the parent GPU's node and the GI and CI
// access capabilities.
func MIGEdits(parent gpu.Device, m gpu.MIGDevice) Edits {
	var e Edits
	e.AddNodes(parent.Node)
	e.AddNodes(m.Caps...)
	return e
}

// WSLEdits are what a container on a WSL2 host gets for its GPUs: the shared /dev/dxg,
// WSL's GPU libraries and NVIDIA's driver store mounted at their own paths, and one hook
// for the SONAME links they lack, /usr/bin/nvidia-smi and the ld cache.
func WSLEdits(inv *gpu.Inventory, o Options) Edits {
	w := inv.WSL
	var e Edits
	if w == nil {
		return e
	}
	e.Env = []string{"NVIDIA_VISIBLE_DEVICES=void"}
	e.AddNodes(w.Node)
	for _, f := range w.Files {
		e.Mounts = append(e.Mounts, Mount{HostPath: f.HostPath, Path: f.Path, Options: fileMountOptions})
	}
	var a hookargs.Args
	e.addLinks(w.Links, &a, o)
	if o.enabled(HookLDCache) {
		a.Folders = append([]string{gpu.WSLLibDir}, w.DriverStores...)
	}
	e.addHook(a, o)
	return e
}

// IGPUName names a Jetson's integrated GPU in specs and requests; alone on the board it
// is also GPU 0.
const IGPUName = "igpu"

// IGPUEdits are the edits of a Jetson's integrated GPU, as L4T's CSV files list them:
// its device nodes, its libraries and folders mounted where they are listed, and one hook
// for the listed links and the libraries' folders in the ld cache. Hookless, the links
// become bind mounts of the files they resolve to.
func IGPUEdits(inv *gpu.Inventory, o Options) Edits {
	ig := inv.IGPU
	var e Edits
	if ig == nil {
		return e
	}
	e.Env = []string{"NVIDIA_VISIBLE_DEVICES=void"}
	e.AddNodes(ig.Nodes...)
	set := map[string]bool{}
	for _, f := range ig.Files {
		e.Mounts = append(e.Mounts, Mount{HostPath: f.HostPath, Path: f.Path, Options: fileMountOptions})
		if f.Kind == gpu.KindLibrary && f.SONAME != "" {
			set[path.Dir(f.Path)] = true
		}
	}
	var a hookargs.Args
	for _, d := range e.addLinks(ig.Links, &a, o) {
		set[d] = true
	}
	if o.enabled(HookLDCache) {
		for d := range set {
			a.Folders = append(a.Folders, d)
		}
		sort.Strings(a.Folders)
	}
	e.addHook(a, o)
	return e
}
