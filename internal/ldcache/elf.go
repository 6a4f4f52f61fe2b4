package ldcache

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Library is what ldconfig needs to know of a shared library.
type Library struct {
	SONAME  string
	Class   elf.Class
	Machine elf.Machine
}

// ErrNotLibrary means the file is not a little-endian ELF shared object.
var ErrNotLibrary = errors.New("not an ELF shared library")

// ReadLibrary reads a shared library's class, machine and SONAME the way the dynamic
// loader does, through the program headers and the dynamic segment: a handful of small
// reads, however large the library (libcuda is 30 MB).
func ReadLibrary(r io.ReaderAt) (Library, error) {
	r = withHead(r)
	var lib Library
	var ident [elf.EI_NIDENT]byte
	if _, err := r.ReadAt(ident[:], 0); err != nil {
		return lib, ErrNotLibrary
	}
	if !bytes.Equal(ident[:4], []byte(elf.ELFMAG)) || elf.Data(ident[elf.EI_DATA]) != elf.ELFDATA2LSB {
		return lib, ErrNotLibrary
	}
	lib.Class = elf.Class(ident[elf.EI_CLASS])
	le := binary.LittleEndian
	var phoff, phentsize, phnum uint64
	switch lib.Class {
	case elf.ELFCLASS64:
		var h elf.Header64
		if err := binary.Read(io.NewSectionReader(r, 0, 64), le, &h); err != nil {
			return lib, ErrNotLibrary
		}
		if elf.Type(h.Type) != elf.ET_DYN {
			return lib, ErrNotLibrary
		}
		lib.Machine, phoff, phentsize, phnum = elf.Machine(h.Machine), h.Phoff, uint64(h.Phentsize), uint64(h.Phnum)
	case elf.ELFCLASS32:
		var h elf.Header32
		if err := binary.Read(io.NewSectionReader(r, 0, 52), le, &h); err != nil {
			return lib, ErrNotLibrary
		}
		if elf.Type(h.Type) != elf.ET_DYN {
			return lib, ErrNotLibrary
		}
		lib.Machine, phoff, phentsize, phnum = elf.Machine(h.Machine), uint64(h.Phoff), uint64(h.Phentsize), uint64(h.Phnum)
	default:
		return lib, ErrNotLibrary
	}
	if phnum == 0 || phnum > 256 || phentsize < 32 || phentsize > 128 {
		return lib, fmt.Errorf("%w: %d program headers of %d bytes", ErrNotLibrary, phnum, phentsize)
	}
	ph := make([]byte, phnum*phentsize)
	if _, err := r.ReadAt(ph, int64(phoff)); err != nil { //nolint:gosec // bounded above
		return lib, ErrNotLibrary
	}
	type seg struct {
		typ        uint32
		off, vaddr uint64
		filesz     uint64
	}
	segs := make([]seg, 0, phnum)
	for i := uint64(0); i < phnum; i++ {
		p := ph[i*phentsize:]
		if lib.Class == elf.ELFCLASS64 {
			segs = append(segs, seg{le.Uint32(p[0:]), le.Uint64(p[8:]), le.Uint64(p[16:]), le.Uint64(p[32:])})
		} else {
			segs = append(segs, seg{le.Uint32(p[0:]), uint64(le.Uint32(p[4:])), uint64(le.Uint32(p[8:])), uint64(le.Uint32(p[16:]))})
		}
	}
	var dyn *seg
	for i := range segs {
		if segs[i].typ == uint32(elf.PT_DYNAMIC) {
			dyn = &segs[i]
		}
	}
	if dyn == nil {
		return lib, nil // a shared object without a dynamic segment has no SONAME
	}
	if dyn.filesz > 1<<20 {
		return lib, fmt.Errorf("%w: dynamic segment of %d bytes", ErrNotLibrary, dyn.filesz)
	}
	d := make([]byte, dyn.filesz)
	if _, err := r.ReadAt(d, int64(dyn.off)); err != nil { //nolint:gosec // bounded above
		return lib, ErrNotLibrary
	}
	var soname, strtab uint64
	const tagSONAME, tagSTRTAB, tagNULL = uint64(elf.DT_SONAME), uint64(elf.DT_STRTAB), uint64(elf.DT_NULL)
	haveSoname := false
	step := uint64(16)
	if lib.Class == elf.ELFCLASS32 {
		step = 8
	}
	for i := uint64(0); i+step <= uint64(len(d)); i += step {
		var tag, val uint64
		if step == 16 {
			tag, val = le.Uint64(d[i:]), le.Uint64(d[i+8:])
		} else {
			tag, val = uint64(le.Uint32(d[i:])), uint64(le.Uint32(d[i+4:]))
		}
		switch tag {
		case tagNULL:
			i = uint64(len(d))
		case tagSONAME:
			soname, haveSoname = val, true
		case tagSTRTAB:
			strtab = val
		}
	}
	if !haveSoname {
		return lib, nil
	}
	// DT_STRTAB is an address: find the file offset through the loadable segments
	for _, s := range segs {
		if s.typ == uint32(elf.PT_LOAD) && strtab >= s.vaddr && strtab < s.vaddr+s.filesz {
			buf := make([]byte, 256)
			n, err := r.ReadAt(buf, int64(s.off+strtab-s.vaddr+soname)) //nolint:gosec // file offsets
			if n == 0 && err != nil {
				return lib, ErrNotLibrary
			}
			if end := bytes.IndexByte(buf[:n], 0); end >= 0 {
				lib.SONAME = string(buf[:end])
				return lib, nil
			}
			return lib, fmt.Errorf("%w: SONAME longer than 255 bytes", ErrNotLibrary)
		}
	}
	return lib, fmt.Errorf("%w: string table outside the loadable segments", ErrNotLibrary)
}

// headReader serves reads within a file's first 4 KiB, where the ELF header and program
// headers lie, from one read of them: on a VM every read is a costly system call.
type headReader struct {
	r    io.ReaderAt
	head []byte
}

func withHead(r io.ReaderAt) io.ReaderAt {
	head := make([]byte, 4096)
	n, err := r.ReadAt(head, 0)
	if n == 0 && err != nil {
		return r
	}
	return headReader{r, head[:n]}
}

func (h headReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= 0 && off+int64(len(p)) <= int64(len(h.head)) {
		return copy(p, h.head[off:]), nil
	}
	return h.r.ReadAt(p, off)
}
