package gpu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"sync"
)

// Sentinel errors; check them with errors.Is.
var (
	// ErrNoDriver means no NVIDIA driver was found under the driver root.
	ErrNoDriver = errors.New("no NVIDIA driver found")
	// ErrNoDevices means a driver was found but no GPU.
	ErrNoDevices = errors.New("no NVIDIA GPUs found")
	// ErrNoLibraries means the driver's version is known (its kernel module is loaded) but
	// its 64-bit user-space libraries are not there, as while a driver is being installed.
	ErrNoLibraries = errors.New("NVIDIA driver libraries missing")
	// ErrNeedsCgo means discovery had to load NVIDIA's libraries (NVML, to list MIG
	// devices or a WSL2 host's GPUs; libcuda, for its CUDA version) in a build without
	// cgo, which cannot: nvbind's lean build hands the command to nvbind-node.
	ErrNeedsCgo = errors.New("discovery needs NVIDIA's libraries loaded, which this build of nvbind cannot do (built without cgo)")
)

// Source says where the GPU list came from.
type Source string

// Sources of the GPU list.
const (
	SourceNVML   Source = "nvml"
	SourceProcfs Source = "procfs"
	// SourceCSV: a Jetson's integrated GPU alone, from L4T's CSV files.
	SourceCSV Source = "l4t-csv"
	// SourceWSL: WSL2's paravirtual GPU, without NVML to list the GPUs.
	SourceWSL Source = "wsl"
)

// Flavour is the kernel module flavour.
type Flavour string

// Kernel module flavours.
const (
	FlavourOpen        Flavour = "open"
	FlavourProprietary Flavour = "proprietary"
	FlavourUnknown     Flavour = "unknown"
	// FlavourTegra: L4T's integrated GPU driver (nvgpu), no discrete-GPU driver.
	FlavourTegra Flavour = "tegra"
	// FlavourWSL: the Windows host's driver, through WSL2's /dev/dxg.
	FlavourWSL Flavour = "wsl"
)

// Driver describes the installed driver.
type Driver struct {
	Version       string  `json:"version"`
	VersionSource string  `json:"versionSource"`
	Flavour       Flavour `json:"flavour"`
	CUDAVersion   string  `json:"cudaVersion,omitempty"`
	// ModifyDeviceFiles is the kernel module's ModifyDeviceFiles parameter (nil if unknown).
	ModifyDeviceFiles *bool `json:"modifyDeviceFiles,omitempty"`
}

// DeviceNode is a character device with the numbers read from the dev root.
type DeviceNode struct {
	// Path is the path in the container (and on a host whose dev root is "/").
	Path string `json:"path"`
	// HostPath is the path on this host (under the dev root).
	HostPath string      `json:"hostPath"`
	Major    int64       `json:"major"`
	Minor    int64       `json:"minor"`
	FileMode fs.FileMode `json:"fileMode"`
	UID      uint32      `json:"uid"`
	GID      uint32      `json:"gid"`
}

// Device is one full GPU.
type Device struct {
	Index    int    `json:"index"`
	Minor    int    `json:"minor"`
	UUID     string `json:"uuid"`
	PCIBusID string `json:"pciBusID"`
	Model    string `json:"model"`
	// Arch is the CUDA compute capability ("8.0") and Brand the product brand ("tesla"),
	// both from NVML; empty when NVML is unavailable.
	Arch  string `json:"arch,omitempty"`
	Brand string `json:"brand,omitempty"`
	// Architecture is the GPU architecture's name ("ampere") and Memory the GPU's memory in
	// bytes, from NVML; empty and 0 without it.
	Architecture string `json:"architecture,omitempty"`
	Memory       uint64 `json:"memory,omitempty"`
	// MIGMode tells a GPU in MIG mode (NVML), which may have no MIG device yet.
	MIGMode bool         `json:"migMode,omitempty"`
	Node    DeviceNode   `json:"node"`
	DRM     []DeviceNode `json:"drm,omitempty"`
	MIG     []MIGDevice  `json:"mig,omitempty"`
	// Topology is NVML's topology level from this GPU to each GPU, by position in the
	// inventory (0 for itself; lower is closer); empty without NVML.
	Topology []int `json:"topology,omitempty"`
}

