package driverroot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
)

// ELF describes a stand-in for a driver library or program: what nvbind and the loader
// read of it, with none of its code.
type ELF struct {
	Class   elf.Class
	Machine elf.Machine
	Type    elf.Type
	SONAME  string
	Needed  []string
	// Strings go into .rodata, each NUL-terminated (the driver version, CUDA's build stamp).
	Strings []string
	// CUDADriverVersion, when set (12020 for CUDA 12.2), makes the stand-in a loadable
	// libcuda whose cuDriverGetVersion answers it (built with the C compiler; see build).
	CUDADriverVersion int
}

// Bytes lays the stand-in out, for reading, not loading (the dynamic loader cannot map
// it; a libcuda that discovery loads is compiled instead, see CUDADriverVersion): an ELF header, a PT_LOAD segment over the whole file, a
// PT_DYNAMIC segment, and the sections .dynstr, .dynamic, .rodata and .shstrtab, so that
// both the loader's view (program headers) and debug/elf's (sections) find the same
// SONAME, needed libraries and data.
func (e ELF) Bytes() []byte {
	is64 := e.Class == elf.ELFCLASS64
	le := binary.LittleEndian
	ehsize, phentsize, shentsize, word := 52, 32, 40, 4
	if is64 {
		ehsize, phentsize, shentsize, word = 64, 56, 64, 8
	}
	const nph, nsh = 2, 5
	// string table of the dynamic section
	dynstr := []byte{0}
	addStr := func(s string) uint64 {
		off := uint64(len(dynstr))
		dynstr = append(append(dynstr, s...), 0)
		return off
	}
	type dyn struct{ tag, val uint64 }
	var dyns []dyn
	for _, n := range e.Needed {
		dyns = append(dyns, dyn{uint64(elf.DT_NEEDED), addStr(n)})
	}
	if e.SONAME != "" {
		dyns = append(dyns, dyn{uint64(elf.DT_SONAME), addStr(e.SONAME)})
	}
	var rodata []byte
	for _, s := range e.Strings {
		rodata = append(append(rodata, s...), 0)
	}
	shstr := []byte("\x00.dynstr\x00.dynamic\x00.rodata\x00.shstrtab\x00")
	align := func(n int) int { return (n + 7) &^ 7 }
	offDynstr := align(ehsize + nph*phentsize)
	offDynamic := align(offDynstr + len(dynstr))
	dynsz := (len(dyns) + 3) * 2 * word // + STRTAB, STRSZ, NULL
	offRodata := align(offDynamic + dynsz)
	offShstr := align(offRodata + len(rodata))
	offSh := align(offShstr + len(shstr))
	size := offSh + nsh*shentsize
	b := make([]byte, size)
	put := func(off int, v uint64, n int) {
		switch n {
		case 2:
			le.PutUint16(b[off:], uint16(v))
		case 4:
			le.PutUint32(b[off:], uint32(v))
		case 8:
			le.PutUint64(b[off:], v)
		}
	}
	// file header
	copy(b, elf.ELFMAG)
	b[elf.EI_CLASS], b[elf.EI_DATA], b[elf.EI_VERSION] = byte(e.Class), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	put(16, uint64(e.Type), 2)
	put(18, uint64(e.Machine), 2)
	put(20, uint64(elf.EV_CURRENT), 4)
	o := 24 + word // e_entry, then e_phoff
	put(o, uint64(ehsize), word)
	put(o+word, uint64(offSh), word)
	o += 2*word + 4 // e_flags
	put(o, uint64(ehsize), 2)
	put(o+2, uint64(phentsize), 2)
	put(o+4, nph, 2)
	put(o+6, uint64(shentsize), 2)
	put(o+8, nsh, 2)
	put(o+10, nsh-1, 2) // e_shstrndx
	// program headers: vaddr = file offset
	ph := func(i int, typ elf.ProgType, flags elf.ProgFlag, off, sz int) {
		p := ehsize + i*phentsize
		put(p, uint64(typ), 4)
		if is64 {
			put(p+4, uint64(flags), 4)
			put(p+8, uint64(off), 8)
			put(p+16, uint64(off), 8)
			put(p+24, uint64(off), 8)
			put(p+32, uint64(sz), 8)
			put(p+40, uint64(sz), 8)
			put(p+48, 8, 8)
		} else {
			put(p+4, uint64(off), 4)
			put(p+8, uint64(off), 4)
			put(p+12, uint64(off), 4)
			put(p+16, uint64(sz), 4)
			put(p+20, uint64(sz), 4)
			put(p+24, uint64(flags), 4)
			put(p+28, 8, 4)
		}
	}
	ph(0, elf.PT_LOAD, elf.PF_R, 0, offSh)
	ph(1, elf.PT_DYNAMIC, elf.PF_R|elf.PF_W, offDynamic, dynsz)
	// contents
	copy(b[offDynstr:], dynstr)
	dyns = append(dyns, dyn{uint64(elf.DT_STRTAB), uint64(offDynstr)}, dyn{uint64(elf.DT_STRSZ), uint64(len(dynstr))}, dyn{uint64(elf.DT_NULL), 0})
	for i, d := range dyns {
		put(offDynamic+i*2*word, d.tag, word)
		put(offDynamic+i*2*word+word, d.val, word)
	}
	copy(b[offRodata:], rodata)
	copy(b[offShstr:], shstr)
	// section headers
	sh := func(i int, name int, typ elf.SectionType, flags elf.SectionFlag, off, sz, link, entsize int) {
		p := offSh + i*shentsize
		put(p, uint64(name), 4)
		put(p+4, uint64(typ), 4)
		if is64 {
			put(p+8, uint64(flags), 8)
			put(p+16, uint64(off), 8) // sh_addr
			put(p+24, uint64(off), 8)
			put(p+32, uint64(sz), 8)
			put(p+40, uint64(link), 4)
			put(p+48, 1, 8)
			put(p+56, uint64(entsize), 8)
		} else {
			put(p+8, uint64(flags), 4)
			put(p+12, uint64(off), 4)
			put(p+16, uint64(off), 4)
			put(p+20, uint64(sz), 4)
			put(p+24, uint64(link), 4)
			put(p+32, 1, 4)
			put(p+36, uint64(entsize), 4)
		}
	}
	name := func(s string) int { return bytes.Index(shstr, []byte("\x00"+s+"\x00")) + 1 }
	sh(1, name(".dynstr"), elf.SHT_STRTAB, elf.SHF_ALLOC, offDynstr, len(dynstr), 0, 0)
	sh(2, name(".dynamic"), elf.SHT_DYNAMIC, elf.SHF_ALLOC|elf.SHF_WRITE, offDynamic, dynsz, 1, 2*word)
	sh(3, name(".rodata"), elf.SHT_PROGBITS, elf.SHF_ALLOC, offRodata, len(rodata), 0, 0)
	sh(4, name(".shstrtab"), elf.SHT_STRTAB, 0, offShstr, len(shstr), 0, 0)
	return b
}
