package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/hook"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// hostileScript is what every hostile image runs: it reports its GPU node, whether its
// ld cache lists libcuda (and the test's good library), and any victim marker in the
// cache or in what the hook wrote, then loads libcuda.so.1. It greps regular files only:
// a FIFO the hook left in place must not block the container. It exits 0, so that a
// runtime's error always means the container did not start.
const hostileScript = `test -c /dev/nvidia0 && echo HOSTILE-GPU-NODE
ldconfig -p > /dev/shm/ldp 2>&1; echo HOSTILE-CACHE-LINES=$(wc -l < /dev/shm/ldp)
grep -E 'libcuda\.so\.1 |libnvbind' /dev/shm/ldp
test -f /etc/ld.so.conf.d/00-nvbind.conf && echo HOSTILE-NVBIND-CONF-REGULAR
echo "HOSTILE-SMI=$(readlink /usr/bin/nvidia-smi)"
for f in /dev/shm/ldp /etc/ld.so.cache /etc/ld.so.conf.d/*; do
	test -f "$f" && grep -q -E '` + testutil.HostLibraryStem + `|` + testutil.SecretKey + `' "$f" && echo "HOSTILE-LEAK-IN $f"
done
cuda-probe
exit 0`

// maxHookMessage bounds what a refusing hook may print into a runtime's error.
const maxHookMessage = 500

// evilSource is a library that, once loaded into any process, says so and writes the
// marker file named by its environment: preloaded into the hook, it would write on the
// host.
const evilSource = `#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void nvbind_evil(void) {
	const char *m = getenv("NVBIND_EVIL_MARKER");
	fprintf(stderr, "NVBIND-EVIL-LOADED in pid %d\n", getpid());
	if (m) { int fd = open(m, O_WRONLY | O_CREAT, 0644); if (fd >= 0) { (void)!write(fd, "loaded\n", 7); close(fd); } }
}
unsigned la_version(unsigned v) { return v; }
`

// outcome is what a case accepts of a runtime: a start with the GPU or a short refusal.
type outcome int

const (
	startOrRefuse outcome = iota // either is right
	mustStart                    // a hook that refuses this image is wrong
)

// hostileCase is one hostile image: image turns a copy of the suite's rootfs hostile.
type hostileCase struct {
	name   string
	image  func(h *hostileImage)
	want   outcome
	podman bool // also run it with Podman
	// dynamicHook names the dynamically linked nvbind-node as the hook instead of the
	// static nvbind-hook, so that a preloaded library would be loaded if the image's
	// environment reached the hook
	dynamicHook bool
	readonly    bool
	// runtimeFollowsLinks: where the runtime mounts the driver's files one by one (no
	// driver layout), runc resolves this image's links inside its root and mounts through
	// them, so the image may break its own GPU; then only the host is checked
	runtimeFollowsLinks bool
}

// hostileSuite is what the cases share: one build, one spec, one pristine image root.
type hostileSuite struct {
	runc, podman   string
	bin            string // nvbind (the lean build, static); nvbind-hook beside it
	dyn            string // nvbind-node beside it: a dynamic program, which the image's LD_* variables must not reach
	template       string // a bundle of runcBundle: the CDI-edited config.json and a pristine rootfs
	good, evil     []byte // libnvbindgood.so.1 and the library of evilSource
	hostLib        string // a library whose SONAME is testutil.HostLibrary
	vendor, dynVen string // Podman's vendors: the nvbind-hook spec and the nvbind-node spec
	measured       *testutil.Measured
	layout         bool   // the spec mounts a driver layout, not one file at a time
	dir            string // the suite's own files
	bigOnce        sync.Once
	big            string // a folder of 100,000 entries, made once
}

func newHostileSuite(t *testing.T) *hostileSuite {
	testutil.RequiresRoot(t)
	s := &hostileSuite{runc: testutil.RequiresCommand(t, "runc")}
	driverRoot := testutil.DriverRoot(t, "debian-535")
	s.bin = testutil.BuildNVBind(t, t.TempDir())
	s.dyn = filepath.Join(filepath.Dir(s.bin), "nvbind-node")
	specDir := t.TempDir()
	writeSpec(t, driverRoot, specDir, testutil.HookBinary(s.bin), spec.Options{})
	s.template = runcBundle(t, s.runc, specDir, "nvidia.com/gpu=0", hostileScript)
	var cfg oci.Spec
	if err := json.Unmarshal(readAll(t, filepath.Join(s.template, "config.json")), &cfg); err != nil {
		t.Fatal(err)
	}
	s.layout = slices.ContainsFunc(cfg.Mounts, func(m oci.Mount) bool { return strings.HasPrefix(m.Destination, layout.Dest+"/") })
	t.Logf("the runtime mounts the driver's files %s", map[bool]string{true: "in one mount of a driver layout", false: "one at a time"}[s.layout])

	dir := t.TempDir()
	s.dir = dir
	testutil.BuildSharedObject(t, filepath.Join(dir, "good.so"), "libnvbindgood.so.1", 64, "")
	testutil.BuildSharedObject(t, filepath.Join(dir, "host.so"), testutil.HostLibrary, 64, "")
	src := filepath.Join(dir, "evil.c")
	if err := os.WriteFile(src, []byte(evilSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cc", "-shared", "-fPIC", "-o", filepath.Join(dir, "evil.so"), src).CombinedOutput(); err != nil {
		t.Fatalf("cc evil.so: %v\n%s", err, out)
	}
	s.measured = testutil.NewMeasured(t, dir)
	s.good, s.hostLib, s.evil = readAll(t, filepath.Join(dir, "good.so")), filepath.Join(dir, "host.so"), readAll(t, filepath.Join(dir, "evil.so"))
	s.controls(t, dir)

	if p, err := exec.LookPath("podman"); err == nil {
		s.podman = p
		s.vendor, s.dynVen = "nvbind-hostile.test", "nvbind-hostile-dyn.test"
		if _, err := os.Stat(podmanSpecDir); err != nil {
			t.Cleanup(func() { _ = os.Remove(podmanSpecDir) }) // only if still empty
		}
		for _, v := range []struct{ vendor, hook string }{{s.vendor, testutil.HookBinary(s.bin)}, {s.dynVen, s.dyn}} {
			d := t.TempDir()
			data := readAll(t, writeSpec(t, driverRoot, d, v.hook, spec.Options{Vendor: v.vendor}))
			if err := os.MkdirAll(podmanSpecDir, 0o755); err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(podmanSpecDir, v.vendor+".yaml")
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Remove(dst) })
		}
	} else if os.Getenv(testutil.EnvRoot) == "1" {
		t.Log("podman is not installed: the Podman variants skip")
	}
	return s
}

