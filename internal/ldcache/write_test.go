package ldcache

import (
	"slices"
	"testing"
)

func TestCompare(t *testing.T) {
	t.Parallel()
	// the sign _dl_cache_libcmp gives on this machine
	high := 1 // "\xc3" against "z": a negative char on x86
	if signedChar {
		high = -1
	}
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"libfoo.so.10", "libfoo.so.9", 1},
		{"libfoo.so.9", "libfoo.so.10", -1},
		{"libfoo.so.01", "libfoo.so.1", 0},
		{"libfoo.so", "libfoo.so.1", -1},
		{"libfoo.so.1", "libfoo.so", 1},
		{"libfoo1", "libfoo", 1},
		{"libfoo", "libfoo1", -1},
		{"liba", "libb", -1},
		{"libc.so.6", "libc.so.6", 0},
		{"lib\xc3", "libz", high},
		{"lib\xc3", "lib", high},
		{"lib", "lib\xc3", -high},
		{"libx.so.99999999999", "libx.so.1", 1}, // C's int wraps: 99999999999 is 1215752191
		{"lib\x00z", "lib", 0},                  // a NUL ends a C string
	} {
		got := Compare(tc.a, tc.b)
		if (got > 0) != (tc.want > 0) || (got < 0) != (tc.want < 0) {
			t.Errorf("Compare(%q, %q) = %d, want the sign of %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestSortOrder: Sort orders entries as ldconfig's compare does.
func TestSortOrder(t *testing.T) {
	t.Parallel()
	x86 := int32(FlagELFLibc6 | FlagX8664Lib64)
	want := []Entry{
		{Name: "libz.so.1", Path: "/z", Flags: x86},
		{Name: "libm.so.10", Path: "/m10", Flags: x86},
		// glibc-hwcaps entries first, by subfolder name, whatever their ISA level bits
		{Name: "libm.so.6", Path: "/v2", Flags: x86, HWCap: HWCapExtension | 5<<32, HWCaps: "x86-64-v2"},
		{Name: "libm.so.6", Path: "/v3", Flags: x86, HWCap: HWCapExtension, HWCaps: "x86-64-v3"},
		{Name: "libm.so.6", Path: "/v3-other", Flags: x86, HWCap: HWCapExtension, HWCaps: "x86-64-v3"},
		// then legacy hwcap words with more bits first, then higher words
		{Name: "libm.so.6", Path: "/two-bits", Flags: x86, HWCap: 0b11},
		{Name: "libm.so.6", Path: "/high-bit", Flags: x86, HWCap: 0b100},
		{Name: "libm.so.6", Path: "/low-bit", Flags: x86, HWCap: 0b1},
		{Name: "libm.so.6", Path: "/newer-kernel", Flags: x86, OSVersion: 0x030200},
		{Name: "libm.so.6", Path: "/plain", Flags: x86},
		{Name: "libm.so.6", Path: "/plain-second", Flags: x86}, // a tie keeps its order
		// lower flags after higher ones
		{Name: "libm.so.6", Path: "/i386/v3", Flags: FlagELFLibc6, HWCap: HWCapExtension, HWCaps: "x86-64-v3"},
		{Name: "libm.so.6", Path: "/i386", Flags: FlagELFLibc6},
		{Name: "libm.so.5", Path: "/m5", Flags: x86},
		{Name: "libc.so.6", Path: "/c", Flags: x86},
	}
	for _, perm := range [][]int{reversed(len(want)), {14, 3, 0, 9, 1, 12, 4, 2, 8, 13, 5, 11, 6, 10, 7}} {
		in := make([]Entry, len(want))
		for i, j := range perm {
			in[i] = want[j]
		}
		// ties keep their input order: put the tied pairs back in order
		fix := func(a, b string) {
			ia := slices.IndexFunc(in, func(e Entry) bool { return e.Path == a })
			ib := slices.IndexFunc(in, func(e Entry) bool { return e.Path == b })
			if ia > ib {
				in[ia], in[ib] = in[ib], in[ia]
			}
		}
		fix("/plain", "/plain-second")
		fix("/v3", "/v3-other")
		Sort(in)
		if !slices.Equal(in, want) {
			t.Errorf("Sort:\n got %v\nwant %v", list(in), list(want))
		}
	}
}

func reversed(n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = n - 1 - i
	}
	return p
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
		{Name: "libc.so.6", Path: "/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libc.so.6", Flags: x86, HWCap: HWCapExtension, HWCaps: "x86-64-v3"},
		{Name: "libm.so.6", Path: "/lib/glibc-hwcaps/x86-64-v2/libm.so.6", Flags: x86, HWCap: HWCapExtension, HWCaps: "x86-64-v2"},
		{Name: "", Path: "", Flags: x86},
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
	if empty, err := Parse(Encode(nil)); err != nil || len(empty) != 0 {
		t.Errorf("empty cache: %v, %v", empty, err)
	}
}

// TestTailMerge: strings are laid out as ldconfig lays them out, a suffix inside the
// string it ends.
func TestTailMerge(t *testing.T) {
	t.Parallel()
	table, offs := tailMerge([]string{"libhw.so.1", "/usr/lib/libhw.so.1", "x86-64-v3", "/usr/lib/glibc-hwcaps/x86-64-v3/libhw.so.1", "x86-64-v2", "libhw.so.1", "so.1"})
	want := "x86-64-v3\x00x86-64-v2\x00/usr/lib/libhw.so.1\x00/usr/lib/glibc-hwcaps/x86-64-v3/libhw.so.1\x00"
	if string(table) != want {
		t.Fatalf("table %q, want %q", table, want)
	}
	for s, o := range offs {
		if got := string(table[o : int(o)+len(s)+1]); got != s+"\x00" {
			t.Errorf("%q at %d reads %q", s, o, got)
		}
	}
}
