package ldcache

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/nvbind/nvbind/test/testutil"
)

// TestReadLibraryAgreesWithDebugELF compares the program-header reader with debug/elf on
// built libraries and on every library of the test driver roots that exist here.
func TestReadLibraryAgreesWithDebugELF(t *testing.T) {
	t.Parallel()
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

// craftLib builds a 64-bit x86-64 shared object: program headers of phentsize bytes (a
// PT_LOAD over the whole file at address 0x10000, a PT_DYNAMIC), a dynamic segment of pad
// DT_DEBUG entries then DT_STRTAB, DT_SONAME and DT_NULL, and the string table.
func craftLib(phentsize int, pad int, soname string) []byte {
	le := binary.LittleEndian
	const vaddr = 0x10000
	dynOff := (64 + 2*phentsize + 7) &^ 7
	dynSize := (pad + 3) * 16
	strOff := dynOff + dynSize
	b := make([]byte, strOff+len(soname)+2)
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], uint16(elf.ET_DYN))
	le.PutUint16(b[18:], uint16(elf.EM_X86_64))
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], 64) // e_phoff
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], uint16(phentsize))
	le.PutUint16(b[56:], 2)
	ph := b[64:]
	le.PutUint32(ph[0:], uint32(elf.PT_LOAD))
	le.PutUint64(ph[16:], vaddr)
	if phentsize >= 40 {
		le.PutUint64(ph[32:], uint64(len(b)))
	}
	ph = b[64+phentsize:]
	le.PutUint32(ph[0:], uint32(elf.PT_DYNAMIC))
	le.PutUint64(ph[8:], uint64(dynOff))
	le.PutUint64(ph[16:], vaddr+uint64(dynOff))
	if phentsize >= 40 {
		le.PutUint64(ph[32:], uint64(dynSize))
	}
	d := b[dynOff+pad*16:]
	le.PutUint64(d[0:], uint64(elf.DT_STRTAB))
	le.PutUint64(d[8:], vaddr+uint64(strOff))
	le.PutUint64(d[16:], uint64(elf.DT_SONAME))
	le.PutUint64(d[24:], 1)
	for i := 0; i < pad; i++ {
		le.PutUint64(b[dynOff+i*16:], uint64(elf.DT_DEBUG))
	}
	copy(b[strOff+1:], soname)
	return b
}

func TestReadLibraryCrafted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		phentsize, pad int
	}{{56, 0}, {64, 0}, {128, 0}, {56, 300}, {56, MaxDynamicSize/16 - 3}} {
		lib, err := ReadLibrary(bytes.NewReader(craftLib(tc.phentsize, tc.pad, "libcraft.so.1")))
		if err != nil || lib.SONAME != "libcraft.so.1" || lib.Class != elf.ELFCLASS64 || lib.Machine != elf.EM_X86_64 {
			t.Errorf("phentsize %d, %d DT_DEBUG: %+v, %v", tc.phentsize, tc.pad, lib, err)
		}
	}
	if lib, err := ReadLibrary(bytes.NewReader(craftLib(56, MaxDynamicSize/16-2, "libcraft.so.1"))); !errors.Is(err, ErrNotLibrary) {
		t.Errorf("dynamic segment over MaxDynamicSize: %+v, %v", lib, err)
	}
}

// TestReadLibraryShortProgramHeaders is the regression test of a library whose program
// headers are shorter than the class's Phdr, which made ReadLibrary read past them.
func TestReadLibraryShortProgramHeaders(t *testing.T) {
	t.Parallel()
	for k := 0; k < phdr64Size; k++ {
		if lib, err := ReadLibrary(bytes.NewReader(craftLib(k, 0, "libcraft.so.1"))); !errors.Is(err, ErrNotLibrary) {
			t.Errorf("64-bit phentsize %d: %+v, %v", k, lib, err)
		}
	}
	if lib, err := ReadLibrary(bytes.NewReader(craftLib(maxPhentsize+8, 0, "libcraft.so.1"))); !errors.Is(err, ErrNotLibrary) {
		t.Errorf("64-bit phentsize %d: %+v, %v", maxPhentsize+8, lib, err)
	}
	for k := 0; k < phdr32Size; k++ {
		b := make([]byte, 4096)
		copy(b, "\x7fELF\x01\x01\x01")
		binary.LittleEndian.PutUint16(b[16:], uint16(elf.ET_DYN))
		binary.LittleEndian.PutUint32(b[28:], 52) // e_phoff
		binary.LittleEndian.PutUint16(b[42:], uint16(k))
		binary.LittleEndian.PutUint16(b[44:], 3)
		if lib, err := ReadLibrary(bytes.NewReader(b)); !errors.Is(err, ErrNotLibrary) {
			t.Errorf("32-bit phentsize %d: %+v, %v", k, lib, err)
		}
	}
}

