//go:build linux

// Package hugeheap asks Linux, when the package is imported, to back the Go heap's first
// mapping with transparent huge pages.
//
// A one-shot command such as `nvbind cdi generate` touches a few MiB of fresh heap once
// and exits before any garbage collection. Where transparent huge pages are "madvise"
// (Ubuntu's default), each 4 KiB of that heap costs a page fault, and on
// virtual machines with shadow or nested paging a fault costs about 20 to 40 µs: most of
// the command's time. The Go runtime no longer advises its heap itself. At init this
// package finds the anonymous mapping that holds the heap so far (the runtime's first
// 4 MiB chunk; what the heap grows into later stays on 4 KiB pages, which is why make
// build turns off Go 1.26's random padding at the chunk's start for the lean nvbind,
// see LEAN_ENV) and, for each 2 MiB range inside it, gives MADV_HUGEPAGE, so that a range not
// yet touched faults in whole, then MADV_COLLAPSE (Linux 6.1), so that one already
// touched becomes a huge page at once. That costs at most 4 MiB of memory, and the
// collapse is synchronous: where memory is fragmented the kernel may compact, which
// takes milliseconds.
//
// It does nothing where THP is "never" (the host's choice: MADV_COLLAPSE would ignore
// it), where the base page is not 4 KiB (a huge page is then far larger), where
// /proc/self/maps cannot be read, or where GODEBUG=disablethp is set, the Go runtime's own
// switch, read as the runtime reads it.
//
// Its only imports are syscall and unsafe, so its init runs right after syscall's: inits
// go in import path order among the packages whose imports are done.
package hugeheap

import (
	"syscall"
	"unsafe"
)

const (
	hugePage      = 2 << 20
	basePage      = 4 << 10
	madvHugePage  = 14 // MADV_HUGEPAGE
	madvCollapse  = 25 // MADV_COLLAPSE
	maxRanges     = 4
	mapsChunk     = 16 << 10
	mapsReadLimit = 1 << 20
	procMagic     = 0x9fa0 // PROC_SUPER_MAGIC
	thpEnabled    = "/sys/kernel/mm/transparent_hugepage/enabled"
)

// probe is a heap object: its address lies in the heap's current mapping.
var probe *[16]byte

var (
	// Ranges is how many 2 MiB ranges init advised (0 where it advised none).
	Ranges int
	// ProbeCollapse is the error of MADV_COLLAPSE on the range that holds probe (0 for
	// none): a range the runtime has touched, which the kernel collapses unless it lacks
	// memory (ENOMEM) or pages are busy (EAGAIN).
	ProbeCollapse syscall.Errno
)

func init() {
	if disabled(syscall.Environ()) || syscall.Getpagesize() != basePage || !thpAllowed() {
		return
	}
	// its page is touched: MADV_COLLAPSE takes its range
	probe = new([16]byte)
	probe[0] = 1
	at := uint64(uintptr(unsafe.Pointer(probe))) //nolint:gosec // an address, never dereferenced
	lo, hi, ok := mappingOf(at)
	if !ok {
		return
	}
	// the runtime maps its heap 4 MiB at a time: at most 8 MiB around the probe, should
	// the mapping be larger
	first := (lo + hugePage - 1) &^ (hugePage - 1)
	if near := at &^ (hugePage - 1); near >= 2*hugePage {
		first = max(first, near-2*hugePage)
	}
	for s := first; s+hugePage <= hi && Ranges < maxRanges; s += hugePage {
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(s), hugePage, madvHugePage); e != 0 {
			return
		}
		Ranges++
		// EINVAL for a range with nothing touched yet, which the advice above covers.
		_, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(s), hugePage, madvCollapse)
		if s <= at && at < s+hugePage {
			ProbeCollapse = e
		}
	}
}

// disabled says whether GODEBUG sets disablethp, as the runtime reads it: the first
// GODEBUG of the environment, its last disablethp setting, any integer but 0.
func disabled(env []string) bool {
	for _, kv := range env {
		if len(kv) >= 8 && kv[:8] == "GODEBUG=" {
			return setting(kv[8:], "disablethp") != 0
		}
	}
	return false
}