// MIGDevice is one MIG device (a compute instance inside a GPU instance).
type MIGDevice struct {
	Parent int    `json:"parent"`
	Index  int    `json:"index"`
	GI     int    `json:"gi"`
	CI     int    `json:"ci"`
	UUID   string `json:"uuid"`
	// Profile is the MIG profile from NVML's device name ("1g.5gb"), which the device
	// plugin's mixed strategy turns into a resource name.
	Profile string `json:"profile,omitempty"`
	// Memory is the MIG device's memory in bytes, from NVML.
	Memory uint64 `json:"memory,omitempty"`
	// Caps are the GI and CI access capability nodes.
	Caps []DeviceNode `json:"caps"`
}

// WarningKind says what a warning is about, for those who act on it (doctor).
type WarningKind string

// Warning kinds.
const (
	// WarnLeftover: a library of another driver version, skipped.
	WarnLeftover WarningKind = "leftover"
	// WarnUnrecognised: a file named like a driver library that nothing ties to the
	// installed driver (version in name, links or contents, or its CUDA release), skipped.
	WarnUnrecognised WarningKind = "unrecognised"
	// WarnUnreadable: a driver file that could not be read, skipped.
	WarnUnreadable WarningKind = "unreadable"
	// WarnVersionMismatch: NVML's driver version is not the driver files'.
	WarnVersionMismatch WarningKind = "version-mismatch"
	// WarnStaleNode: a device node whose major number is not the loaded module's.
	WarnStaleNode WarningKind = "stale-node"
	// WarnCUDAUnknown: the CUDA version could not be read.
	WarnCUDAUnknown WarningKind = "cuda-unknown"
)

// Warning is a problem that did not stop discovery.
type Warning struct {
	Kind    WarningKind `json:"kind"`
	Message string      `json:"message"`
}

func (w Warning) String() string { return w.Message }

// FileKind is the kind of a driver file.
type FileKind string

// File kinds.
const (
	KindLibrary  FileKind = "library"
	KindBinary   FileKind = "binary"
	KindFirmware FileKind = "firmware"
	KindConfig   FileKind = "config"
	KindSocket   FileKind = "socket"
)

// File is one driver file to mount into containers.
type File struct {
	Kind FileKind `json:"kind"`
	// Path is where the file goes in the container: its path under the driver root, with
	// links resolved (for binaries: the name users call, such as /usr/bin/nvidia-smi).
	Path string `json:"path"`
	// HostPath is the real file on this host.
	HostPath     string       `json:"hostPath"`
	Capabilities Capabilities `json:"-"`
	Caps         []Capability `json:"capabilities"`
	// SONAME is the library's DT_SONAME (libraries only).
	SONAME string `json:"soname,omitempty"`
	// Links are the other names of a library in its folder or in the library folders
	// (SONAME link, development link, Debian's alternatives), as container paths.
	Links []string `json:"links,omitempty"`
	// Bits is 32 or 64 for libraries.
	Bits int `json:"bits,omitempty"`
}

// Inventory is the result of a discovery: immutable once returned.
type Inventory struct {
	DriverRoot   string       `json:"driverRoot"`
	DevRoot      string       `json:"devRoot"`
	Source       Source       `json:"source"`
	NVMLError    string       `json:"nvmlError,omitempty"`
	Driver       Driver       `json:"driver"`
	Devices      []Device     `json:"devices"`
	ControlNodes []DeviceNode `json:"controlNodes"`
	// MIGControl are the MIG config and monitor capability nodes (management only).
	MIGControl   []DeviceNode `json:"migControl,omitempty"`
	IMEXChannels []DeviceNode `json:"imexChannels,omitempty"`
	Files        []File       `json:"files"`
	// IGPU is a Jetson's integrated GPU (L4T CSV files), alone or beside discrete GPUs.
	IGPU *IGPU `json:"igpu,omitempty"`
	// WSL is a WSL2 host's paravirtual GPU access; Devices are then the GPUs NVML names.
	WSL *WSL `json:"wsl,omitempty"`
	// Warnings are problems that did not stop discovery (skipped leftovers, stale nodes).
	Warnings []Warning `json:"warnings,omitempty"`

	// nvml is the NVML that listed Devices (Source NVML), for the health monitor.
	nvml nvmlLib
}

