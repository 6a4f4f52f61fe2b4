package ldcache

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nvbind/nvbind/test/testutil"
)

// ldconfigList is what ldconfig -p prints of a cache: name=path, with ",hwcaps" after the
// name of a glibc-hwcaps entry.
func ldconfigList(t *testing.T, cache string) []string {
	t.Helper()
	out, err := exec.Command("/sbin/ldconfig", "-p", "-C", cache).Output()
	if err != nil {
		t.Fatal(err)
	}
	var list []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		name, rest, ok := strings.Cut(line, " (")
		desc, path, ok2 := strings.Cut(rest, "=> ")
		if !ok || !ok2 {
			continue
		}
		if _, hw, ok := strings.Cut(desc, `hwcap: "`); ok {
			name += "," + strings.TrimSuffix(hw, `") `)
		}
		list = append(list, name+"="+path)
	}
	return list
}

func list(entries []Entry) []string {
	var out []string
	for _, e := range entries {
		s := e.Name
		if e.HWCaps != "" {
			s += "," + e.HWCaps
		}
		out = append(out, s+"="+e.Path)
	}
	return out
}

// checkRoundTrip: the entries are in Sort order, and Encode writes a cache that Parse
// reads back entry for entry.
func checkRoundTrip(t *testing.T, entries []Entry) {
	t.Helper()
	sorted := slices.Clone(entries)
	Sort(sorted)
	if !slices.Equal(sorted, entries) {
		t.Errorf("Sort changes the order ldconfig wrote:\n got %v\nwant %v", list(sorted), list(entries))
	}
	again, err := Parse(Encode(entries))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again, entries) {
		t.Errorf("round trip:\n got %+v\nwant %+v", again, entries)
	}
}

// TestParseRealCache compares the parser with what glibc's ldconfig -p prints for a cache
// that ldconfig itself built of the system's libraries and a test library.
func TestParseRealCache(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/sbin/ldconfig"); err != nil {
		t.Skip("no /sbin/ldconfig")
	}
	dir := t.TempDir()
	testutil.BuildSharedObject(t, filepath.Join(dir, "lib/libnvbindtest.so.1.2"), "libnvbindtest.so.1", 64, "")
	cache := filepath.Join(dir, "ld.so.cache")
	if out, err := exec.Command("/sbin/ldconfig", "-X", "-C", cache, "-f", "/dev/null", filepath.Join(dir, "lib")).CombinedOutput(); err != nil {
		t.Fatalf("ldconfig: %v\n%s", err, out)
	}
	data, err := os.ReadFile(cache)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := list(entries), ldconfigList(t, cache); !slices.Equal(got, want) {
		t.Fatalf("parsed entries differ from ldconfig -p:\ngot  %v\nwant %v", got, want)
	}
	var found bool
	for _, e := range entries {
		if e.Name == "libnvbindtest.so.1" {
			found = e.Path == filepath.Join(dir, "lib/libnvbindtest.so.1") && e.Flags&FlagTypeMask == FlagELFLibc6
		}
	}
	if !found {
		t.Fatalf("test library missing or wrong: %v", entries)
	}
	checkRoundTrip(t, entries)
	// ldconfig keeps the names of glibc-hwcaps folders it found no library in among its
	// strings, which Encode cannot know of
	for _, p := range []string{"/lib*/glibc-hwcaps", "/usr/lib*/glibc-hwcaps", "/lib/*/glibc-hwcaps", "/usr/lib/*/glibc-hwcaps"} {
		if m, _ := filepath.Glob(p); len(m) > 0 {
			t.Logf("not comparing bytes: the system has %v", m)
			return
		}
	}
	c, err := parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encode(c.entries, string(c.generator)), data) {
		t.Fatal("the encoded cache differs from ldconfig's")
	}
	t.Logf("%d entries, %d bytes, byte for byte ldconfig's", len(entries), len(data))
}

