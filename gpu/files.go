package gpu

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nvbind/nvbind/internal/fileio"
	"github.com/nvbind/nvbind/internal/ldcache"
	"github.com/nvbind/nvbind/internal/version"
)

// libDirs are the library folders searched under the driver root, besides those the
// driver root's ld.so.cache names. Missing ones are skipped.
var libDirs = []string{
	"/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib",
	"/usr/lib/aarch64-linux-gnu", "/lib/aarch64-linux-gnu",
	"/usr/local/nvidia/lib64", "/usr/local/nvidia/lib",
	"/usr/lib/x86_64-linux-gnu/vdpau", "/usr/lib64/vdpau", "/usr/lib/vdpau", "/usr/lib/aarch64-linux-gnu/vdpau",
	"/usr/lib/x86_64-linux-gnu/gbm", "/usr/lib64/gbm",
	"/usr/lib/xorg/modules/drivers", "/usr/lib/xorg/modules/extensions",
	"/usr/lib64/xorg/modules/drivers", "/usr/lib64/xorg/modules/extensions",
	"/usr/lib/x86_64-linux-gnu/nvidia/xorg",
	// 32-bit (compat32)
	"/usr/lib/i386-linux-gnu", "/lib/i386-linux-gnu", "/usr/lib32", "/lib32", "/usr/lib/i386-linux-gnu/vdpau",
}

// libDirGlobs find the per-flavour folders of distribution packages (Debian's
// nvidia/current, nvidia/tesla-470, ...).
var libDirGlobs = []string{"/usr/lib/*/nvidia", "/usr/lib/nvidia"}

var (
	// names of NVIDIA projects that ship beside the driver with versions of their own
	notDriver = []string{"libnvidia-container", "libnvidia-egl-wayland", "libnvidia-egl-gbm", "libnvidia-egl-xcb",
		"libnvidia-egl-xlib", "libnvidia-vksc-core"}
)

