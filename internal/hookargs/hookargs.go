// Package hookargs is the contract between those who name nvbind's hook (CDI specs and
// NRI adjustments, built in spec) and the hook itself (internal/hookcli): the command
// line of "hook all", encoded and decoded from one set of flag definitions, and the Link
// type both sides share.
package hookargs

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/spf13/pflag"
)

// Flag names of the hook's command line.
const (
	FlagLink          = "link"
	FlagFolderLink    = "folder-link"
	FlagFolder        = "folder"
	FlagFolderEntries = "folder-entries"
	FlagProtect       = "protect-device-nodes"
	FlagHostParams    = "host-params"
	FlagDriverVersion = "host-driver-version"
	FlagAppProfile    = "app-profile"
	FlagEnterMountNS  = "enter-mount-namespace"
)

// DefaultHostParams is where the host's NVIDIA params file is.
const DefaultHostParams = "/proc/driver/nvidia/params"

// Link makes container path Link a symbolic link to Target.
type Link struct{ Target, Link string }

// String is the TARGET::LINK form of --link.
func (l Link) String() string { return l.Target + "::" + l.Link }

// ParseLink parses the TARGET::LINK form of --link.
func ParseLink(v string) (Link, error) {
	t, l, ok := strings.Cut(v, "::")
	if !ok || t == "" || l == "" {
		return Link{}, fmt.Errorf("link %q: expected TARGET::LINK", v)
	}
	if !strings.HasPrefix(l, "/") {
		return Link{}, fmt.Errorf("link %q: the link %q must be an absolute container path", v, l)
	}
	if strings.ContainsRune(v, 0) {
		return Link{}, fmt.Errorf("link %q: contains NUL", v)
	}
	return Link{Target: t, Link: path.Clean(l)}, nil
}

// Args are the arguments of "hook all".
type Args struct {
	Links []Link
	// FolderLinks make a whole folder a link where the image has nothing at its path:
	// the Links under it are then in place through it, and the hook skips them. Where
	// the image has something there, the Links are made one by one.
	FolderLinks []Link
	Folders     []string
	// FolderEntries is the container path of an ld cache file holding the entries
	// of every library in Folders (a driver layout's, written when it was built): the
	// hook merges them instead of reading each library.
	FolderEntries string
	// ProtectDeviceNodes with HostParams hides ModifyDeviceFiles: 1 in the container.
	ProtectDeviceNodes bool
	HostParams         string
	// HostDriverVersion turns on CUDA forward compat against this version.
	HostDriverVersion string
	// AppProfile writes a driver application profile that shows EGL and Vulkan only the
	// container's GPUs (EGLVisibleDGPUDevices).
	AppProfile bool
	// EnterMountNamespace makes the hook enter the mount namespace of the state's pid
	// first: it runs at createRuntime, on the host, once the runtime has made the
	// container's mounts there.
	EnterMountNamespace bool
}

// Empty reports whether the arguments ask for no action.
func (a Args) Empty() bool {
	return len(a.Links) == 0 && len(a.FolderLinks) == 0 && len(a.Folders) == 0 && !a.ProtectDeviceNodes && a.HostDriverVersion == "" && !a.AppProfile
}

// Encode returns the command line after the program name: "hook", "all" and the flags,
// in a fixed order.
func (a Args) Encode() []string {
	out := []string{"hook", "all"}
	if a.EnterMountNamespace {
		out = append(out, "--"+FlagEnterMountNS)
	}
	for _, l := range a.FolderLinks {
		out = append(out, "--"+FlagFolderLink, l.String())
	}
	for _, l := range a.Links {
		out = append(out, "--"+FlagLink, l.String())
	}
	for _, f := range a.Folders {
		out = append(out, "--"+FlagFolder, f)
	}
	if a.FolderEntries != "" {
		out = append(out, "--"+FlagFolderEntries, a.FolderEntries)
	}
	if a.ProtectDeviceNodes {
		out = append(out, "--"+FlagProtect)
	}
	if a.HostParams != "" {
		out = append(out, "--"+FlagHostParams, a.HostParams)
	}
	if a.HostDriverVersion != "" {
		out = append(out, "--"+FlagDriverVersion, a.HostDriverVersion)
	}
	if a.AppProfile {
		out = append(out, "--"+FlagAppProfile)
	}
	return out
}

