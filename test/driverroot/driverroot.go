// Package driverroot gives tests driver roots: the ones test/driverroot/build.sh builds
// from Debian's real NVIDIA packages (make fixtures), or, where those were not built,
// synthetic ones laid out from the manifests in testdata/, which were recorded from them.
//
// A synthetic root has every path, link, text file and device number of its fixture;
// its libraries and programs are generated ELF files with the real class, machine,
// SONAME, needed libraries and the strings discovery looks for (the driver version, CUDA's
// build stamp), and no code. Device nodes, which only root can make, are plain files that
// the root's gpu.DeviceStater answers for. Golden specs, the parity test and doctor's
// goldens thus run in every `go test ./...`; TestSyntheticMatchesFixture proves, where the
// fixtures exist, that discovery finds the same inventory in both.
package driverroot

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/testutil"
)

// Names are the roots build.sh makes.
var Names = []string{"debian-535", "debian-535-upgrade", "flat-535", "lib64-470"}

// SyntheticOnly are roots whose manifests were written by hand: tegra-l4t is a Jetson Orin
// on L4T R36.4.3 (aarch64 libraries, L4T's CSV files, nvhost and nvmap nodes); wsl2 a WSL2 host
// (/dev/dxg, /usr/lib/wsl/lib and an NVIDIA driver store).
var SyntheticOnly = []string{"tegra-l4t", "wsl2"}

// EnvSynthetic set to 1 makes Open give synthetic roots even where the fixtures exist.
const EnvSynthetic = "NVBIND_SYNTHETIC_ROOTS"

// Root is a driver root for a test.
type Root struct {
	Name, Path string
	Synthetic  bool
	stater     gpu.DeviceStater
}

// Options are the discovery options that read the root as both driver and dev root,
// without NVML.
func (r Root) Options(extra ...gpu.Option) []gpu.Option {
	opts := []gpu.Option{gpu.WithDriverRoot(r.Path), gpu.WithDevRoot(r.Path), gpu.WithoutNVML()}
	if r.stater != nil {
		opts = append(opts, gpu.WithDeviceStater(r.stater))
	}
	return append(opts, extra...)
}

// Stater is the root's device-node reader: nil for a fixture (real nodes).
func (r Root) Stater() gpu.DeviceStater { return r.stater }

// Open gives the fixture name when make fixtures built it (and EnvSynthetic is not 1),
// else a synthetic root built for this test.
func Open(t testing.TB, name string) Root {
	t.Helper()
	if os.Getenv(EnvSynthetic) != "1" {
		if p, ok := fixture(name); ok {
			return Root{Name: name, Path: p}
		}
		if os.Getenv(testutil.EnvRequireFixtures) == "1" {
			t.Fatalf("driver root %s is missing: run make fixtures", name)
		}
	}
	return Synthetic(t, name)
}

func fixture(name string) (string, bool) {
	base := os.Getenv(testutil.EnvRoots)
	if base == "" {
		base = "/var/tmp/nvbind-roots"
	}
	p := filepath.Join(base, name)
	_, err := os.Stat(filepath.Join(p, "proc/driver/nvidia/version"))
	return p, err == nil
}

// Synthetic builds the synthetic root name in a temporary folder of the test.
func Synthetic(t testing.TB, name string) Root {
	t.Helper()
	return syntheticAt(t, name, t.TempDir())
}

func syntheticAt(t testing.TB, name, dir string) Root {
	t.Helper()
	m, err := readManifest(name)
	if err != nil {
		t.Fatal(err)
	}
	st, err := m.build(dir)
	if err != nil {
		t.Fatalf("synthetic root %s: %v", name, err)
	}
	return Root{Name: name, Path: dir, Synthetic: true, stater: st}
}