// controls proves the suite's detectors before any case relies on them: a root process
// in another mount namespace that reads a victim file through /proc/self/root shows in the
// watch and its output in Victim.Leaks; the dynamic nvbind-node loads a preloaded evil.so,
// so the case that names it as the hook would see an image's LD_PRELOAD work.
func (s *hostileSuite) controls(t *testing.T, dir string) {
	v := testutil.NewVictim(t, filepath.Join(dir, "control-victim"), s.hostLib)
	w := testutil.NewFSWatch(t)
	w.AddTree(t, v.Dir)
	out, _, _, err := s.measured.Run([]string{"/bin/cat", "/proc/self/root" + v.SecretFile}, "")
	if ev := w.Events(t); err != nil || len(v.Leaks(out)) == 0 || len(ev) == 0 {
		t.Fatalf("the detectors missed a read of the victim (%v, output %q, events %q)", err, out, ev)
	}
	marker := filepath.Join(dir, "control-marker")
	cmd := exec.Command(s.dyn, "--help")
	cmd.Env = []string{"LD_PRELOAD=" + filepath.Join(dir, "evil.so"), "NVBIND_EVIL_MARKER=" + marker}
	out2, err := cmd.CombinedOutput()
	if _, serr := os.Stat(marker); err != nil || serr != nil || !strings.Contains(string(out2), "NVBIND-EVIL-LOADED") {
		t.Fatalf("nvbind-node did not load a preloaded evil.so (%v, %v): the LD_PRELOAD cases would prove nothing\n%s", err, serr, out2)
	}
}