// TestGlibcHWCaps: ldconfig's cache of a tree with glibc-hwcaps subfolders parses to
// what ldconfig -p prints, in the order Sort gives, and encodes to the same bytes.
func TestGlibcHWCaps(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/sbin/ldconfig"); err != nil {
		t.Skip("no /sbin/ldconfig")
	}
	root := t.TempDir()
	for _, l := range [][2]string{
		{"usr/lib/libhw.so.1", "libhw.so.1"},
		{"usr/lib/glibc-hwcaps/x86-64-v3/libhw.so.1", "libhw.so.1"},
		{"usr/lib/glibc-hwcaps/x86-64-v2/libhw.so.1", "libhw.so.1"},
		{"opt/lib/glibc-hwcaps/x86-64-v2/libhwonly.so.2", "libhwonly.so.2"},
		{"opt/lib/glibc-hwcaps/x86-64-v2/libhw.so.1", "libhw.so.1"},
		{"opt/lib/libplain.so.3", "libplain.so.3"},
	} {
		testutil.BuildSharedObject(t, filepath.Join(root, l[0]), l[1], 64, "")
	}
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/sbin/ldconfig", "-r", root, "-X", "-C", "/etc/ld.so.cache", "-f", "/dev/null", "/opt/lib", "/usr/lib").CombinedOutput()
	if err != nil {
		t.Skipf("ldconfig -r cannot run here: %v\n%s", err, out)
	}
	cache := filepath.Join(root, "etc/ld.so.cache")
	data, err := os.ReadFile(cache)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parse(data)
	if err != nil {
		t.Fatal(err)
	}
	got, want := list(c.entries), ldconfigList(t, cache)
	if !slices.Equal(got, want) {
		t.Fatalf("parsed entries differ from ldconfig -p:\ngot  %v\nwant %v", got, want)
	}
	if !slices.Contains(got, "libhwonly.so.2,x86-64-v2=/opt/lib/glibc-hwcaps/x86-64-v2/libhwonly.so.2") ||
		!slices.Contains(got, "libhw.so.1,x86-64-v3=/usr/lib/glibc-hwcaps/x86-64-v3/libhw.so.1") {
		t.Fatalf("glibc-hwcaps entries missing: %v", got)
	}
	checkRoundTrip(t, c.entries)
	if again := encode(c.entries, string(c.generator)); !bytes.Equal(again, data) {
		t.Fatalf("encoded cache differs from ldconfig's:\n got %q\nwant %q", again, data)
	}
	t.Logf("%d entries, %d bytes, byte for byte ldconfig's", len(c.entries), len(data))
}

// rawCache builds a new-format cache of n entries whose names and paths are at the given
// offsets into strtab, which follows the entry table.
func rawCache(n int, key, value func(i int) int, strtab []byte) []byte {
	le := binary.LittleEndian
	strOff := headerSize + entrySize*n
	b := make([]byte, strOff, strOff+len(strtab))
	copy(b, newMagic+newVersion)
	le.PutUint32(b[20:], uint32(n))
	le.PutUint32(b[24:], uint32(len(strtab)))
	for i := 0; i < n; i++ {
		e := b[headerSize+i*entrySize:]
		le.PutUint32(e[0:], FlagELFLibc6|FlagX8664Lib64)
		le.PutUint32(e[4:], uint32(strOff+key(i)))
		le.PutUint32(e[8:], uint32(strOff+value(i)))
	}
	return append(b, strtab...)
}

// allocated returns the bytes f allocates, for tests that do not run in parallel.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// budget is the time Parse may take: generous enough for -race on a loaded machine, far
// below what quadratic work on the same input takes.
func budget(n int) time.Duration { return 200*time.Millisecond + time.Duration(n)*time.Microsecond }

// fastest runs f until it finishes within limit, three times at most, and returns the
// shortest time it took: a machine too busy to run f once in time rarely is three
// times, while quadratic work never fits.
func fastest(f func(), limit time.Duration) time.Duration {
	best := time.Duration(math.MaxInt64)
	for range 3 {
		start := time.Now()
		f()
		if best = min(best, time.Since(start)); best <= limit {
			break
		}
	}
	return best
}