// Raw holds the flags as parsed, before links are checked.
type Raw struct {
	Links, FolderLinks, Folders []string
	FolderEntries               string
	Protect, AppProfile         bool
	HostParams, DriverVersion   string
	EnterMountNamespace         bool
}

// Which flags a subcommand has.
type Which struct{ Links, Folders, Protect, HostParams, Version, AppProfile bool }

// All is what "hook all" takes.
var All = Which{true, true, true, true, true, true}

// Register defines the flags w selects on fs, into r: the one definition the hook's
// command line and Decode share.
func Register(fs *pflag.FlagSet, r *Raw, w Which) {
	fs.BoolVar(&r.EnterMountNamespace, FlagEnterMountNS, false,
		"enter the mount namespace of the OCI state's pid first (a createRuntime hook: the runtime has made the container's mounts there)")
	if w.Links {
		fs.StringArrayVar(&r.Links, FlagLink, nil, "TARGET::LINK: make container path LINK a link to TARGET (repeatable)")
		fs.StringArrayVar(&r.FolderLinks, FlagFolderLink, nil,
			"TARGET::FOLDER: make container folder FOLDER a link to TARGET where the image has nothing there, and skip the --link links under it (repeatable)")
	}
	if w.Folders {
		fs.StringArrayVar(&r.Folders, FlagFolder, nil, "container folder to add to the ld cache (repeatable)")
		fs.StringVar(&r.FolderEntries, FlagFolderEntries, "", "container path of an ld cache file with the entries of the --folder libraries (a driver layout's), merged instead of reading each library")
	}
	if w.Protect {
		fs.BoolVar(&r.Protect, FlagProtect, false, "hide ModifyDeviceFiles: 1 from NVML in the container")
	}
	if w.HostParams {
		fs.StringVar(&r.HostParams, FlagHostParams, "", "the host's NVIDIA params file (default "+DefaultHostParams+")")
	}
	if w.Version {
		fs.StringVar(&r.DriverVersion, FlagDriverVersion, "", "host driver version; the image's /usr/local/cuda/compat libraries go first when newer")
	}
	if w.AppProfile {
		fs.BoolVar(&r.AppProfile, FlagAppProfile, false, "write an application profile that shows EGL and Vulkan only the container's GPUs (EGLVisibleDGPUDevices)")
	}
}

// Args checks the parsed flags.
func (r Raw) Args() (Args, error) {
	a := Args{Folders: r.Folders, FolderEntries: r.FolderEntries, ProtectDeviceNodes: r.Protect, HostParams: r.HostParams, HostDriverVersion: r.DriverVersion,
		AppProfile: r.AppProfile, EnterMountNamespace: r.EnterMountNamespace}
	var errs []error
	for _, l := range r.Links {
		pl, err := ParseLink(l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		a.Links = append(a.Links, pl)
	}
	for _, l := range r.FolderLinks {
		pl, err := ParseLink(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("folder-%w", err))
			continue
		}
		if pl.Link == "/" {
			errs = append(errs, fmt.Errorf("folder-link %q: the root cannot be a link", l))
			continue
		}
		a.FolderLinks = append(a.FolderLinks, pl)
	}
	return a, errors.Join(errs...)
}

// Decode parses a command line Encode wrote (after the program name).
func Decode(argv []string) (Args, error) {
	if len(argv) < 2 || argv[0] != "hook" || argv[1] != "all" {
		return Args{}, fmt.Errorf("hook command line %q: want hook all [flags]", argv)
	}
	fs := pflag.NewFlagSet("hook all", pflag.ContinueOnError)
	fs.SetOutput(nopWriter{})
	var r Raw
	Register(fs, &r, All)
	if err := fs.Parse(argv[2:]); err != nil {
		return Args{}, fmt.Errorf("hook command line: %w", err)
	}
	if fs.NArg() > 0 {
		return Args{}, fmt.Errorf("hook command line: unexpected arguments %q", fs.Args())
	}
	return r.Args()
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
