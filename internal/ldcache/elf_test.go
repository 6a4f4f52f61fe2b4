package ldcache

import (
	"bytes"
	"debug/elf"
	"os"
	"path/filepath"
	"testing"

	"github.com/nvbind/nvbind/test/testutil"
)

// TestReadLibraryAgreesWithDebugELF compares the program-header reader with debug/elf on
// built libraries and on every library of the test driver roots that exist here.
func TestReadLibraryAgreesWithDebugELF(t *testing.T) {
	dir := t.TempDir()
	files := []string{filepath.Join(dir, "libfoo.so.1.2"), filepath.Join(dir, "libnosoname.so")}
	testutil.BuildSharedObject(t, files[0], "libfoo.so.1", 64, "")
	testutil.BuildSharedObject(t, files[1], "", 64, "")
	for _, root := range []string{"/var/tmp/nvbind-roots/debian-535/usr/lib/x86_64-linux-gnu/nvidia/current", "/var/tmp/nvbind-roots/lib64-470/usr/lib64", "/lib/x86_64-linux-gnu"} {
		m, _ := filepath.Glob(filepath.Join(root, "lib*.so.*"))
		files = append(files, m...)
	}
	checked := 0
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		got, err := ReadLibrary(f)
		ef, eerr := elf.NewFile(f)
		if eerr != nil || ef.Type != elf.ET_DYN {
			if err == nil {
				t.Errorf("%s: accepted, debug/elf says %v", p, eerr)
			}
			_ = f.Close()
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", p, err)
			_ = f.Close()
			continue
		}
		var want string
		if s, err := ef.DynString(elf.DT_SONAME); err == nil && len(s) > 0 {
			want = s[0]
		}
		if got.SONAME != want || got.Class != ef.Class || got.Machine != ef.Machine {
			t.Errorf("%s: got %+v, debug/elf %q %v %v", p, got, want, ef.Class, ef.Machine)
		}
		checked++
		_ = f.Close()
	}
	if checked < 2 {
		t.Fatalf("only %d libraries checked", checked)
	}
	t.Logf("%d libraries agree", checked)
}

func FuzzReadLibrary(f *testing.F) {
	if data, err := os.ReadFile("/lib/x86_64-linux-gnu/libdl.so.2"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = ReadLibrary(bytes.NewReader(data))
	})
}
