package hugeheap

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

const sampleMaps = `00400000-006ca000 r-xp 00000000 fe:00 10019344                           /usr/bin/nvbind
0098d000-009b3000 rw-p 0058d000 fe:00 10019344                           /usr/bin/nvbind
009b3000-029ea000 rw-p 00000000 00:00 0 
3faaa4000000-3faaa7400000 ---p 00000000 00:00 0 
3faaa7400000-3faaa7c00000 rw-p 00000000 00:00 0                          [anon: Go: heap]
3faaa7c00000-3faaa8000000 ---p 00000000 00:00 0 
7ff596efb000-7ff596eff000 r--p 00000000 00:00 0                          [vvar]
7ffed217e000-7ffed219f000 rw-p 00000000 00:00 0                          [stack]
`

func TestScanMaps(t *testing.T) {
	for _, c := range []struct {
		name    string
		addr    uint64
		lo, hi  uint64
		ok      bool
		done    bool
		partial bool
	}{
		{name: "heap", addr: 0x3faaa7512340, lo: 0x3faaa7400000, hi: 0x3faaa7c00000, ok: true, done: true},
		{name: "first byte", addr: 0x3faaa7400000, lo: 0x3faaa7400000, hi: 0x3faaa7c00000, ok: true, done: true},
		{name: "bss", addr: 0x009b3000, lo: 0x009b3000, hi: 0x029ea000, ok: true, done: true},
		{name: "file mapping", addr: 0x0098d010, done: true},
		{name: "reserved", addr: 0x3faaa4000000, done: true},
		{name: "read-only", addr: 0x7ff596efb000, done: true},
		{name: "a hole", addr: 0x100000000, done: true},
		{name: "above every line", addr: 0x7fffffffffff},
		{name: "an unfinished line", addr: 0x3faaa7512340, partial: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			text := []byte(sampleMaps)
			if c.partial {
				text = text[:strings.Index(sampleMaps, "3faaa7400000-")+20]
			}
			lo, hi, ok, used, done := scanMaps(text, c.addr)
			if lo != c.lo || hi != c.hi || ok != c.ok || done != c.done {
				t.Fatalf("scanMaps = %#x, %#x, %v, done %v; want %#x, %#x, %v, done %v", lo, hi, ok, done, c.lo, c.hi, c.ok, c.done)
			}
			if used > len(text) || used > 0 && text[used-1] != '\n' {
				t.Fatalf("used %d of %d bytes", used, len(text))
			}
			if c.partial && string(text[used:]) != "3faaa7400000-3faaa7c" {
				t.Fatalf("kept %q, want the unfinished line", text[used:])
			}
		})
	}
}

func TestScanMapsRefusesMalformed(t *testing.T) {
	for _, text := range []string{
		"zz-3f rw-p 00000000 00:00 0\n",
		"3faaa7400000 rw-p 00000000 00:00 0\n",
		"20-10 rw-p 00000000 00:00 0\n",
		"00000000000000010-20 rw-p 00000000 00:00 0\n",
		"-20 rw-p 00000000 00:00 0\n",
	} {
		if _, _, ok, _, done := scanMaps([]byte(text), 0x18); ok || !done {
			t.Errorf("scanMaps(%q): ok %v, done %v; want a refusal", text, ok, done)
		}
	}
	for _, rest := range []string{"rw-s 00000000 00:00 0", "rw-p 00000000 00:00", "rw-p 00000000 00:00 1234 /x", "rw-p", "rwxp 0 00:00 0"} {
		if privateAnonymous([]byte(rest)) {
			t.Errorf("privateAnonymous(%q) = true", rest)
		}
	}
}

