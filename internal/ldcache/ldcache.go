// Package ldcache reads and writes glibc's ld.so.cache (the "glibc-ld.so.cache1.1" format
// that ldconfig has written since glibc 2.32, alone or after the old "ld.so-1.7.0" table,
// with the extension section of glibc 2.33 that names the glibc-hwcaps subfolders) and
// reads the ELF headers of shared libraries. Both parsers face files that a container
// image controls completely, so each works within named budgets.
package ldcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Entry is one library in the cache.
type Entry struct {
	Name  string // the SONAME or link name looked up by the loader
	Path  string // where the loader finds it
	Flags int32  // FlagTypeMask and FlagArchMask bits
	// OSVersion is the kernel version the library requires, from its ABI note; newer
	// ldconfig versions write zero.
	OSVersion uint32
	// HWCap is the entry's legacy hardware-capability word (the hwcap subfolders such as
	// tls/ and x86_64/). For a glibc-hwcaps entry it keeps the upper half of the file's
	// word: HWCapExtension and the ISA level some glibc versions write in bits 32 to 41;
	// the index in the lower half is replaced by HWCaps.
	HWCap uint64
	// HWCaps names the entry's glibc-hwcaps subfolder ("x86-64-v3"); empty for an entry
	// outside glibc-hwcaps.
	HWCaps string
}

// Flag bits of an entry (glibc's FLAG_* constants).
const (
	FlagTypeMask    = 0x00ff
	FlagELFLibc6    = 0x0003
	FlagArchMask    = 0xff00
	FlagX8664Lib64  = 0x0300
	FlagI386        = 0x0000
	FlagAArch64Lib6 = 0x0a00
)

// HWCapExtension marks the hardware-capability word of a glibc-hwcaps entry
// (DL_CACHE_HWCAP_EXTENSION): its lower half indexes the subfolder names.
const HWCapExtension = uint64(1) << 62

// Budgets of Parse, whose input an image controls completely. Each is far above what
// ldconfig writes for real systems; together they keep Parse's memory within a small
// multiple of its input and its time linear in it (plus a sort of the string offsets),
// and bound the work Sort and Encode do on what it returns. Beyond them Parse returns
// ErrFormat.
const (
	// MaxSize bounds the cache file: a cache of 20,000 libraries, as large as real
	// systems have, takes about 3 MiB.
	MaxSize = 8 << 20
	// MaxEntries bounds the entries of a cache: real caches hold up to about 20,000.
	MaxEntries = 1 << 16
	// MaxPathLen bounds a library's path: PATH_MAX (4096) counts the terminating NUL.
	MaxPathLen = 4095
	// MaxNameLen bounds a library name, a SONAME and a glibc-hwcaps subfolder name: each
	// is a file name, which NAME_MAX bounds at 255 bytes.
	MaxNameLen = 255
	// MaxStringBytes bounds the summed length of all entries' names and paths, a string
	// shared by several entries counted for each: strings that share their bytes in the
	// file would otherwise let a small file stand for gigabytes, and Sort and Encode work
	// in proportion to it. Real caches sum to about 3 MiB.
	MaxStringBytes = 16 << 20
	// MaxHWCaps bounds the glibc-hwcaps subfolder names of a cache: glibc knows about a
	// dozen (x86-64-v2 to v4, power9 to power11, z13 to z17).
	MaxHWCaps = 256
)

const (
	oldMagic      = "ld.so-1.7.0"
	newMagic      = "glibc-ld.so.cache"
	newVersion    = "1.1"
	oldHeaderSize = 16 // magic[11], pad, nlibs uint32
	oldEntrySize  = 12 // flags int32, key, value uint32
	headerSize    = 48 // struct cache_file_new
	entrySize     = 24 // flags int32, key, value, osversion uint32, hwcap uint64
	// endianLittle is the cache_file_new flags value ldconfig writes on little-endian
	// machines; the loader ignores a cache whose nonzero flags say otherwise.
	endianLittle = 2
	// the extension directory: magic, count, then count sections {tag, flags, offset, size}
	extMagic       = 0xeaa42174
	extHeaderSize  = 8
	extSectionSize = 16
	tagGenerator   = 0
	tagGlibcHWCaps = 1
	// isaLevelMask is DL_CACHE_HWCAP_ISA_LEVEL_MASK, in the upper half of hwcap.
	isaLevelMask = 0x3ff
)

// ErrFormat means the data is not an ld.so.cache this package understands. Its messages
// carry numbers only, never bytes of the file.
var ErrFormat = errors.New("not a glibc ld.so.cache")

