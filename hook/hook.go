package hook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/internal/fileio"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/internal/version"
)

// Link is one link to create: Link (a container path) points to Target.
type Link = hookargs.Link

// Options selects the actions of one hook run. Empty fields turn actions off.
type Options struct {
	Links []Link
	// FolderLinks are folders only the driver fills, each made a link to its Target where
	// the image has nothing at its path; the Links under one made (or already there, to
	// the same Target) are skipped. Elsewhere the Links are made one by one.
	FolderLinks []Link
	Folders     []string
	// FolderEntries is the container path of an ld cache file with the entries of the
	// libraries in Folders (a driver layout's): used instead of reading each library when
	// it is a cache the hook can read.
	FolderEntries string
	// ProtectDeviceNodes hides ModifyDeviceFiles: 1 from the container.
	ProtectDeviceNodes bool
	// HostParams is the host's params file (default /proc/driver/nvidia/params).
	HostParams string
	// HostDriverVersion enables CUDA forward compatibility when the image's compat
	// libraries are newer.
	HostDriverVersion string
	// AppProfile writes the application profile that shows EGL and Vulkan only the
	// GPUs of GPUMinors.
	AppProfile bool
	// GPUMinors are the minors of the container's /dev/nvidiaN nodes (Run reads them from
	// the bundle's config.json).
	GPUMinors []int
	// EnterMountNamespace makes Run enter the mount namespace of the state's pid before
	// it opens the root: the hook runs at createRuntime.
	EnterMountNamespace bool
	// hostParams holds the host's params file where Run read it before entering the
	// container's namespaces (nil: none there); hostParamsRead says it did.
	hostParams     []byte
	hostParamsRead bool
	// paramsTree is a detached mount of the params copy, made before a thread entered the
	// container's mount namespace (RunInContainer): moved onto the container's file there
	paramsTree *os.File
	// inContainer says the actions run from RunInContainer: in the container's namespace,
	// where /run and /proc are the container's
	inContainer bool
	// paramsRoot, when set, is the root the params copy goes onto: the container's own,
	// where the other actions write through a writable clone of it
	paramsRoot *os.File
	// Log receives one line per action that was skipped or changed nothing.
	Log io.Writer
}

// Run applies the actions to the container of the OCI state.
func Run(ctx context.Context, st State, o Options) error {
	cfg, err := readBundle(st.Bundle)
	if err != nil {
		return err
	}
	if o.AppProfile {
		o.GPUMinors = cfg.gpuMinors()
	}
	if !o.EnterMountNamespace {
		return RunInRoot(ctx, cfg.root, o)
	}
	if st.Status == "stopped" {
		if o.Log != nil {
			fmt.Fprintln(o.Log, "the container is stopped (runc runs createRuntime hooks on a restore from a checkpoint, once its files are in place): nothing to do")
		}
		return nil
	}
	// what is read by a host path, read on the host
	if o.ProtectDeviceNodes {
		if o.hostParams, err = readHostParams(o.HostParams); err != nil {
			return fmt.Errorf("disable-device-node-modification: %w", err)
		}
		o.hostParamsRead = true
	}
	var want unix.Stat_t
	if err := unix.Stat(cfg.root, &want); err != nil {
		return fmt.Errorf("open container root: %w", err)
	}
	if err := enterMountNamespace(st.Pid); err != nil {
		return err
	}
	// the root at the same path in the container's namespace, not yet pivoted into: the
	// same folder, and not the namespace's own root; in a namespace pivoted already, the
	// path would be the image's
	fd, err := unix.Open(cfg.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("--%s: open %s in the container's mount namespace: %w", hookargs.FlagEnterMountNS, cfg.root, err)
	}
	r := &containerRoot{path: cfg.root, fd: os.NewFile(uintptr(fd), cfg.root), dirs: map[string]*os.File{}}
	defer func() { _ = r.Close() }()
	var got, top unix.Stat_t
	if unix.Fstat(fd, &got) != nil || got.Dev != want.Dev || got.Ino != want.Ino || unix.Stat("/", &top) != nil ||
		(top.Dev == want.Dev && top.Ino == want.Ino) {
		return fmt.Errorf("--%s: %s in the container's mount namespace is not the container root: is it pivoted already?", hookargs.FlagEnterMountNS, cfg.root)
	}
	return runIn(ctx, r, o)
}

// RunInRoot applies the actions to a container root.
func RunInRoot(ctx context.Context, rootPath string, o Options) error {
	if o.Log == nil {
		o.Log = io.Discard
	}
	r, err := openRoot(rootPath)
	if err != nil {
		return err
	}
	defer func() { _ = r.Close() }()
	return runIn(ctx, r, o)
}