// Combine lays several synthetic roots out in one folder: a host with a Jetson's iGPU
// (tegra-l4t) and a discrete GPU's driver (debian-535), for one.
func Combine(t testing.TB, names ...string) Root {
	t.Helper()
	dir := t.TempDir()
	all := stater{}
	for _, n := range names {
		r := syntheticAt(t, n, dir)
		for k, v := range r.stater.(stater) {
			all[k] = v
		}
	}
	return Root{Name: strings.Join(names, "+"), Path: dir, Synthetic: true, stater: all}
}

// Copy gives a copy of r at dst (which must not exist) for a test to break: a fixture is
// copied with its device nodes (which needs root), a synthetic root built again there.
func Copy(t testing.TB, r Root, dst string) Root {
	t.Helper()
	if r.Synthetic {
		return syntheticAt(t, r.Name, dst)
	}
	testutil.RequiresRoot(t) // copies device nodes
	if out, err := exec.Command("cp", "-a", r.Path, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	return Root{Name: r.Name, Path: dst}
}

// An entry is one path of a root. Kinds: d (folder), l (link), f (small file, content
// kept), b (large non-ELF file, content not kept), e (ELF file), c (character device),
// s (socket).
type entry struct {
	kind string
	path string // rooted
	mode fs.FileMode
	// l: target; f: content
	data string
	// e
	elf ELF
	// c
	major, minor int64
	uid, gid     uint32
}

type manifest []entry

func manifestPath(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata", name+".manifest")
}

var manifests sync.Map // name -> manifest

func readManifest(name string) (manifest, error) {
	if m, ok := manifests.Load(name); ok {
		return m.(manifest), nil
	}
	data, err := os.ReadFile(manifestPath(name))
	if err != nil {
		return nil, fmt.Errorf("no manifest for driver root %q (valid: %s): %w", name, strings.Join(Names, ", "), err)
	}
	m, err := parseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", manifestPath(name), err)
	}
	manifests.Store(name, m)
	return m, nil
}

// The manifest format: one entry per line, fields Go-quoted and separated by spaces:
//
//	d PATH MODE
//	l PATH TARGET
//	f PATH MODE BASE64
//	b PATH MODE
//	e PATH MODE CLASS MACHINE TYPE SONAME NEEDED(,) STRINGS(\n) CUDA-DRIVER-VERSION
//	c PATH MODE MAJOR MINOR UID GID
//	s PATH MODE
func parseManifest(data []byte) (manifest, error) {
	var m manifest
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f, err := fields(line)
		if err != nil || len(f) < 2 {
			return nil, fmt.Errorf("line %d: %q: %w", n, line, errors.Join(err, errors.New("want at least a kind and a path")))
		}
		e := entry{kind: f[0], path: f[1]}
		want := map[string]int{"d": 3, "l": 3, "f": 4, "b": 3, "e": 10, "c": 7, "s": 3}[e.kind]
		if want == 0 || len(f) != want {
			return nil, fmt.Errorf("line %d: kind %q with %d fields", n, e.kind, len(f))
		}
		num := func(i int) int64 {
			v, perr := strconv.ParseInt(f[i], 0, 64)
			if perr != nil && err == nil {
				err = fmt.Errorf("line %d field %d: %w", n, i+1, perr)
			}
			return v
		}
		if e.kind != "l" {
			e.mode = fs.FileMode(num(2))
		}
		switch e.kind {
		case "l":
			e.data = f[2]
		case "f":
			b, derr := base64.StdEncoding.DecodeString(f[3])
			if derr != nil {
				return nil, fmt.Errorf("line %d: %w", n, derr)
			}
			e.data = string(b)
		case "e":
			e.elf = ELF{Class: elf.Class(num(3)), Machine: elf.Machine(num(4)), Type: elf.Type(num(5)), SONAME: f[6]}
			if f[7] != "" {
				e.elf.Needed = strings.Split(f[7], ",")
			}
			if f[8] != "" {
				e.elf.Strings = strings.Split(f[8], "\n")
			}
			e.elf.CUDADriverVersion = int(num(9))
		case "c":
			e.major, e.minor, e.uid, e.gid = num(3), num(4), uint32(num(5)), uint32(num(6))
		}
		if err != nil {
			return nil, err
		}
		m = append(m, e)
	}
	return m, sc.Err()
}

