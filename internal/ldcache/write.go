package ldcache

import (
	"cmp"
	"debug/elf"
	"encoding/binary"
	"math/bits"
	"runtime"
	"slices"
	"strings"
)

// signedChar says whether C's char is signed on this machine, as it is on x86 and is not
// on ARM, POWER, s390x or RISC-V: the loader compares names by their chars, so the order
// of the cache it searches is the order of this machine's chars.
const signedChar = runtime.GOARCH == "amd64" || runtime.GOARCH == "386"

// cchar is a byte as the loader's C code sees it.
func cchar(c byte) int {
	if signedChar {
		return int(int8(c)) //nolint:gosec // the wrap is the point: C's signed char
	}
	return int(c)
}

// Compare orders library names as glibc's _dl_cache_libcmp does on this machine: runs of
// digits compare as numbers (in C's int, which wraps), so libfoo.so.10 sorts after
// libfoo.so.9; other bytes compare as C chars; a NUL ends a name, as in C.
func Compare(a, b string) int {
	at := func(s string, k int) byte {
		if k < len(s) {
			return s[k]
		}
		return 0
	}
	i, j := 0, 0
	for at(a, i) != 0 {
		ca, cb := a[i], at(b, j)
		if isDigit(ca) {
			if !isDigit(cb) {
				return 1
			}
			var va, vb int32
			for ; isDigit(at(a, i)); i++ {
				va = va*10 + int32(a[i]-'0')
			}
			for ; isDigit(at(b, j)); j++ {
				vb = vb*10 + int32(b[j]-'0')
			}
			if va != vb {
				return int(va - vb)
			}
			continue
		}
		if isDigit(cb) {
			return -1
		}
		if ca != cb {
			return cchar(ca) - cchar(cb)
		}
		i++
		j++
	}
	return -cchar(at(b, j))
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// compareEntries is ldconfig's compare (elf/cache.c): names in descending Compare order,
// then higher flags first, then glibc-hwcaps entries before the others and among
// themselves by subfolder name (strcmp), then legacy hwcap words with more bits set first,
// then higher hwcap words, then higher OS versions.
func compareEntries(a, b Entry) int {
	if c := Compare(b.Name, a.Name); c != 0 {
		return c
	}
	if c := cmp.Compare(b.Flags, a.Flags); c != 0 {
		return c
	}
	switch {
	case a.HWCaps != "" && b.HWCaps == "":
		return -1
	case a.HWCaps == "" && b.HWCaps != "":
		return 1
	}
	if c := strings.Compare(a.HWCaps, b.HWCaps); c != 0 {
		return c
	}
	ha, hb := legacyHWCap(a), legacyHWCap(b)
	if c := cmp.Compare(bits.OnesCount64(hb), bits.OnesCount64(ha)); c != 0 {
		return c
	}
	if c := cmp.Compare(hb, ha); c != 0 {
		return c
	}
	return cmp.Compare(b.OSVersion, a.OSVersion)
}

// legacyHWCap is the hwcap word ldconfig sorts by: zero for a glibc-hwcaps entry.
func legacyHWCap(e Entry) uint64 {
	if e.HWCaps != "" {
		return 0
	}
	return e.HWCap
}

// Sort puts entries in the order ldconfig writes them and the loader's binary search
// expects (ldconfig's compare); entries that tie keep their order, which is their
// priority, as in ldconfig's insertion into its sorted list.
func Sort(entries []Entry) {
	slices.SortStableFunc(entries, compareEntries)
}

// IsDSOName is ldconfig's test for names it considers: lib* or ld-* containing ".so".
func IsDSOName(name string) bool {
	return (strings.HasPrefix(name, "lib") || strings.HasPrefix(name, "ld-")) && strings.Contains(name, ".so")
}

// Key is the name ldconfig files a library under: a link whose name ends in ".so" and
// begins its SONAME (the development link libfoo.so of libfoo.so.1) or equals it keeps
// its own name; anything else is filed under its SONAME, or its own name without one.
func Key(name string, isLink bool, soname string) string {
	if soname == "" {
		return name
	}
	if isLink && (name == soname || strings.HasSuffix(name, ".so") && strings.HasPrefix(soname, name)) {
		return name
	}
	return soname
}

// Flags returns the cache flags ldconfig gives an ELF library of this class and machine,
// and false for libraries the loader of this architecture cannot use.
func Flags(class elf.Class, machine elf.Machine) (int32, bool) {
	switch {
	case class == elf.ELFCLASS64 && machine == elf.EM_X86_64:
		return FlagELFLibc6 | FlagX8664Lib64, true
	case class == elf.ELFCLASS32 && machine == elf.EM_386:
		return FlagELFLibc6 | FlagI386, true
	case class == elf.ELFCLASS64 && machine == elf.EM_AARCH64:
		return FlagELFLibc6 | FlagAArch64Lib6, true
	}
	return 0, false
}

// generator is the generator string Encode writes, which ldconfig -p prints.
const generator = "nvbind"

// Encode writes entries, already in Sort order, as ldconfig of glibc 2.33 and later
// writes a cache: "glibc-ld.so.cache1.1" alone, little-endian, strings laid out as
// ldconfig lays them out (equal strings once, a string that ends another inside it), then
// the extension directory with a generator string and, when an entry has HWCaps, the
// sorted glibc-hwcaps subfolder names. A cache ldconfig wrote comes out of Parse and
// Encode byte for byte the same but for the generator string (and the names of
// glibc-hwcaps folders without libraries, which ldconfig keeps among its strings). An entry with HWCaps gets
// the word HWCapExtension, the ISA level bits of its HWCap and the index of its
// subfolder; an entry without HWCaps keeps its HWCap, which must not be of that form.
// Names and paths must not contain NUL bytes. Parse returns no entry that breaks these
// rules, and its budgets bound the work of encoding what it returns.
func Encode(entries []Entry) []byte {
	return encode(entries, generator)
}

//nolint:gosec // sizes and offsets are bounded by the caller's budgets; flags are glibc's bit patterns
func encode(entries []Entry, gen string) []byte {
	var hwcaps []string
	for _, e := range entries {
		if e.HWCaps != "" {
			hwcaps = append(hwcaps, e.HWCaps)
		}
	}
	slices.Sort(hwcaps)
	hwcaps = slices.Compact(hwcaps)
	strs := make([]string, 0, 2*len(entries)+len(hwcaps))
	for _, e := range entries {
		strs = append(strs, e.Name, e.Path)
	}
	table, offsets := tailMerge(append(strs, hwcaps...))

	strOff := uint32(headerSize + entrySize*len(entries))
	extOff := (strOff + uint32(len(table)) + 3) &^ 3
	sections := uint32(1)
	if len(hwcaps) > 0 {
		sections = 2
	}
	hwOff := extOff + extHeaderSize + extSectionSize*sections
	genOff := hwOff + 4*uint32(len(hwcaps))
	out := make([]byte, int(genOff)+len(gen))

	le := binary.LittleEndian
	copy(out, newMagic+newVersion)
	le.PutUint32(out[20:], uint32(len(entries)))
	le.PutUint32(out[24:], uint32(len(table)))
	out[28] = endianLittle
	le.PutUint32(out[32:], extOff)
	for i, e := range entries {
		b := out[headerSize+i*entrySize:]
		le.PutUint32(b[0:], uint32(e.Flags))
		le.PutUint32(b[4:], strOff+offsets[e.Name])
		le.PutUint32(b[8:], strOff+offsets[e.Path])
		le.PutUint32(b[12:], e.OSVersion)
		hwcap := e.HWCap
		if e.HWCaps != "" {
			idx, _ := slices.BinarySearch(hwcaps, e.HWCaps)
			hwcap = HWCapExtension | e.HWCap&(isaLevelMask<<32) | uint64(idx)
		}
		le.PutUint64(b[16:], hwcap)
	}
	copy(out[strOff:], table)

	x := out[extOff:]
	le.PutUint32(x[0:], extMagic)
	le.PutUint32(x[4:], sections)
	s := x[extHeaderSize:] // generator first, as ldconfig writes them
	le.PutUint32(s[0:], tagGenerator)
	le.PutUint32(s[8:], genOff)
	le.PutUint32(s[12:], uint32(len(gen)))
	if len(hwcaps) > 0 {
		s = s[extSectionSize:]
		le.PutUint32(s[0:], tagGlibcHWCaps)
		le.PutUint32(s[8:], hwOff)
		le.PutUint32(s[12:], 4*uint32(len(hwcaps)))
		for i, name := range hwcaps {
			le.PutUint32(out[hwOff+4*uint32(i):], strOff+offsets[name])
		}
	}
	copy(out[genOff:], gen)
	return out
}

// tailMerge lays out strings as ldconfig's stringtable_finalize does: the distinct
// strings sorted by their reversed bytes, descending, a string that is a suffix of
// another right after it; each string that ends the one before it shares its bytes. It
// returns the table and each string's offset in it.
//
//nolint:gosec // the table is bounded by the caller's budgets
func tailMerge(strs []string) ([]byte, map[string]uint32) {
	offsets := make(map[string]uint32, len(strs))
	uniq := strs[:0]
	for _, s := range strs {
		if _, ok := offsets[s]; !ok {
			offsets[s] = 0
			uniq = append(uniq, s)
		}
	}
	slices.SortFunc(uniq, compareReversed)
	var table []byte
	for i, s := range uniq {
		if i > 0 && strings.HasSuffix(uniq[i-1], s) {
			offsets[s] = offsets[uniq[i-1]] + uint32(len(uniq[i-1])-len(s))
			continue
		}
		offsets[s] = uint32(len(table))
		table = append(table, s...)
		table = append(table, 0)
	}
	return table, offsets
}

// compareReversed is stringtable.c's finalize_compare: the reversed strings in descending
// byte order, a longer string before its suffix.
func compareReversed(a, b string) int {
	i, j := len(a), len(b)
	for i >= 8 && j >= 8 && a[i-8:i] == b[j-8:j] {
		i, j = i-8, j-8
	}
	for i > 0 && j > 0 {
		i, j = i-1, j-1
		if a[i] != b[j] {
			return int(b[j]) - int(a[i])
		}
	}
	return len(b) - len(a)
}