// TestParseSharedStrings is the regression test of a 200 KB cache that made Parse
// allocate hundreds of megabytes (a copy of one long string per entry) or scan for
// seconds (entries at successive offsets of one long string).
func TestParseSharedStrings(t *testing.T) {
	long := func(n int) []byte { return append(bytes.Repeat([]byte("a"), n), 0) }
	const n = 8000 // 192 KB of entries
	for _, tc := range []struct {
		name       string
		data       []byte
		ok         bool
		maxAlloc   uint64
		maxEncoded int
	}{
		// every path is one 2000-byte string: 8000 copies of it were 16 MB
		{"one string", rawCache(n, func(int) int { return 0 }, func(int) int { return 10 },
			append([]byte("libx.so.1\x00"), long(2000)...)), true, 1 << 20, 200 << 10},
		// every path is one 4095-byte string: over MaxStringBytes
		{"one string over the budget", rawCache(n, func(int) int { return 0 }, func(int) int { return 10 },
			append([]byte("libx.so.1\x00"), long(MaxPathLen)...)), false, 1 << 20, 0},
		// every path is one string of 150 KB: 8000 copies of it were 1.2 GB
		{"one long string", rawCache(n, func(int) int { return 0 }, func(int) int { return 0 }, long(150<<10)), false, 256 << 10, 0},
		// paths at successive offsets of one 150 KB string: as many scans and copies
		{"successive offsets", rawCache(n, func(i int) int { return i }, func(i int) int { return i }, long(150<<10)), false, 256 << 10, 0},
		// paths at successive offsets of a 4095-byte string, all accepted; Encode merges them again
		{"successive offsets within budget", rawCache(4000, func(int) int { return 0 }, func(i int) int { return 10 + i },
			append([]byte("liby.so.2\x00"), long(MaxPathLen)...)), true, 512 << 10, 200 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var entries []Entry
			var err error
			alloc := allocated(func() { entries, err = Parse(tc.data) })
			elapsed := fastest(func() { _, _ = Parse(tc.data) }, budget(len(tc.data)))
			t.Logf("%d bytes: %d entries, err %v; allocated %d bytes in %v", len(tc.data), len(entries), err, alloc, elapsed)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrFormat) {
				t.Fatalf("err = %v, not ErrFormat", err)
			}
			if alloc > tc.maxAlloc {
				t.Errorf("allocated %d bytes, more than %d", alloc, tc.maxAlloc)
			}
			if elapsed > budget(len(tc.data)) {
				t.Errorf("took %v, more than %v", elapsed, budget(len(tc.data)))
			}
			if err != nil {
				return
			}
			Sort(entries)
			if out := Encode(entries); len(out) > tc.maxEncoded {
				t.Errorf("encoded to %d bytes, more than %d", len(out), tc.maxEncoded)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	le := binary.LittleEndian
	secret := []byte("\x00libSECRET.so\x00/SECRET\x00")
	good := rawCache(2, func(int) int { return 1 }, func(int) int { return 14 }, secret)
	if _, err := Parse(good); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(slices.Clone(good)) }
	hw := Encode([]Entry{{Name: "libSECRET.so", Path: "/SECRET", HWCaps: "SECRET"}})
	hwEdit := func(f func(b []byte)) []byte { b := slices.Clone(hw); f(b); return b }
	hwOff := func(b []byte) []byte { return b[le.Uint32(b[32:]):] } // the extension directory
	for name, bad := range map[string][]byte{
		"empty":        nil,
		"not a cache":  []byte("nope"),
		"version":      []byte("glibc-ld.so.cache1.0" + strings.Repeat("\x00", 40)),
		"entries":      append([]byte("glibc-ld.so.cache1.1\xff\xff\xff\x7f"), make([]byte, 40)...),
		"too large":    make([]byte, MaxSize+1),
		"big-endian":   edit(func(b []byte) []byte { b[28] = 3; return b }),
		"key range":    edit(func(b []byte) []byte { le.PutUint32(b[headerSize+4:], uint32(len(b))); return b }),
		"unterminated": edit(func(b []byte) []byte { return b[:len(b)-1] }),
		"long name": rawCache(1, func(int) int { return 0 }, func(int) int { return 0 },
			append(bytes.Repeat([]byte("l"), MaxNameLen+1), 0)),
		"too many entries": func() []byte {
			b := rawCache(0, nil, nil, make([]byte, (MaxEntries+1)*entrySize))
			le.PutUint32(b[20:], MaxEntries+1)
			return b
		}(),
		"old table":     append([]byte("ld.so-1.7.0\x00\xff\xff\xff\x0f"), good...),
		"ext misalign":  edit(func(b []byte) []byte { le.PutUint32(b[32:], 50); return b }),
		"ext range":     edit(func(b []byte) []byte { le.PutUint32(b[32:], 1<<20); return b }),
		"ext magic":     hwEdit(func(b []byte) { hwOff(b)[0]++ }),
		"ext count":     hwEdit(func(b []byte) { le.PutUint32(hwOff(b)[4:], 1<<30) }),
		"ext section":   hwEdit(func(b []byte) { le.PutUint32(hwOff(b)[8+16+12:], 1<<30) }),
		"hwcaps index":  hwEdit(func(b []byte) { b[headerSize+16] = 1 }),
		"hwcaps string": hwEdit(func(b []byte) { le.PutUint32(b[le.Uint32(hwOff(b)[8+16+8:]):], 1<<20) }),
		"hwcaps sorted": func() []byte { // the two names swapped
			b := Encode([]Entry{{Name: "a", Path: "/a", HWCaps: "x"}, {Name: "b", Path: "/b", HWCaps: "y"}})
			names := b[le.Uint32(hwOff(b)[8+16+8:]):]
			x, y := le.Uint32(names), le.Uint32(names[4:])
			le.PutUint32(names, y)
			le.PutUint32(names[4:], x)
			return b
		}(),
	} {
		_, err := Parse(bad)
		switch {
		case err == nil:
			t.Errorf("%s: accepted", name)
		case !errors.Is(err, ErrFormat):
			t.Errorf("%s: %v is not ErrFormat", name, err)
		case strings.Contains(err.Error(), "SECRET") || len(err.Error()) > 120:
			t.Errorf("%s: error shows the file or is long: %q", name, err)
		}
	}
}

// TestParseKeepsHWCapBits: the upper half of a glibc-hwcaps entry's word (the ISA level
// glibc 2.33 to 2.36 writes) survives a round trip; a legacy hwcap word is kept whole.
func TestParseKeepsHWCapBits(t *testing.T) {
	t.Parallel()
	x86 := int32(FlagELFLibc6 | FlagX8664Lib64)
	in := []Entry{
		{Name: "libm.so.6", Path: "/lib/glibc-hwcaps/x86-64-v3/libm.so.6", Flags: x86, HWCap: HWCapExtension | 3<<32, HWCaps: "x86-64-v3"},
		{Name: "libm.so.6", Path: "/lib/tls/libm.so.6", Flags: x86, HWCap: 1 << 63, OSVersion: 0x030200},
		{Name: "libm.so.6", Path: "/lib/libm.so.6", Flags: x86},
		{Name: "libneg.so", Path: "/lib/libneg.so", Flags: -5},
	}
	Sort(in)
	got, err := Parse(Encode(in))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, in) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, in)
	}
}