func TestDisabled(t *testing.T) {
	for _, c := range []struct {
		env  []string
		want bool
	}{
		{[]string{"GODEBUG=disablethp=1"}, true},
		{[]string{"GODEBUG=disablethp=2"}, true},
		{[]string{"GODEBUG=disablethp=01"}, true},
		{[]string{"GODEBUG=disablethp=+1"}, true},
		{[]string{"GODEBUG=disablethp=-1"}, true},
		{[]string{"GODEBUG=disablethp=0000000000000000000001"}, true},
		{[]string{"GODEBUG=madvdontneed=1,disablethp=1"}, true},
		{[]string{"GODEBUG=disablethp=1,madvdontneed=1"}, true},
		{[]string{"GODEBUG=disablethp=0,disablethp=1"}, true},
		{[]string{"GODEBUG=disablethp=1,disablethp=0"}, false}, // the last wins
		{[]string{"GODEBUG=disablethp=1,disablethp=x"}, true},  // a bad value changes nothing
		{[]string{"GODEBUG=disablethp=3000000000"}, false},     // beyond int32: ignored
		{[]string{"GODEBUG=", "GODEBUG=disablethp=1"}, false},  // the first GODEBUG counts
		{[]string{"GODEBUG=disablethp=0"}, false},
		{[]string{"GODEBUG=xdisablethp=1"}, false},
		{[]string{"GODEBUG=disablethp"}, false},
		{[]string{"GODEBUG="}, false},
		{[]string{"NVBIND_GODEBUG=disablethp=1"}, false},
	} {
		if got := disabled(append([]string{"PATH=/bin"}, c.env...)); got != c.want {
			t.Errorf("disabled(%q) = %v, want %v", c.env, got, c.want)
		}
	}
}

func TestTHPMode(t *testing.T) {
	for text, want := range map[string]string{
		"always [madvise] never\n": "madvise",
		"[always] madvise never\n": "always",
		"always madvise [never]\n": "never",
		"always madvise never\n":   "",
		"[madvise":                 "",
		"":                         "",
	} {
		if got := thpMode([]byte(text)); got != want {
			t.Errorf("thpMode(%q) = %q, want %q", text, got, want)
		}
	}
}

// TestReadMaps reads the maps text in pieces, as a read may return less than asked.
func TestReadMaps(t *testing.T) {
	pieces := func(text string, n int) func([]byte) (int, error) {
		return func(b []byte) (int, error) {
			if text == "" {
				return 0, io.EOF
			}
			k := min(n, len(b), len(text))
			copy(b, text[:k])
			text = text[k:]
			return k, nil
		}
	}
	for _, n := range []int{1, 7, 64, 4096} {
		lo, hi, ok := readMaps(pieces(sampleMaps, n), make([]byte, 128), 0x3faaa7512340)
		if !ok || lo != 0x3faaa7400000 || hi != 0x3faaa7c00000 {
			t.Errorf("reads of %d bytes: %#x, %#x, %v", n, lo, hi, ok)
		}
	}
	// a line longer than the buffer ends the search
	if _, _, ok := readMaps(pieces(sampleMaps, 64), make([]byte, 48), 0x3faaa7512340); ok {
		t.Error("a line longer than the buffer was read")
	}
	// the text ends before the line
	if _, _, ok := readMaps(pieces(sampleMaps[:300], 64), make([]byte, 128), 0x3faaa7512340); ok {
		t.Error("found in a text that ends before the line")
	}
	// at most mapsReadLimit bytes are read
	long := strings.Repeat("1000-2000 rw-p 00000000 00:00 0\n", mapsReadLimit/16)
	read := 0
	counting := func(b []byte) (int, error) {
		n, err := pieces(long[read:], 4096)(b)
		read += n
		return n, err
	}
	if _, _, ok := readMaps(counting, make([]byte, 4096), 0x3faaa7512340); ok || read > mapsReadLimit+4096 {
		t.Errorf("read %d bytes (limit %d), ok %v", read, mapsReadLimit, ok)
	}
}

// thpAvailable skips unless the kernel gives transparent huge pages to mappings that ask
// ("always" or "madvise") with 4 KiB base pages.
func thpAvailable(t *testing.T) {
	b, err := os.ReadFile(thpEnabled)
	if err != nil || thpMode(b) == "never" || thpMode(b) == "" || os.Getpagesize() != basePage {
		t.Skipf("no transparent huge pages to ask for here (%q, %v, pages of %d bytes)", b, err, os.Getpagesize())
	}
}