// isDriverLibName says whether a file name may be one of the driver's libraries or modules.
func isDriverLibName(name string) bool {
	if !strings.Contains(name, ".so") {
		return false
	}
	for _, p := range notDriver {
		if strings.HasPrefix(name, p+".") || strings.HasPrefix(name, p+"-") {
			return false
		}
	}
	for _, p := range []string{"libnvidia-", "libcuda.", "libcudadebugger.", "libnvcuvid.", "libnvoptix.", "libGLX_nvidia.",
		"libEGL_nvidia.", "libGLESv2_nvidia.", "libGLESv1_CM_nvidia.", "libvdpau_nvidia.", "libglxserver_nvidia.",
		"nvidia_drv.so", "nvidia-drm_gbm.so"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

type libResult struct {
	files    []File
	pending  []pendingLib
	version  string
	nvmlPath string
	cudaPath string
	searched string
	warnings []Warning
}

type libCandidate struct {
	real  string   // rooted real path
	names []string // rooted paths that resolve to real
	// what elfInfo read of it (readELFs)
	soname string
	bits   int
	err    error
	// what its contents say, read (readELFs) only when its names leave open whether it
	// is the driver's: whether its data mentions the driver version, else the CUDA
	// release it was built for
	mentions bool
	release  string
}

// namedFor reports whether the candidate's names settle whether it is of the driver
// version: a version in its name (this one or another driver's), or a name of the
// version that links to it.
func (c *libCandidate) namedFor(version string) bool {
	if v := soVersion(path.Base(c.real)); v != "" && (v == version || looksLikeDriverVersion(v)) {
		return true
	}
	return c.linkedAs(version)
}

// readELFs reads every candidate's SONAME and class, and the contents of those whose
// names do not settle whether they are of version, on two goroutines that take the next
// candidate as they go: dozens of small reads, each a system call, which is most of
// discovery on a VM, and a few scans of a library's data (megabytes) that one goroutine
// does while the other goes on.
func readELFs(r rootFS, byReal map[string]*libCandidate, version string) {
	cands := make([]*libCandidate, 0, len(byReal))
	for _, c := range byReal {
		cands = append(cands, c)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(cands); i = int(next.Add(1) - 1) {
				c := cands[i]
				c.soname, c.bits, c.err = elfInfo(r.host(c.real))
				if !c.namedFor(version) {
					if c.mentions = fileMentions(r.host(c.real), version); !c.mentions {
						c.release = cudaRelease(r.host(c.real))
					}
				}
			}
		}()
	}
	wg.Wait()
}

// findLibraries finds every library of the installed driver. version may be empty: then
// the version is taken from what libnvidia-ml.so.1 or libcuda.so.1 resolves to.
func findLibraries(r rootFS, version string) (libResult, error) {
	var res libResult
	dirs := searchDirs(r)
	res.searched = strings.Join(dirs, ", ")

	// Every driver-looking name in every folder, grouped by the real file it resolves to.
	byReal := map[string]*libCandidate{}
	var order []string
	for _, dir := range dirs {
		for _, e := range r.readDir(dir) {
			name := e.Name()
			if !isDriverLibName(name) {
				continue
			}
			p := path.Join(dir, name)
			real, regular := p, e.Type().IsRegular() // dirs are canonical: a plain file needs no resolution
			var err error
			if !regular {
				var fi fs.FileInfo
				real, fi, err = r.stat(p)
				regular = err == nil && fi.Mode().IsRegular()
			}
			if err != nil || !regular {
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					res.warnings = append(res.warnings, Warning{WarnUnreadable, fmt.Sprintf("skipped %s: %v", r.host(p), err)})
				}
				continue
			}
			c, ok := byReal[real]
			if !ok {
				c = &libCandidate{real: real}
				byReal[real] = c
				order = append(order, real)
			}
			c.names = append(c.names, p)
		}
	}
	if version == "" {
		version = versionFromLinks(r, byReal)
	}
	res.version = version
	if version == "" {
		return res, nil
	}
	sort.Strings(order)
	readELFs(r, byReal, version)
	for _, real := range order {
		c := byReal[real]
		base := path.Base(real)
		v := soVersion(base)
		switch {
		case v != "" && v == version:
		case v != "" && looksLikeDriverVersion(v):
			res.warnings = append(res.warnings, Warning{WarnLeftover, fmt.Sprintf("skipped %s: driver %s, not the installed %s", r.host(real), v, version)})
			continue
		case c.linkedAs(version):
			// no version in its name (or a version of its own: libnvidia-nvvm.so.4.0.0),
			// but a name of the driver's version links to it
		case c.mentions:
		default:
			// the last evidence, the CUDA release it was built for, is weighed once the
			// install's CUDA version is known (Discover)
			if c.release != "" {
				res.pending = append(res.pending, pendingLib{c, c.release})
			} else {
				res.warnings = append(res.warnings, Warning{WarnUnrecognised, fmt.Sprintf("skipped %s: neither its name, its links nor its contents carry driver %s or a CUDA release", r.host(real), version)})
			}
			continue
		}
		res.accept(r, c)
	}
	return res, nil
}

// pendingLib is a driver-named library whose only evidence is the CUDA release it was
// built for ("Cuda compilation tools, release 11.4" in its data), as libnvidia-nvvm.so.4.0.0
// of the 470 branch.
type pendingLib struct {
	c       *libCandidate
	release string
}

// linkedAs reports whether one of the names that resolve to the file carries the
// driver version (libnvidia-nvvm.so.535.261.03 -> libnvidia-nvvm.so.4).
func (c *libCandidate) linkedAs(version string) bool {
	for _, n := range c.names {
		if v := soVersion(path.Base(n)); v != "" && v == version {
			return true
		}
	}
	return false
}

// pendingOf reports whether there are pending libraries and all were built for the CUDA
// release cuda (false when cuda is empty).
func (res *libResult) pendingOf(cuda string) bool {
	if cuda == "" || len(res.pending) == 0 {
		return false
	}
	for _, p := range res.pending {
		if p.release != cuda {
			return false
		}
	}
	return true
}

