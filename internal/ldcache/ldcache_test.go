package ldcache

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/test/testutil"
)

// TestParseRealCache compares the parser with what glibc's ldconfig -p prints for a cache
// that ldconfig itself built.
func TestParseRealCache(t *testing.T) {
	ldconfig := "/sbin/ldconfig"
	if _, err := os.Stat(ldconfig); err != nil {
		t.Skip("no /sbin/ldconfig")
	}
	dir := t.TempDir()
	testutil.BuildSharedObject(t, filepath.Join(dir, "lib/libnvbindtest.so.1.2"), "libnvbindtest.so.1", 64, "")
	cache := filepath.Join(dir, "ld.so.cache")
	if out, err := exec.Command(ldconfig, "-X", "-C", cache, "-f", "/dev/null", filepath.Join(dir, "lib")).CombinedOutput(); err != nil {
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
	out, err := exec.Command(ldconfig, "-p", "-C", cache).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		name, rest, ok := strings.Cut(line, " (")
		_, path, ok2 := strings.Cut(rest, "=> ")
		if ok && ok2 {
			want = append(want, name+"="+path)
		}
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name+"="+e.Path)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
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
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("glibc-ld.so.cache1.1"))
	f.Add(append([]byte("glibc-ld.so.cache1.1\x01\x00\x00\x00\x10\x00\x00\x00"), make([]byte, 64)...))
	f.Add([]byte("ld.so-1.7.0\x00\x02\x00\x00\x00"))
	if data, err := os.ReadFile("/etc/ld.so.cache"); err == nil && len(data) < 1<<16 {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := Parse(data)
		if err != nil {
			return
		}
		if len(entries) > len(data) {
			t.Fatalf("%d entries from %d bytes", len(entries), len(data))
		}
	})
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	for _, bad := range [][]byte{nil, []byte("nope"), []byte("glibc-ld.so.cache1.0" + strings.Repeat("\x00", 40)),
		append([]byte("glibc-ld.so.cache1.1\xff\xff\xff\x7f"), make([]byte, 40)...)} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

// TestEncodeParseRoundTrip: entries put in the loader's order by Sort, Encode writes and
// Parse reads back entry for entry.
func TestEncodeParseRoundTrip(t *testing.T) {
	t.Parallel()
	x86 := int32(FlagELFLibc6 | FlagX8664Lib64)
	in := []Entry{
		{Name: "libcuda.so.1", Path: "/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1", Flags: x86},
		{Name: "libc.so.6", Path: "/lib/x86_64-linux-gnu/libc.so.6", Flags: x86},
		{Name: "libcuda.so.1", Path: "/usr/lib32/libcuda.so.1", Flags: FlagELFLibc6},
		{Name: "libnvidia-ml.so.1", Path: "/drv/libnvidia-ml.so.1", Flags: x86, HWCap: 0},
	}
	want := slices.Clone(in)
	Sort(want)
	if slices.Equal(want, in) {
		t.Fatal("the input is already sorted: the test would not show the order")
	}
	got, err := Parse(Encode(want))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("round trip:\n got %v\nwant %v", got, want)
	}
}

// FuzzEncodeParse: any cache Parse accepts encodes to one that parses to the same
// entries.
func FuzzEncodeParse(f *testing.F) {
	f.Add(Encode([]Entry{{Name: "libcuda.so.1", Path: "/drv/libcuda.so.1", Flags: FlagELFLibc6 | FlagX8664Lib64}}))
	f.Add([]byte("glibc-ld.so.cache1.1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := Parse(data)
		if err != nil {
			return
		}
		var plain []Entry
		for _, e := range entries {
			if e.HWCap == 0 && !strings.ContainsRune(e.Name, 0) && !strings.ContainsRune(e.Path, 0) {
				plain = append(plain, e)
			}
		}
		want := slices.Clone(plain)
		Sort(want)
		again, err := Parse(Encode(want))
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !slices.Equal(again, want) {
			t.Fatalf("round trip:\n got %v\nwant %v", again, want)
		}
	})
}
