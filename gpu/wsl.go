package gpu

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
)

// WSL2 hands the Windows host's GPUs to Linux through /dev/dxg, with the user-space
// driver in these folders: WSL's own libraries, and the Windows driver store that holds
// NVIDIA's (nv_dispi.inf_amd64_<hash>).
const (
	WSLLibDir     = "/usr/lib/wsl/lib"
	WSLDriversDir = "/usr/lib/wsl/drivers"
	// WSLDevice is the paravirtual GPU node all of WSL2's GPUs share.
	WSLDevice = "/dev/dxg"
)

// WSL is the paravirtual GPU access of a WSL2 host.
type WSL struct {
	Node DeviceNode `json:"node"`
	// DriverStores are NVIDIA's driver-store folders (those that hold libcuda.so.1.1).
	DriverStores []string `json:"driverStores"`
	// Files are the libraries and programs of WSL's library folder and of the driver
	// store, mounted at the same paths.
	Files []File `json:"files"`
	// Links are the SONAME links the folders lack, and /usr/bin/nvidia-smi.
	Links []SymLink `json:"links,omitempty"`
}

// isWSLFile says whether a file of WSL's folders goes to containers: libraries, the
// driver store's GPU code and nvidia-smi.
func isWSLFile(name string) bool {
	return strings.Contains(name, ".so") || name == "nvidia-smi" || strings.HasSuffix(name, ".bin")
}

// discoverWSL finds a WSL2 host's GPU access; nil when the host is not WSL2 (no /dev/dxg
// or no WSL library folder).
func (d *Discoverer) discoverWSL(ctx context.Context, r rootFS, inv *Inventory) (bool, error) {
	node, ok, err := d.node(strings.TrimPrefix(WSLDevice, "/dev/"))
	if err != nil || !ok {
		return false, err
	}
	if _, fi, err := r.stat(WSLLibDir); err != nil || !fi.IsDir() {
		return false, nil
	}
	w := &WSL{Node: node}
	folders := []string{WSLLibDir}
	for _, e := range r.readDir(WSLDriversDir) {
		dir := path.Join(WSLDriversDir, e.Name())
		if _, fi, err := r.stat(path.Join(dir, "libcuda.so.1.1")); err == nil && fi.Mode().IsRegular() {
			w.DriverStores = append(w.DriverStores, dir)
		}
	}
	if len(w.DriverStores) == 0 {
		inv.Warnings = append(inv.Warnings, Warning{WarnUnrecognised, fmt.Sprintf("WSL2: no NVIDIA driver store (a folder of %s with libcuda.so.1.1): only %s is mounted", WSLDriversDir, WSLLibDir)})
	}
	folders = append(folders, w.DriverStores...)
	sonames := map[string]map[string]bool{} // folder -> names present
	var smi string
	for _, dir := range folders {
		sonames[dir] = map[string]bool{}
		for _, e := range r.readDir(dir) {
			name := e.Name()
			if !isWSLFile(name) {
				continue
			}
			p := path.Join(dir, name)
			real, fi, err := r.stat(p)
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			sonames[dir][name] = true
			f := File{Path: p, HostPath: r.emitPath(real), Capabilities: CapsAll}
			switch {
			case name == "nvidia-smi":
				f.Kind = KindBinary
				if smi == "" || dir != WSLLibDir {
					smi = p // the driver store's matches its libraries
				}
			case strings.Contains(name, ".so"):
				f.Kind = KindLibrary
				soname, bits, err := elfInfo(r.host(real))
				if err != nil {
					inv.Warnings = append(inv.Warnings, Warning{WarnUnreadable, fmt.Sprintf("skipped %s: %v", r.host(p), err)})
					continue
				}
				f.SONAME, f.Bits = soname, bits
			default:
				f.Kind = KindFirmware // nvcubins.bin: GPU code the driver loads
			}
			w.Files = append(w.Files, f)
		}
	}
	for _, f := range w.Files {
		dir := path.Dir(f.Path)
		if f.Kind == KindLibrary && f.SONAME != "" && !sonames[dir][f.SONAME] {
			sonames[dir][f.SONAME] = true
			w.Links = append(w.Links, SymLink{Path: path.Join(dir, f.SONAME), Target: path.Base(f.Path), HostPath: f.HostPath})
		}
	}
	if smi != "" {
		for _, f := range w.Files {
			if f.Path == smi {
				w.Links = append(w.Links, SymLink{Path: "/usr/bin/nvidia-smi", Target: smi, HostPath: f.HostPath})
			}
		}
	}
	sort.Slice(w.Files, func(i, j int) bool { return w.Files[i].Path < w.Files[j].Path })
	for i := range w.Files {
		w.Files[i].Caps = w.Files[i].Capabilities.List()
	}
	inv.WSL = w
	inv.Driver = Driver{Flavour: FlavourWSL, VersionSource: "the Windows host's driver (WSL2)"}
	inv.Source = SourceWSL

	// NVML works on WSL2, through the host: it names the GPUs
	lib := d.cfg.nvml
	if lib == nil && !d.cfg.noNVML {
		for _, f := range w.Files {
			if path.Base(f.Path) == "libnvidia-ml.so.1" {
				var err error
				if lib, err = loadNVML(r.host(f.Path)); err != nil {
					return false, err
				}
				break
			}
		}
	}
	if d.cfg.noNVML {
		lib = nil
		inv.NVMLError = "not used (--no-nvml)"
	}
	if lib != nil {
		devs, ver, cuda, err := nvmlDevices(ctx, lib)
		if err != nil {
			inv.NVMLError = err.Error()
		} else {
			inv.Source = SourceNVML
			inv.Driver.Version, inv.Driver.CUDAVersion = ver, cuda
			if ver != "" {
				inv.Driver.VersionSource = "NVML (the Windows host's driver)"
			}
			for _, dv := range devs {
				dv.Node, dv.DRM, dv.MIG = node, nil, nil // one paravirtual node; no MIG through WSL2
				inv.Devices = append(inv.Devices, dv)
			}
		}
	} else if inv.NVMLError == "" {
		inv.NVMLError = "libnvidia-ml.so.1 not found in " + WSLLibDir
	}
	return true, nil
}