// TestChild is what the tests below run in a fresh process of this binary: init's work,
// checked before anything else could split a huge page (GOGC=off: no collection, so no
// scavenger either).
func TestChild(t *testing.T) {
	mode := os.Getenv("HUGEHEAP_CHILD")
	if mode == "" {
		t.Skip("run by the tests below")
	}
	p := probe
	if p == nil { // init did nothing: any heap object will do
		sink = new([16]byte)
		p = sink
	}
	m := smapsOf(t, uint64(uintptr(unsafe.Pointer(p))))
	switch mode {
	case "advice":
		if Ranges == 0 || !strings.Contains(" "+m.flags+" ", " hg ") {
			t.Fatalf("init advised %d ranges; the heap's mapping has VmFlags %q, without hg", Ranges, m.flags)
		}
		switch ProbeCollapse {
		case 0:
			if m.anonHuge < hugePage>>10 {
				t.Fatalf("MADV_COLLAPSE answered 0, yet the heap's mapping has %d KiB of huge pages", m.anonHuge)
			}
		case syscall.ENOMEM, syscall.EAGAIN:
			t.Logf("the kernel did not collapse the probe's range: %v", ProbeCollapse)
		default:
			t.Fatalf("MADV_COLLAPSE of the probe's range: %v", ProbeCollapse)
		}
	case "disabled":
		if Ranges != 0 || strings.Contains(" "+m.flags+" ", " hg ") {
			t.Fatalf("with %s, init advised %d ranges; VmFlags %q", os.Getenv("GODEBUG"), Ranges, m.flags)
		}
	default:
		t.Fatalf("HUGEHEAP_CHILD=%s", mode)
	}
}

var sink *[16]byte

func runChild(t *testing.T, env ...string) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestChild")) {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestInitAdvisesTheHeap: the heap's mapping carries the advice ("hg" among its
// VmFlags), and the range init collapsed is a huge page.
func TestInitAdvisesTheHeap(t *testing.T) {
	thpAvailable(t)
	runChild(t, "HUGEHEAP_CHILD=advice", "GOGC=off", "GODEBUG=")
}

// TestDisableTHP: with GODEBUG=disablethp=1 init advises nothing.
func TestDisableTHP(t *testing.T) {
	thpAvailable(t)
	runChild(t, "HUGEHEAP_CHILD=disabled", "GOGC=off", "GODEBUG=disablethp=1")
}

type smaps struct {
	flags    string
	anonHuge int // KiB
}

// smapsOf gives the VmFlags and AnonHugePages of /proc/self/smaps for the mapping that
// holds addr.
func smapsOf(t *testing.T, addr uint64) smaps {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in, found := false, false
	var m smaps
	for _, line := range strings.Split(string(b), "\n") {
		if r, _, ok := strings.Cut(line, " "); ok && strings.Count(r, "-") == 1 && !strings.HasSuffix(r, ":") {
			lo, hi, _ := strings.Cut(r, "-")
			l, e1 := strconv.ParseUint(lo, 16, 64)
			h, e2 := strconv.ParseUint(hi, 16, 64)
			in = e1 == nil && e2 == nil && l <= addr && addr < h
			found = found || in
			continue
		}
		if !in {
			continue
		}
		if f, ok := strings.CutPrefix(line, "VmFlags:"); ok {
			m.flags = strings.TrimSpace(f)
		}
		if f, ok := strings.CutPrefix(line, "AnonHugePages:"); ok {
			m.anonHuge, _ = strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f), "kB")))
		}
	}
	if !found {
		t.Fatalf("no mapping of /proc/self/smaps holds %#x", addr)
	}
	return m
}

// FuzzScanMaps: whatever the text, scanMaps ends, consumes only complete lines and
// returns a range that holds the address.
func FuzzScanMaps(f *testing.F) {
	f.Add([]byte(sampleMaps), uint64(0x3faaa7512340))
	f.Add([]byte(sampleMaps[:100]), uint64(0x400000))
	f.Add([]byte("1-2 rw-p 0 0 0\n"), uint64(1))
	f.Fuzz(func(t *testing.T, text []byte, addr uint64) {
		lo, hi, ok, used, done := scanMaps(text, addr)
		if used > len(text) || (used > 0 && text[used-1] != '\n') {
			t.Fatalf("used %d of %d bytes", used, len(text))
		}
		if ok && (!done || addr < lo || addr >= hi) {
			t.Fatalf("ok with %#x not in [%#x, %#x), done %v", addr, lo, hi, done)
		}
		if !done && bytes.IndexByte(text[used:], '\n') >= 0 {
			t.Fatalf("stopped with a complete line left: %q", text[used:])
		}
	})
}