// setting is the value of key's last key=value in a GODEBUG list, as an integer; 0 where
// it is absent or not an integer.
func setting(list, key string) int64 {
	var v int64
	for len(list) > 0 {
		i := 0
		for i < len(list) && list[i] != ',' {
			i++
		}
		item := list[:i]
		if len(item) > len(key) && item[:len(key)] == key && item[len(key)] == '=' {
			n, ok := parseInt(item[len(key)+1:])
			if ok {
				v = n
			}
		}
		if i == len(list) {
			break
		}
		list = list[i+1:]
	}
	return v
}

// parseInt parses a decimal int32 with an optional sign, as the runtime does
// (strconv.ParseInt(s, 10, 32)).
func parseInt(s string) (int64, bool) {
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg, s = s[0] == '-', s[1:]
	}
	if s == "" {
		return 0, false
	}
	for len(s) > 1 && s[0] == '0' {
		s = s[1:]
	}
	if len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	if neg {
		n = -n
	}
	if n > 1<<31-1 || n < -1<<31 {
		return 0, false
	}
	return n, true
}

// thpAllowed says whether the host's THP setting is other than "never" (or unknown).
func thpAllowed() bool {
	var buf [128]byte
	n, ok := readSmall(thpEnabled, buf[:], false)
	return ok && thpMode(buf[:n]) != "never" && thpMode(buf[:n]) != ""
}

// thpMode is the setting of a THP "enabled" file: the word in brackets.
func thpMode(b []byte) string {
	for i := 0; i < len(b); i++ {
		if b[i] != '[' {
			continue
		}
		for j := i + 1; j < len(b); j++ {
			if b[j] == ']' {
				return string(b[i+1 : j])
			}
		}
		break
	}
	return ""
}

// openProc opens a file read-only, without blocking on a FIFO or taking a terminal;
// with proc it must be on procfs.
func openProc(path string, proc bool) (int, bool) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return -1, false
	}
	var st syscall.Statfs_t
	if proc && (syscall.Fstatfs(fd, &st) != nil || st.Type != procMagic) {
		_ = syscall.Close(fd)
		return -1, false
	}
	return fd, true
}

// readSmall reads up to len(buf) bytes of a file in one read.
func readSmall(path string, buf []byte, proc bool) (int, bool) {
	fd, ok := openProc(path, proc)
	if !ok {
		return 0, false
	}
	defer func() { _ = syscall.Close(fd) }()
	n, err := syscall.Read(fd, buf)
	return n, err == nil && n > 0
}

// mappingOf reads /proc/self/maps for the private anonymous read-write mapping that
// holds addr.
func mappingOf(addr uint64) (lo, hi uint64, ok bool) {
	fd, ok := openProc("/proc/self/maps", true)
	if !ok {
		return 0, 0, false
	}
	defer func() { _ = syscall.Close(fd) }()
	mapsBuf = make([]byte, mapsChunk)
	defer func() { mapsBuf = nil }()
	return readMaps(func(b []byte) (int, error) { return syscall.Read(fd, b) }, mapsBuf, addr)
}

// mapsBuf holds mappingOf's reads on the heap, not on the stack (which would grow).
var mapsBuf []byte

// readMaps reads maps text through read into buf, a chunk at a time (at most 1 MiB in
// all), and finds the private anonymous read-write mapping that holds addr. The lines come
// in address order, so it stops at the line that holds addr or starts above it. A line
// longer than buf ends the search.
func readMaps(read func([]byte) (int, error), buf []byte, addr uint64) (lo, hi uint64, ok bool) {
	kept := 0
	for total := 0; total < mapsReadLimit; {
		n, err := read(buf[kept:])
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
		// keep the unfinished last line
		kept = copy(buf, buf[used:kept+n])
		if kept == len(buf) {
			return 0, 0, false
		}
	}
	return 0, 0, false
}

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
