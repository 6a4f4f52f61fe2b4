package hook

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/internal/ldcache"
	"github.com/nvbind/nvbind/test/testutil"
)

// snapshot lists everything under dir, to prove a hook left it untouched.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			out = append(out, p+" "+fi.Mode().String())
		}
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func readLink(t *testing.T, p string) string {
	t.Helper()
	s, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func FuzzReadState(f *testing.F) {
	f.Add([]byte(`{"ociVersion":"1.0.2","id":"x","status":"creating","pid":42,"bundle":"/run/x"}`))
	f.Add([]byte(`{"bundle":"relative"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ReadState(bytes.NewReader(data))
		if err == nil && !filepath.IsAbs(s.Bundle) {
			t.Fatalf("accepted bundle %q", s.Bundle)
		}
	})
}

func TestSetModifyDeviceFiles(t *testing.T) {
	t.Parallel()
	in := "EnableMSI: 1\nModifyDeviceFiles: 1\nDeviceFileMode: 438\n"
	out, changed := setModifyDeviceFiles([]byte(in))
	if !changed || string(out) != "EnableMSI: 1\nModifyDeviceFiles: 0\nDeviceFileMode: 438\n" {
		t.Fatalf("got %q, %v", out, changed)
	}
	if _, changed := setModifyDeviceFiles([]byte("ModifyDeviceFiles: 0\n")); changed {
		t.Fatal("changed a file that was already 0")
	}
}

func TestRootPathAndState(t *testing.T) {
	t.Parallel()
	bundle := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"root":{"path":"rootfs","readonly":true}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(strings.NewReader(`{"id":"c1","status":"creating","pid":7,"bundle":"` + bundle + `"}`))
	if err != nil {
		t.Fatal(err)
	}
	root, err := RootPath(st.Bundle)
	if err != nil || root != filepath.Join(bundle, "rootfs") {
		t.Fatalf("root = %q, %v", root, err)
	}
	if _, err := ReadState(strings.NewReader(strings.Repeat(" ", maxStateSize+10))); err == nil {
		t.Fatal("oversized state accepted")
	}
}

func TestCreateSymlinks(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	lib := filepath.Join(root, "usr/lib/x86_64-linux-gnu")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Symlink("stale.so", filepath.Join(lib, "libcuda.so.1"))
	_ = os.WriteFile(filepath.Join(lib, "libown.so.1"), []byte("image's own"), 0o644)
	var log bytes.Buffer
	err := RunInRoot(context.Background(), root, Options{Log: &log, Links: []Link{
		{Target: "libcuda.so.535", Link: "/usr/lib/x86_64-linux-gnu/libcuda.so.1"},          // stale: replaced
		{Target: "libcuda.so.1", Link: "/usr/lib/x86_64-linux-gnu/libcuda.so"},              // new
		{Target: "libcuda.so.1", Link: "/usr/lib/x86_64-linux-gnu/libcuda.so"},              // identical: kept
		{Target: "x.so", Link: "/usr/lib/x86_64-linux-gnu/libown.so.1"},                     // the image's file: left alone
		{Target: "../libcuda.so.535", Link: "/usr/lib/x86_64-linux-gnu/new/dir/libcuda.so"}, // parents created
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := readLink(t, filepath.Join(lib, "libcuda.so.1")); got != "libcuda.so.535" {
		t.Errorf("libcuda.so.1 -> %s", got)
	}
	if got := readLink(t, filepath.Join(lib, "libcuda.so")); got != "libcuda.so.1" {
		t.Errorf("libcuda.so -> %s", got)
	}
	if data, _ := os.ReadFile(filepath.Join(lib, "libown.so.1")); string(data) != "image's own" {
		t.Error("the image's own file was replaced")
	}
	if !strings.Contains(log.String(), "libown.so.1 exists in the image") {
		t.Errorf("log = %q", log.String())
	}
	fi, err := os.Stat(filepath.Join(lib, "new/dir"))
	if err != nil || fi.Mode().Perm()&0o002 != 0 {
		t.Errorf("created folder: %v %v", fi, err)
	}
}

// TestHostileRoots plants links that point out of the container root; every write must
// land inside the root and the outside tree must stay as it was.
func TestHostileRoots(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		plant func(root, outside string) error
		opts  Options
		check func(t *testing.T, root string, err error)
	}{
		{"absolute link to a host folder", func(root, outside string) error {
			return os.Symlink(outside, filepath.Join(root, "usr/lib/x86_64-linux-gnu"))
		}, Options{Links: []Link{{Target: "libcuda.so.535", Link: "/usr/lib/x86_64-linux-gnu/libcuda.so.1"}}},
			func(t *testing.T, root string, err error) {
				// resolved inside the root the link dangles: a clear error, nothing written
				if err == nil || !strings.Contains(err.Error(), "/usr/lib/x86_64-linux-gnu") || !strings.Contains(err.Error(), "not a directory") {
					t.Fatalf("err = %v", err)
				}
			}},
		{"dot-dot chain", func(root, outside string) error {
			return os.Symlink(strings.Repeat("../", 20)+strings.TrimPrefix(outside, "/"), filepath.Join(root, "usr/lib/x86_64-linux-gnu"))
		}, Options{Links: []Link{{Target: "libcuda.so.535", Link: "/usr/lib/x86_64-linux-gnu/libcuda.so.1"}}},
			func(t *testing.T, root string, err error) {
				// resolved inside the root the link dangles: a clear error, nothing written
				if err == nil || !strings.Contains(err.Error(), "/usr/lib/x86_64-linux-gnu") || !strings.Contains(err.Error(), "not a directory") {
					t.Fatalf("err = %v", err)
				}
			}},
		{"link path itself is a link out", func(root, outside string) error {
			if err := os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755); err != nil {
				return err
			}
			return os.Symlink(filepath.Join(outside, "victim"), filepath.Join(root, "usr/lib/libcuda.so.1"))
		}, Options{Links: []Link{{Target: "libcuda.so.535", Link: "/usr/lib/libcuda.so.1"}}},
			func(t *testing.T, root string, err error) {
				if err != nil {
					t.Fatal(err)
				}
				if got := readLink(t, filepath.Join(root, "usr/lib/libcuda.so.1")); got != "libcuda.so.535" {
					t.Errorf("link -> %s", got)
				}
			}},
		{"FIFO where a link goes", func(root, _ string) error {
			if err := os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755); err != nil {
				return err
			}
			return unix.Mkfifo(filepath.Join(root, "usr/lib/libcuda.so.1"), 0o644)
		}, Options{Links: []Link{{Target: "libcuda.so.535", Link: "/usr/lib/libcuda.so.1"}}},
			func(t *testing.T, root string, err error) {
				if err != nil {
					t.Fatal(err)
				}
				if fi, _ := os.Lstat(filepath.Join(root, "usr/lib/libcuda.so.1")); fi.Mode()&os.ModeNamedPipe == 0 {
					t.Error("the FIFO was replaced")
				}
			}},
		{"compat folder is a FIFO", func(root, _ string) error {
			if err := os.MkdirAll(filepath.Join(root, "usr/local/cuda"), 0o755); err != nil {
				return err
			}
			return unix.Mkfifo(filepath.Join(root, "usr/local/cuda/compat"), 0o644)
		}, Options{HostDriverVersion: "535.261.03"},
			func(t *testing.T, root string, err error) {
				if err == nil || !strings.Contains(err.Error(), "enable-cuda-compat") {
					t.Fatalf("err = %v", err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root, outside := t.TempDir(), t.TempDir()
			if err := os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("host file"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := tc.plant(root, outside); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, outside)
			err := RunInRoot(context.Background(), root, tc.opts)
			tc.check(t, root, err)
			if after := snapshot(t, outside); after != before {
				t.Fatalf("the outside tree changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if data, _ := os.ReadFile(filepath.Join(outside, "victim")); string(data) != "host file" {
				t.Fatal("host file changed")
			}
		})
	}
}

// ldRoot builds a container root with the image's own library and an injected one.
func ldRoot(t *testing.T, multiarch bool) string {
	t.Helper()
	root := t.TempDir()
	testutil.BuildSharedObject(t, filepath.Join(root, "drv/libcuda.so.535.261.03"), "libcuda.so.1", 64, "")
	if err := os.Symlink("libcuda.so.535.261.03", filepath.Join(root, "drv/libcuda.so.1")); err != nil {
		t.Fatal(err)
	}
	if multiarch {
		testutil.BuildSharedObject(t, filepath.Join(root, "usr/lib/x86_64-linux-gnu/libown.so.1"), "libown.so.1", 64, "")
		if err := os.MkdirAll(filepath.Join(root, "etc/ld.so.conf.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(root, "etc/ld.so.conf"), []byte("include /etc/ld.so.conf.d/*.conf\n"), 0o644)
		_ = os.WriteFile(filepath.Join(root, "etc/ld.so.conf.d/x86_64-linux-gnu.conf"), []byte("/usr/lib/x86_64-linux-gnu\n"), 0o644)
	} else {
		testutil.BuildSharedObject(t, filepath.Join(root, "usr/lib64/libown.so.1"), "libown.so.1", 64, "")
	}
	return root
}

func cacheEntries(t *testing.T, root string) []ldcache.Entry {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "etc/ld.so.cache"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := ldcache.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func lookup(entries []ldcache.Entry, name string) string {
	for _, e := range entries {
		if e.Name == name {
			return e.Path
		}
	}
	return ""
}

// imageCache builds the image's own ld.so.cache, as an image build does.
func imageCache(t *testing.T, root string) {
	t.Helper()
	if out, err := exec.Command("/sbin/ldconfig", "-r", root, "-X").CombinedOutput(); err != nil {
		t.Fatalf("ldconfig: %v\n%s", err, out)
	}
}

func TestUpdateLDCache(t *testing.T) {
	testutil.RequiresRoot(t) // ldconfig -r chroots
	for _, tc := range []struct {
		name       string
		multiarch  bool
		imageCache bool
		own        string
	}{
		{"debian multiarch image with its cache", true, true, "/usr/lib/x86_64-linux-gnu/libown.so.1"},
		{"lib64 image with its cache", false, true, "/usr/lib64/libown.so.1"},
		// no cache to keep: the loader finds the image's libraries in its default folders
		{"image without ld.so.cache or ld.so.conf", false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := ldRoot(t, tc.multiarch)
			if tc.imageCache {
				if !tc.multiarch { // a RHEL-style image: /usr/lib64 is its loader's default
					if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(root, "etc/ld.so.conf"), []byte("/usr/lib64\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				imageCache(t, root)
			}
			if err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}}); err != nil {
				t.Fatal(err)
			}
			e := cacheEntries(t, root)
			if got := lookup(e, "libcuda.so.1"); got != "/drv/libcuda.so.1" {
				t.Errorf("libcuda.so.1 => %q; cache %v", got, e)
			}
			if got := lookup(e, "libown.so.1"); got != tc.own {
				t.Errorf("the image's own library: %q, want %q; cache %v", got, tc.own, e)
			}
			conf, err := os.ReadFile(filepath.Join(root, "etc/ld.so.conf.d/00-nvbind.conf"))
			if tc.multiarch && (err != nil || !strings.Contains(string(conf), "/drv\n")) {
				t.Errorf("00-nvbind.conf = %q, %v", conf, err)
			}
			if !tc.multiarch && err == nil {
				t.Error("wrote ld.so.conf.d into an image that has none")
			}
		})
	}
}

func TestUpdateLDCacheHostile(t *testing.T) {
	testutil.RequiresRoot(t)
	t.Run("ld.so.conf.d is a link out, 00-nvbind.conf a FIFO elsewhere", func(t *testing.T) {
		root, outside := ldRoot(t, false), t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(root, "etc/ld.so.conf.d")); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, outside)
		if err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}}); err != nil {
			t.Fatal(err)
		}
		if lookup(cacheEntries(t, root), "libcuda.so.1") == "" {
			t.Error("cache lacks libcuda.so.1")
		}
		if snapshot(t, outside) != before {
			t.Fatal("wrote outside the root")
		}
	})
	t.Run("FIFO at the conf file and the cache", func(t *testing.T) {
		root := ldRoot(t, true)
		for _, p := range []string{"etc/ld.so.conf.d/00-nvbind.conf", "etc/ld.so.cache"} {
			if err := unix.Mkfifo(filepath.Join(root, p), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}}); err != nil {
			t.Fatal(err)
		}
		if lookup(cacheEntries(t, root), "libcuda.so.1") == "" {
			t.Error("cache lacks libcuda.so.1")
		}
	})
	t.Run("read-only root", func(t *testing.T) {
		root := t.TempDir()
		if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_RDONLY, "size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
		err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}, Links: []Link{{Target: "a", Link: "/usr/lib/b"}}})
		if !errors.Is(err, ErrReadOnly) {
			t.Fatalf("err = %v, want ErrReadOnly", err)
		}
	})
}

func TestCUDACompat(t *testing.T) {
	t.Parallel() // no root: the hook merges the cache itself, no ldconfig chroot
	for _, tc := range []struct {
		host  string
		useIt bool
	}{
		{"535.261.03", true}, // compat 550 is newer: first
		{"560.35.03", false}, // compat 550 is older: left alone
	} {
		t.Run(tc.host, func(t *testing.T) {
			root := ldRoot(t, true)
			testutil.BuildSharedObject(t, filepath.Join(root, "usr/local/cuda/compat/libcuda.so.550.54.15"), "libcuda.so.1", 64, "")
			if err := os.Symlink("libcuda.so.550.54.15", filepath.Join(root, "usr/local/cuda/compat/libcuda.so.1")); err != nil {
				t.Fatal(err)
			}
			if err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}, HostDriverVersion: tc.host}); err != nil {
				t.Fatal(err)
			}
			got := lookup(cacheEntries(t, root), "libcuda.so.1")
			want := "/drv/libcuda.so.1"
			if tc.useIt {
				want = "/usr/local/cuda/compat/libcuda.so.1"
			}
			if got != want {
				t.Fatalf("libcuda.so.1 => %s, want %s", got, want)
			}
		})
	}
}

// TestProtectDeviceNodes runs the action in a private mount namespace (unshare) and reads
// the container's params file from inside it.
func TestProtectDeviceNodes(t *testing.T) {
	if os.Getenv("NVBIND_HOOK_HELPER") == "protect" {
		var log bytes.Buffer
		root, err := openRoot(os.Getenv("NVBIND_ROOT"))
		if err != nil {
			t.Fatal(err)
		}
		if err := protectDeviceNodes(root, Options{HostParams: os.Getenv("NVBIND_HOST_PARAMS")}, &log); err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(filepath.Join(os.Getenv("NVBIND_ROOT"), "proc/driver/nvidia/params"))
		_, _ = os.Stdout.WriteString("PARAMS<" + string(data) + ">\n")
		if err := os.WriteFile(filepath.Join(os.Getenv("NVBIND_ROOT"), "proc/driver/nvidia/params"), []byte("x"), 0o644); err == nil {
			_, _ = os.Stdout.WriteString("WRITABLE\n")
		}
		return
	}
	testutil.RequiresRoot(t)
	unshare := testutil.RequiresCommand(t, "unshare")
	host := filepath.Join(t.TempDir(), "params")
	if err := os.WriteFile(host, []byte("EnableMSI: 1\nModifyDeviceFiles: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	target := filepath.Join(root, "proc/driver/nvidia/params")
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte("EnableMSI: 1\nModifyDeviceFiles: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", os.Args[0], "-test.run=^TestProtectDeviceNodes$", "-test.v")
	cmd.Env = append(os.Environ(), "NVBIND_HOOK_HELPER=protect", "NVBIND_ROOT="+root, "NVBIND_HOST_PARAMS="+host)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "PARAMS<EnableMSI: 1\nModifyDeviceFiles: 0\n>") {
		t.Fatalf("inside the namespace the params file is not rewritten:\n%s", out)
	}
	if strings.Contains(string(out), "WRITABLE") {
		t.Fatal("the params copy is writable")
	}
	if data, _ := os.ReadFile(target); !strings.Contains(string(data), "ModifyDeviceFiles: 1") {
		t.Fatal("the mount leaked out of the namespace")
	}
}

// TestMergedCacheEqualsLDConfig proves the merged cache equal to what glibc's ldconfig
// builds on the same tree: an image with its own cache, the debian-535 driver's libraries
// mounted at their paths with the links the hook makes, and the CUDA compat folder.
func TestMergedCacheEqualsLDConfig(t *testing.T) {
	testutil.RequiresRoot(t)
	driverRoot := testutil.DriverRoot(t, "debian-535")
	root := filepath.Join(t.TempDir(), "rootfs")
	testutil.BuildRootfs(t, root)
	testutil.BuildSharedObject(t, filepath.Join(root, "usr/lib/x86_64-linux-gnu/libown.so.1.0"), "libown.so.1", 64, "")
	if err := os.Symlink("libown.so.1.0", filepath.Join(root, "usr/lib/x86_64-linux-gnu/libown.so")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/ld.so.conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(filepath.Join(root, "etc/ld.so.conf"), []byte("include /etc/ld.so.conf.d/*.conf\n"), 0o644)
	_ = os.WriteFile(filepath.Join(root, "etc/ld.so.conf.d/x86_64-linux-gnu.conf"), []byte("/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n"), 0o644)
	imageCache(t, root)
	// the driver's libraries where a spec mounts them, and the links the hook creates
	var links []Link
	lib := "/usr/lib/x86_64-linux-gnu"
	for _, n := range []string{"libcuda.so.535.261.03", "libnvidia-ml.so.535.261.03", "libnvidia-ptxjitcompiler.so.535.261.03", "libnvidia-api.so.1"} {
		dst := filepath.Join(root, lib, "nvidia/current", n)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(driverRoot, lib, "nvidia/current", n), dst); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range [][2]string{{"libcuda.so.535.261.03", "nvidia/current/libcuda.so.1"}, {"nvidia/current/libcuda.so.535.261.03", "libcuda.so.1"},
		{"nvidia/current/libcuda.so.535.261.03", "libcuda.so"}, {"libnvidia-ml.so.535.261.03", "nvidia/current/libnvidia-ml.so.1"},
		{"nvidia/current/libnvidia-ml.so.535.261.03", "libnvidia-ml.so.1"}, {"libnvidia-ptxjitcompiler.so.535.261.03", "nvidia/current/libnvidia-ptxjitcompiler.so.1"},
		{"nvidia/current/libnvidia-api.so.1", "libnvidia-api.so.1"}} {
		links = append(links, Link{Target: l[0], Link: filepath.Join(lib, l[1])})
	}
	testutil.BuildSharedObject(t, filepath.Join(root, "usr/local/cuda/compat/libcuda.so.550.54.15"), "libcuda.so.1", 64, "")
	_ = os.Symlink("libcuda.so.550.54.15", filepath.Join(root, "usr/local/cuda/compat/libcuda.so.1"))
	folders := []string{lib, lib + "/nvidia/current"}
	if err := RunInRoot(context.Background(), root, Options{Links: links, Folders: folders, HostDriverVersion: "535.261.03"}); err != nil {
		t.Fatal(err)
	}
	got := cacheEntries(t, root)
	args := append([]string{"-r", root, "-X", "-C", "/etc/ld.so.cache.ldconfig", "-f", "/etc/ld.so.conf", "/usr/local/cuda/compat"}, folders...)
	if out, err := exec.Command("/sbin/ldconfig", args...).CombinedOutput(); err != nil {
		t.Fatalf("ldconfig: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(root, "etc/ld.so.cache.ldconfig"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := ldcache.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("merged cache has %d entries, ldconfig's %d\nmerged: %v\nldconfig: %v", len(got), len(want), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: merged %+v, ldconfig %+v", i, got[i], want[i])
		}
	}
	t.Logf("%d entries, equal to ldconfig's", len(got))
	if len(got) < 10 {
		t.Fatalf("too few entries to prove anything: %v", got)
	}
	if lookup(got, "libcuda.so.1") != "/usr/local/cuda/compat/libcuda.so.1" {
		t.Error("the compat libcuda is not first")
	}
}

// TestUpdateLDCacheWithoutImageCache: an image without a cache gets one of the injected
// folders, written by the hook itself; no root needed, no program run.
func TestUpdateLDCacheWithoutImageCache(t *testing.T) {
	t.Parallel()
	root := ldRoot(t, false)
	if err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}}); err != nil {
		t.Fatal(err)
	}
	if got := lookup(cacheEntries(t, root), "libcuda.so.1"); got != "/drv/libcuda.so.1" {
		t.Errorf("libcuda.so.1 => %q", got)
	}
}

func TestOtherLayout(t *testing.T) {
	const target, folder = "/usr/local/nvbind/all/usr/share/nvidia", "/usr/share/nvidia"
	for link, want := range map[string]bool{
		"/usr/local/nvbind/graphics/usr/share/nvidia":         true,
		"/usr/local/nvbind/compute+utility/usr/share/nvidia":  true,
		"/usr/local/nvbind/all/usr/share/nvidia":              true, // ours: the caller matched it first
		"/usr/local/nvbind/a/b/usr/share/nvidia":              false,
		"/usr/local/nvbind/../usr/share/nvidia":               false,
		"/usr/local/nvbind/./usr/share/nvidia":                false,
		"/usr/local/nvbind//usr/share/nvidia":                 false,
		"/usr/local/nvbind/usr/share/nvidia":                  false,
		"/elsewhere/all/usr/share/nvidia":                     false,
		"/usr/local/nvbind/graphics/usr/share/nvidia/current": false,
		"usr/local/nvbind/graphics/usr/share/nvidia":          false,
		"": false,
	} {
		if got := otherLayout(link, target, folder); got != want {
			t.Errorf("otherLayout(%q) = %v", link, got)
		}
	}
	if otherLayout("/usr/local/nvbind/x/usr/share/nvidia", "/usr/share/nvidia", folder) || otherLayout("/x/y", "/a/b/c", "/d") {
		t.Error("a target that is not a layout's folder")
	}
}