// Parse decodes an ld.so.cache image. The entries' strings share one copy of the file's
// string table. A glibc-hwcaps entry comes back with its subfolder name in HWCaps.
func Parse(data []byte) ([]Entry, error) {
	c, err := parse(data)
	return c.entries, err
}

// cache is what parse reads: the entries and the generator string (a slice of the input).
type cache struct {
	entries   []Entry
	generator []byte
}

// isExtension is the loader's test (dl_cache_hwcap_extension) for a glibc-hwcaps entry:
// in the upper half of hwcap, only the extension bit and the ISA level bits are set.
func isExtension(hwcap uint64) bool {
	return (hwcap>>32)&^isaLevelMask == HWCapExtension>>32
}

//nolint:gosec // every offset is checked against len(data) <= MaxSize before conversion
func parse(data []byte) (cache, error) {
	var c cache
	if len(data) > MaxSize {
		return c, fmt.Errorf("%w: %d bytes is larger than %d", ErrFormat, len(data), MaxSize)
	}
	le := binary.LittleEndian
	base := 0
	if bytes.HasPrefix(data, []byte(oldMagic)) {
		if len(data) < oldHeaderSize {
			return c, fmt.Errorf("%w: truncated old header", ErrFormat)
		}
		n := uint64(le.Uint32(data[12:]))
		if n > uint64(len(data)-oldHeaderSize)/oldEntrySize {
			return c, fmt.Errorf("%w: old header claims %d entries", ErrFormat, n)
		}
		base = (oldHeaderSize + int(n)*oldEntrySize + 7) &^ 7 // the new header is aligned after the old table
	}
	if len(data)-base < headerSize || string(data[base:base+len(newMagic+newVersion)]) != newMagic+newVersion {
		return c, fmt.Errorf("%w: missing %q header", ErrFormat, newMagic+newVersion)
	}
	h := data[base:]
	if f := h[28]; f != 0 && f&3 != endianLittle {
		return c, fmt.Errorf("%w: the header marks the cache invalid or big-endian", ErrFormat)
	}
	n := uint64(le.Uint32(h[20:]))
	if n > MaxEntries {
		return c, fmt.Errorf("%w: %d entries, more than %d", ErrFormat, n, MaxEntries)
	}
	if n > uint64(len(h)-headerSize)/entrySize {
		return c, fmt.Errorf("%w: header claims %d entries in %d bytes", ErrFormat, n, len(data))
	}
	hwcaps, generator, err := extension(data, le.Uint32(h[32:]))
	if err != nil {
		return c, err
	}
	c.generator = generator
	tab := h[headerSize : headerSize+n*entrySize]

	// Every string offset, in file terms: entries' offsets count from the new header,
	// the glibc-hwcaps names' from the start of the file (as the loader reads them).
	offs := make([]uint32, 0, 2*n+uint64(len(hwcaps)))
	for i := uint64(0); i < n; i++ {
		e := tab[i*entrySize:]
		for _, o := range [2]uint32{le.Uint32(e[4:]), le.Uint32(e[8:])} {
			abs := uint64(base) + uint64(o)
			if abs >= uint64(len(data)) {
				return c, fmt.Errorf("%w: entry %d: string offset %d out of range", ErrFormat, i, o)
			}
			offs = append(offs, uint32(abs))
		}
	}
	offs = append(offs, hwcaps...)
	strs, err := newStrings(data, offs)
	if err != nil {
		return c, err
	}

	names := make([]string, len(hwcaps))
	for i, o := range hwcaps {
		names[i] = strs.at(o)
		if len(names[i]) > MaxNameLen {
			return c, fmt.Errorf("%w: glibc-hwcaps name %d is longer than %d bytes", ErrFormat, i, MaxNameLen)
		}
		// the loader merges this list with its own sorted list of names
		if i > 0 && names[i-1] >= names[i] {
			return c, fmt.Errorf("%w: glibc-hwcaps names are not sorted at %d", ErrFormat, i)
		}
	}

	c.entries = make([]Entry, n)
	total := 0
	for i := range c.entries {
		e := tab[i*entrySize:]
		x := &c.entries[i]
		x.Name = strs.at(uint32(base) + le.Uint32(e[4:]))
		x.Path = strs.at(uint32(base) + le.Uint32(e[8:]))
		if len(x.Name) > MaxNameLen {
			return c, fmt.Errorf("%w: entry %d: name of %d bytes is longer than %d", ErrFormat, i, len(x.Name), MaxNameLen)
		}
		if total += len(x.Name) + len(x.Path); total > MaxStringBytes {
			return c, fmt.Errorf("%w: entry %d: names and paths sum to more than %d bytes", ErrFormat, i, MaxStringBytes)
		}
		x.Flags = int32(le.Uint32(e[0:]))
		x.OSVersion = le.Uint32(e[12:])
		x.HWCap = le.Uint64(e[16:])
		if isExtension(x.HWCap) {
			idx := uint32(x.HWCap)
			if uint64(idx) >= uint64(len(names)) {
				return c, fmt.Errorf("%w: entry %d: glibc-hwcaps index %d out of range", ErrFormat, i, idx)
			}
			x.HWCaps = names[idx]
			x.HWCap &^= 0xffffffff
		}
	}
	return c, nil
}