// FilesFor returns the files that serve any capability in caps. A library that is 32-bit
// only goes with compat32.
func (inv *Inventory) FilesFor(caps Capabilities) []File {
	var out []File
	for _, f := range inv.Files {
		if !f.Capabilities.Intersects(caps) {
			continue
		}
		if f.Bits == 32 && !caps.Has(CapCompat32) {
			continue
		}
		out = append(out, f)
	}
	return out
}

// DeviceStater reads a device node's numbers.
type DeviceStater interface {
	Stat(path string) (DeviceNode, error)
}

type config struct {
	driverRoot string
	devRoot    string
	// where nvbind itself reads the two roots (a container that mounts them elsewhere)
	driverRootMount string
	devRootMount    string
	nvml            nvmlLib
	nvmlForMIG      bool
	stater          DeviceStater
	noNVML          bool
	noCUDA          bool
}

// Option configures a Discoverer.
type Option func(*config) error

// WithDriverRoot sets where the driver's user-space files are (default "/").
func WithDriverRoot(dir string) Option {
	return func(c *config) error {
		if dir == "" {
			return errors.New("driver root must not be empty")
		}
		c.driverRoot = dir
		return nil
	}
}

// WithDevRoot sets where the host's /dev, /proc and /sys are seen (default "/").
func WithDevRoot(dir string) Option {
	return func(c *config) error {
		if dir == "" {
			return errors.New("dev root must not be empty")
		}
		c.devRoot = dir
		return nil
	}
}

// WithDriverRootMount reads the driver root at dir while specs keep naming the host's
// driver root: for nvbind running in a container that mounts the host's driver root there.
func WithDriverRootMount(dir string) Option {
	return func(c *config) error { c.driverRootMount = dir; return nil }
}

// WithDevRootMount reads /dev, /proc and /sys under dir while specs keep naming the
// host's dev root.
func WithDevRootMount(dir string) Option {
	return func(c *config) error { c.devRootMount = dir; return nil }
}

// WithoutNVML skips NVML and reads the GPU list from procfs.
func WithoutNVML() Option {
	return func(c *config) error { c.noNVML = true; return nil }
}

// WithoutCUDAVersion never loads libcuda to ask its CUDA version when NVML does not say
// (loading libcuda costs milliseconds; specs do not need the version). Libraries whose
// only tie to the driver is their CUDA release are then matched against libcuda's build
// stamp alone.
func WithoutCUDAVersion() Option {
	return func(c *config) error { c.noCUDA = true; return nil }
}

// WithNVMLOnlyForMIG starts NVML only when /proc/driver/nvidia cannot answer: when it lists
// no GPU, or when a GPU has MIG instances (/proc/driver/nvidia/capabilities/gpuN/mig/gi*),
// whose UUIDs only NVML knows. Index, minor, UUID, PCI bus and model come from procfs
// alone; architecture, brand, topology and the CUDA version are left out. For commands
// that need no more, such as cdi generate: NVML's init costs far more than procfs.
func WithNVMLOnlyForMIG() Option {
	return func(c *config) error { c.nvmlForMIG = true; return nil }
}

// WithDeviceStater replaces how device nodes are read (tests on trees without real nodes).
func WithDeviceStater(s DeviceStater) Option {
	return func(c *config) error { c.stater = s; return nil }
}

// Discoverer finds GPUs and driver files. It holds configuration only.
type Discoverer struct {
	cfg config

	mu   sync.Mutex
	libs map[string]nvmlLib // by library path: one per driver install
	// cuda is the CUDA version of the last libcuda asked, by the file's identity: loading
	// libcuda costs milliseconds, and a discovery runs at every DRA prepare
	cuda struct {
		key     cudaKey
		version string
	}
}