// seeds are crafted caches for the fuzz targets: shared strings, successive offsets,
// glibc-hwcaps entries.
func seeds() [][]byte {
	str := append([]byte("libx.so.1\x00"), append(bytes.Repeat([]byte("a"), 300), 0)...)
	return [][]byte{
		[]byte("glibc-ld.so.cache1.1"),
		append([]byte("glibc-ld.so.cache1.1\x01\x00\x00\x00\x10\x00\x00\x00"), make([]byte, 64)...),
		[]byte("ld.so-1.7.0\x00\x02\x00\x00\x00"),
		rawCache(200, func(int) int { return 0 }, func(int) int { return 10 }, str),
		rawCache(200, func(i int) int { return 10 + i }, func(i int) int { return 10 + i }, str),
		rawCache(200, func(int) int { return 0 }, func(i int) int { return 10 + i }, str),
		Encode([]Entry{
			{Name: "libhw.so.1", Path: "/usr/lib/glibc-hwcaps/x86-64-v3/libhw.so.1", Flags: 0x303, HWCap: HWCapExtension, HWCaps: "x86-64-v3"},
			{Name: "libhw.so.1", Path: "/usr/lib/libhw.so.1", Flags: 0x303},
		}),
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	if data, err := os.ReadFile("/etc/ld.so.cache"); err == nil && len(data) < 1<<16 {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var entries []Entry
		var err error
		alloc := allocated(func() { entries, err = Parse(data) })
		if elapsed := fastest(func() { _, _ = Parse(data) }, budget(len(data))); elapsed > budget(len(data)) {
			t.Fatalf("Parse of %d bytes took %v", len(data), elapsed)
		}
		if limit := 8*uint64(len(data)) + 256<<10; alloc > limit {
			t.Fatalf("Parse of %d bytes allocated %d bytes, more than %d", len(data), alloc, limit)
		}
		if err != nil {
			if !errors.Is(err, ErrFormat) || len(err.Error()) > 120 {
				t.Fatalf("error %q", err)
			}
			return
		}
		if len(entries) > len(data)/entrySize {
			t.Fatalf("%d entries from %d bytes", len(entries), len(data))
		}
	})
}

// FuzzEncodeParse: any cache Parse accepts sorts and encodes, within the time budget and
// at most twice its size, to one that parses to the same entries.
func FuzzEncodeParse(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Add(Encode([]Entry{{Name: "libcuda.so.1", Path: "/drv/libcuda.so.1", Flags: FlagELFLibc6 | FlagX8664Lib64}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := Parse(data)
		if err != nil {
			return
		}
		var out []byte
		if elapsed := fastest(func() {
			Sort(entries)
			out = Encode(entries)
		}, budget(len(data))); elapsed > budget(len(data)) {
			t.Fatalf("Sort and Encode of %d entries took %v", len(entries), elapsed)
		}
		if len(out) > 2*len(data)+1024 {
			t.Fatalf("%d bytes encoded to %d", len(data), len(out))
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !slices.Equal(again, entries) {
			t.Fatalf("round trip:\n got %v\nwant %v", again, entries)
		}
	})
}
