package layout

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/test/driverroot"
	"github.com/nvbind/nvbind/test/testutil"
)

func inventory(t testing.TB, r driverroot.Root) *gpu.Inventory {
	t.Helper()
	d, err := gpu.New(r.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func TestPlan(t *testing.T) {
	t.Parallel()
	inv := inventory(t, driverroot.Open(t, "debian-535"))
	all := For(inv, gpu.CapsAll)
	if all.Name != "all" || all.Mount() != "/usr/local/nvbind/all" || !strings.HasPrefix(all.ID, "535.261.03-all-") {
		t.Fatalf("plan %s %s %s", all.Name, all.Mount(), all.ID)
	}
	byPath := map[string]Entry{}
	for _, e := range all.Entries {
		byPath[e.Path] = e
	}
	lib := "/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.535.261.03"
	if e := byPath[lib]; !strings.HasSuffix(e.Host, lib) {
		t.Errorf("libcuda: %+v", e)
	}
	if e := byPath["/usr/lib/x86_64-linux-gnu/libcuda.so.1"]; e.Target != "nvidia/current/libcuda.so.535.261.03" {
		t.Errorf("libcuda.so.1 link: %+v", e)
	}
	if _, ok := byPath["/run/nvidia-persistenced/socket"]; ok {
		t.Error("a socket is in the layout")
	}
	if !slices.Contains(all.Folders, "/usr/local/nvbind/all/usr/lib/x86_64-linux-gnu/nvidia/current") {
		t.Errorf("folders %v", all.Folders)
	}
	def := For(inv, gpu.CapsDefault)
	if def.Name != "compute+utility" || def.ID == all.ID || len(def.Entries) >= len(all.Entries) {
		t.Errorf("default plan %s (%d entries), all %d", def.ID, len(def.Entries), len(all.Entries))
	}
	if again := For(inv, gpu.CapsAll); again.ID != all.ID {
		t.Error("the same inventory plans another layout")
	}
	up := inventory(t, driverroot.Open(t, "debian-535-upgrade"))
	if For(up, gpu.CapsAll).ID == all.ID {
		t.Error("a driver upgrade keeps the layout's ID")
	}
}

// The hook links a driver folder whole only where the plan holds all the driver has there,
// and never two folders an image may see as one.
func TestFolderLinks(t *testing.T) {
	t.Parallel()
	inv := inventory(t, driverroot.Open(t, "debian-535"))
	files := map[string]*gpu.File{}
	for i := range inv.Files {
		files[inv.Files[i].Path] = &inv.Files[i]
	}
	links := func(p Plan) []hookargs.Link { // as the layout's spec has them
		var out []hookargs.Link
		for _, e := range p.Entries {
			if !Reached(e.Path, files[e.Path]) {
				out = append(out, hookargs.Link{Target: path.Join(p.Mount(), e.Path), Link: e.Path})
			}
		}
		return out
	}
	all := For(inv, gpu.CapsAll)
	if got := FolderLinks(inv, all, links(all)); !slices.Equal(got, []string{"/lib/firmware/nvidia/535.261.03", "/usr/lib/nvidia",
		"/usr/lib/x86_64-linux-gnu/nvidia", "/usr/share/nvidia"}) {
		t.Errorf("all: %q", got)
	}
	// graphics has every file of /usr/share/nvidia, but not all of .../x86_64-linux-gnu/nvidia
	graphics := For(inv, gpu.CapsOf(gpu.CapGraphics))
	if got := FolderLinks(inv, graphics, links(graphics)); !slices.Equal(got, []string{"/usr/share/nvidia"}) {
		t.Errorf("graphics: %q", got)
	}
	// /usr/lib64/nvidia is /usr/lib/nvidia in an image where lib64 links to lib
	aliased := append(links(all), hookargs.Link{Target: "/usr/local/nvbind/all/usr/lib64/nvidia/x", Link: "/usr/lib64/nvidia/x"})
	if got := FolderLinks(inv, all, aliased); slices.Contains(got, "/usr/lib/nvidia") || slices.Contains(got, "/usr/lib64/nvidia") {
		t.Errorf("aliased folders: %q", got)
	}
	// whatever layout links a folder whole holds every path any other layout of the driver
	// has there, so that the other's hook finds all of its own through it
	sets := []gpu.Capabilities{gpu.CapsAll, gpu.CapsDefault, gpu.CapsOf(gpu.CapGraphics, gpu.CapDisplay)}
	for _, c := range gpu.CapsAll.List() {
		sets = append(sets, gpu.CapsOf(c))
	}
	for _, c := range sets {
		p := For(inv, c)
		for _, f := range FolderLinks(inv, p, links(p)) {
			has := map[string]bool{}
			for _, e := range p.Entries {
				has[e.Path] = true
			}
			for _, o := range sets {
				for _, e := range For(inv, o).Entries {
					if strings.HasPrefix(e.Path, f+"/") && !has[e.Path] {
						t.Errorf("%s links %s whole without %s, which %s has", p.Name, f, e.Path, o)
					}
				}
			}
		}
	}
}

// A folder another layout of the driver has under another name in an image (/lib/nvidia is
// /usr/lib/nvidia where /lib links to usr/lib) is never linked whole.
func TestFolderLinksAcrossLayouts(t *testing.T) {
	t.Parallel()
	inv := &gpu.Inventory{Driver: gpu.Driver{Version: "535.261.03"}, Files: []gpu.File{
		{Kind: gpu.KindConfig, Path: "/usr/lib/nvidia/a.bin", HostPath: "/h/a.bin", Capabilities: gpu.CapsOf(gpu.CapDisplay)},
		{Kind: gpu.KindConfig, Path: "/lib/nvidia/b.bin", HostPath: "/h/b.bin", Capabilities: gpu.CapsOf(gpu.CapUtility)},
		{Kind: gpu.KindConfig, Path: "/usr/share/nvidia/c.json", HostPath: "/h/c.json", Capabilities: gpu.CapsOf(gpu.CapGraphics)},
	}}
	display := For(inv, gpu.CapsOf(gpu.CapDisplay, gpu.CapGraphics))
	var links []hookargs.Link
	for _, e := range display.Entries {
		links = append(links, hookargs.Link{Target: path.Join(display.Mount(), e.Path), Link: e.Path})
	}
	if got := FolderLinks(inv, display, links); !slices.Equal(got, []string{"/usr/share/nvidia"}) {
		t.Errorf("folder links %q, want /usr/share/nvidia alone", got)
	}
}

func TestDriverFolder(t *testing.T) {
	t.Parallel()
	for p, want := range map[string]string{
		"/usr/share/nvidia/nvoptix.bin":                                   "/usr/share/nvidia",
		"/usr/lib/nvidia/current/nvidia_drv.so":                           "/usr/lib/nvidia",
		"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1":      "/usr/lib/x86_64-linux-gnu/nvidia",
		"/usr/lib64/nvidia/libfoo.so":                                     "/usr/lib64/nvidia",
		"/lib/firmware/nvidia/535.261.03/gsp_ga10x.bin":                   "/lib/firmware/nvidia/535.261.03",
		"/lib/firmware/nvidia/535.261.03/sub/x.bin":                       "/lib/firmware/nvidia/535.261.03",
		"/lib/firmware/nvidia/ga102/gsp.bin":                              "", // linux-firmware's, for nouveau
		"/usr/share/vulkan/icd.d/nvidia_icd.json":                         "", // Mesa's drivers go there too
		"/usr/lib/x86_64-linux-gnu/gbm/nvidia-drm_gbm.so":                 "",
		"/usr/bin/nvidia-smi":                                             "",
		"/usr/lib/nvidia":                                                 "", // a file, not a folder above one
		"/opt/nvidia/x":                                                   "",
		"/usr/lib/x86_64-linux-gnu/vdpau/nvidia/libvdpau_nvidia.so.1":     "",
		"/usr/share/doc/nvidia/README":                                    "",
		"/usr/share/nvidia/535.261.03/x":                                  "/usr/share/nvidia",
		"/usr/lib/i386-linux-gnu/nvidia/current/libcuda.so.535.261.03":    "/usr/lib/i386-linux-gnu/nvidia",
		"/usr/lib/aarch64-linux-gnu/nvidia/current/libcuda.so.535.261.03": "/usr/lib/aarch64-linux-gnu/nvidia",
	} {
		if got := DriverFolder(p, "535.261.03"); got != want {
			t.Errorf("DriverFolder(%q) = %q, want %q", p, got, want)
		}
	}
	if got := DriverFolder("/lib/firmware/nvidia/535.261.03/gsp.bin", ""); got != "" {
		t.Errorf("without a version: %q", got)
	}
}

func TestReached(t *testing.T) {
	t.Parallel()
	lib := &gpu.File{Kind: gpu.KindLibrary, SONAME: "libcuda.so.1"}
	for _, tc := range []struct {
		path string
		f    *gpu.File
		want bool
	}{
		{"/usr/lib/x86_64-linux-gnu/libcuda.so.535", lib, true},
		{"/usr/lib/x86_64-linux-gnu/libcuda.so.1", nil, true},
		{"/usr/lib/x86_64-linux-gnu/vdpau/libvdpau_nvidia.so.1", nil, false},
		{"/usr/lib/x86_64-linux-gnu/gbm/nvidia-drm_gbm.so", nil, false},
		{"/usr/bin/nvidia-smi", &gpu.File{Kind: gpu.KindBinary}, false},
		{"/usr/lib/nvidia/current/nvidia_drv.so", &gpu.File{Kind: gpu.KindLibrary}, false},
		{"/usr/share/vulkan/icd.d/nvidia_icd.json", &gpu.File{Kind: gpu.KindConfig}, false},
	} {
		if got := Reached(tc.path, tc.f); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.path, got, tc.want)
		}
	}
}

