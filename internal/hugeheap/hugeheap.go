// Package hugeheap asks Linux, when the package is imported, to back the Go heap's first
// mapping with transparent huge pages.
//
// A one-shot command such as `nvbind cdi generate` touches a few MiB of fresh heap once
// and exits before any garbage collection. Where transparent huge pages are "madvise"
// (the default of Debian and Ubuntu), each 4 KiB of that heap costs a page fault, and on
// virtual machines with shadow or nested paging a fault costs 15 to 40 µs: most of the
// command's time. The Go runtime no longer advises its heap itself. At init this package
// finds the anonymous mapping that holds the heap and, for each 2 MiB range inside it,
// gives MADV_HUGEPAGE, so that a range not yet touched faults in whole, then
// MADV_COLLAPSE (Linux 6.1), so that one already touched becomes a huge page at once.
// Both are advice: with THP "never", an older kernel or no /proc, they fail and nothing
// changes. GODEBUG=disablethp=1, the runtime's own switch, turns this off too.
//
// It imports only syscall so that it runs before most of the program's other inits.
package hugeheap

import (
	"syscall"
	"unsafe"
)

const (
	hugePage      = 2 << 20
	madvHugePage  = 14 // MADV_HUGEPAGE
	madvCollapse  = 25 // MADV_COLLAPSE
	mapsChunk     = 16 << 10
	mapsReadLimit = 1 << 20
)

// probe is a heap object: its address lies in the heap's current mapping.
var probe *[16]byte

// Ranges is how many 2 MiB ranges init advised (0 where it advised none).
var Ranges int

func init() {
	if disabled(syscall.Environ()) {
		return
	}
	probe = new([16]byte)
	lo, hi, ok := mappingOf(uint64(uintptr(unsafe.Pointer(probe)))) //nolint:gosec // an address, never dereferenced
	if !ok {
		return
	}
	for s := (lo + hugePage - 1) &^ (hugePage - 1); s+hugePage <= hi; s += hugePage {
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(s), hugePage, madvHugePage); e != 0 {
			return
		}
		// EINVAL for a range with nothing touched yet, which the advice above covers.
		_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, uintptr(s), hugePage, madvCollapse)
		Ranges++
	}
}

// disabled says whether GODEBUG asks the runtime not to use huge pages.
func disabled(env []string) bool {
	for _, kv := range env {
		if len(kv) > 8 && kv[:8] == "GODEBUG=" {
			return hasSetting(kv[8:], "disablethp=1")
		}
	}
	return false
}

func hasSetting(list, want string) bool {
	for len(list) > 0 {
		i := 0
		for i < len(list) && list[i] != ',' {
			i++
		}
		if list[:i] == want {
			return true
		}
		if i == len(list) {
			break
		}
		list = list[i+1:]
	}
	return false
}

// mappingOf reads /proc/self/maps for the private anonymous read-write mapping that
// holds addr. The lines come in address order, so it reads (16 KiB at a time, at most
// 1 MiB) only until the line that holds addr or starts above it.
func mappingOf(addr uint64) (lo, hi uint64, ok bool) {
	fd, err := syscall.Open("/proc/self/maps", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, false
	}
	defer func() { _ = syscall.Close(fd) }()
	mapsBuf = make([]byte, mapsChunk)
	buf, kept := mapsBuf, 0
	defer func() { mapsBuf = nil }()
	for total := 0; total < mapsReadLimit; {
		n, err := syscall.Read(fd, buf[kept:])
		if n <= 0 || err != nil {
			return 0, 0, false
		}
		total += n
		var used int
		var done bool
		lo, hi, ok, used, done = scanMaps(buf[:kept+n], addr)
		if done {
			return lo, hi, ok
		}
		// keep the unfinished last line; one longer than the buffer ends the search
		kept = copy(buf, buf[used:kept+n])
		if kept == len(buf) {
			return 0, 0, false
		}
	}
	return 0, 0, false
}

// mapsBuf holds mappingOf's reads on the heap, not on the stack (which would grow).
var mapsBuf []byte

// scanMaps reads the complete lines of b, text of /proc/PID/maps. done says it found the
// line whose range holds addr (then ok says whether that is a private anonymous
// read-write mapping, from lo to hi) or one that starts above addr, or a line that is not
// of that format. used is how many bytes the complete lines take.
func scanMaps(b []byte, addr uint64) (lo, hi uint64, ok bool, used int, done bool) {
	for {
		end := used
		for end < len(b) && b[end] != '\n' {
			end++
		}
		if end == len(b) {
			return 0, 0, false, used, false
		}
		line := b[used:end]
		used = end + 1
		l, rest, ok1 := hexField(line, '-')
		h, rest, ok2 := hexField(rest, ' ')
		if !ok1 || !ok2 || l >= h {
			return 0, 0, false, used, true
		}
		if addr >= h {
			continue
		}
		if addr < l {
			return 0, 0, false, used, true
		}
		if !privateAnonymous(rest) {
			return 0, 0, false, used, true
		}
		return l, h, true, used, true
	}
}

// privateAnonymous says whether the rest of a maps line after the range ("rw-p 00000000
// 00:00 0", then maybe a name) is a private, anonymous, read-write mapping.
func privateAnonymous(rest []byte) bool {
	if len(rest) < 4 || string(rest[:4]) != "rw-p" {
		return false
	}
	field, i := 0, 4
	for field < 3 {
		for i < len(rest) && rest[i] == ' ' {
			i++
		}
		j := i
		for j < len(rest) && rest[j] != ' ' {
			j++
		}
		if i == j {
			return false
		}
		field++
		if field == 3 {
			return string(rest[i:j]) == "0"
		}
		i = j
	}
	return false
}

// hexField parses the hexadecimal number at the start of b up to sep and returns what
// follows sep.
func hexField(b []byte, sep byte) (v uint64, rest []byte, ok bool) {
	i := 0
	for ; i < len(b) && b[i] != sep; i++ {
		c := b[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, nil, false
		}
		if i >= 16 {
			return 0, nil, false
		}
		v = v<<4 | uint64(d)
	}
	if i == 0 || i == len(b) {
		return 0, nil, false
	}
	return v, b[i+1:], true
}