func fields(line string) ([]string, error) {
	var out []string
	for line != "" {
		q, err := strconv.QuotedPrefix(line)
		if err != nil {
			return nil, err
		}
		s, _ := strconv.Unquote(q)
		out = append(out, s)
		line = strings.TrimPrefix(line[len(q):], " ")
	}
	return out, nil
}

func (e entry) line() string {
	q := func(v any) string { return strconv.Quote(fmt.Sprint(v)) }
	mode := q(fmt.Sprintf("0o%o", uint32(e.mode)))
	switch e.kind {
	case "l":
		return strings.Join([]string{q("l"), q(e.path), q(e.data)}, " ")
	case "f":
		return strings.Join([]string{q("f"), q(e.path), mode, q(base64.StdEncoding.EncodeToString([]byte(e.data)))}, " ")
	case "e":
		return strings.Join([]string{q("e"), q(e.path), mode, q(int(e.elf.Class)), q(int(e.elf.Machine)), q(int(e.elf.Type)), q(e.elf.SONAME),
			q(strings.Join(e.elf.Needed, ",")), q(strings.Join(e.elf.Strings, "\n")), q(e.elf.CUDADriverVersion)}, " ")
	case "c":
		return strings.Join([]string{q("c"), q(e.path), mode, q(e.major), q(e.minor), q(e.uid), q(e.gid)}, " ")
	}
	return strings.Join([]string{q(e.kind), q(e.path), mode}, " ")
}

// stater answers for the synthetic root's device nodes.
type stater map[string]gpu.DeviceNode

func (s stater) Stat(p string) (gpu.DeviceNode, error) {
	if _, err := os.Lstat(p); err != nil {
		return gpu.DeviceNode{}, err // removed by the test, or never there
	}
	if n, ok := s[filepath.Clean(p)]; ok {
		return n, nil
	}
	return gpu.DeviceNode{}, fmt.Errorf("%s is not a character device", p)
}

// blob is the content of large files whose bytes nothing reads (firmware, optix data).
const blob = "nvbind synthetic driver root: stand-in content\n"