// TestReadLibraryHostileOffsets: offsets and addresses at the ends of their range give
// ErrNotLibrary, not a panic.
func TestReadLibraryHostileOffsets(t *testing.T) {
	t.Parallel()
	le := binary.LittleEndian
	const dyn = 64 + 56 // the PT_DYNAMIC header of craftLib(56, ...)
	for name, edit := range map[string]func(b []byte){
		"phoff max int64":    func(b []byte) { le.PutUint64(b[32:], math.MaxInt64-8) },
		"phoff 1<<63":        func(b []byte) { le.PutUint64(b[32:], 1<<63) },
		"phoff max uint64":   func(b []byte) { le.PutUint64(b[32:], math.MaxUint64) },
		"dynamic offset":     func(b []byte) { le.PutUint64(b[dyn+8:], math.MaxInt64-8) },
		"dynamic offset top": func(b []byte) { le.PutUint64(b[dyn+8:], math.MaxUint64-8) },
		"load range":         func(b []byte) { le.PutUint64(b[64+16:], math.MaxUint64-8); le.PutUint64(b[64+32:], 1<<20) },
		"load offset":        func(b []byte) { le.PutUint64(b[64+8:], math.MaxInt64) },
		"soname address":     func(b []byte) { le.PutUint64(b[(64+112+7)&^7+24:], math.MaxUint64) },
		"truncated":          func(b []byte) {},
	} {
		b := craftLib(56, 0, "libcraft.so.1")
		edit(b)
		if name == "truncated" {
			b = b[:len(b)-10]
		}
		if lib, err := ReadLibrary(bytes.NewReader(b)); !errors.Is(err, ErrNotLibrary) {
			t.Errorf("%s: %+v, %v", name, lib, err)
		}
	}
}

// TestReadLibraryMemory: a dynamic segment that claims MaxDynamicSize costs no more
// memory than a small one.
func TestReadLibraryMemory(t *testing.T) {
	b := craftLib(56, 0, "libcraft.so.1")
	binary.LittleEndian.PutUint64(b[64+56+32:], MaxDynamicSize) // past the end of the file
	var err error
	alloc := allocated(func() { _, err = ReadLibrary(bytes.NewReader(b)) })
	if alloc > 64<<10 || err == nil {
		t.Errorf("allocated %d bytes, err %v", alloc, err)
	}
}

func FuzzReadLibrary(f *testing.F) {
	if data, err := os.ReadFile("/lib/x86_64-linux-gnu/libdl.so.2"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Add(craftLib(56, 0, "libcraft.so.1"))
	f.Add(craftLib(40, 2, "libcraft.so.1"))
	f.Add(craftLib(64, 300, "libcraft.so.1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var err error
		alloc := allocated(func() { _, err = ReadLibrary(bytes.NewReader(data)) })
		if elapsed := fastest(func() { _, _ = ReadLibrary(bytes.NewReader(data)) }, budget(len(data))); elapsed > budget(len(data)) {
			t.Fatalf("ReadLibrary of %d bytes took %v", len(data), elapsed)
		}
		// the head, the program headers, a piece of the dynamic segment, the SONAME
		if limit := uint64(HeadSize + MaxProgramHeaders*maxPhentsize + HeadSize + MaxNameLen + 1 + 16<<10); alloc > limit {
			t.Fatalf("ReadLibrary allocated %d bytes, more than %d", alloc, limit)
		}
		if err != nil && !errors.Is(err, ErrNotLibrary) {
			t.Fatalf("error %v is not ErrNotLibrary", err)
		}
	})
}
