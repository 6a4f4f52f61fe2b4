package ldcache

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"sort"
	"strings"
)

// Compare orders library names as glibc's _dl_cache_libcmp does: runs of digits compare
// as numbers, so libfoo.so.10 sorts after libfoo.so.9.
func Compare(a, b string) int {
	i, j := 0, 0
	for i < len(a) {
		ca := a[i]
		if isDigit(ca) {
			if j >= len(b) || !isDigit(b[j]) {
				return 1
			}
			va, vb := 0, 0
			for i < len(a) && isDigit(a[i]) {
				va = va*10 + int(a[i]-'0')
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				vb = vb*10 + int(b[j]-'0')
				j++
			}
			if va != vb {
				return va - vb
			}
			continue
		}
		if j < len(b) && isDigit(b[j]) {
			return -1
		}
		var cb byte
		if j < len(b) {
			cb = b[j]
		}
		if ca != cb {
			return int(ca) - int(cb)
		}
		i++
		j++
	}
	if j < len(b) {
		return -int(b[j])
	}
	return 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// Sort puts entries in the order ldconfig writes them and the loader's binary search
// expects: names in descending Compare order, then higher flags first; entries that tie
// keep their order, which is their priority.
func Sort(entries []Entry) {
	sort.SliceStable(entries, func(i, j int) bool {
		if c := Compare(entries[i].Name, entries[j].Name); c != 0 {
			return c > 0
		}
		return entries[i].Flags > entries[j].Flags
	})
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

// Encode writes entries, already in Sort order, as a "glibc-ld.so.cache1.1" file. The
// caller bounds the number of entries (a cache over MaxSize is refused by Parse).
//
//nolint:gosec // sizes are bounded by MaxSize; flags are glibc's bit patterns
func Encode(entries []Entry) []byte {
	const header, entSize = 48, 24
	strOff := uint32(header + entSize*len(entries))
	var strs bytes.Buffer
	offsets := map[string]uint32{}
	intern := func(s string) uint32 {
		if o, ok := offsets[s]; ok {
			return o
		}
		o := strOff + uint32(strs.Len())
		strs.WriteString(s)
		strs.WriteByte(0)
		offsets[s] = o
		return o
	}
	keys := make([][2]uint32, len(entries))
	for i, e := range entries {
		keys[i] = [2]uint32{intern(e.Name), intern(e.Path)}
	}
	out := make([]byte, header+entSize*len(entries), header+entSize*len(entries)+strs.Len())
	copy(out, newMagic+newVersion)
	le := binary.LittleEndian
	le.PutUint32(out[20:], uint32(len(entries)))
	le.PutUint32(out[24:], uint32(strs.Len()))
	out[28] = 2 // little endian
	for i, e := range entries {
		b := out[header+i*entSize:]
		le.PutUint32(b[0:], uint32(e.Flags))
		le.PutUint32(b[4:], keys[i][0])
		le.PutUint32(b[8:], keys[i][1])
		le.PutUint64(b[16:], e.HWCap)
	}
	return append(out, strs.Bytes()...)
}