func (m manifest) build(dir string) (stater, error) {
	st := stater{}
	var dirs []entry
	for _, e := range m {
		p := filepath.Join(dir, e.path)
		if e.kind != "d" {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
		}
		var err error
		switch e.kind {
		case "d":
			err = os.MkdirAll(p, 0o755)
			dirs = append(dirs, e)
		case "l":
			err = os.Symlink(e.data, p)
		case "f":
			err = os.WriteFile(p, []byte(e.data), e.mode.Perm())
		case "b":
			err = os.WriteFile(p, []byte(blob), e.mode.Perm())
		case "e":
			if e.elf.CUDADriverVersion != 0 {
				err = compileLibcuda(p, e.elf)
			} else {
				err = os.WriteFile(p, e.elf.Bytes(), e.mode.Perm())
			}
		case "c":
			// root makes the real node, so that programs run on the root (not only this
			// process, through the stater) see it; others a stand-in file
			if os.Geteuid() == 0 {
				err = mknod(p, e)
			} else {
				err = os.WriteFile(p, nil, 0o600)
			}
			st[filepath.Clean(p)] = gpu.DeviceNode{HostPath: p, Major: e.major, Minor: e.minor, FileMode: e.mode, UID: e.uid, GID: e.gid}
		case "s":
			var ln *net.UnixListener
			ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
			if err == nil {
				ln.SetUnlinkOnClose(false)
				err = ln.Close()
			}
		}
		if err != nil {
			return nil, err
		}
	}
	for _, e := range dirs {
		if err := os.Chmod(filepath.Join(dir, e.path), e.mode.Perm()); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// record reads a real root into a manifest.
func record(root string) (manifest, error) {
	version, err := rootVersion(root)
	if err != nil {
		return nil, err
	}
	var m manifest
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		if rel == "/" {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{path: rel, mode: fi.Mode() & 0o7777}
		switch t := fi.Mode().Type(); {
		case t == fs.ModeDir:
			e.kind = "d"
		case t == fs.ModeSymlink:
			e.kind, e.mode = "l", 0
			if e.data, err = os.Readlink(p); err != nil {
				return err
			}
		case t == fs.ModeSocket:
			e.kind = "s"
		case t&fs.ModeCharDevice != 0:
			e.kind = "c"
			e.major, e.minor, e.uid, e.gid, err = charDevice(p)
			if err != nil {
				return err
			}
		case t == 0:
			if err := readFile(p, version, &e); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: %v files are not recorded", p, t)
		}
		m = append(m, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// the CUDA version the real libcuda answers, for the stand-ins discovery loads
	d, err := gpu.New(gpu.WithDriverRoot(root), gpu.WithDevRoot(root), gpu.WithoutNVML())
	if err != nil {
		return nil, err
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		return nil, err
	}
	if v := inv.Driver.CUDAVersion; v != "" {
		maj, mnr, _ := strings.Cut(v, ".")
		a, err1 := strconv.Atoi(maj)
		b, err2 := strconv.Atoi(mnr)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("CUDA version %q: %w", v, err)
		}
		for i := range m {
			if e := &m[i]; e.kind == "e" && e.elf.Class == elf.ELFCLASS64 && strings.HasPrefix(filepath.Base(e.path), "libcuda.so.") {
				e.elf.CUDADriverVersion = a*1000 + b*10
			}
		}
	}
	return m, nil
}

func rootVersion(root string) (string, error) {
	data, err := os.ReadFile(filepath.Join(root, "proc/driver/nvidia/version"))
	if err != nil {
		return "", err
	}
	for _, f := range strings.Fields(string(data)) {
		if strings.Count(f, ".") >= 1 && f[0] >= '0' && f[0] <= '9' && len(f) > 6 {
			return f, nil
		}
	}
	return "", errors.New("no version in proc/driver/nvidia/version")
}

// stampPrefix starts the build stamp of NVIDIA's CUDA compilers.
const stampPrefix = "Cuda compilation tools, release "

func readFile(p, version string, e *entry) error {
	f, err := elf.Open(p)
	if err == nil {
		defer func() { _ = f.Close() }()
		if f.Type == elf.ET_DYN || f.Type == elf.ET_EXEC {
			e.kind = "e"
			e.elf = ELF{Class: f.Class, Machine: f.Machine, Type: f.Type}
			if so, _ := f.DynString(elf.DT_SONAME); len(so) > 0 {
				e.elf.SONAME = so[0]
			}
			e.elf.Needed, _ = f.ImportedLibraries()
			for _, name := range []string{".rodata", ".data"} {
				sec := f.Section(name)
				if sec == nil || sec.Type == elf.SHT_NOBITS {
					continue
				}
				data, err := sec.Data()
				if err != nil {
					return fmt.Errorf("%s %s: %w", p, name, err)
				}
				if bytes.Contains(data, []byte(version)) && !contains(e.elf.Strings, version) {
					e.elf.Strings = append(e.elf.Strings, version)
				}
				for rest := data; ; {
					i := bytes.Index(rest, []byte(stampPrefix))
					if i < 0 {
						break
					}
					end := bytes.IndexByte(rest[i:], 0)
					if end > 0 && end < 128 && !contains(e.elf.Strings, string(rest[i:i+end])) {
						e.elf.Strings = append(e.elf.Strings, string(rest[i:i+end]))
					}
					rest = rest[i+1:]
				}
			}
			return nil
		}
	}
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.Size() > 64<<10 {
		e.kind = "b"
		return nil
	}
	data, err := os.ReadFile(p)
	e.kind, e.data = "f", string(data)
	return err
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