func TestWanted(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	for _, caps := range []gpu.Capabilities{gpu.CapsAll, gpu.CapsOf(gpu.CapVideo, gpu.CapCompute)} {
		if err := Want(base, caps); err != nil {
			t.Fatal(err)
		}
	}
	for _, junk := range []string{"../x", "compute,utility", "utility+compute", "warp"} {
		_ = os.WriteFile(filepath.Join(base, wantDir, strings.ReplaceAll(junk, "/", "_")), nil, 0o644)
	}
	got := Wanted(base)
	if len(got) != 2 || !slices.Contains(got, gpu.CapsAll) || !slices.Contains(got, gpu.CapsOf(gpu.CapVideo, gpu.CapCompute)) {
		t.Fatalf("wanted %v", got)
	}
	ClearWanted(base, []Plan{{Name: "all"}})
	if got := Wanted(base); len(got) != 1 {
		t.Fatalf("after clearing: %v", got)
	}
}

// TestEnsure builds a layout of the debian-535 fixture in a private mount namespace and
// checks it from inside.
func TestEnsure(t *testing.T) {
	inPrivateNamespace(t, ensureHelper, func() { testutil.DriverRoot(t, "debian-535") })
}

// inPrivateNamespace runs helper in a private mount namespace: unshare runs this test
// again there (with NVBIND_LAYOUT_HELPER naming it), after check, as root, and helper
// gets a layout base in NVBIND_LAYOUT_BASE.
func inPrivateNamespace(t *testing.T, helper func(*testing.T), check func()) {
	t.Helper()
	if os.Getenv("NVBIND_LAYOUT_HELPER") == t.Name() {
		helper(t)
		return
	}
	testutil.RequiresRoot(t)
	if check != nil {
		check()
	}
	unshare := testutil.RequiresCommand(t, "unshare")
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), "NVBIND_LAYOUT_HELPER="+t.Name(), "NVBIND_LAYOUT_BASE="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
}