// branchReleases is the CUDA release of each driver branch's libcuda, as NVIDIA's CUDA
// release notes pair them ("CUDA Toolkit and Corresponding Driver Versions"): a branch
// keeps its release through all its updates. It only spares the scan of libcuda's stamp
// for libraries built for that very release; any other is weighed against the stamp.
var branchReleases = map[string]string{
	"410": "10.0", "418": "10.1", "440": "10.2", "450": "11.0", "455": "11.1", "460": "11.2",
	"465": "11.3", "470": "11.4", "495": "11.5", "510": "11.6", "515": "11.7", "520": "11.8",
	"525": "12.0", "530": "12.1", "535": "12.2", "545": "12.3", "550": "12.4", "555": "12.5",
	"560": "12.6", "565": "12.7", "570": "12.8", "575": "12.9", "580": "13.0",
}

// branchRelease is the CUDA release of a driver version's branch ("470.256.02": "11.4"),
// or "" for a branch not in branchReleases.
func branchRelease(version string) string {
	branch, _, ok := strings.Cut(version, ".")
	if !ok {
		return ""
	}
	return branchReleases[branch]
}

// settle accepts the pending libraries built for the install's CUDA release cuda
// ("11.4"; empty when unknown) and reports the others with the reason.
func (res *libResult) settle(r rootFS, cuda string) {
	for _, p := range res.pending {
		if cuda != "" && p.release == cuda {
			res.accept(r, p.c)
			continue
		}
		why := "the CUDA version of this driver's libcuda is unknown"
		if cuda != "" {
			why = "this driver's libcuda is CUDA " + cuda
		}
		res.warnings = append(res.warnings, Warning{WarnUnrecognised, fmt.Sprintf("skipped %s: no driver version in its name, links or contents, and it was built for CUDA %s, but %s",
			r.host(p.c.real), p.release, why)})
	}
	res.pending = nil
	sort.SliceStable(res.files, func(i, j int) bool { return res.files[i].Path < res.files[j].Path })
}

// accept adds a library of the installed driver.
func (res *libResult) accept(r rootFS, c *libCandidate) {
	real, base := c.real, path.Base(c.real)
	soname, bits, err := c.soname, c.bits, c.err
	if err != nil {
		res.warnings = append(res.warnings, Warning{WarnUnreadable, fmt.Sprintf("skipped %s: %v", r.host(real), err)})
		return
	}
	f := File{Kind: KindLibrary, Path: real, HostPath: r.emitPath(real), SONAME: soname, Bits: bits,
		Capabilities: classifyLibrary(base)}
	if bits == 32 {
		f.Capabilities |= CapsOf(CapCompat32)
	}
	for _, n := range c.names {
		if n != real {
			f.Links = append(f.Links, n)
		}
	}
	sort.Strings(f.Links)
	if bits == 64 && strings.HasPrefix(base, "libnvidia-ml.so") {
		res.nvmlPath = r.host(real) // where nvbind reads it, not where the host sees it
	}
	if bits == 64 && strings.HasPrefix(base, "libcuda.so") {
		res.cudaPath = r.host(real)
	}
	res.files = append(res.files, f)
}

// soVersion is the version of a library named <stem>.so.<version>, the version two or
// three runs of digits joined by dots (libcuda.so.535.261.03, libnvidia-ml.so.470.57),
// else "". It is the pattern ^(.+\.so)\.(\d+\.\d+(?:\.\d+)?)$ without compiling one,
// which a short command paid for (FuzzSOVersion keeps the two equal).
func soVersion(name string) string {
	i := strings.LastIndex(name, ".so.") // the version holds no ".so."
	if i < 1 || strings.IndexByte(name[:i], '\n') >= 0 {
		return ""
	}
	v := name[i+len(".so."):]
	if n, ok := dottedDigits(v); !ok || n < 2 || n > 3 {
		return ""
	}
	return v
}

// dottedDigits counts the runs of ASCII digits in s joined by single dots ("1.22.333":
// 3), and reports whether s is only that.
func dottedDigits(s string) (int, bool) {
	n, run := 0, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			run++
		case c == '.' && run > 0:
			n, run = n+1, 0
		default:
			return 0, false
		}
	}
	if run == 0 {
		return 0, false
	}
	return n + 1, true
}

// looksLikeDriverVersion tells driver versions (535.261.03, 470.57.02) from library
// versions that other projects use (1.1.13).
func looksLikeDriverVersion(v string) bool {
	major, _, _ := strings.Cut(v, ".")
	return len(major) >= 3
}

