package spec

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"
)

// cacheErrors resolves a folder as runtimes do and returns the CDI library's errors.
func cacheErrors(t *testing.T, dir string) []string {
	t.Helper()
	c, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(dir))
	if err != nil && c == nil {
		t.Fatal(err)
	}
	var out []string
	for p, errs := range c.GetErrors() {
		for _, e := range errs {
			out = append(out, p+": "+e.Error())
		}
	}
	return out
}

// TestOneSpecPerKind: the case seen on a host where the cdi-refresh unit wrote
// /var/run/cdi/nvidia.yaml and the DaemonSet's CDI mode nvidia.com-gpu.yaml, so that the
// CDI library refused every nvidia.com/gpu name as conflicting. nvbind's writers keep one
// spec per kind: each moves nvbind's own spec of the kind under another name (YAML, known
// by its first line; JSON, by nvbind's hook) onto the file it writes, leaves specs it did
// not write and reports them, and uninstall removes only its own.
func TestOneSpecPerKind(t *testing.T) {
	inv := discoverRoot(t, "debian-535")
	// the hook as installed: the DaemonSet's, and nvbind-hook beside nvbind
	const installed = "/opt/nvbind/bin/nvbind-hook"
	s, err := Generate(inv, Options{HookPath: installed})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// what the cdi-refresh unit of an earlier version left: YAML without nvbind's first line
	old := filepath.Join(dir, "nvidia.yaml")
	data, err := Marshal(s, FormatYAML)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(old, bytes.TrimPrefix(data, []byte(yamlMarker)), 0o644); err != nil {
		t.Fatal(err)
	}
	oldJSON := filepath.Join(dir, "nvbind-old.json")
	if err := WriteFile(s, oldJSON, FormatJSON); err != nil {
		t.Fatal(err)
	}
	// another vendor's spec of another kind, and a file that is not a spec, stay as they are
	other := filepath.Join(dir, "example.com-thing.yaml")
	if err := os.WriteFile(other, []byte("cdiVersion: 0.5.0\nkind: example.com/thing\ndevices:\n- name: a\n  containerEdits:\n    env: [A=1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if errs := cacheErrors(t, dir); !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, `conflicting device "nvidia.com/gpu=0"`) }) {
		t.Fatalf("two specs of one kind should conflict in the CDI library: %v", errs)
	}
	conf, err := Conflicts([]string{dir})
	if err != nil || len(conf) != 1 || conf[0].Kind != "nvidia.com/gpu" || len(conf[0].Files) != 2 || !conf[0].Files[0].Own || !conf[0].Files[1].Own {
		t.Fatalf("Conflicts = %+v, %v", conf, err)
	}

	written, err := WriteDir(inv, Options{HookPath: installed, Writer: "nvbind nri --cdi-mode"}, dir, FormatYAML)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "nvidia.com-gpu.yaml")
	if written[0].Path != dst || len(written[0].Replaced) != 2 || len(written[0].Foreign) != 0 {
		t.Fatalf("written = %+v", written[0])
	}
	if errs := cacheErrors(t, dir); len(errs) != 0 {
		t.Fatalf("after the write: %v", errs)
	}
	files, err := ScanDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, f := range files {
		kinds = append(kinds, filepath.Base(f.Path)+" "+f.Kind)
	}
	want := []string{"example.com-thing.yaml example.com/thing", "nvidia.com-gpu.yaml nvidia.com/gpu", "nvidia.com-imex-channel.yaml nvidia.com/imex-channel"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("folder holds %v, want %v", kinds, want)
	}

	if files[1].Writer != "nvbind nri --cdi-mode" {
		t.Errorf("writer of %s = %q", files[1].Path, files[1].Writer)
	}
	// the demo's command, with its own file name, takes the kind back the other way; the
	// other nvbind writer is named, since two writers of one kind take turns
	w, err := Install(s, old, FormatYAML, "nvbind cdi generate")
	if err != nil || len(w.Replaced) != 1 || w.Replaced[0] != dst || !slices.Equal(w.Others, []string{"nvbind nri --cdi-mode"}) {
		t.Fatalf("Install = %+v, %v", w, err)
	}
	if w, err := Install(s, old, FormatYAML, "nvbind cdi generate"); err != nil || len(w.Others) != 0 {
		t.Fatalf("the same writer again: %+v, %v", w, err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("%s is still there: %v", dst, err)
	}

	// NVIDIA's spec of the same kind is not nvbind's: it stays, and it is reported
	foreign := filepath.Join(dir, "nvidia-ctk.yaml")
	ctk := &cdispecs.Spec{Version: "0.5.0", Kind: "nvidia.com/gpu", Devices: []cdispecs.Device{{Name: "0",
		ContainerEdits: cdispecs.ContainerEdits{DeviceNodes: []*cdispecs.DeviceNode{{Path: "/dev/nvidia0"}},
			Hooks: []*cdispecs.Hook{{HookName: "createContainer", Path: "/usr/bin/nvidia-cdi-hook", Args: []string{"nvidia-cdi-hook", "update-ldcache"}}}}}}}
	ctkData, err := Marshal(ctk, FormatYAML)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(foreign, ctkData[len(yamlMarker):], 0o644); err != nil {
		t.Fatal(err)
	}
	w, err = Install(s, old, FormatYAML, "")
	if err != nil || len(w.Replaced) != 0 || !slices.Equal(w.Foreign, []string{foreign}) {
		t.Fatalf("Install with a foreign spec = %+v, %v", w, err)
	}
	conf, err = Conflicts([]string{dir, filepath.Join(dir, "missing")})
	if err != nil || len(conf) != 1 || len(conf[0].Files) != 2 || conf[0].Files[0].Path != foreign || conf[0].Files[0].Own || !conf[0].Files[1].Own {
		t.Fatalf("Conflicts = %+v, %v", conf, err)
	}

	// the CDI library reads hidden files and follows links: so do nvbind's scans, which
	// neither move nor remove what a link points at; a spec of the kind that shares no
	// device name conflicts with nothing
	hidden := filepath.Join(dir, ".hidden.yaml")
	if err := os.WriteFile(hidden, data, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(hidden, link); err != nil {
		t.Fatal(err)
	}
	other2 := filepath.Join(dir, "other-gpu.yaml")
	if err := os.WriteFile(other2, []byte("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: extra\n  containerEdits:\n    env: [A=1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "broken.yaml")
	if err := os.WriteFile(bad, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err = Install(s, old, FormatYAML, "")
	if err != nil || w.Unreadable == nil || !strings.Contains(w.Unreadable.Error(), "broken.yaml") {
		t.Fatalf("Install beside an unreadable file = %+v, %v", w, err)
	}
	if !slices.Equal(w.Replaced, []string{hidden}) || !slices.Equal(w.Foreign, []string{link, foreign}) {
		t.Fatalf("Install: replaced %v (want the hidden one), foreign %v (want NVIDIA's and the link, not %s)", w.Replaced, w.Foreign, other2)
	}
	if _, err := os.Lstat(link); err != nil {
		t.Errorf("the link was moved: %v", err)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}

	gone, err := RemoveOwn(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(dir, "nvidia.com-imex-channel.yaml"), old}; !slices.Equal(gone, want) {
		t.Fatalf("RemoveOwn removed %v, want %v", gone, want)
	}
	for _, p := range []string{foreign, other, other2, filepath.Join(dir, "notes.txt")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestScanDirBudget: a folder holding more entries than any spec folder needs is refused
// before any file is read, and a file that is not a spec is reported, not trusted.
func TestScanDirBudget(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("kind: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	files, err := ScanDir(dir)
	if len(files) != 0 || err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Fatalf("ScanDir = %v, %v", files, err)
	}
	for i := range maxSpecFiles {
		if err := os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(i)+".txt"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ScanDir(dir); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("ScanDir of %d entries: %v", maxSpecFiles+1, err)
	}
}

// Install reads the spec it replaces, when it is nvbind's own YAML spec, for its kind and
// writer only, from the top-level kind line its writer emits: the same as parsing it; a
// file whose kind line is not that (quoted, twice, invalid) is parsed, and so is every
// other file of the folder.
func TestScanKindsOnly(t *testing.T) {
	inv := discoverRoot(t, "debian-535")
	dir := t.TempDir()
	for i, o := range []Options{{HookPath: "/usr/bin/nvbind-hook"}, {HookPath: "/usr/bin/nvbind-hook", Vendor: "example.com", Class: "device"}} {
		s, err := Generate(inv, o)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteFile(s, filepath.Join(dir, "own"+strconv.Itoa(i)+".yaml"), FormatYAML); err != nil {
			t.Fatal(err)
		}
	}
	odd := yamlMarker + "cdiVersion: 0.5.0\nkind: \"other.io/gpu\"\ndevices:\n- name: x\n  containerEdits:\n    env: [A=1]\n"
	if err := os.WriteFile(filepath.Join(dir, "odd.yaml"), []byte(odd), 0o644); err != nil {
		t.Fatal(err)
	}
	full, err := scanDir(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, replaced := range []string{"odd.yaml", "own0.yaml", "own1.yaml"} {
		light, err := scanDir(dir, filepath.Join(dir, replaced))
		if err != nil {
			t.Fatal(err)
		}
		if len(full) != 3 || len(light) != 3 {
			t.Fatalf("scans: %v / %v", full, light)
		}
		for i := range full {
			f, l := full[i], light[i]
			if f.Path != l.Path || f.Kind != l.Kind || f.Own != l.Own || f.Writer != l.Writer {
				t.Errorf("%s: parsed %+v, read for its kind %+v", f.Path, f, l)
			}
			if filepath.Base(f.Path) != replaced && len(l.Devices) == 0 {
				t.Errorf("%s, not the replaced file, was not parsed: %+v", f.Path, l)
			}
		}
		if len(light[0].Devices) != 1 { // odd.yaml, first by name: its quoted kind is parsed
			t.Errorf("the quoted kind was not parsed: %+v", light[0])
		}
	}
	for _, data := range []string{"kind: a.io/gpu\nkind: b.io/gpu\n", "kind: \"a.io/gpu\"\n", "kind: a.io/\n", "kind: nokind\n", "  kind: a.io/gpu\n"} {
		if k := topLevelKind([]byte(yamlMarker + data)); k != "" {
			t.Errorf("topLevelKind(%q) = %q", data, k)
		}
	}
	if k := topLevelKind([]byte(yamlMarker + "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")); k != "nvidia.com/gpu" {
		t.Errorf("topLevelKind = %q", k)
	}
}

// TestUnchangedSpecStays: writing the spec a file already holds leaves the file alone
// (same inode, no event for the runtimes that watch the folder), after the same check; a
// different spec, or the same bytes with another mode, is written.
func TestUnchangedSpecStays(t *testing.T) {
	inv := discoverRoot(t, "debian-535")
	s, err := Generate(inv, Options{HookPath: "/usr/bin/nvbind-hook"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "nvidia.com-gpu.yaml")
	w, err := Install(s, dst, FormatYAML, "nvbind cdi generate")
	if err != nil || w.Unchanged {
		t.Fatalf("first Install = %+v, %v", w, err)
	}
	before, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	events := watchFolder(t, dir)
	w, err = Install(s, dst, FormatYAML, "nvbind cdi generate")
	if err != nil || !w.Unchanged {
		t.Fatalf("the same spec again: %+v, %v", w, err)
	}
	if ev := events(); ev != 0 {
		t.Errorf("an unchanged spec made %d folder events", ev)
	}
	after, err := os.Stat(dst)
	if err != nil || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("the unchanged spec was replaced: %v", err)
	}
	if err := WriteFile(s, filepath.Join(dir, "plain.yaml"), FormatYAML); err != nil {
		t.Fatal(err)
	}
	events()
	if err := WriteFile(s, filepath.Join(dir, "plain.yaml"), FormatYAML); err != nil {
		t.Fatal(err)
	}
	if ev := events(); ev != 0 {
		t.Errorf("WriteFile of an unchanged spec made %d folder events", ev)
	}

	// another writer's line: new bytes, written
	if w, err := Install(s, dst, FormatYAML, "nvbind nri --cdi-mode"); err != nil || w.Unchanged {
		t.Fatalf("another writer: %+v, %v", w, err)
	}
	if ev := events(); ev == 0 {
		t.Error("a changed spec made no folder event")
	}
	// the same bytes, but not world-readable: written again, with the spec's mode
	if err := os.Chmod(dst, 0o600); err != nil {
		t.Fatal(err)
	}
	if w, err := Install(s, dst, FormatYAML, "nvbind nri --cdi-mode"); err != nil || w.Unchanged {
		t.Fatalf("mode 0600: %+v, %v", w, err)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode after the write: %v, %v", fi, err)
	}

	// an invalid spec whose bytes the file already holds is refused all the same, and the
	// file stays
	bad := &cdispecs.Spec{Version: "0.5.0", Kind: "nvidia.com/gpu", Devices: []cdispecs.Device{{Name: "bad name!",
		ContainerEdits: cdispecs.ContainerEdits{Env: []string{"A=1"}}}}}
	data, err := Marshal(bad, FormatYAML)
	if err != nil {
		t.Fatal(err)
	}
	badPath := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(bad, badPath, FormatYAML); err == nil || !strings.Contains(err.Error(), "invalid") {
		t.Fatalf("an invalid spec the file holds: %v", err)
	}
	if got, _ := os.ReadFile(badPath); !bytes.Equal(got, data) {
		t.Fatal("the file changed")
	}
}

// watchFolder watches dir for what a spec write does (create, write, rename, delete,
// mode) and returns a function that counts the events since its last call.
func watchFolder(t *testing.T, dir string) func() int {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_CLOSE_WRITE|unix.IN_MODIFY|unix.IN_MOVED_TO|unix.IN_MOVED_FROM|unix.IN_DELETE|unix.IN_ATTRIB); err != nil {
		t.Fatal(err)
	}
	return func() int {
		n := 0
		buf := make([]byte, 64<<10)
		for {
			m, err := unix.Read(fd, buf)
			if err == unix.EAGAIN {
				return n
			}
			if err != nil {
				t.Fatal(err)
			}
			for off := 0; off+unix.SizeofInotifyEvent <= m; n++ {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}