func ensureHelper(t *testing.T) {
	root := testutil.DriverRoot(t, "debian-535")
	base := os.Getenv("NVBIND_LAYOUT_BASE")
	d, err := gpu.New(gpu.WithDriverRoot(root), gpu.WithDevRoot(root), gpu.WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p := For(inv, gpu.CapsAll)
	b, err := Build(base, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !Complete(base, p) {
		t.Fatal("not complete")
	}
	if w, _ := wholeFolders(p, nil); len(w) != 0 || len(b.Whole) != 0 {
		closeWhole(w)
		t.Errorf("folders of a writable file system bound whole: %v, %v", w, b.Whole)
	}
	// each driver folder says why it is laid out per file; the 64-bit one, a folder of
	// its own, because the fixture's file system can be written
	if !b.Made || len(b.PerFile) == 0 {
		t.Fatalf("Build = %+v: made, with the driver folders laid out per file, wanted", b)
	}
	writable := false
	for _, n := range b.PerFile {
		if DriverFolder(n.Folder+"/x", "") != n.Folder || n.Why == "" {
			t.Errorf("driver folder %s (host %s): %q, want a driver folder and why", n.Folder, n.Host, n.Why)
		}
		writable = writable || n.Folder == "/usr/lib/x86_64-linux-gnu/nvidia" && strings.Contains(n.Why, "which can be written")
	}
	if !writable {
		t.Errorf("the 64-bit folder is not refused as on a writable file system: %+v", b.PerFile)
	}
	dir := p.HostPath(base)
	files := checkLayout(t, dir, p, nil)
	if b, err := Build(base, p, nil); err != nil || b.Made {
		t.Fatalf("a second Build: %+v, %v (a complete layout stays)", b, err)
	}
	gone, err := Collect(base, nil)
	if err != nil || len(gone) != 1 || gone[0] != p.ID {
		t.Fatalf("collect: %v %v", gone, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the layout folder stays: %v", err)
	}
	for _, e := range p.Entries {
		if e.Host != "" {
			if _, err := os.Stat(e.Host); err != nil {
				t.Fatalf("a driver file is gone after Collect: %v", err)
			}
		}
	}
	t.Logf("layout %s: %d files, %d entries", p.ID, files, len(p.Entries))
}

// checkLayout checks the layout at dir against plan p: each file the host's, read-only,
// each link as planned (in a folder bound whole, one that ends at the same file), the
// tmpfs read-only, libcuda.so.1 found; it returns the files.
func checkLayout(t *testing.T, dir string, p Plan, whole map[string]wholeFolder) int {
	t.Helper()
	files := 0
	for _, e := range p.Entries {
		got := filepath.Join(dir, e.Path)
		if e.Host == "" {
			target, err := os.Readlink(got)
			if _, in := whole[DriverFolder(e.Path, "")]; in && err == nil && target != e.Target {
				// the host's own link: it ends at the same file
				var a, b unix.Stat_t
				if unix.Stat(got, &a) != nil || unix.Stat(filepath.Join(filepath.Dir(got), e.Target), &b) != nil || a.Dev != b.Dev || a.Ino != b.Ino {
					t.Errorf("%s -> %q ends elsewhere than the plan's %q", e.Path, target, e.Target)
				}
				continue
			}
			if err != nil || target != e.Target {
				t.Errorf("%s -> %q, %v; want %q", e.Path, target, err, e.Target)
			}
			continue
		}
		files++
		want, err := os.ReadFile(e.Host)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(got)
		if err != nil || !bytes.Equal(data, want) {
			t.Errorf("%s: not the host's file (%v)", e.Path, err)
		}
		if err := os.WriteFile(got, []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("%s is writable: %v", e.Path, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("the layout's tmpfs is writable: %v", err)
	}
	// nothing but the plan's entries (and the layout's own two files)
	planned := map[string]bool{"/" + completeFile: true, "/" + EntriesFile: true}
	for _, e := range p.Entries {
		planned[e.Path] = true
	}
	if err := filepath.WalkDir(dir, func(q string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if rel := strings.TrimPrefix(q, dir); !planned[rel] {
			t.Errorf("%s is in the layout and not in its plan", rel)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// the libcuda.so.1 link resolves inside the layout to the host's file
	if data, err := os.ReadFile(filepath.Join(dir, "usr/lib/x86_64-linux-gnu/libcuda.so.1")); err != nil || len(data) == 0 {
		t.Errorf("libcuda.so.1 in the layout: %v", err)
	}
	return files
}

// TestEnsureWholeFolder: on a file system that is read-only itself (a tmpfs remounted
// read-only, as a dm-verity root or a squashfs image is), the driver folder that holds
// exactly the plan's entries goes into the layout as one mount of the host's folder, and
// the layout holds the same names as with one mount per file; a plan that holds only part
// of the folder (compute alone) mounts per file. In a private mount namespace.
func TestEnsureWholeFolder(t *testing.T) { inPrivateNamespace(t, wholeHelper, nil) }

func wholeHelper(t *testing.T) {
	base := os.Getenv("NVBIND_LAYOUT_BASE")
	mkfs := testutil.RequiresCommand(t, "mkfs.ext4")
	mount := testutil.RequiresCommand(t, "mount")
	// the root built in a folder, then an ext4 image of it mounted read-only over that
	// folder from a loop device set up read-only (what dm-verity gives)
	root := driverroot.Copy(t, driverroot.Synthetic(t, "debian-535"), filepath.Join(t.TempDir(), "root"))
	img := filepath.Join(t.TempDir(), "root.img")
	if out, err := exec.Command(mkfs, "-q", "-d", root.Path, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if out, err := exec.Command(mount, "-o", "loop,ro", img, root.Path).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = unix.Unmount(root.Path, unix.MNT_DETACH) })
	// Debian's 32-bit folder holds only what the plan lays out; the 64-bit one also holds
	// NGX's wine DLLs, which no plan does, so it is mounted per file
	const folder = "/usr/lib/i386-linux-gnu/nvidia"
	host := filepath.Join(root.Path, folder)
	if err := immutableFolder(openFolder(t, host)); err != nil {
		t.Fatalf("%s is on a read-only loop device, and not seen so: %v", host, err)
	}
	// the same folder on a tmpfs whose superblock is read-only is not: root may make it
	// writable again
	fsDir := t.TempDir()
	if err := unix.Mount("nvbind-test", fsDir, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(fsDir, unix.MNT_DETACH) })
	if err := unix.Mount("", fsDir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	if err := immutableFolder(openFolder(t, fsDir)); err == nil || !strings.Contains(err.Error(), "on tmpfs, which can be written") {
		t.Errorf("a tmpfs remounted read-only: %v, want it refused as a tmpfs", err)
	}
	inv := inventory(t, root)
	mountsUnder := func(dir string) int {
		data, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for line := range strings.SplitSeq(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
				n++
			}
		}
		return n
	}
	p := For(inv, gpu.CapsAll)
	b, err := Build(base, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := p.HostPath(base)
	w, notes := wholeFolders(p, nil)
	closeWhole(w)
	if !slices.Equal(b.Whole, []string{folder}) || !slices.Equal(b.PerFile, notes) {
		t.Errorf("Build = %+v, want %s whole and the notes %+v", b, folder, notes)
	}
	// the 64-bit folder also holds NGX's DLLs (in current/nvidia/wine), which no layout
	// does: it says so
	var wine bool
	for _, n := range notes {
		wine = wine || n.Folder == "/usr/lib/x86_64-linux-gnu/nvidia" && n.Why == "current/nvidia: a folder the layout has nothing in"
	}
	if !wine {
		t.Errorf("the 64-bit folder's note does not name a file the layout lacks: %+v", notes)
	}
	files := checkLayout(t, dir, p, w)
	var hostSt, gotSt unix.Stat_t
	if err := unix.Stat(host, &hostSt); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Join(dir, folder), &gotSt); err != nil {
		t.Fatal(err)
	}
	if gotSt.Dev != hostSt.Dev || gotSt.Ino != hostSt.Ino {
		t.Errorf("%s in the layout is not the host's folder", folder)
	}
	if _, ok := w[folder]; !ok {
		t.Fatalf("%s is not bound whole (%v)", folder, w)
	}
	// one mount per file outside the whole folders, one per whole folder
	want := len(w)
	for _, e := range p.Entries {
		if _, in := w[DriverFolder(e.Path, "")]; e.Host != "" && !in {
			want++
		}
	}
	whole := mountsUnder(dir)
	if whole != want || whole >= files {
		t.Errorf("%d mounts in the layout for %d files, want %d (folders bound whole: %v)", whole, files, want, slices.Sorted(maps.Keys(w)))
	}
	if err := os.WriteFile(filepath.Join(dir, folder, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("the folder is writable in the layout: %v", err)
	}
	// a file mounted over one of the folder's: the folder is not bound whole, whose
	// mount would show what is under that mount
	lib := filepath.Join(host, "current/libcuda.so.535.261.03")
	if err := unix.Mount(filepath.Join(root.Path, "usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.535.261.03"), lib, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if w, notes := wholeFolders(p, nil); len(w) != 0 || !slices.ContainsFunc(notes, func(n PerFile) bool {
		return n.Folder == folder && n.Why == "current/libcuda.so.535.261.03: a mount covers it"
	}) {
		closeWhole(w)
		t.Errorf("a folder with a file mounted over one of its files: bound whole %v, notes %+v", w, notes)
	}
	if err := unix.Unmount(lib, 0); err != nil {
		t.Fatal(err)
	}
	// compute alone holds part of the 64-bit folder: one mount per file, and it says why
	pc := For(inv, gpu.CapsOf(gpu.CapCompute, gpu.CapUtility))
	if w, notes := wholeFolders(pc, nil); len(w) != 0 || !slices.ContainsFunc(notes, func(n PerFile) bool {
		return n.Folder == "/usr/lib/x86_64-linux-gnu/nvidia" && strings.HasSuffix(n.Why, " the layout does not hold")
	}) {
		closeWhole(w)
		t.Errorf("a plan with part of the folder: bound whole %v, notes %+v", w, notes)
	}
	if err := Ensure(base, pc, nil); err != nil {
		t.Fatal(err)
	}
	cfiles := checkLayout(t, pc.HostPath(base), pc, nil)
	if n := mountsUnder(pc.HostPath(base)); n != cfiles {
		t.Errorf("compute+utility: %d mounts for %d files", n, cfiles)
	}
	t.Logf("all: %d mounts for %d files, folders bound whole: %v; compute+utility: %d files", whole, files, slices.Sorted(maps.Keys(w)), cfiles)
	if _, err := Collect(base, nil); err != nil {
		t.Fatal(err)
	}
	if n := mountsUnder(base); n != 0 {
		t.Errorf("%d mounts left under %s after Collect", n, base)
	}
}

// TestSameTree: a folder goes whole only with exactly the plan's names: its links may
// take another way to the same file (libcuda.so -> libcuda.so.1 where the plan links
// libcuda.so straight to the library), and nothing else may differ.
func TestSameTree(t *testing.T) {
	t.Parallel()
	const c = "/usr/lib/nvidia"
	build := func(t *testing.T, extra func(dir string)) string {
		dir := t.TempDir()
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(os.Chmod(dir, 0o755))
		must(os.WriteFile(filepath.Join(dir, "libcuda.so.535"), []byte("x"), 0o644))
		must(os.Symlink("libcuda.so.535", filepath.Join(dir, "libcuda.so.1")))
		must(os.Symlink("libcuda.so.1", filepath.Join(dir, "libcuda.so")))
		must(os.MkdirAll(filepath.Join(dir, "wine"), 0o755))
		must(os.Chmod(filepath.Join(dir, "wine"), 0o755)) // whatever the umask
		must(os.WriteFile(filepath.Join(dir, "wine/nvngx.dll"), []byte("y"), 0o644))
		if extra != nil {
			extra(dir)
		}
		return dir
	}
	plan := func(host string) []Entry {
		return []Entry{{Path: c + "/libcuda.so.535", Host: host + "/libcuda.so.535"}, {Path: c + "/wine/nvngx.dll", Host: host + "/wine/nvngx.dll"},
			{Path: c + "/libcuda.so.1", Target: "libcuda.so.535"}, {Path: c + "/libcuda.so", Target: "libcuda.so.535"}}
	}
	for _, tc := range []struct {
		name  string
		extra func(dir string)
		edit  func([]Entry) []Entry
		want  bool
	}{
		{"same", nil, nil, true},
		{"an extra file", func(d string) { _ = os.WriteFile(filepath.Join(d, "libGLX_nvidia.so.0"), nil, 0o644) }, nil, false},
		{"an extra empty folder", func(d string) { _ = os.Mkdir(filepath.Join(d, "empty"), 0o755) }, nil, false},
		{"a hidden file", func(d string) { _ = os.WriteFile(filepath.Join(d, ".hidden"), nil, 0o644) }, nil, false},
		{"a fifo", func(d string) { _ = unix.Mkfifo(filepath.Join(d, "fifo"), 0o644) }, nil, false},
		{"a folder others cannot enter", func(d string) { _ = os.Chmod(filepath.Join(d, "wine"), 0o750) }, nil, false},
		{"a link through a file", func(d string) {
			_ = os.Remove(filepath.Join(d, "libcuda.so"))
			_ = os.Symlink("libcuda.so.1/../libcuda.so.535", filepath.Join(d, "libcuda.so"))
		}, nil, false},
		{"a link elsewhere", func(d string) {
			_ = os.WriteFile(filepath.Join(d, "other"), nil, 0o644)
			_ = os.Remove(filepath.Join(d, "libcuda.so"))
			_ = os.Symlink("other", filepath.Join(d, "libcuda.so"))
		}, func(e []Entry) []Entry { return append(e, Entry{Path: c + "/other", Host: "HOST/other"}) }, false},
		{"a link out", func(d string) {
			_ = os.Remove(filepath.Join(d, "libcuda.so"))
			_ = os.Symlink("../libcuda.so.535", filepath.Join(d, "libcuda.so"))
		}, nil, false},
		{"an absolute link", func(d string) {
			_ = os.Remove(filepath.Join(d, "libcuda.so"))
			_ = os.Symlink(filepath.Join(d, "libcuda.so.535"), filepath.Join(d, "libcuda.so"))
		}, nil, false},
		{"a plan entry missing", nil, func(e []Entry) []Entry {
			return append(e, Entry{Path: c + "/libnvidia-ml.so.1", Target: "libcuda.so.535"})
		}, false},
		{"a file of the host elsewhere", nil, func(e []Entry) []Entry { e[0].Host = "/elsewhere/libcuda.so.535"; return e }, false},
		{"a host link where the plan has a file", func(d string) { _ = os.Symlink("libcuda.so.535", filepath.Join(d, "libnvidia-ml.so.1")) },
			func(e []Entry) []Entry {
				return append(e, Entry{Path: c + "/libnvidia-ml.so.1", Host: "HOST/libnvidia-ml.so.1"})
			}, false},
		{"a plan link where the host has a file", func(d string) { _ = os.WriteFile(filepath.Join(d, "libnvidia-ml.so.1"), nil, 0o644) },
			func(e []Entry) []Entry {
				return append(e, Entry{Path: c + "/libnvidia-ml.so.1", Target: "libcuda.so.535"})
			}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := build(t, tc.extra)
			entries := plan(dir)
			if tc.edit != nil {
				entries = tc.edit(entries)
				for i := range entries {
					entries[i].Host = strings.Replace(entries[i].Host, "HOST", dir, 1)
				}
			}
			err := sameTree(openFolder(t, dir), dir, c, entries)
			if (err == nil) != tc.want {
				t.Errorf("sameTree = %v, want the same tree: %v", err, tc.want)
			}
			// refused for its own reason, which names the entry
			if why := sameTreeWhy[tc.name]; err != nil && (why == "" || !strings.Contains(err.Error(), why)) {
				t.Errorf("sameTree = %v, want it to say %q", err, why)
			}
		})
	}
	if err := immutableFolder(openFolder(t, t.TempDir())); err == nil || !strings.Contains(err.Error(), "which can be written") {
		t.Errorf("a folder of a writable file system: %v, want it refused as writable", err)
	}
}

// sameTreeWhy is what sameTree says for each case of TestSameTree it refuses.
var sameTreeWhy = map[string]string{
	"an extra file":                         "libGLX_nvidia.so.0: a file the layout does not hold",
	"an extra empty folder":                 "empty: a folder the layout has nothing in",
	"a hidden file":                         ".hidden: a file the layout does not hold",
	"a fifo":                                "fifo: not a file, link or folder",
	"a folder others cannot enter":          "wine: not a folder of mode 0755 of the builder's (root)",
	"a link through a file":                 "libcuda.so: a link that ends elsewhere than the layout's",
	"a link elsewhere":                      "libcuda.so: a link that ends elsewhere than the layout's",
	"a link out":                            "libcuda.so: a link that ends elsewhere than the layout's",
	"an absolute link":                      "libcuda.so: a link that ends elsewhere than the layout's",
	"a plan entry missing":                  "it lacks 1 of the layout's 5 entries there",
	"a file of the host elsewhere":          "libcuda.so.535: the layout has /elsewhere/libcuda.so.535 there",
	"a plan link where the host has a file": "libnvidia-ml.so.1: a file where the layout has a link",
	"a host link where the plan has a file": "libnvidia-ml.so.1: a link where the layout has a file",
}

// openFolder opens folder p as wholeFolders does, for the test's time.
func openFolder(t *testing.T, p string) int {
	t.Helper()
	fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	return fd
}

// TestRetirer: a layout this process used is detached a grace period after it leaves use,
// one of another driver version a grace period after it is first seen, and one of the
// current driver that another process built is left alone.
func TestRetirer(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	for _, id := range []string{"550.1-all-aaaaaaaaaaaa", "550.1-all-bbbbbbbbbbbb", "550.1-compute-cccccccccccc", "535.9-all-dddddddddddd", ".want", "not-a-layout"} {
		if err := os.Mkdir(filepath.Join(base, id), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	clock := time.Unix(1e9, 0)
	r := NewRetirer(base, time.Minute)
	r.now = func() time.Time { return clock }
	var detached []string
	r.detach = func(dir string) error {
		detached = append(detached, filepath.Base(dir))
		return os.Remove(dir)
	}
	use := func(ids ...string) []string {
		t.Helper()
		var plans []Plan
		for _, id := range ids {
			plans = append(plans, Plan{ID: id})
		}
		gone, err := r.Use("550.1", plans)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(gone)
		return gone
	}
	if gone := use("550.1-all-aaaaaaaaaaaa"); len(gone) != 0 {
		t.Fatalf("detached at once: %v", gone)
	}
	clock = clock.Add(30 * time.Second)
	if gone := use("550.1-all-bbbbbbbbbbbb"); len(gone) != 0 { // aaa leaves use now
		t.Fatalf("detached within the grace period: %v", gone)
	}
	clock = clock.Add(40 * time.Second)
	if gone := use("550.1-all-bbbbbbbbbbbb"); !slices.Equal(gone, []string{"535.9-all-dddddddddddd"}) {
		t.Fatalf("after 70s: %v, want the other driver's layout", gone)
	}
	if gone := use("550.1-all-aaaaaaaaaaaa"); len(gone) != 0 { // aaa back in use before its grace ended
		t.Fatalf("detached a layout in use: %v", gone)
	}
	clock = clock.Add(2 * time.Minute)
	if gone := use("550.1-all-aaaaaaaaaaaa"); !slices.Equal(gone, []string{"550.1-all-bbbbbbbbbbbb"}) {
		t.Fatalf("after 190s: %v, want bbb", gone)
	}
	for _, id := range []string{"550.1-all-aaaaaaaaaaaa", "550.1-compute-cccccccccccc", ".want", "not-a-layout"} {
		if _, err := os.Stat(filepath.Join(base, id)); err != nil {
			t.Errorf("%s: %v (detached: %v)", id, err, detached)
		}
	}
}

// TestBaseThroughLink: a base reached through a link (a requester that may write beside
// it replaced the folder), or a want folder that is a link, is refused: the builder never
// mounts, unmounts or removes where a link points.
func TestBaseThroughLink(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	elsewhere := filepath.Join(dir, "elsewhere")
	victim := filepath.Join(elsewhere, "535.1-all-0123456789ab")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "driver")
	if err := os.Symlink(elsewhere, base); err != nil {
		t.Fatal(err)
	}
	if gone, err := Collect(base, nil); err == nil || len(gone) != 0 {
		t.Errorf("Collect through a link: %v, %v", gone, err)
	}
	r := NewRetirer(base, 0)
	r.detach = func(dir string) error { t.Errorf("detach %s through a link", dir); return nil }
	if _, err := r.Use("550.1", nil); err != nil {
		t.Log(err)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("the folder a link pointed at lost %s: %v", victim, err)
	}
	// a want folder that is a link is neither read nor cleared
	real := filepath.Join(dir, "real")
	if err := os.MkdirAll(filepath.Join(dir, "wants"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "wants", "all"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "wants"), filepath.Join(real, wantDir)); err != nil {
		t.Fatal(err)
	}
	if got := Wanted(real); len(got) != 0 {
		t.Errorf("wants read through a link: %v", got)
	}
	ClearWanted(real, []Plan{{Name: "all"}})
	if _, err := os.Stat(filepath.Join(dir, "wants", "all")); err != nil {
		t.Errorf("a file removed through the want link: %v", err)
	}
	if IsID("run") || IsID("user") || !IsID("535.261.03-compute+utility-2ee822438bed") || IsID("535.1-all-0123456789ab/x") {
		t.Error("IsID")
	}
}

// Every capability set's layout is named as builders recognise a layout (compat32 has
// digits): one that IsID refuses could never be replaced or detached.
func TestEveryPlanIDIsAnID(t *testing.T) {
	for c := gpu.Capabilities(1); c <= gpu.CapsAll; c++ {
		if c&^gpu.CapsAll != 0 {
			continue
		}
		p := Plan{Name: NameOf(c)}
		id := VersionOf("535.261.03") + "-" + p.Name + "-0123456789ab"
		if !IsID(id) {
			t.Errorf("capabilities %v: layout ID %q is not recognised by IsID", c.List(), id)
		}
	}
}

// TestHostFolder: the host folder of a driver folder's files, or why there is none.
func TestHostFolder(t *testing.T) {
	const c = "/usr/lib/x86_64-linux-gnu/nvidia"
	for _, tc := range []struct {
		name    string
		entries []Entry
		host    string
		why     string
	}{
		{"one folder", []Entry{{Path: c + "/current/libcuda.so.535", Host: "/h/nvidia/current/libcuda.so.535"},
			{Path: c + "/current/libcuda.so.1", Target: "libcuda.so.535"}, {Path: c + "/libnvoptix.so.1", Host: "/h/nvidia/libnvoptix.so.1"}}, "/h/nvidia", ""},
		{"two folders", []Entry{{Path: c + "/a.so", Host: "/h/nvidia/a.so"}, {Path: c + "/b.so", Host: "/h/other/b.so"}}, "",
			"its files come from more than one host folder (a.so from /h/nvidia, b.so from /h/other)"},
		{"another name", []Entry{{Path: c + "/a.so", Host: "/h/nvidia/a.so.1"}}, "", "a.so comes from the host's /h/nvidia/a.so.1, under another name"},
		{"links alone", []Entry{{Path: c + "/a.so", Target: "b.so"}}, "", "it holds links alone"},
	} {
		host, err := hostFolder(c, tc.entries)
		switch {
		case tc.why == "" && (err != nil || host != tc.host):
			t.Errorf("%s: %q, %v; want %q", tc.name, host, err, tc.host)
		case tc.why != "" && (err == nil || err.Error() != tc.why):
			t.Errorf("%s: %q, %v; want %q", tc.name, host, err, tc.why)
		}
	}
}