// runIn applies the actions to an open container root; it stops between actions (and
// between links) once ctx is done.
func runIn(ctx context.Context, r *containerRoot, o Options) error {
	if o.Log == nil {
		o.Log = io.Discard
	}
	// what the C hook reads (the compat folder's names, the image's cache, the layout's
	// entries) is read before any step changes the root, as the C hook does, so that no
	// step's writes feed those reads; what only this hook reads (the compat folder's
	// libraries, folders without entries, a fresh cache's) is read when the ld cache is
	// written
	folders, compat := o.Folders, ""
	if o.HostDriverVersion != "" {
		var err error
		if compat, err = cudaCompatFolder(r, o.HostDriverVersion); err != nil {
			return fmt.Errorf("enable-cuda-compat: %w", err)
		}
		if compat != "" {
			folders = append([]string{compat}, folders...)
		}
	}
	var in ldInputs
	if len(folders) > 0 {
		in = readLDInputs(r, o.FolderEntries)
	}
	var linked []Link // folders linked whole
	for _, l := range o.FolderLinks {
		made, err := r.folderLink(l.Target, l.Link)
		if err != nil {
			return fmt.Errorf("create-symlinks: %w", err)
		}
		if made {
			linked = append(linked, l)
		}
	}
	for _, l := range o.Links {
		if err := ctx.Err(); err != nil {
			return err
		}
		if throughFolder(l, linked) {
			continue
		}
		note, err := r.symlink(l.Target, l.Link)
		if err != nil {
			return fmt.Errorf("create-symlinks: %w", err)
		}
		if note != "" {
			fmt.Fprintf(o.Log, "create-symlinks: %s %s: left as it is\n", l.Link, note)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(folders) > 0 {
		if err := updateLDCache(r, folders, compat, in, o.Log); err != nil {
			return fmt.Errorf("update-ldcache: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if o.ProtectDeviceNodes {
		if err := protectDeviceNodes(r, o, o.Log); err != nil {
			return fmt.Errorf("disable-device-node-modification: %w", err)
		}
	}
	if o.AppProfile {
		if err := writeAppProfile(r, o.GPUMinors, o.Log); err != nil {
			return fmt.Errorf("update-application-profile: %w", err)
		}
	}
	return nil
}

// throughFolder reports whether link l is in place through one of the folder links: it
// is under the folder, and its target is the folder's target with the same rest.
func throughFolder(l Link, folders []Link) bool {
	for _, f := range folders {
		if rest, ok := strings.CutPrefix(l.Link, f.Link); ok && strings.HasPrefix(rest, "/") && l.Target == f.Target+rest {
			return true
		}
	}
	return false
}

// imageLibDirs are the loader's default folders across distributions.
var imageLibDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
	"/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// protectDeviceNodes bind-mounts a read-only copy of the host's params file, with
// ModifyDeviceFiles: 0, over the container's /proc/driver/nvidia/params, so NVML in the
// container does not try to create device nodes. Without that file in the container (no
// driver loaded), or with ModifyDeviceFiles already 0, it does nothing.
func protectDeviceNodes(r *containerRoot, o Options, log io.Writer) error {
	data, err := o.hostParams, error(nil)
	if !o.hostParamsRead {
		if data, err = readHostParams(o.HostParams); err != nil {
			return err
		}
	}
	if data == nil {
		fmt.Fprintf(log, "disable-device-node-modification: %s does not exist: nothing to do\n", hostParamsPath(o.HostParams))
		return nil
	}
	modified, changed := setModifyDeviceFiles(data)
	if !changed {
		return nil
	}
	const target = "/proc/driver/nvidia/params"
	root := r.fd
	if o.paramsRoot != nil {
		root = o.paramsRoot
	}
	h, err := pathrs.OpenatInRoot(root, target)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(log, "disable-device-node-modification: the container has no %s: nothing to do\n", target)
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s in the container: %w", target, err)
	}
	defer func() { _ = h.Close() }()
	var st unix.Stat_t
	if err := unix.Fstat(int(h.Fd()), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s in the container is not a regular file", target)
	}
	if o.paramsTree != nil {
		// made read-only before; by handles only: in the container's namespace, /proc is
		// the container's
		if err := unix.MoveMount(int(o.paramsTree.Fd()), "", int(h.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
			return fmt.Errorf("bind params copy over %s: %w", target, err)
		}
		return nil
	}
	if o.inContainer {
		return errors.New("no params copy was made before entering the container's namespace")
	}
	src, err := hostCopy(modified)
	if err != nil {
		return err
	}
	// the mount keeps the file
	defer func() { _ = src.Close(); _ = os.RemoveAll(filepath.Dir(src.Name())) }()
	// bound by its handle: the name could be another's by now where the folder's owner is
	// not root alone (in a container's user namespace, its root's host uid)
	dst := "/proc/self/fd/" + strconv.Itoa(int(h.Fd()))
	if err := unix.Mount("/proc/self/fd/"+strconv.Itoa(int(src.Fd())), dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind params copy over %s: %w", target, err)
	}
	// remount the new mount read-only: reach it through a fresh handle
	nh, err := pathrs.OpenatInRoot(root, target)
	if err != nil {
		return err
	}
	defer func() { _ = nh.Close() }()
	if err := unix.Mount("", "/proc/self/fd/"+strconv.Itoa(int(nh.Fd())), "",
		unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", target, err)
	}
	return nil
}

// readHostParams reads the host's params file (nil where there is none).
func readHostParams(p string) ([]byte, error) {
	p = hostParamsPath(p)
	f, err := os.Open(p) //nolint:gosec // a host path from the hook's own arguments, never from the container
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	data, err := fileio.ReadAll(f, maxSmallFile, p)
	if data == nil && err == nil {
		data = []byte{}
	}
	return data, err
}

func hostParamsPath(p string) string {
	if p == "" {
		return hookargs.DefaultHostParams
	}
	return p
}

// hostCopy writes data to a new read-only file in a new folder of the call's own (mode
// 0700) on a host tmpfs, /dev/shm where /run is not the hook's (in a container's user
// namespace), and returns it open; the caller binds it by its handle, closes it and
// removes the folder (the mount keeps the file).
func hostCopy(data []byte) (*os.File, error) {
	var errs []error
	for _, parent := range []string{"/run", "/dev/shm"} {
		dir, err := os.MkdirTemp(parent, "nvbind-params-")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p := filepath.Join(dir, "params")
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600) //nolint:gosec // in our own new folder
		if err != nil {
			_ = os.Remove(dir)
			errs = append(errs, err)
			continue
		}
		_, err = f.Write(data)
		if err == nil {
			err = f.Chmod(0o444)
		}
		if err != nil {
			_ = f.Close()
			_ = os.RemoveAll(dir)
			return nil, err
		}
		return f, nil
	}
	return nil, fmt.Errorf("write the params copy: %w", errors.Join(errs...))
}

// The hook's patterns are compiled when first used: the binaries that hold the hook start
// for other commands too.
var reModify = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?m)^ModifyDeviceFiles:[ \t]*1[ \t]*$`) })

// setModifyDeviceFiles rewrites "ModifyDeviceFiles: 1" to 0; changed is false when there
// is nothing to rewrite.
func setModifyDeviceFiles(data []byte) ([]byte, bool) {
	if !reModify().Match(data) {
		return data, false
	}
	return reModify().ReplaceAll(data, []byte("ModifyDeviceFiles: 0")), true
}

const compatDir = "/usr/local/cuda/compat"

var reCompatLib = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^libcuda\.so\.(\d+(?:\.\d+)+)$`) })