// extension reads the extension directory at off, a file offset: the file offsets of the
// glibc-hwcaps names and the generator string. Zero means there is none.
//
//nolint:gosec // offsets are checked against len(data) <= MaxSize before conversion
func extension(data []byte, off uint32) (hwcaps []uint32, generator []byte, err error) {
	if off == 0 {
		return nil, nil, nil
	}
	le := binary.LittleEndian
	if off%4 != 0 || uint64(off)+extHeaderSize > uint64(len(data)) {
		return nil, nil, fmt.Errorf("%w: extension directory at %d misaligned or out of range", ErrFormat, off)
	}
	d := data[off:]
	if le.Uint32(d) != extMagic {
		return nil, nil, fmt.Errorf("%w: no extension directory at %d", ErrFormat, off)
	}
	count := uint64(le.Uint32(d[4:]))
	if count > uint64(len(d)-extHeaderSize)/extSectionSize {
		return nil, nil, fmt.Errorf("%w: %d extension sections out of range", ErrFormat, count)
	}
	var hw []byte
	hwOff := uint64(0)
	for i := uint64(0); i < count; i++ {
		s := d[extHeaderSize+i*extSectionSize:]
		tag, start, size := le.Uint32(s), uint64(le.Uint32(s[8:])), uint64(le.Uint32(s[12:]))
		if start+size > uint64(len(data)) {
			return nil, nil, fmt.Errorf("%w: extension section %d out of range", ErrFormat, i)
		}
		switch tag { // as in the loader, the last section of a tag counts
		case tagGenerator:
			generator = data[start : start+size]
		case tagGlibcHWCaps:
			hw, hwOff = data[start:start+size], start
		}
	}
	// the loader ignores a glibc-hwcaps section that is misaligned or not whole uint32s
	if hwOff%4 != 0 || len(hw)%4 != 0 {
		hw = nil
	}
	if len(hw)/4 > MaxHWCaps {
		return nil, nil, fmt.Errorf("%w: %d glibc-hwcaps names, more than %d", ErrFormat, len(hw)/4, MaxHWCaps)
	}
	hwcaps = make([]uint32, len(hw)/4)
	for i := range hwcaps {
		hwcaps[i] = le.Uint32(hw[4*i:])
		if uint64(hwcaps[i]) >= uint64(len(data)) {
			return nil, nil, fmt.Errorf("%w: glibc-hwcaps name %d at offset %d out of range", ErrFormat, i, hwcaps[i])
		}
	}
	return hwcaps, generator, nil
}

// stringTable holds the NUL-terminated strings at a set of file offsets: one copy of the
// part of the file they span, and for each distinct offset the end of its string.
type stringTable struct {
	offs, ends []uint32 // sorted distinct offsets and the NUL ending each string
	lo         uint32   // the file offset of s
	s          string
}

// newStrings finds the strings at offs (each < len(data)) in one sweep over the sorted
// distinct offsets: a NUL found for one offset ends the string at every later offset
// before it, so each byte is looked at once. A string must end within MaxPathLen bytes.
//
//nolint:gosec // offsets are below len(data) <= MaxSize
func newStrings(data []byte, offs []uint32) (stringTable, error) {
	slices.Sort(offs)
	offs = slices.Compact(offs)
	t := stringTable{offs: offs, ends: make([]uint32, len(offs))}
	nul := -1
	for i, o := range offs {
		if nul < int(o) {
			window := data[o:min(len(data), int(o)+MaxPathLen+1)]
			k := bytes.IndexByte(window, 0)
			if k < 0 {
				return t, fmt.Errorf("%w: string at offset %d unterminated or longer than %d bytes", ErrFormat, o, MaxPathLen)
			}
			nul = int(o) + k
		}
		t.ends[i] = uint32(nul)
	}
	if len(offs) > 0 {
		t.lo = offs[0]
		t.s = string(data[t.lo:t.ends[len(offs)-1]])
	}
	return t, nil
}

// at returns the string at o, one of the offsets the table was built from.
func (t *stringTable) at(o uint32) string {
	i, _ := slices.BinarySearch(t.offs, o)
	return t.s[o-t.lo : t.ends[i]-t.lo]
}