func readAll(t testing.TB, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// hostileImage is one case's image root and the victim tree outside it.
type hostileImage struct {
	t      *testing.T
	s      *hostileSuite
	rootfs string
	v      *testutil.Victim
	// watch lists FIFOs and device nodes of the image that the hook must never open
	watch []string
	// wants are lines a started container must print
	wants []string
	// env is the image's environment; marker a host file that must never appear
	env    []string
	marker string
}

func (h *hostileImage) path(rel string) string { return filepath.Join(h.rootfs, rel) }

// clear removes what the image has at rel and makes its parent folders. It never runs
// under a link the case planted: cases plant their links last.
func (h *hostileImage) clear(rel string) string {
	h.t.Helper()
	p := h.path(rel)
	if err := os.RemoveAll(p); err != nil {
		h.t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func (h *hostileImage) write(rel string, data []byte) {
	h.t.Helper()
	if err := os.WriteFile(h.clear(rel), data, 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *hostileImage) link(rel, target string) {
	h.t.Helper()
	if err := os.Symlink(target, h.clear(rel)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *hostileImage) mkdir(rel string) {
	h.t.Helper()
	if err := os.MkdirAll(h.clear(rel), 0o755); err != nil {
		h.t.Fatal(err)
	}
}

// node makes a FIFO (unix.S_IFIFO) or a device node (unix.S_IFCHR, unix.S_IFBLK) at rel
// and watches it for opens.
func (h *hostileImage) node(rel string, typ, major, minor uint32) {
	h.t.Helper()
	if err := unix.Mknod(h.clear(rel), typ|0o644, int(unix.Mkdev(major, minor))); err != nil {
		h.t.Fatal(err)
	}
	h.watch = append(h.watch, h.path(rel))
}

// bind mounts the host folder src read-only at rel (Podman's overlay does not show it),
// until the test ends.
func (h *hostileImage) bind(src, rel string) {
	h.t.Helper()
	h.mkdir(rel)
	p := h.path(rel)
	if err := unix.Mount(src, p, "", unix.MS_BIND, ""); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = unix.Unmount(p, unix.MNT_DETACH) })
	if err := unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		h.t.Fatal(err)
	}
}

// bigFolder is a folder of 100,000 links named like libraries, made once for the suite:
// making it takes seconds.
func (s *hostileSuite) bigFolder(t *testing.T) string {
	s.bigOnce.Do(func() {
		s.big = filepath.Join(s.dir, "big")
		manyLinks(t, s.big, 100000)
	})
	return s.big
}

// dotdot is a relative link target that climbs from rel's folder to the host path p: a
// hook that followed it on the host would reach p exactly.
func (h *hostileImage) dotdot(rel, p string) string {
	h.t.Helper()
	r, err := filepath.Rel(filepath.Dir(h.path(rel)), p)
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

func (h *hostileImage) garbageCache() {
	b := make([]byte, 64<<10)
	_, _ = rand.Read(b)
	h.write("etc/ld.so.cache", b)
}

func (h *hostileImage) goodLib(rel string) { h.write(rel, h.s.good) }

func hostileCases() []hostileCase {
	return []hostileCase{
		// CVE-2025-23267 (update-ldcache following the image's links): the fresh cache
		// must read no configuration and scan no folder outside the root.
		{name: "cve-2025-23267/ldsoconf-includes-host-via-proc", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.garbageCache()
			v := h.v
			h.write("etc/ld.so.conf", []byte(strings.Join([]string{
				"include /proc/1/root" + v.SecretFile, "/proc/1/root" + v.Lib,
				"include /proc/self/root" + v.SecretFile, "/proc/self/root" + v.Lib,
				"include /proc/*/root" + v.Dir + "/*.conf", "include /proc/1/root" + v.Etc + "/ld.so.conf.d/*",
				"include " + v.SecretFile, v.Lib, "include " + h.dotdot("etc/x", v.SecretFile),
				"include /proc/1/cwd/../../../../../../../.." + v.SecretFile, "/proc/1/cwd/../../../../../../.." + v.Lib,
			}, "\n")+"\n"))
		}},
		{name: "cve-2025-23267/ldsoconf-is-link-to-host", want: mustStart, image: func(h *hostileImage) {
			h.garbageCache()
			h.mkdir("etc/ld.so.conf.d")
			h.link("etc/ld.so.conf.d/host.conf", "/proc/1/root"+h.v.SecretFile)
			h.link("etc/ld.so.conf", "/proc/1/root"+h.v.Etc+"/ld.so.conf")
		}},

		// the image's ld.so.cache
		{name: "ldcache/directory", podman: true, image: func(h *hostileImage) { h.mkdir("etc/ld.so.cache/sub") }},
		{name: "ldcache/fifo", image: func(h *hostileImage) { h.node("etc/ld.so.cache", unix.S_IFIFO, 0, 0) }},
		{name: "ldcache/char-device", image: func(h *hostileImage) { h.node("etc/ld.so.cache", unix.S_IFCHR, 1, 3) }},
		{name: "ldcache/link-to-device-in-image", image: func(h *hostileImage) {
			h.node("nodes/null", unix.S_IFCHR, 1, 3)
			h.link("etc/ld.so.cache", "../nodes/null")
		}},
		{name: "ldcache/link-to-host-absolute", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.link("etc/ld.so.cache", h.v.Etc+"/ld.so.cache")
		}},
		{name: "ldcache/link-to-host-dotdot", want: mustStart, image: func(h *hostileImage) {
			h.link("etc/ld.so.cache", h.dotdot("etc/ld.so.cache", h.v.Etc+"/ld.so.cache"))
		}},
		{name: "ldcache/link-via-proc-self-root", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.link("etc/ld.so.cache", "/proc/self/root"+h.v.Etc+"/ld.so.cache")
		}},
		{name: "ldcache/link-via-proc-1-root", want: mustStart, image: func(h *hostileImage) {
			h.link("etc/ld.so.cache", "/proc/1/root"+h.v.Etc+"/ld.so.cache")
		}},
		{name: "ldcache/link-loop", want: mustStart, image: func(h *hostileImage) {
			h.link("etc/ld.so.cache", "ld.so.cache.b")
			h.link("etc/ld.so.cache.b", "ld.so.cache")
		}},
		{name: "ldcache/huge-9MiB", want: mustStart, image: func(h *hostileImage) {
			h.write("etc/ld.so.cache", []byte("glibc-ld.so.cache1.1"))
			if err := os.Truncate(h.path("etc/ld.so.cache"), 9<<20); err != nil {
				h.t.Fatal(err)
			}
		}},
		{name: "ldcache/200KB-one-4095-byte-string", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.write("etc/ld.so.cache", testutil.SharedStringCache(8000, 4095))
		}},
		{name: "ldcache/200KB-one-1900-byte-string", want: mustStart, image: func(h *hostileImage) {
			h.write("etc/ld.so.cache", testutil.SharedStringCache(8000, 1900))
		}},
		{name: "ldcache/successive-offsets", want: mustStart, image: func(h *hostileImage) {
			h.write("etc/ld.so.cache", testutil.SuccessiveOffsetsCache(4000))
		}},
		{name: "ldcache/ldsoconf-include-cycle", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.garbageCache()
			h.write("etc/ld.so.conf", []byte("include /etc/ld.so.conf.d/*.conf\ninclude /etc/ld.so.conf\n"))
			h.write("etc/ld.so.conf.d/a.conf", []byte("include b.conf\n/opt/good\n"))
			h.write("etc/ld.so.conf.d/b.conf", []byte("include a.conf\ninclude /etc/ld.so.conf\ninclude ../ld.so.conf.d/a.conf\n"))
			h.goodLib("opt/good/libnvbindgood.so.1")
			h.wants = append(h.wants, "libnvbindgood.so.1 (libc6,x86-64) => /opt/good/libnvbindgood.so.1")
		}},

		// links out of the root where the hook writes
		{name: "links/libdir-to-host-absolute", podman: true, image: func(h *hostileImage) {
			h.link("usr/lib/x86_64-linux-gnu", h.v.Lib)
		}},
		{name: "links/libdir-via-proc-1-root", image: func(h *hostileImage) {
			h.link("usr/lib/x86_64-linux-gnu", "/proc/1/root"+h.v.Lib)
		}},
		{name: "links/etc-to-host-absolute", podman: true, image: func(h *hostileImage) { h.link("etc", h.v.Etc) }},
		{name: "links/etc-to-host-dotdot", image: func(h *hostileImage) { h.link("etc", h.dotdot("etc", h.v.Etc)) }},
		{name: "links/ldsoconfd-to-host-absolute", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.link("etc/ld.so.conf.d", h.v.Etc+"/ld.so.conf.d")
		}},
		{name: "links/ldsoconfd-to-host-dotdot", want: mustStart, image: func(h *hostileImage) {
			h.link("etc/ld.so.conf.d", h.dotdot("etc/ld.so.conf.d", h.v.Etc+"/ld.so.conf.d"))
		}},
		{name: "links/soname-links-to-host-file", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.mkdir("usr/lib/x86_64-linux-gnu")
			h.link("usr/lib/x86_64-linux-gnu/libcuda.so.1", h.v.SecretFile)
			h.link("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "/proc/1/root"+h.v.SecretFile)
			h.link("usr/lib/x86_64-linux-gnu/libcuda.so", h.dotdot("usr/lib/x86_64-linux-gnu/libcuda.so", h.v.SecretFile))
		}},
		{name: "links/cuda-compat-to-host-absolute", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.link("usr/local/cuda/compat", h.v.Lib)
		}},
		{name: "links/cuda-compat-to-host-dotdot", want: mustStart, image: func(h *hostileImage) {
			h.link("usr/local/cuda/compat", h.dotdot("usr/local/cuda/compat", h.v.Lib))
		}},
		{name: "links/cuda-compat-broken-elf", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.write("usr/local/cuda/compat/libcuda.so.999.99", h.s.good[:100])
			h.link("usr/local/cuda/compat/libcuda.so.1", "libcuda.so.999.99")
		}},
		{name: "links/app-profile-folder-to-host", image: func(h *hostileImage) {
			h.mkdir("etc/nvidia")
			h.link("etc/nvidia/nvidia-application-profiles-rc.d", h.v.Etc)
		}},
		{name: "links/app-profile-folder-via-proc-1-root", image: func(h *hostileImage) {
			h.link("etc/nvidia", "/proc/1/root"+h.v.Etc)
		}},

		// the driver's files where the hook (or the runtime) mounts them
		{name: "binds/target-links-to-host-file", want: mustStart, podman: true, runtimeFollowsLinks: true, image: func(h *hostileImage) {
			h.link(driverLib+"libcuda.so.535.261.03", "/proc/1/root"+h.v.SecretFile)
			h.link(driverLib+"libnvidia-ml.so.535.261.03", h.v.SecretFile)
			h.link(driverLib+"libnvidia-ptxjitcompiler.so.535.261.03", h.dotdot(driverLib+"x", h.v.SecretFile))
		}},
		{name: "binds/target-is-a-fifo", image: func(h *hostileImage) {
			h.node(driverLib+"libcuda.so.535.261.03", unix.S_IFIFO, 0, 0)
		}},
		{name: "binds/target-is-a-device", image: func(h *hostileImage) {
			h.node(driverLib+"libcuda.so.535.261.03", unix.S_IFCHR, 1, 3)
		}},
		{name: "binds/target-is-a-folder", image: func(h *hostileImage) { h.mkdir(driverLib + "libcuda.so.535.261.03/x") }},
		{name: "binds/target-folder-via-proc-1-root", image: func(h *hostileImage) {
			h.link(strings.TrimSuffix(driverLib, "/"), "/proc/1/root"+h.v.Lib)
		}},
		{name: "binds/target-folder-to-host-absolute", podman: true, image: func(h *hostileImage) {
			h.link(strings.TrimSuffix(driverLib, "/"), h.v.Lib)
		}},

		// the driver layout's mount point, and the links the hook makes into the layout
		{name: "layout/mount-point-links-to-host", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.link("usr/local/nvbind", h.v.Lib)
		}},
		// runc mounts the layout under the image's /proc/1/root/..., which the container's
		// procfs then covers: the hook, refusing the magic link, refuses the container
		{name: "layout/mount-point-via-proc-1-root", image: func(h *hostileImage) {
			h.link("usr/local/nvbind", "/proc/1/root"+h.v.Lib)
		}},
		{name: "layout/binary-link-planted-to-host", want: mustStart, image: func(h *hostileImage) {
			h.link("usr/bin/nvidia-smi", "/proc/1/root"+h.v.SecretFile)
			h.link("usr/lib/x86_64-linux-gnu/vdpau/libvdpau_nvidia.so.1", h.v.SecretFile)
			if h.s.layout { // the hook replaced the planted link with its own, into the layout
				h.wants = append(h.wants, "HOSTILE-SMI="+layout.Dest+"/")
			}
		}},

		// broken ELF files in the folders the fresh cache scans
		{name: "elf/broken-libraries", want: mustStart, podman: true, image: func(h *hostileImage) {
			h.garbageCache()
			for name, data := range testutil.BrokenLibraries(h.t, h.s.good) {
				h.write("usr/lib/x86_64-linux-gnu/"+name, data)
				h.write("lib/x86_64-linux-gnu/"+name, data)
			}
			h.goodLib("lib/x86_64-linux-gnu/libnvbindgood.so.1")
			h.wants = append(h.wants, "libnvbindgood.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libnvbindgood.so.1")
		}},

		// CVE-2025-23266: the image's environment must not reach the hook
		{name: "cve-2025-23266/ld-preload-nvbind-hook", want: mustStart, podman: true, image: evilImage},
		{name: "cve-2025-23266/ld-preload-dynamic-nvbind", want: mustStart, podman: true, dynamicHook: true, image: evilImage},

		// CVE-2024-0132, CVE-2025-23359, CVE-2026-24260 (time of check to time of use): a
		// race cannot be timed, so these plant its worst final state, and the race
		// subtest flips paths while containers start
		{name: "toctou/etc-via-proc-1-root", image: func(h *hostileImage) { h.link("etc", "/proc/1/root"+h.v.Etc) }},
		{name: "toctou/ldsoconfd-via-proc-1-root", image: func(h *hostileImage) {
			h.link("etc/ld.so.conf.d", "/proc/1/root"+h.v.Etc+"/ld.so.conf.d")
		}},
		{name: "toctou/cuda-compat-via-proc-1-root", image: func(h *hostileImage) {
			h.link("usr/local/cuda/compat", "/proc/1/root"+h.v.Lib)
		}},
		{name: "toctou/soname-link-via-proc-self-root", want: mustStart, image: func(h *hostileImage) {
			h.link("usr/lib/x86_64-linux-gnu/libcuda.so.1", "/proc/self/root"+h.v.SecretFile)
		}},

		// more
		{name: "more/readonly-rootfs", want: mustStart, podman: true, readonly: true, image: func(*hostileImage) {}},
		{name: "more/etc-is-a-file", image: func(h *hostileImage) { h.write("etc", []byte("not a folder\n")) }},
		{name: "more/00-nvbind-conf-is-a-fifo", want: mustStart, image: func(h *hostileImage) {
			h.node("etc/ld.so.conf.d/00-nvbind.conf", unix.S_IFIFO, 0, 0)
			h.wants = append(h.wants, "HOSTILE-NVBIND-CONF-REGULAR")
		}},
		{name: "more/00-nvbind-conf-links-to-host", want: mustStart, image: func(h *hostileImage) {
			h.mkdir("etc/ld.so.conf.d")
			h.link("etc/ld.so.conf.d/00-nvbind.conf", h.v.Etc+"/ld.so.conf.d/a.conf")
			h.wants = append(h.wants, "HOSTILE-NVBIND-CONF-REGULAR")
		}},
		{name: "more/device-and-fifo-links-in-library-folders", want: mustStart, image: func(h *hostileImage) {
			h.garbageCache() // so that the fresh cache scans /lib/x86_64-linux-gnu too
			h.node("nodes/null", unix.S_IFCHR, 1, 3)
			h.node("nodes/fifo", unix.S_IFIFO, 0, 0)
			// a block device no container may open (the device cgroup): the host's loop0
			h.node("nodes/loop0", unix.S_IFBLK, 7, 0)
			for _, d := range []string{"usr/lib/x86_64-linux-gnu/", "lib/x86_64-linux-gnu/"} {
				h.link(d+"libnvbinddev.so.1", "/nodes/null")
				h.link(d+"libnvbindfifo.so.1", "/nodes/fifo")
				h.link(d+"libnvbindblock.so.1", "/nodes/loop0")
			}
		}},
		{name: "more/ldsoconf-includes-devices", want: mustStart, image: func(h *hostileImage) {
			h.garbageCache()
			h.node("nodes/null", unix.S_IFCHR, 1, 3)
			h.node("nodes/fifo", unix.S_IFIFO, 0, 0)
			h.write("etc/ld.so.conf", []byte("include /nodes/*\n"))
		}},
		{name: "more/usr-lib64-100000-entries", image: func(h *hostileImage) {
			h.garbageCache()
			h.bind(h.s.bigFolder(h.t), "usr/lib64")
		}},
		{name: "more/ldsoconf-1MiB", want: mustStart, image: func(h *hostileImage) {
			h.garbageCache()
			h.write("etc/ld.so.conf", bytes.Repeat([]byte("/usr/lib/x86_64-linux-gnu/nvidia\n"), 1<<20/33))
		}},
		{name: "more/ldsoconf-3000-folders", image: func(h *hostileImage) {
			h.garbageCache()
			var b strings.Builder
			for i := range 3000 {
				fmt.Fprintf(&b, "/d/%d\n", i)
			}
			h.write("etc/ld.so.conf", []byte(b.String()))
		}},
		{name: "more/ldsoconf-100-includes-and-depth-20", image: func(h *hostileImage) {
			h.garbageCache()
			h.write("etc/ld.so.conf", []byte("include /etc/ld.so.conf.d/*.conf\ninclude /etc/deep/0.conf\n"))
			for i := range 100 {
				h.write(fmt.Sprintf("etc/ld.so.conf.d/%03d.conf", i), []byte("/usr/lib\n"))
			}
			for i := range 20 {
				h.write(fmt.Sprintf("etc/deep/%d.conf", i), fmt.Appendf(nil, "include %d.conf\n", i+1))
			}
		}},
	}
}