// nvmlAt returns the NVML of a library path, the same one for every discovery.
func (d *Discoverer) nvmlAt(path string) (nvmlLib, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.libs == nil {
		d.libs = map[string]nvmlLib{}
	}
	lib := d.libs[path]
	if lib == nil {
		var err error
		if lib, err = loadNVML(path); err != nil {
			return nil, err
		}
		d.libs[path] = lib
	}
	return lib, nil
}

// New resolves options; it does no I/O.
func New(opts ...Option) (*Discoverer, error) {
	c := config{driverRoot: "/", devRoot: "/"}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	var err error
	if c.driverRoot, err = filepath.Abs(c.driverRoot); err != nil {
		return nil, fmt.Errorf("driver root %q: %w", c.driverRoot, err)
	}
	if c.devRoot, err = filepath.Abs(c.devRoot); err != nil {
		return nil, fmt.Errorf("dev root %q: %w", c.devRoot, err)
	}
	if c.driverRootMount == "" {
		c.driverRootMount = c.driverRoot
	}
	if c.devRootMount == "" {
		c.devRootMount = c.devRoot
	}
	for _, p := range []*string{&c.driverRootMount, &c.devRootMount} {
		if *p, err = filepath.Abs(*p); err != nil {
			return nil, err
		}
	}
	if c.stater == nil {
		c.stater = statDevice{}
	}
	return &Discoverer{cfg: c}, nil
}