// versionFromLinks reads the version from the 64-bit file libnvidia-ml.so.1 or
// libcuda.so.1 resolves to (32-bit libraries alone do not make a driver).
func versionFromLinks(r rootFS, byReal map[string]*libCandidate) string {
	for _, want := range []string{"libnvidia-ml.so.1", "libcuda.so.1"} {
		var found []string
		for real, c := range byReal {
			for _, n := range c.names {
				if path.Base(n) != want {
					continue
				}
				v := soVersion(path.Base(real))
				if v == "" || !looksLikeDriverVersion(v) {
					continue
				}
				if _, bits, err := elfInfo(r.host(real)); err == nil && bits == 64 {
					found = append(found, v)
				}
			}
		}
		if len(found) > 0 {
			// numerically: 535.99.01 < 535.261.03
			slices.SortFunc(found, func(a, b string) int {
				switch {
				case version.Less(a, b):
					return -1
				case version.Less(b, a):
					return 1
				}
				return strings.Compare(a, b)
			})
			return found[len(found)-1]
		}
	}
	return ""
}

// searchDirs returns the library folders to search: the fixed list, the per-flavour
// folders, and the folders of driver libraries in the driver root's ld.so.cache.
func searchDirs(r rootFS) []string {
	seen := map[string]bool{}
	var out []string
	add := func(d string) {
		// the canonical path only: a folder reached through a link (merged /lib, Debian's
		// nvidia/nvidia alternative) is the same folder
		real, fi, err := r.stat(d)
		if err != nil || !fi.IsDir() || real != path.Clean(d) || seen[real] {
			return
		}
		d = real
		seen[d] = true
		out = append(out, d)
	}
	for _, d := range libDirs {
		add(d)
	}
	for _, g := range libDirGlobs {
		for _, base := range expandGlob(r, g) {
			for _, e := range r.readDir(base) {
				if e.IsDir() { // real folders only: Debian's nvidia/nvidia is a link to the chosen one
					add(path.Join(base, e.Name()))
				}
			}
			add(base)
		}
	}
	if data, err := fileio.ReadFile(r.host("/etc/ld.so.cache"), ldcache.MaxSize); err == nil {
		if entries, err := ldcache.Parse(data); err == nil {
			for _, e := range entries {
				if isDriverLibName(path.Base(e.Name)) {
					add(path.Dir(e.Path))
				}
			}
		}
	}
	return out
}

// expandGlob expands one "*" component of a rooted pattern.
func expandGlob(r rootFS, pattern string) []string {
	before, after, ok := strings.Cut(pattern, "*")
	if !ok {
		return []string{pattern}
	}
	dir := path.Clean(before)
	var out []string
	for _, e := range r.readDir(dir) {
		out = append(out, path.Clean(path.Join(dir, e.Name())+after))
	}
	return out
}

// fileMentions reports whether the file's read-only data holds the version string: how
// the driver's libraries without a version in their names (libnvidia-api.so.1,
// nvidia_drv.so) are told from leftovers of another driver.
func fileMentions(p, version string) bool {
	f, done, err := openELF(p)
	if err != nil {
		return false
	}
	defer done()
	needle := []byte(version)
	for _, name := range []string{".rodata", ".data"} {
		sec := f.Section(name)
		if sec == nil || sec.Type == elf.SHT_NOBITS {
			continue
		}
		if readerMentions(sec.Open(), needle) {
			return true
		}
	}
	return false
}

// scanBuffers holds the scan windows: one discovery scans a few libraries, and a fresh
// window each time was most of what discovery allocated.
var scanBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// readerMentions scans a stream for needle in 64 KiB windows that overlap by its length.
func readerMentions(rd io.Reader, needle []byte) bool {
	_, ok := readerFind(rd, needle, 0, nil)
	return ok
}