// driverLib is the container folder of the debian-535 driver's 64-bit libraries.
const driverLib = "usr/lib/x86_64-linux-gnu/nvidia/current/"

// evilImage puts a library in the image that writes a host marker when loaded, and
// points the image's LD_PRELOAD, LD_LIBRARY_PATH and LD_AUDIT at it, in every form a
// hook running in the container's root (its cwd) would resolve.
func evilImage(h *hostileImage) {
	h.write("evil.so", h.s.evil)
	h.write("evillib/libnvbindevil.so", h.s.evil)
	h.marker = filepath.Join(filepath.Dir(h.v.Dir), "evil-marker")
	h.env = []string{
		"LD_PRELOAD=libnvbindevil.so /proc/self/cwd/evil.so /evil.so",
		"LD_LIBRARY_PATH=/proc/self/cwd/evillib:/evillib",
		"LD_AUDIT=/proc/self/cwd/evil.so",
		"NVBIND_EVIL_MARKER=" + h.marker,
	}
	// the positive control: cuda-probe in the container does load it
	h.wants = append(h.wants, "NVBIND-EVIL-LOADED")
}

// manyLinks fills dir with n links named like libraries, to a library that is not there.
func manyLinks(t testing.TB, dir string, n int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := os.Symlink("libnvbindnone.so.1", filepath.Join(dir, fmt.Sprintf("libnvbindmany%06d.so.1", i))); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHostileImages starts containers from hostile images with nvbind's spec from the
// debian-535 driver root (runc for every case, Podman for a subset), and runs the spec's
// hook command directly on each image too, to see its own output and peak memory. For
// each it checks: the container starts with its GPU or the hook refuses it in a short
// message; no file of a root-only victim tree outside the root is opened, listed or
// changed (inotify, and snapshots before and after); no victim marker (its secret, its
// library's name) reaches the container's ld cache, its output or the hook's; no FIFO or
// device node of the image is opened by the hook. The race subtests swap the paths the
// hook writes with links to the victim while containers start, and rename a host file
// while the hook resolves "..".
func TestHostileImages(t *testing.T) {
	s := newHostileSuite(t)
	// the races first, alone: their renames would make other cases fail (see renames)
	t.Run("race/flip-paths-while-containers-start", s.race)
	t.Run("race/dotdot-links-while-the-host-renames", s.renames)
	for _, tc := range hostileCases() {
		t.Run("runc/"+tc.name, func(t *testing.T) {
			t.Parallel()
			s.check(t, tc, "runc")
		})
		t.Run("hook/"+tc.name, func(t *testing.T) {
			t.Parallel()
			s.check(t, tc, "hook")
		})
		t.Run("plugin/"+tc.name, func(t *testing.T) {
			t.Parallel()
			s.check(t, tc, "plugin")
		})
		if tc.podman {
			t.Run("podman/"+tc.name, func(t *testing.T) {
				if s.podman == "" {
					t.Skip("podman is not installed")
				}
				t.Parallel()
				s.check(t, tc, "podman")
			})
		}
	}
}

// prepare copies the pristine rootfs into a new bundle beside a new victim tree, and
// starts recording the victim. The victim is snapshot and watched before the case makes
// the image hostile, so that nothing the test itself does to it goes unseen.
func (s *hostileSuite) prepare(t *testing.T) (*hostileImage, string, map[string]string, *testutil.FSWatch) {
	dir := t.TempDir()
	h := &hostileImage{t: t, s: s, v: testutil.NewVictim(t, filepath.Join(dir, "victim"), s.hostLib)}
	before := h.v.Snapshot(t)
	w := testutil.NewFSWatch(t)
	w.AddTree(t, h.v.Dir)
	bundle := filepath.Join(dir, "bundle")
	h.rootfs = filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(s.template, "rootfs"), h.rootfs).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), readAll(t, filepath.Join(s.template, "config.json")), 0o644); err != nil {
		t.Fatal(err)
	}
	return h, bundle, before, w
}

