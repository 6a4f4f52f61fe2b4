package driverroot

import (
	"bytes"
	"debug/elf"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nvbind/nvbind/internal/ldcache"
)

// TestELFReadsBack: debug/elf, nvbind's loader-style reader and the loader's ldconfig
// (when there) all see the stand-in's class, SONAME, needed libraries and data.
func TestELFReadsBack(t *testing.T) {
	t.Parallel()
	for _, e := range []ELF{
		{Class: elf.ELFCLASS64, Machine: elf.EM_X86_64, Type: elf.ET_DYN, SONAME: "libcuda.so.1", Needed: []string{"libm.so.6", "libc.so.6"},
			Strings: []string{"535.261.03", "Cuda compilation tools, release 12.2, V12.2.149"}},
		{Class: elf.ELFCLASS32, Machine: elf.EM_386, Type: elf.ET_DYN, SONAME: "libnvidia-ml.so.1"},
		{Class: elf.ELFCLASS64, Machine: elf.EM_AARCH64, Type: elf.ET_DYN},
		{Class: elf.ELFCLASS64, Machine: elf.EM_X86_64, Type: elf.ET_EXEC, Needed: []string{"libc.so.6"}},
	} {
		data := e.Bytes()
		f, err := elf.NewFile(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%+v: %v", e, err)
		}
		if f.Class != e.Class || f.Machine != e.Machine || f.Type != e.Type {
			t.Errorf("header %v %v %v, want %+v", f.Class, f.Machine, f.Type, e)
		}
		so, _ := f.DynString(elf.DT_SONAME)
		if e.SONAME != "" && (len(so) != 1 || so[0] != e.SONAME) || e.SONAME == "" && len(so) != 0 {
			t.Errorf("debug/elf SONAME %v, want %q", so, e.SONAME)
		}
		if needed, _ := f.ImportedLibraries(); !slices.Equal(needed, e.Needed) && len(needed)+len(e.Needed) > 0 {
			t.Errorf("needed %v, want %v", needed, e.Needed)
		}
		ro, err := f.Section(".rodata").Data()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range e.Strings {
			if !bytes.Contains(ro, []byte(s+"\x00")) {
				t.Errorf(".rodata lacks %q", s)
			}
		}
		if e.Type == elf.ET_DYN {
			lib, err := ldcache.ReadLibrary(bytes.NewReader(data))
			if err != nil || lib.SONAME != e.SONAME || lib.Class != e.Class || lib.Machine != e.Machine {
				t.Errorf("ldcache.ReadLibrary = %+v, %v; want %+v", lib, err, e)
			}
		}
	}
	// glibc's ldconfig puts a 64-bit stand-in in its cache under its SONAME
	ldconfig := "/sbin/ldconfig"
	if _, err := os.Stat(ldconfig); err != nil {
		return
	}
	dir := t.TempDir()
	lib := filepath.Join(dir, "lib")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	data := ELF{Class: elf.ELFCLASS64, Machine: elf.EM_X86_64, Type: elf.ET_DYN, SONAME: "libstandin.so.1"}.Bytes()
	if err := os.WriteFile(filepath.Join(lib, "libstandin.so.1.2.3"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runLDConfig(ldconfig, lib)
	if err != nil {
		t.Fatalf("ldconfig: %v\n%s", err, out)
	}
	if fi, err := os.Lstat(filepath.Join(lib, "libstandin.so.1")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("ldconfig made no SONAME link: %v\n%s", err, out)
	}
}