// readerFind scans a stream for needle and returns up to tail bytes that follow it (fewer
// at the end of the stream): the first match whose tail accept takes (nil: any).
func readerFind(rd io.Reader, needle []byte, tail int, accept func([]byte) bool) ([]byte, bool) {
	bp := scanBuffers.Get().(*[]byte)
	defer scanBuffers.Put(bp)
	buf := *bp
	span := len(needle) + tail // a match and its tail always fit in what is kept
	if len(buf) < 2*span {
		buf = make([]byte, 2*span)
	}
	keep := 0
	for {
		n, err := io.ReadFull(rd, buf[keep:])
		window, eof := buf[:keep+n], err != nil
		carry := -1 // where the bytes kept for the next read start
		for from := 0; ; {
			i := bytes.Index(window[from:], needle)
			if i < 0 {
				break
			}
			i += from
			rest := window[i+len(needle):]
			if len(rest) < tail && !eof {
				carry = i // the tail goes on in the next read
				break
			}
			if got := rest[:min(tail, len(rest))]; accept == nil || accept(got) {
				return bytes.Clone(got), true
			}
			from = i + 1
		}
		if eof {
			return nil, false
		}
		if carry < 0 {
			// no whole match fits in fewer bytes than the needle: none is seen twice
			carry = len(window) - min(len(window), len(needle)-1)
		}
		keep = copy(buf, window[carry:])
	}
}

// cudaStampPrefix starts the build stamp NVIDIA's CUDA compilers leave in what they build.
var cudaStampPrefix = []byte("Cuda compilation tools, release ")

// cudaRelease returns the CUDA release ("11.4") of the build stamp in a library's data,
// or "".
func cudaRelease(p string) string {
	f, done, err := openELF(p)
	if err != nil {
		return ""
	}
	defer done()
	for _, name := range []string{".rodata", ".data"} {
		sec := f.Section(name)
		if sec == nil || sec.Type == elf.SHT_NOBITS {
			continue
		}
		// "11.4, V11.4.557": the release runs up to the comma; format strings
		// ("release %d.%d,") are passed over
		release := func(after []byte) []byte {
			if rel, _, ok := bytes.Cut(after, []byte(",")); ok && isRelease(rel) {
				return rel
			}
			return nil
		}
		if after, ok := readerFind(sec.Open(), cudaStampPrefix, 16, func(b []byte) bool { return release(b) != nil }); ok {
			return string(release(after))
		}
	}
	return ""
}