// Discover runs a full discovery. It returns ErrNoDriver when the driver root has no
// driver, and ErrNoDevices when the driver is there but no GPU is.
func (d *Discoverer) Discover(ctx context.Context) (*Inventory, error) {
	inv := &Inventory{DriverRoot: d.cfg.driverRoot, DevRoot: d.cfg.devRoot}
	dr := newRootFS(d.cfg.driverRootMount, d.cfg.driverRoot)
	// The driver's other files (programs, firmware, configs, sockets) need only its
	// version: they are looked for beside the libraries, on the second core, with a rootFS
	// of their own (its cache is not shared).
	var others []File
	var wg sync.WaitGroup
	defer wg.Wait()
	findOthers := func(version string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			or := newRootFS(d.cfg.driverRootMount, d.cfg.driverRoot)
			others = append(others, findBinaries(or)...)
			others = append(others, findFirmware(or, version)...)
			others = append(others, findConfigs(or, version)...)
			others = append(others, findSockets(or)...)
		}()
	}
	proc := procFiles{root: d.cfg.devRootMount}

	// 1. Driver version: the loaded kernel module says it best; else the driver's files.
	if v, fl, err := proc.version(); err == nil {
		inv.Driver = Driver{Version: v, Flavour: fl, VersionSource: "proc/driver/nvidia/version"}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if inv.Driver.Version != "" {
		findOthers(inv.Driver.Version)
	}
	libs, err := findLibraries(dr, inv.Driver.Version)
	if err != nil {
		return nil, err
	}
	if inv.Driver.Version == "" {
		inv.Driver = Driver{Version: libs.version, Flavour: FlavourUnknown, VersionSource: "library file names"}
		if libs.version != "" {
			findOthers(libs.version)
		}
	}
	// Libraries whose only tie to the driver is the CUDA release they were built for are
	// weighed against the install's CUDA version, else libcuda's own stamp, a scan of
	// megabytes. Those all built for their branch's release need neither: the stamp would
	// say the same. Where neither NVML (not started, or only for MIG) nor libcuda (not
	// loaded) is to give the version, the stamp is read meanwhile; the scan touches
	// nothing shared, and ends on its own when Discover returns first.
	ofBranch := libs.cudaPath != "" && libs.pendingOf(branchRelease(inv.Driver.Version))
	libcudaRelease := sync.OnceValue(func() string { return cudaRelease(libs.cudaPath) })
	if len(libs.pending) > 0 && !ofBranch && libs.cudaPath != "" && d.cfg.noCUDA && (d.cfg.noNVML || d.cfg.nvmlForMIG) {
		go libcudaRelease()
	}
	// A Jetson's integrated GPU, from L4T's CSV files: alone, or beside discrete GPUs.
	ig, igWarnings, err := d.discoverIGPU(dr)
	if err != nil {
		return nil, err
	}
	if inv.Driver.Version == "" && ig == nil {
		if ok, err := d.discoverWSL(ctx, dr, inv); err != nil {
			return nil, err
		} else if ok {
			return inv, nil
		}
	}
	if inv.Driver.Version == "" && ig != nil {
		inv.Driver = Driver{Flavour: FlavourTegra, VersionSource: "L4T CSV files in " + CSVDir}
		if ig.Release != "" {
			inv.Driver.Version, inv.Driver.VersionSource = "L4T "+ig.Release, "/etc/nv_tegra_release"
		}
		inv.Source, inv.IGPU, inv.Warnings = SourceCSV, ig, igWarnings
		return inv, nil
	}
	if inv.Driver.Version == "" {
		return nil, fmt.Errorf("%w: driver root %s has no proc/driver/nvidia/version under dev root %s, no libcuda.so or libnvidia-ml.so in %s, no L4T CSV files in %s, and no WSL2 %s with %s",
			ErrNoDriver, d.cfg.driverRoot, d.cfg.devRoot, libs.searched, CSVDir, WSLDevice, WSLLibDir)
	}
	inv.IGPU = ig
	inv.Warnings = append(inv.Warnings, igWarnings...)
	inv.Warnings = append(inv.Warnings, libs.warnings...)
	if libs.nvmlPath == "" && libs.cudaPath == "" {
		// a spec without the driver's libraries would give containers devices they cannot use
		return nil, fmt.Errorf("%w: driver %s is loaded but neither libcuda nor libnvidia-ml of that version (64-bit) is under %s (searched %s)",
			ErrNoLibraries, inv.Driver.Version, d.cfg.driverRoot, libs.searched)
	}
	if mdf, err := proc.modifyDeviceFiles(); err == nil {
		inv.Driver.ModifyDeviceFiles = &mdf
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// 2. GPUs: NVML first, procfs when NVML cannot run.
	if err := d.discoverDevices(ctx, inv, libs.nvmlPath); err != nil {
		return nil, err
	}

	// 3. Device nodes.
	if err := d.discoverNodes(inv, proc); err != nil {
		return nil, err
	}

	if inv.Driver.CUDAVersion == "" && libs.cudaPath != "" && !d.cfg.noCUDA {
		if v, err := d.cudaVersion(libs.cudaPath); err == nil {
			inv.Driver.CUDAVersion = v
		} else if errors.Is(err, ErrNeedsCgo) {
			return nil, err
		} else {
			inv.Warnings = append(inv.Warnings, Warning{WarnCUDAUnknown, "CUDA version unknown: " + err.Error()})
		}
	}

	// Libraries whose only tie to the driver is the CUDA release they were built for.
	if len(libs.pending) > 0 {
		cuda := inv.Driver.CUDAVersion
		if cuda == "" && ofBranch {
			cuda = branchRelease(inv.Driver.Version)
		}
		if cuda == "" && libs.cudaPath != "" {
			// libcuda's own build stamp, else libcuda asked (only on such installs, and
			// not with WithoutCUDAVersion, which never loads it)
			if cuda = libcudaRelease(); cuda == "" && !d.cfg.noCUDA {
				var err error
				if cuda, err = cudaDriverVersion(libs.cudaPath); errors.Is(err, ErrNeedsCgo) {
					return nil, err
				}
			}
		}
		n := len(libs.warnings)
		libs.settle(dr, cuda)
		inv.Warnings = append(inv.Warnings, libs.warnings[n:]...)
	}

	// 4. Driver files.
	inv.Files = libs.files
	wg.Wait()
	inv.Files = append(inv.Files, others...)
	for i := range inv.Files {
		inv.Files[i].Caps = inv.Files[i].Capabilities.List()
	}
	sort.SliceStable(inv.Files, func(i, j int) bool { return inv.Files[i].Path < inv.Files[j].Path })
	if len(inv.Devices) == 0 && inv.IGPU == nil {
		return inv, fmt.Errorf("%w: driver %s is installed under %s but no GPU is listed by %s", ErrNoDevices,
			inv.Driver.Version, d.cfg.driverRoot, inv.Source)
	}
	return inv, nil
}
