// Package ldcache reads glibc's ld.so.cache (the "glibc-ld.so.cache1.1" format that
// ldconfig has written since glibc 2.32, alone or after the old "ld.so-1.7.0" table).
package ldcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Entry is one library in the cache.
type Entry struct {
	Name  string // the SONAME or link name looked up by the loader
	Path  string // where the loader finds it
	Flags int32
	// HWCap is the entry's hardware-capability word; glibc-hwcaps entries use it to
	// point into the cache's extension section.
	HWCap uint64
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

const (
	oldMagic   = "ld.so-1.7.0"
	newMagic   = "glibc-ld.so.cache"
	newVersion = "1.1"
	// MaxSize bounds what Parse accepts.
	MaxSize = 64 << 20
)

// ErrFormat means the data is not an ld.so.cache this package understands.
var ErrFormat = errors.New("not a glibc ld.so.cache")

// Parse decodes an ld.so.cache image.
func Parse(data []byte) ([]Entry, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes is larger than %d", ErrFormat, len(data), MaxSize)
	}
	base := 0
	if bytes.HasPrefix(data, []byte(oldMagic)) {
		// Old table: magic[11], pad, nlibs uint32, then nlibs * {flags int32, key, value uint32}.
		if len(data) < 16 {
			return nil, fmt.Errorf("%w: truncated old header", ErrFormat)
		}
		n := int(binary.LittleEndian.Uint32(data[12:16]))
		if n < 0 || n > len(data)/12 {
			return nil, fmt.Errorf("%w: old header claims %d entries", ErrFormat, n)
		}
		base = 16 + n*12
		base = (base + 7) &^ 7 // the new header is aligned after the old table
	}
	if len(data) < base+48 || !bytes.Equal(data[base:base+len(newMagic)], []byte(newMagic)) ||
		!bytes.Equal(data[base+17:base+20], []byte(newVersion)) {
		return nil, fmt.Errorf("%w: missing %q header", ErrFormat, newMagic+newVersion)
	}
	le := binary.LittleEndian
	n := int(le.Uint32(data[base+20:]))
	const entSize = 24 // flags int32, key uint32, value uint32, osversion uint32, hwcap uint64
	if n < 0 || n > (len(data)-base-48)/entSize {
		return nil, fmt.Errorf("%w: header claims %d entries in %d bytes", ErrFormat, n, len(data))
	}
	str := func(off uint32) (string, error) {
		o := base + int(off)
		if int(off) < 0 || o >= len(data) {
			return "", fmt.Errorf("%w: string offset %d out of range", ErrFormat, off)
		}
		end := bytes.IndexByte(data[o:], 0)
		if end < 0 {
			return "", fmt.Errorf("%w: unterminated string at %d", ErrFormat, off)
		}
		return string(data[o : o+end]), nil
	}
	out := make([]Entry, 0, n)
	for i := 0; i < n; i++ {
		e := data[base+48+i*entSize:]
		name, err := str(le.Uint32(e[4:]))
		if err != nil {
			return nil, err
		}
		path, err := str(le.Uint32(e[8:]))
		if err != nil {
			return nil, err
		}
		out = append(out, Entry{Name: name, Path: path, Flags: int32(le.Uint32(e[0:]) & 0x7fffffff), HWCap: le.Uint64(e[16:])})
	}
	return out, nil
}