// isRelease matches "11.4": 1-3 digits, a dot, 1-3 digits.
func isRelease(b []byte) bool {
	maj, mnr, ok := bytes.Cut(b, []byte("."))
	digits := func(x []byte) bool {
		if len(x) == 0 || len(x) > 3 {
			return false
		}
		for _, c := range x {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	return ok && digits(maj) && digits(mnr)
}

// elfInfo reads a shared library's SONAME and class through its program headers (a few
// small reads, however large the library), as the hook's ld cache does.
func elfInfo(p string) (string, int, error) {
	f, err := fileio.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer func() { _ = f.Close() }()
	lib, err := ldcache.ReadLibrary(f)
	if err != nil {
		return "", 0, err
	}
	bits := 64
	if lib.Class == elf.ELFCLASS32 {
		bits = 32
	}
	return lib.SONAME, bits, nil
}

// openELF is elf.Open through fileio.Open; done closes the file.
func openELF(p string) (*elf.File, func(), error) {
	file, err := fileio.Open(p)
	if err != nil {
		return nil, nil, err
	}
	f, err := elf.NewFile(file)
	if err != nil {
		_ = file.Close()
		return nil, nil, err
	}
	return f, func() { _ = file.Close() }, nil
}

// binaries and the capability each serves.
var binaries = []struct {
	name string
	caps Capabilities
}{
	{"nvidia-smi", CapsOf(CapUtility)},
	{"nvidia-debugdump", CapsOf(CapUtility)},
	{"nvidia-persistenced", CapsOf(CapUtility)},
	{"nvidia-cuda-mps-control", CapsOf(CapCompute)},
	{"nvidia-cuda-mps-server", CapsOf(CapCompute)},
	{"nvidia-imex", CapsOf(CapCompute)},
	{"nvidia-imex-ctl", CapsOf(CapCompute)},
}

var binDirs = []string{"/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/local/sbin", "/usr/local/nvidia/bin"}

// findBinaries finds the driver's programs. Each is mounted where users call it
// (/usr/bin/nvidia-smi) from the real file, even when the name is an alternatives link.
func findBinaries(r rootFS) []File {
	var out []File
	for _, b := range binaries {
		for _, dir := range binDirs {
			p := path.Join(dir, b.name)
			real, fi, err := r.stat(p)
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			out = append(out, File{Kind: KindBinary, Path: p, HostPath: r.emitPath(real), Capabilities: b.caps})
			break
		}
	}
	return out
}

// findFirmware lists the GSP firmware of the installed version.
func findFirmware(r rootFS, version string) []File {
	var out []File
	for _, dir := range []string{"/lib/firmware/nvidia/" + version, "/usr/lib/firmware/nvidia/" + version} {
		for _, e := range r.readDir(dir) {
			p := path.Join(dir, e.Name())
			real, fi, err := r.stat(p)
			if err != nil || !fi.Mode().IsRegular() || !strings.HasSuffix(e.Name(), ".bin") {
				continue
			}
			out = append(out, File{Kind: KindFirmware, Path: p, HostPath: r.emitPath(real), Capabilities: CapsOf(CapCompute, CapUtility)})
		}
		if len(out) > 0 {
			break
		}
	}
	return out
}

// configs: graphics and compute ICDs, profiles and X configs, by folder and name pattern.
var configs = []struct {
	dir, match string
	caps       Capabilities
}{
	{"/usr/share/vulkan/icd.d", "nvidia", CapsOf(CapGraphics)},
	{"/etc/vulkan/icd.d", "nvidia", CapsOf(CapGraphics)},
	{"/usr/share/vulkan/implicit_layer.d", "nvidia", CapsOf(CapGraphics)},
	{"/etc/vulkan/implicit_layer.d", "nvidia", CapsOf(CapGraphics)},
	{"/usr/share/glvnd/egl_vendor.d", "nvidia", CapsOf(CapGraphics)},
	{"/etc/glvnd/egl_vendor.d", "nvidia", CapsOf(CapGraphics)},
	{"/usr/share/egl/egl_external_platform.d", "nvidia", CapsOf(CapGraphics)},
	{"/usr/share/nvidia", "nvoptix.bin", CapsOf(CapGraphics)},
	{"/usr/share/nvidia", "nvidia-application-profiles-", CapsOf(CapGraphics)},
	{"/etc/OpenCL/vendors", "nvidia", CapsOf(CapCompute)},
	{"/etc/X11/xorg.conf.d", "nvidia", CapsOf(CapDisplay)},
	{"/usr/share/X11/xorg.conf.d", "nvidia", CapsOf(CapDisplay)},
}

func findConfigs(r rootFS, version string) []File {
	var out []File
	for _, c := range configs {
		for _, e := range r.readDir(c.dir) {
			name := e.Name()
			if !strings.Contains(name, c.match) {
				continue
			}
			// application profiles carry a version: only this driver's
			if strings.HasPrefix(name, "nvidia-application-profiles-") && !strings.Contains(name, version) {
				continue
			}
			p := path.Join(c.dir, name)
			real, fi, err := r.stat(p)
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			out = append(out, File{Kind: KindConfig, Path: p, HostPath: r.emitPath(real), Capabilities: c.caps})
		}
	}
	return out
}

// findSockets finds the IPC endpoints of the driver's daemons.
func findSockets(r rootFS) []File {
	var out []File
	for _, s := range []struct {
		p    string
		caps Capabilities
		dir  bool
	}{
		{"/run/nvidia-persistenced/socket", CapsOf(CapUtility), false},
		{"/run/nvidia-fabricmanager/socket", CapsOf(CapCompute), false},
		{"/tmp/nvidia-mps", CapsOf(CapCompute), true},
	} {
		real, fi, err := r.stat(s.p)
		if err != nil {
			continue
		}
		if (s.dir && fi.IsDir()) || (!s.dir && fi.Mode()&fs.ModeSocket != 0) {
			out = append(out, File{Kind: KindSocket, Path: s.p, HostPath: r.emitPath(real), Capabilities: s.caps})
		}
	}
	return out
}