// editConfig applies a case's environment, read-only root and hook binary to config.json.
func (s *hostileSuite) editConfig(t *testing.T, bundle string, tc hostileCase, env []string) {
	p := filepath.Join(bundle, "config.json")
	var c map[string]any
	if err := json.Unmarshal(readAll(t, p), &c); err != nil {
		t.Fatal(err)
	}
	proc := c["process"].(map[string]any)
	for _, kv := range env {
		proc["env"] = append(proc["env"].([]any), kv)
	}
	c["root"].(map[string]any)["readonly"] = tc.readonly
	if tc.dynamicHook {
		for _, hk := range c["hooks"].(map[string]any)[spec.HookStage].([]any) {
			hm := hk.(map[string]any)
			if hm["path"] == testutil.HookBinary(s.bin) {
				hm["path"] = s.dyn
				hm["args"].([]any)[0] = filepath.Base(s.dyn)
			}
		}
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (s *hostileSuite) check(t *testing.T, tc hostileCase, runtime string) {
	h, bundle, before, w := s.prepare(t)
	tc.image(h)
	if runtime != "podman" { // Podman's overlay opens its own inodes, not these
		for _, p := range h.watch {
			w.Add(t, p, testutil.AccessEvents)
		}
	}
	s.editConfig(t, bundle, tc, h.env)
	var out string
	var err error
	started := false
	switch runtime {
	case "runc":
		out, err = s.runcStart(bundle)
		started = s.judge(t, out, err, tc, h.v)
	case "podman":
		out, err = s.podmanStart(tc, h)
		started = s.judge(t, out, err, tc, h.v)
	case "plugin":
		out, err = s.pluginStart(bundle)
		started = s.judge(t, out, err, tc, h.v)
	case "hook":
		var rss int64
		var wall time.Duration
		out, rss, wall, err = s.hookStart(bundle, h.rootfs)
		s.judgeHook(t, out, err, rss, wall, h.v)
	}
	events := w.Events(t)
	if started {
		for _, want := range h.wants {
			if !strings.Contains(out, want) {
				t.Errorf("the container's output lacks %q", want)
			}
		}
	}
	if len(events) > 0 {
		t.Errorf("files the hook must never open were opened or changed:\n  %s", strings.Join(events, "\n  "))
	}
	if diff := testutil.SnapshotDiff(before, h.v.Snapshot(t)); len(diff) > 0 {
		t.Errorf("the host's victim tree changed:\n  %s", strings.Join(diff, "\n  "))
	}
	if h.marker != "" {
		if _, err := os.Lstat(h.marker); err == nil {
			t.Errorf("the image's preloaded library ran on the host: %s exists", h.marker)
		}
	}
}

// hookStart runs the spec's hook command as runc does (the OCI state on stdin, the
// spec's environment), in a private mount namespace where the image's /proc is a procfs,
// as it is when the hook runs: /proc/1/root in the image is the host's /. The state's pid
// is the hook's own, in that namespace. It returns the hook's own output, which a runtime
// shows only when the hook fails, its peak RSS in KiB and its wall time.
func (s *hostileSuite) hookStart(bundle, rootfs string) (string, int64, time.Duration, error) {
	path, args, err := bundleHook(bundle)
	if err != nil {
		return "", 0, 0, err
	}
	return s.measured.Run(hookArgv(bundle, `mount -t proc proc "$0/proc" && `, rootfs, path, args), "")
}

// hookArgv is a command line that runs the shell command prefix (where $0 is arg0), then
// the hook (path, with args after their program name) with the OCI state of bundle on
// stdin and its own pid as the container's: the hook enters its own mount namespace.
// The state's text around the pid comes in as arguments, which the shell does not expand
// again.
func hookArgv(bundle, prefix, arg0, path string, args []string) []string {
	before, after, _ := strings.Cut(hookState(bundle, "PID"), "PID")
	script := `s1=$1 s2=$2; shift 2; ` + prefix + `exec "$@" <<EOF
${s1}$$${s2}
EOF`
	return append([]string{"/bin/sh", "-c", script, arg0, before, after, path}, args[1:]...)
}

// bundleHook returns the path and arguments of the hook of a bundle's config.json: the
// hook of nvbind's spec, as the CDI library put it there.
func bundleHook(bundle string) (string, []string, error) {
	var c struct {
		Hooks map[string][]struct {
			Path string   `json:"path"`
			Args []string `json:"args"`
		} `json:"hooks"`
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return "", nil, err
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return "", nil, err
	}
	hooks := c.Hooks[spec.HookStage]
	if len(c.Hooks) != 1 || len(hooks) != 1 || len(hooks[0].Args) == 0 {
		return "", nil, fmt.Errorf("%s: want one %s hook and no other, got %v", bundle, spec.HookStage, c.Hooks)
	}
	return hooks[0].Path, hooks[0].Args, nil
}

// hookState is the OCI state a runtime writes to the hook's stdin, with the container's
// pid.
func hookState(bundle, pid string) string {
	return fmt.Sprintf(`{"ociVersion":"1.0.2","id":"hostile","status":"creating","pid":%s,"bundle":%q}`, pid, bundle)
}

// judgeHook checks one direct run of the hook: its output short and free of victim
// markers, whether it applied its actions or refused.
func (s *hostileSuite) judgeHook(t *testing.T, out string, err error, rss int64, wall time.Duration, v *testutil.Victim) {
	t.Helper()
	if leaks := v.Leaks(out); len(leaks) > 0 {
		t.Errorf("victim markers %v in the hook's output:\n%s", leaks, clip(out))
	}
	res := "applied"
	if err != nil {
		res = "refused (" + err.Error() + ")"
	}
	t.Logf("hook %s in %v, max RSS %d KiB; output: %q", res, wall.Round(time.Millisecond), rss, clip(out))
	if len(strings.TrimSpace(out)) > maxHookMessage {
		t.Errorf("the hook's output is %d bytes, more than %d", len(out), maxHookMessage)
	}
}

// judge checks one start: with its GPU, or refused in a short message; no victim marker
// anywhere in the output. It logs the outcome and returns whether the container started.
func (s *hostileSuite) judge(t *testing.T, out string, err error, tc hostileCase, v *testutil.Victim) bool {
	t.Helper()
	if leaks := v.Leaks(out); len(leaks) > 0 || strings.Contains(out, "HOSTILE-LEAK-IN") {
		t.Errorf("victim markers %v in the output:\n%s", leaks, clip(out))
	}
	if err != nil {
		refused(t, "", out)
		if tc.want == mustStart && !s.runtimeMayBreakGPU(tc) {
			t.Errorf("the container did not start: %v\n%s", err, clip(out))
		}
		return false
	}
	gpu := strings.Contains(out, "HOSTILE-GPU-NODE")
	cache := strings.Contains(out, "libcuda.so.1 (libc6,x86-64) => /")
	probe := strings.Contains(out, "cuda-probe: loaded libcuda.so.1")
	t.Logf("started: GPU node %v, ld cache lists libcuda.so.1 %v, cuda-probe loads it %v", gpu, cache, probe)
	switch {
	case s.runtimeMayBreakGPU(tc):
		t.Log("the runtime mounted the driver's files through the image's own links: only the host is checked")
	case !gpu || !cache && !probe:
		t.Errorf("the container started without its GPU:\n%s", clip(out))
	}
	return true
}

// runtimeMayBreakGPU says whether the runtime mounts the driver's files through a case's
// links: then the image may break its own GPU, and only the host is checked.
func (s *hostileSuite) runtimeMayBreakGPU(tc hostileCase) bool {
	return tc.runtimeFollowsLinks && !s.layout
}

var reHookStderr = regexp.MustCompile(`(?s)stderr: (.*)`)

// maxRuntimeMessage bounds a runtime's own error (a refusal that is not the hook's).
const maxRuntimeMessage = 2000

// refused checks and logs a runtime's error: the hook's message (what follows "stderr: "
// where the runtime quotes the hook) within maxHookMessage, or the runtime's own error
// within maxRuntimeMessage.
func refused(t *testing.T, label, out string) {
	t.Helper()
	if m := reHookStderr.FindStringSubmatch(out); m != nil {
		msg := strings.TrimSpace(m[1])
		// runc quotes it in its log line's msg="...": count the hook's own bytes
		if q, err := strconv.Unquote(`"` + strings.TrimSuffix(msg, `"`) + `"`); err == nil {
			msg = strings.TrimSpace(q)
		}
		t.Logf("%srefused by the hook: %s", label, msg)
		if len(msg) > maxHookMessage {
			t.Errorf("%sthe hook's message is %d bytes, more than %d:\n%s", label, len(msg), maxHookMessage, clip(out))
		}
		return
	}
	msg := strings.TrimSpace(out)
	t.Logf("%srefused by the runtime: %s", label, msg)
	if len(msg) > maxRuntimeMessage {
		t.Errorf("%sthe runtime's message is %d bytes, more than %d:\n%s", label, len(msg), maxRuntimeMessage, clip(out))
	}
}

func clip(s string) string {
	if len(s) > 4000 {
		return s[:4000] + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return s
}

func randomID(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// runcStart runs the bundle's container to its end and returns its combined output.
func (s *hostileSuite) runcStart(bundle string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := randomID("nvbind-hostile-")
	out, err := exec.CommandContext(ctx, s.runc, "run", "--bundle", bundle, id).CombinedOutput()
	_ = exec.Command(s.runc, "delete", "-f", id).Run()
	return string(out), err
}

// pluginStart starts the bundle as nvbind's NRI plugin has a runtime start a container
// whose driver steps it runs itself (nri --stage plugin): runc creates the container
// without the hook, hook.RunInContainer runs the hook's actions on the created container
// from this process on the host, as the plugin does at StartContainer, and runc starts
// it. A refusal of RunInContainer is the error, and the container never starts.
func (s *hostileSuite) pluginStart(bundle string) (string, error) {
	_, args, err := bundleHook(bundle)
	if err != nil {
		return "", err
	}
	a, err := hookargs.Decode(args[1:])
	if err != nil {
		return "", err
	}
	o := hook.OptionsOf(a)
	p := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	var c oci.Spec
	if err := json.Unmarshal(data, &c); err != nil {
		return "", err
	}
	c.Hooks = nil
	if o.AppProfile && c.Linux != nil {
		for _, d := range c.Linux.Devices {
			if hook.IsGPUNode(d.Path, d.Type) {
				o.GPUMinors = append(o.GPUMinors, int(d.Minor))
			}
		}
	}
	if data, err = json.Marshal(&c); err != nil {
		return "", err
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := randomID("nvbind-hostile-")
	defer func() { _ = exec.Command(s.runc, "delete", "-f", id).Run() }()
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer func() { _ = r.Close() }()
	create := exec.CommandContext(ctx, s.runc, "create", "--bundle", bundle, "--pid-file", filepath.Join(bundle, "pid"), id)
	create.Stdout, create.Stderr = w, w
	err = create.Run()
	_ = w.Close() // the container's process holds the pipe's other end
	if err != nil {
		return "", fmt.Errorf("runc create: %w", err)
	}
	pidText, err := os.ReadFile(filepath.Join(bundle, "pid"))
	if err != nil {
		return "", err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		return "", err
	}
	if err := hook.RunInContainer(ctx, pid, id, o); err != nil {
		return err.Error(), err
	}
	if out, err := exec.CommandContext(ctx, s.runc, "start", id).CombinedOutput(); err != nil {
		return string(out), fmt.Errorf("runc start: %w", err)
	}
	var out bytes.Buffer
	_, err = out.ReadFrom(r)
	return out.String(), err
}

// podmanStart runs the case's image root with Podman (an overlay over it), as
// podmanRun does, with the case's environment and read-only root.
func (s *hostileSuite) podmanStart(tc hostileCase, h *hostileImage) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	vendor := s.vendor
	if tc.dynamicHook {
		vendor = s.dynVen
	}
	args := []string{"--runtime", "runc", "run", "--rm", "--network=none",
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--device", vendor + "/gpu=0"}
	for _, kv := range h.env {
		args = append(args, "--env", kv)
	}
	if tc.readonly {
		args = append(args, "--read-only")
	}
	args = append(args, "--rootfs", h.rootfs+":O", "/bin/sh", "-c", hostileScript)
	out, err := exec.CommandContext(ctx, s.podman, args...).CombinedOutput()
	return string(out), err
}

// flip swaps two names of one folder, reached through a handle on the folder itself so
// that the swap never follows a link the swapping itself put there.
type flip struct {
	dir       *os.File
	name, alt string
}

// race starts containers while a goroutine per container swaps paths the hook writes
// with links to the host (through /proc/1/root and absolute) in a tight loop: whatever
// state the hook meets at whatever moment, the host tree must not change and no victim
// marker may show up.
func (s *hostileSuite) race(t *testing.T) {
	const containers = 14
	type setup func(h *hostileImage) []flip
	flips := func(h *hostileImage, parent string, pairs ...string) []flip {
		d, err := os.OpenFile(h.path(parent), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		var out []flip
		for i := 0; i < len(pairs); i += 2 {
			out = append(out, flip{d, pairs[i], pairs[i+1]})
		}
		return out
	}
	setups := []setup{
		func(h *hostileImage) []flip {
			h.link("etc.proc", "/proc/1/root"+h.v.Etc)
			h.link("etc.abs", h.v.Etc)
			return flips(h, ".", "etc", "etc.proc", "etc", "etc.abs")
		},
		func(h *hostileImage) []flip {
			h.mkdir("etc/ld.so.conf.d")
			h.link("etc/ld.so.conf.d.proc", "/proc/1/root"+h.v.Etc+"/ld.so.conf.d")
			h.link("etc/ld.so.cache.proc", "/proc/1/root"+h.v.Etc+"/ld.so.cache")
			h.link("etc/ld.so.cache.abs", h.v.Etc+"/ld.so.cache")
			return flips(h, "etc", "ld.so.conf.d", "ld.so.conf.d.proc", "ld.so.cache", "ld.so.cache.proc", "ld.so.cache", "ld.so.cache.abs")
		},
		func(h *hostileImage) []flip {
			h.link("usr/lib/x86_64-linux-gnu/libcuda.so.1", "nvidia/current/libcuda.so.535.261.03")
			h.link("usr/lib/x86_64-linux-gnu/libcuda.so.1.proc", "/proc/1/root"+h.v.SecretFile)
			h.link("usr/lib/x86_64-linux-gnu/libcuda.so.1.abs", h.v.SecretFile)
			return flips(h, "usr/lib/x86_64-linux-gnu", "libcuda.so.1", "libcuda.so.1.proc", "libcuda.so.1", "libcuda.so.1.abs")
		},
		func(h *hostileImage) []flip {
			// folders the hook creates for its links, and the application profile's
			h.mkdir("usr/lib/x86_64-linux-gnu/gbm")
			h.mkdir("usr/lib/x86_64-linux-gnu/vdpau")
			h.link("usr/lib/x86_64-linux-gnu/gbm.proc", "/proc/1/root"+h.v.Lib)
			h.link("usr/lib/x86_64-linux-gnu/vdpau.abs", h.v.Lib)
			return flips(h, "usr/lib/x86_64-linux-gnu", "gbm", "gbm.proc", "vdpau", "vdpau.abs")
		},
		func(h *hostileImage) []flip {
			h.mkdir("etc/nvidia/nvidia-application-profiles-rc.d")
			h.link("etc/nvidia/nvidia-application-profiles-rc.d.proc", "/proc/1/root"+h.v.Etc)
			return flips(h, "etc/nvidia", "nvidia-application-profiles-rc.d", "nvidia-application-profiles-rc.d.proc")
		},
		func(h *hostileImage) []flip {
			h.goodLib("usr/local/cuda/compat/libcuda.so.999.99")
			h.link("usr/local/cuda/compat.proc", "/proc/1/root"+h.v.Lib)
			h.link("usr/local/cuda/compat.abs", h.v.Lib)
			return flips(h, "usr/local/cuda", "compat", "compat.proc", "compat", "compat.abs")
		},
	}
	type result struct {
		h      *hostileImage
		before map[string]string
		w      *testutil.FSWatch
		out    string
		err    error
	}
	results := make([]result, containers)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	var swaps atomic.Int64
	for i := range containers {
		h, bundle, before, w := s.prepare(t)
		fl := setups[i%len(setups)](h)
		s.editConfig(t, bundle, hostileCase{}, nil)
		results[i] = result{h: h, before: before, w: w}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for len(fl) > 0 {
					select {
					case <-stop:
						return
					default:
					}
					for _, f := range fl {
						if unix.Renameat2(int(f.dir.Fd()), f.name, int(f.dir.Fd()), f.alt, unix.RENAME_EXCHANGE) == nil {
							swaps.Add(1)
						}
					}
				}
			}()
			results[i].out, results[i].err = s.runcStart(bundle)
			close(stop)
			<-done
		}()
	}
	wg.Wait()
	started := 0
	for i, r := range results {
		out := r.out
		if leaks := r.h.v.Leaks(out); len(leaks) > 0 || strings.Contains(out, "HOSTILE-LEAK-IN") {
			t.Errorf("container %d: victim markers %v in the output:\n%s", i, leaks, clip(out))
		}
		switch {
		case r.err != nil:
			refused(t, fmt.Sprintf("container %d: ", i), out)
		case !strings.Contains(out, "HOSTILE-GPU-NODE"):
			t.Errorf("container %d started without its GPU node:\n%s", i, clip(out))
		default:
			started++
		}
		if ev := r.w.Events(t); len(ev) > 0 {
			t.Errorf("container %d: victim files were opened or changed:\n  %s", i, strings.Join(ev, "\n  "))
		}
		if diff := testutil.SnapshotDiff(r.before, r.h.v.Snapshot(t)); len(diff) > 0 {
			t.Errorf("container %d: the host's victim tree changed:\n  %s", i, strings.Join(diff, "\n  "))
		}
	}
	t.Logf("%d of %d containers started, %d swaps", started, containers, swaps.Load())
}

// BenchmarkHookHostile runs the hook binary as runc does (the spec's command line, the
// OCI state on stdin, a private mount namespace) on the worst inputs of TestHostileImages,
// and reports its peak memory (the hook process's ru_maxrss, measured through a forking
// launcher: see testutil.Measured) and its time per run. The image's ld.so.cache is put
// back before every run, since the hook replaces it.
func BenchmarkHookHostile(b *testing.B) {
	testutil.RequiresRoot(b)
	runc := testutil.RequiresCommand(b, "runc")
	driverRoot := testutil.DriverRoot(b, "debian-535")
	dir := b.TempDir()
	bin := testutil.BuildNVBind(b, filepath.Join(dir, "bin"))
	specDir := filepath.Join(dir, "spec")
	if err := os.MkdirAll(specDir, 0o755); err != nil {
		b.Fatal(err)
	}
	writeSpec(b, driverRoot, specDir, testutil.HookBinary(bin), spec.Options{})
	template := runcBundle(b, runc, specDir, "nvidia.com/gpu=0", "true")
	measured := testutil.NewMeasured(b, dir)
	good := filepath.Join(dir, "good.so")
	testutil.BuildSharedObject(b, good, "libnvbindgood.so.1", 64, "")
	garbage := make([]byte, 64<<10)
	_, _ = rand.Read(garbage)

	for _, bc := range []struct {
		name    string
		cache   []byte
		image   func(rootfs string)
		refuses bool // the hook must refuse this image (a budget), else apply its actions
	}{
		{name: "plain-image"},
		{name: "200KB-cache-one-1900-byte-string", cache: testutil.SharedStringCache(8000, 1900)},
		{name: "200KB-cache-one-4095-byte-string", cache: testutil.SharedStringCache(8000, 4095)},
		{name: "cache-at-successive-offsets", cache: testutil.SuccessiveOffsetsCache(4000)},
		{name: "9MiB-cache", cache: append([]byte("glibc-ld.so.cache1.1"), make([]byte, 9<<20)...)},
		{name: "garbage-cache-big-ldsoconf", cache: garbage, image: func(rootfs string) { bigLDSoConf(b, rootfs, good) }},
		{name: "garbage-cache-60000-libraries", cache: garbage, image: func(rootfs string) {
			copyInto(b, good, filepath.Join(rootfs, "opt/good.bin"))
			if err := os.MkdirAll(filepath.Join(rootfs, "usr/lib"), 0o755); err != nil {
				b.Fatal(err)
			}
			for i := range 60000 {
				if err := os.Symlink("/opt/good.bin", filepath.Join(rootfs, "usr/lib", fmt.Sprintf("libnvbindmany%06d.so.1", i))); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{name: "garbage-cache-100000-entry-folder", cache: garbage, refuses: true, image: func(rootfs string) {
			manyLinks(b, filepath.Join(rootfs, "usr/lib"), 100000)
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			bundle := filepath.Join(b.TempDir(), "bundle")
			if out, err := exec.Command("cp", "-a", template, bundle).CombinedOutput(); err != nil {
				b.Fatalf("cp: %v\n%s", err, out)
			}
			rootfs := filepath.Join(bundle, "rootfs")
			if bc.image != nil {
				bc.image(rootfs)
			}
			path, args, err := bundleHook(bundle)
			if err != nil {
				b.Fatal(err)
			}
			argv := hookArgv(bundle, "", "sh", path, args)
			var peak int64
			var total time.Duration
			runs := 0
			for b.Loop() {
				b.StopTimer()
				if bc.cache != nil {
					if err := os.WriteFile(filepath.Join(rootfs, "etc/ld.so.cache"), bc.cache, 0o644); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				out, rss, wall, err := measured.Run(argv, "")
				if runs == 0 {
					b.Logf("hook (error %v): %q", err, clip(out))
				}
				if (err != nil) != bc.refuses {
					b.Fatalf("the hook's outcome is not this input's (error %v, want refused %v): the figures would measure something else\n%s", err, bc.refuses, clip(out))
				}
				peak = max(peak, rss)
				total += wall
				runs++
			}
			b.ReportMetric(float64(peak), "maxrss-KiB")
			b.ReportMetric(float64(total.Microseconds())/1000/float64(runs), "ms/run")
		})
	}
}

// bigLDSoConf fills the image's ld.so.conf files up to the hook's budgets: /etc/ld.so.conf
// and 62 included files of nearly 64 KiB each (comments and repeated lines), naming 240
// folders of 40 libraries each (with the 7 folders of 00-nvbind.conf, which the hook
// writes first, just under the 256 the hook reads).
func bigLDSoConf(b *testing.B, rootfs, lib string) {
	copyInto(b, lib, filepath.Join(rootfs, "opt/good.bin"))
	var dirs strings.Builder
	for i := range 240 {
		d := fmt.Sprintf("/opt/l%03d", i)
		fmt.Fprintln(&dirs, d)
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			b.Fatal(err)
		}
		for j := range 40 {
			if err := os.Symlink("/opt/good.bin", filepath.Join(rootfs, d, fmt.Sprintf("libnvbind%03d-%02d.so.1", i, j))); err != nil {
				b.Fatal(err)
			}
		}
	}
	// whole lines only, each a comment or one of the 240 folders again
	pad := "# padding " + strings.Repeat("x", 100) + "\n" + strings.Join(strings.SplitAfter(dirs.String(), "\n")[:100], "")
	fill := func(head string) []byte {
		s := head + dirs.String()
		for len(s)+len(pad) < 63<<10 {
			s += pad
		}
		return []byte(s)
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "etc/ld.so.conf.d"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/ld.so.conf"), fill("include /etc/ld.so.conf.d/*.conf\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	for i := range 62 {
		if err := os.WriteFile(filepath.Join(rootfs, fmt.Sprintf("etc/ld.so.conf.d/%02d.conf", i)), fill(""), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// copyInto copies the file src to dst, making dst's folders.
func copyInto(b *testing.B, src, dst string) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(dst, readAll(b, src), 0o755); err != nil {
		b.Fatal(err)
	}
}

// renames starts containers whose images reach the paths the hook resolves through ".."
// (benign relative links: /usr/local/cuda/compat -> ../../../opt/compat), while a
// goroutine renames a file of its own elsewhere on the host in a tight loop. openat2 with
// RESOLVE_IN_ROOT fails with EAGAIN when any rename or mount on the system races a ".."
// lookup; the caller is to retry. Every container must start.
func (s *hostileSuite) renames(t *testing.T) {
	const containers = 6
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(a, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	var n atomic.Int64
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if unix.Rename(a, b) == nil && unix.Rename(b, a) == nil {
				n.Add(2)
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for i := range containers {
		h, bundle, before, w := s.prepare(t)
		h.mkdir("opt/compat")
		h.link("usr/local/cuda/compat", "../../../opt/compat")
		s.editConfig(t, bundle, hostileCase{}, nil)
		out, err := s.runcStart(bundle)
		if err != nil {
			refused(t, fmt.Sprintf("container %d: ", i), out)
			t.Errorf("container %d did not start (%d renames so far): %v", i, n.Load(), err)
		} else if !strings.Contains(out, "HOSTILE-GPU-NODE") || !strings.Contains(out, "cuda-probe: loaded libcuda.so.1") {
			t.Errorf("container %d started without its GPU:\n%s", i, clip(out))
		}
		if ev := w.Events(t); len(ev) > 0 {
			t.Errorf("container %d: victim files were opened or changed:\n  %s", i, strings.Join(ev, "\n  "))
		}
		if diff := testutil.SnapshotDiff(before, h.v.Snapshot(t)); len(diff) > 0 {
			t.Errorf("container %d: the host's victim tree changed:\n  %s", i, strings.Join(diff, "\n  "))
		}
	}
	t.Logf("%d renames while %d containers started", n.Load(), containers)
}