// cudaCompatFolder returns the image's CUDA forward-compat folder when its libcuda is
// newer than the host driver, else "".
func cudaCompatFolder(r *containerRoot, hostVersion string) (string, error) {
	host, err := version.Parse(hostVersion)
	if err != nil {
		return "", fmt.Errorf("host driver version %q: %w", hostVersion, err)
	}
	names, err := r.readDirNames(compatDir, maxFolderEntries)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", compatDir, err)
	}
	var best []int
	for _, n := range names {
		m := reCompatLib().FindStringSubmatch(n)
		if m == nil {
			continue
		}
		v, err := version.Parse(m[1])
		if err != nil {
			continue
		}
		if best == nil || version.Compare(v, best) > 0 {
			best = v
		}
	}
	if best == nil || version.Compare(best, host) <= 0 {
		return "", nil
	}
	return compatDir, nil
}

// OptionsOf are the Options of a hook command line's arguments (hookargs.Args).
func OptionsOf(a hookargs.Args) Options {
	return Options{Links: a.Links, FolderLinks: a.FolderLinks, Folders: a.Folders, FolderEntries: a.FolderEntries,
		ProtectDeviceNodes: a.ProtectDeviceNodes, HostParams: a.HostParams, HostDriverVersion: a.HostDriverVersion,
		AppProfile: a.AppProfile, EnterMountNamespace: a.EnterMountNamespace}
}
