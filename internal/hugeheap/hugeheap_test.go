package hugeheap

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
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
			if !done && text[used-1] != '\n' && used != 0 || used > len(text) {
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
	for env, want := range map[string]bool{
		"GODEBUG=disablethp=1":                 true,
		"GODEBUG=madvdontneed=1,disablethp=1":  true,
		"GODEBUG=disablethp=1,madvdontneed=1":  true,
		"GODEBUG=disablethp=0":                 false,
		"GODEBUG=xdisablethp=1":                false,
		"GODEBUG=":                             false,
		"NVBIND_GODEBUG=disablethp=1":          false,
		"GODEBUG=madvdontneed=1,disablethp=10": false,
	} {
		if got := disabled([]string{"PATH=/bin", env}); got != want {
			t.Errorf("disabled(%q) = %v, want %v", env, got, want)
		}
	}
}

// thpAvailable says whether the kernel gives transparent huge pages to mappings that
// ask ("always" or "madvise").
func thpAvailable(t *testing.T) {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || bytes.Contains(b, []byte("[never]")) {
		t.Skipf("transparent huge pages are off here (%q, %v)", b, err)
	}
}

// TestInitAdvisedTheHeap checks, in this test binary, whose init ran the package's,
// that the heap's mapping carries the advice: "hg" (VM_HUGEPAGE) among its VmFlags.
func TestInitAdvisedTheHeap(t *testing.T) {
	thpAvailable(t)
	if disabled(os.Environ()) {
		t.Skip("GODEBUG=disablethp=1 is set")
	}
	if Ranges == 0 {
		t.Fatal("init advised no 2 MiB range of the heap")
	}
	flags := vmFlags(t, uint64(uintptr(unsafe.Pointer(probe))))
	if !strings.Contains(" "+flags+" ", " hg ") {
		t.Fatalf("the heap's mapping has VmFlags %q, without hg", flags)
	}
}

// TestDisableTHP runs this test binary again with GODEBUG=disablethp=1: init must
// advise nothing.
func TestDisableTHP(t *testing.T) {
	if os.Getenv("HUGEHEAP_CHILD") == "1" {
		if Ranges != 0 {
			t.Fatalf("with %s, init advised %d ranges", os.Getenv("GODEBUG"), Ranges)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDisableTHP$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HUGEHEAP_CHILD=1", "GODEBUG=disablethp=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// vmFlags gives the VmFlags line of /proc/self/smaps for the mapping that holds addr.
func vmFlags(t *testing.T, addr uint64) string {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skip(err)
	}
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		if r, _, ok := strings.Cut(line, " "); ok && strings.Count(r, "-") == 1 && !strings.HasSuffix(r, ":") {
			lo, hi, _ := strings.Cut(r, "-")
			l, e1 := strconv.ParseUint(lo, 16, 64)
			h, e2 := strconv.ParseUint(hi, 16, 64)
			in = e1 == nil && e2 == nil && l <= addr && addr < h
			continue
		}
		if f, ok := strings.CutPrefix(line, "VmFlags:"); ok && in {
			return strings.TrimSpace(f)
		}
	}
	t.Fatalf("no mapping of /proc/self/smaps holds %#x", addr)
	return ""
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
