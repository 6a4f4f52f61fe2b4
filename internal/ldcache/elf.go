package ldcache

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Library is what ldconfig needs to know of a shared library.
type Library struct {
	SONAME  string
	Class   elf.Class
	Machine elf.Machine
}

// ErrNotLibrary means the file is not a little-endian ELF shared object.
var ErrNotLibrary = errors.New("not an ELF shared library")

// Budgets of ReadLibrary, whose input an image controls completely. With them it reads at
// most HeadSize + MaxProgramHeaders*128 + MaxDynamicSize + MaxNameLen+1 bytes, and holds
// under 64 KiB at a time, whatever the file says.
const (
	// HeadSize is the part of a library read at once, ahead of anything else: the ELF
	// header and the program headers of every real library lie within it.
	HeadSize = 4096
	// MaxProgramHeaders bounds the program headers: libraries have about ten.
	MaxProgramHeaders = 256
	// MaxDynamicSize bounds the dynamic segment, read in pieces of HeadSize up to its
	// DT_NULL: libraries have a few hundred bytes of it.
	MaxDynamicSize = 1 << 20
)

const (
	phdr64Size = 56 // Elf64_Phdr
	phdr32Size = 32 // Elf32_Phdr
	// maxPhentsize: no ABI pads its program headers this far.
	maxPhentsize = 128
)

// ReadLibrary reads a shared library's class, machine and SONAME the way the dynamic
// loader does, through the program headers and the dynamic segment: a handful of small
// reads, however large the library (libcuda is 30 MB). A file it cannot make sense of
// gives ErrNotLibrary.
func ReadLibrary(r io.ReaderAt) (Library, error) {
	r = withHead(r)
	var lib Library
	var ident [elf.EI_NIDENT]byte
	if err := readFull(r, ident[:], 0); err != nil {
		return lib, err
	}
	if !bytes.Equal(ident[:4], []byte(elf.ELFMAG)) || elf.Data(ident[elf.EI_DATA]) != elf.ELFDATA2LSB {
		return lib, ErrNotLibrary
	}
	lib.Class = elf.Class(ident[elf.EI_CLASS])
	le := binary.LittleEndian
	var phoff, phentsize, phnum, minPhentsize uint64
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
		minPhentsize = phdr64Size
	case elf.ELFCLASS32:
		var h elf.Header32
		if err := binary.Read(io.NewSectionReader(r, 0, 52), le, &h); err != nil {
			return lib, ErrNotLibrary
		}
		if elf.Type(h.Type) != elf.ET_DYN {
			return lib, ErrNotLibrary
		}
		lib.Machine, phoff, phentsize, phnum = elf.Machine(h.Machine), uint64(h.Phoff), uint64(h.Phentsize), uint64(h.Phnum)
		minPhentsize = phdr32Size
	default:
		return lib, ErrNotLibrary
	}
	if phnum == 0 || phnum > MaxProgramHeaders || phentsize < minPhentsize || phentsize > maxPhentsize {
		return lib, fmt.Errorf("%w: %d program headers of %d bytes", ErrNotLibrary, phnum, phentsize)
	}
	ph := make([]byte, phnum*phentsize)
	if err := readFull(r, ph, phoff); err != nil {
		return lib, err
	}
	type seg struct {
		typ              uint32
		off, vaddr, size uint64 // size: p_filesz
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
			dyn = &segs[i] // as in the loader, the last one counts
		}
	}
	if dyn == nil {
		return lib, nil // a shared object without a dynamic segment has no SONAME
	}
	if dyn.size > MaxDynamicSize {
		return lib, fmt.Errorf("%w: dynamic segment of %d bytes", ErrNotLibrary, dyn.size)
	}
	soname, strtab, ok, err := readDynamic(r, lib.Class, dyn.off, dyn.size)
	if err != nil || !ok {
		return lib, err
	}
	// DT_STRTAB is an address: find the file offset through the loadable segments
	addr := strtab + soname
	if addr < strtab {
		return lib, fmt.Errorf("%w: SONAME address out of range", ErrNotLibrary)
	}
	for _, s := range segs {
		if s.typ != uint32(elf.PT_LOAD) || addr < s.vaddr || addr-s.vaddr >= s.size {
			continue
		}
		buf := make([]byte, min(MaxNameLen+1, s.size-(addr-s.vaddr)))
		if err := readFull(r, buf, s.off+(addr-s.vaddr)); err != nil {
			return lib, err
		}
		end := bytes.IndexByte(buf, 0)
		if end < 0 {
			return lib, fmt.Errorf("%w: SONAME unterminated or longer than %d bytes", ErrNotLibrary, MaxNameLen)
		}
		lib.SONAME = string(buf[:end])
		return lib, nil
	}
	return lib, fmt.Errorf("%w: string table outside the loadable segments", ErrNotLibrary)
}

// readDynamic reads the dynamic segment at off, size bytes, in pieces of at most HeadSize
// up to its DT_NULL: the DT_SONAME and DT_STRTAB values (the last of each counts, as in
// the loader) and whether there is a DT_SONAME.
func readDynamic(r io.ReaderAt, class elf.Class, off, size uint64) (soname, strtab uint64, ok bool, err error) {
	le := binary.LittleEndian
	step := uint64(16)
	if class == elf.ELFCLASS32 {
		step = 8
	}
	size -= size % step
	buf := make([]byte, min(size, HeadSize))
	for done := uint64(0); done < size; {
		d := buf[:min(size-done, uint64(len(buf)))]
		if off+done < off {
			return 0, 0, false, ErrNotLibrary
		}
		if err := readFull(r, d, off+done); err != nil {
			return 0, 0, false, err
		}
		done += uint64(len(d))
		for i := uint64(0); i < uint64(len(d)); i += step {
			var tag, val uint64
			if step == 16 {
				tag, val = le.Uint64(d[i:]), le.Uint64(d[i+8:])
			} else {
				tag, val = uint64(le.Uint32(d[i:])), uint64(le.Uint32(d[i+4:]))
			}
			switch elf.DynTag(tag) { //nolint:gosec // compared, not converted back
			case elf.DT_NULL:
				return soname, strtab, ok, nil
			case elf.DT_SONAME:
				soname, ok = val, true
			case elf.DT_STRTAB:
				strtab = val
			}
		}
	}
	return soname, strtab, ok, nil
}

// readFull reads len(p) bytes at off; a short read or an offset past what an io.ReaderAt
// takes gives ErrNotLibrary, another read error is wrapped.
func readFull(r io.ReaderAt, p []byte, off uint64) error {
	if off > math.MaxInt64-uint64(len(p)) {
		return fmt.Errorf("%w: offset %d out of range", ErrNotLibrary, off)
	}
	n, err := r.ReadAt(p, int64(off)) //nolint:gosec // checked above
	switch {
	case n == len(p):
		return nil
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: truncated", ErrNotLibrary)
	}
	return fmt.Errorf("%w: %w", ErrNotLibrary, err)
}

// headReader serves reads within a file's first HeadSize bytes, where the ELF header and
// program headers lie, from one read of them: on a VM every read is a costly system call.
type headReader struct {
	r    io.ReaderAt
	head []byte
}

func withHead(r io.ReaderAt) io.ReaderAt {
	head := make([]byte, HeadSize)
	n, err := r.ReadAt(head, 0)
	if n == 0 && err != nil {
		return r
	}
	return headReader{r, head[:n]}
}

func (h headReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= 0 && off <= int64(len(h.head)) && int64(len(p)) <= int64(len(h.head))-off {
		return copy(p, h.head[off:]), nil
	}
	return h.r.ReadAt(p, off)
}
