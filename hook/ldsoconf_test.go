package hook

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nvbind/nvbind/internal/ldcache"
	"github.com/nvbind/nvbind/test/testutil"
)

func TestParseLDSoConf(t *testing.T) {
	t.Parallel()
	got := parseLDSoConf([]byte("# comment\ninclude /etc/ld.so.conf.d/*.conf  other/*.conf\n" +
		"  /usr/local/lib/  # trailing comment\n/opt/x=libc6\nhwcap 1 nosegneg\nHWCAP 2 x\nrelative/dir\n\t/usr/lib64\ninclude\n" +
		"includefoo /x\n/last"))
	want := ldSoConf{dirs: []string{"/usr/local/lib", "/opt/x", "/usr/lib64", "/last"}, includes: []string{"/etc/ld.so.conf.d/*.conf", "other/*.conf"}}
	if !slices.Equal(got.dirs, want.dirs) || !slices.Equal(got.includes, want.includes) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// FuzzParseLDSoConf checks the parser's budget: linear time, memory within a small
// multiple of the input, every folder absolute and clean.
func FuzzParseLDSoConf(f *testing.F) {
	f.Add([]byte("include /etc/ld.so.conf.d/*.conf\n/usr/lib\n"))
	f.Add([]byte("hwcap 0 x\n/opt/a=libc6\n# x\n"))
	f.Add(bytes.Repeat([]byte("include a b c d e f g\n"), 1000))
	f.Add(bytes.Repeat([]byte("/"), maxConfSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxConfSize {
			data = data[:maxConfSize] // what readFile lets through
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		c := parseLDSoConf(data)
		took := time.Since(start)
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(64*len(data)+64<<10) {
			t.Fatalf("%d bytes of input allocated %d bytes", len(data), alloc)
		}
		if limit := 200*time.Millisecond + time.Duration(len(data))*time.Microsecond; took > limit {
			t.Fatalf("%d bytes took %s (budget %s)", len(data), took, limit)
		}
		for _, d := range c.dirs {
			if !strings.HasPrefix(d, "/") || filepath.Clean(d) != d {
				t.Fatalf("folder %q", d)
			}
		}
	})
}

// confRoot is a container root whose own cache is garbage, so the hook builds a fresh
// one from the image's configuration.
func confRoot(t *testing.T) string {
	t.Helper()
	root := ldRoot(t, true)
	if err := os.WriteFile(filepath.Join(root, "etc/ld.so.cache"), []byte("glibc-ld.so.cache1.1 but garbage after"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, data := range files {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFreshCache: an unusable image cache is replaced by the hook's own scan of the
// image's ld.so.conf folders and default folders, with the injected folders first.
func TestFreshCache(t *testing.T) {
	t.Parallel()
	root := confRoot(t)
	testutil.BuildSharedObject(t, filepath.Join(root, "opt/vendor/lib/libvendor.so.2"), "libvendor.so.2", 64, "")
	writeFiles(t, root, map[string]string{
		"etc/ld.so.conf.d/vendor.conf": "include ../vendor.d/*.conf\n",
		"etc/vendor.d/a.conf":          "/opt/vendor/lib\n",
	})
	var log bytes.Buffer
	if err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}, Log: &log}); err != nil {
		t.Fatal(err)
	}
	e := cacheEntries(t, root)
	for name, want := range map[string]string{"libcuda.so.1": "/drv/libcuda.so.1", "libown.so.1": "/usr/lib/x86_64-linux-gnu/libown.so.1",
		"libvendor.so.2": "/opt/vendor/lib/libvendor.so.2"} {
		if got := lookup(e, name); got != want {
			t.Errorf("%s => %q, want %q; cache %v", name, got, want, e)
		}
	}
	if !strings.Contains(log.String(), "unusable") || !strings.Contains(log.String(), "fresh cache") {
		t.Errorf("the log does not say the cache was rebuilt: %q", log.String())
	}
}

// TestFreshCacheHostile: the image's ld.so.conf names folders and files outside the root
// through links, includes itself, and plants FIFOs; the fresh cache holds nothing from
// outside, nothing outside changes, and no byte of an outside file reaches the log.
func TestFreshCacheHostile(t *testing.T) {
	t.Parallel()
	root, outside := confRoot(t), t.TempDir()
	testutil.BuildSharedObject(t, filepath.Join(outside, "hostlib/libhost.so.1"), "libhost.so.1", 64, "")
	writeFiles(t, outside, map[string]string{"secret.conf": "/hostlib\nSECRET=value-that-must-not-leak\n"})
	writeFiles(t, root, map[string]string{
		"etc/ld.so.conf.d/a.conf": "include /etc/ld.so.conf\ninclude /etc/evil/*.conf\n/escape\n/proc/1/root" + outside + "/hostlib\n",
		"etc/ld.so.conf.d/b.conf": "include " + outside + "/secret.conf\n",
	})
	for link, target := range map[string]string{"etc/evil": outside, "escape": filepath.Join(outside, "hostlib"),
		"etc/ld.so.conf.d/c.conf": filepath.Join(outside, "secret.conf")} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "proc/1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(root, "proc/1/root")); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, outside)
	var log bytes.Buffer
	err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	e := cacheEntries(t, root)
	if lookup(e, "libcuda.so.1") == "" {
		t.Errorf("no libcuda.so.1: %v", e)
	}
	for _, entry := range e {
		if entry.Name == "libhost.so.1" || strings.Contains(entry.Path, outside) {
			t.Errorf("the cache lists a library from outside the root: %+v", entry)
		}
	}
	if strings.Contains(log.String(), "SECRET") || strings.Contains(log.String(), "hostlib") {
		t.Errorf("the log carries an outside file's content: %q", log.String())
	}
	if after := snapshot(t, outside); after != before {
		t.Fatalf("the outside tree changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestLDSoConfBudgets: configuration beyond the hook's budget stops the hook with a short
// error that names the budget and carries none of the files' contents.
func TestLDSoConfBudgets(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		files func(root string) map[string]string
	}{
		{"too many files", func(string) map[string]string {
			m := map[string]string{"etc/ld.so.conf": "include /etc/many/*.conf\n"}
			for i := range maxConfFiles + 5 {
				m[filepath.Join("etc/many", strings.Repeat("x", i+1)+".conf")] = "/usr/lib\n"
			}
			return m
		}},
		{"includes nested too deep", func(string) map[string]string {
			m := map[string]string{"etc/ld.so.conf": "include /etc/d0.conf\n"}
			for i := range maxConfDepth + 2 {
				m[filepath.Join("etc", "d"+strings.Repeat("0", i+1)+".conf")] = ""
				m[filepath.Join("etc", "d"+strings.Repeat("0", i)+".conf")] = "include /etc/d" + strings.Repeat("0", i+1) + ".conf\n"
			}
			return m
		}},
		{"too many folders", func(string) map[string]string {
			var b strings.Builder
			for i := range maxConfDirs + 1 {
				b.WriteString("/dir/" + strings.Repeat("y", i%200+1) + "/" + strings.Repeat("z", i/200+1) + "\n")
			}
			return map[string]string{"etc/ld.so.conf": b.String()}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := confRoot(t)
			writeFiles(t, root, tc.files(root))
			err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}, Log: &bytes.Buffer{}})
			if err == nil || !strings.Contains(err.Error(), "budget") || len(err.Error()) > 200 {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

// TestFreshCacheEqualsLDConfig: where the image's cache is garbage, the cache the hook
// builds itself files the same libraries as glibc's ldconfig run on the same tree with
// the image's ld.so.conf, and the loader resolves every name to the same file.
func TestFreshCacheEqualsLDConfig(t *testing.T) {
	testutil.RequiresRoot(t) // ldconfig -r chroots
	root := filepath.Join(t.TempDir(), "rootfs")
	testutil.BuildRootfs(t, root)
	testutil.BuildSharedObject(t, filepath.Join(root, "usr/lib/x86_64-linux-gnu/libown.so.1.0"), "libown.so.1", 64, "")
	testutil.BuildSharedObject(t, filepath.Join(root, "opt/vendor/lib/libvendor.so.2"), "libvendor.so.2", 64, "")
	testutil.BuildSharedObject(t, filepath.Join(root, "drv/libcuda.so.535.261.03"), "libcuda.so.1", 64, "")
	if err := os.Symlink("libcuda.so.535.261.03", filepath.Join(root, "drv/libcuda.so.1")); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, root, map[string]string{
		"etc/ld.so.conf":                         "include /etc/ld.so.conf.d/*.conf\n",
		"etc/ld.so.conf.d/x86_64-linux-gnu.conf": "/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
		"etc/ld.so.conf.d/vendor.conf":           "/opt/vendor/lib\n",
		"etc/ld.so.cache":                        "not a cache",
	})
	if err := RunInRoot(context.Background(), root, Options{Folders: []string{"/drv"}, Log: &bytes.Buffer{}}); err != nil {
		t.Fatal(err)
	}
	got := cacheEntries(t, root)
	args := []string{"-r", root, "-X", "-C", "/etc/ld.so.cache.ldconfig", "-f", "/etc/ld.so.conf", "/drv"}
	for _, d := range imageLibDirs {
		if fi, err := os.Stat(filepath.Join(root, d)); err == nil && fi.IsDir() {
			args = append(args, d)
		}
	}
	if out, err := exec.Command("/sbin/ldconfig", args...).CombinedOutput(); err != nil {
		t.Fatalf("ldconfig: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(root, "etc/ld.so.cache.ldconfig"))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := ldcache.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	pairs := func(es []ldcache.Entry) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.Name+" => "+e.Path)
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	if g, w := pairs(got), pairs(ref); !slices.Equal(g, w) {
		t.Fatalf("fresh cache files other libraries than ldconfig:\nhook:     %v\nldconfig: %v", g, w)
	}
	for _, e := range ref {
		if lookup(got, e.Name) != lookup(ref, e.Name) {
			t.Errorf("%s resolves to %s, ldconfig's cache to %s", e.Name, lookup(got, e.Name), lookup(ref, e.Name))
		}
	}
	if len(ref) < 5 || lookup(got, "libvendor.so.2") == "" || lookup(got, "libcuda.so.1") != "/drv/libcuda.so.1" {
		t.Fatalf("too little to prove anything, or a library missing: %v", got)
	}
	t.Logf("%d entries, the same libraries as ldconfig's", len(got))
}
