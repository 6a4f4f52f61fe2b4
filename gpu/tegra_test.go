package gpu

import (
	"strings"
	"testing"
)

func TestParseCSV(t *testing.T) {
	t.Parallel()
	in := "# L4T\n\ndev, /dev/nvmap\n LIB ,/usr/lib/x/libcuda.so.1.1 \nsym, /usr/lib/x/../x/libcuda.so\ndir,/usr/lib/firmware/gv11b\nfoo, /x\nlib, rel\nno comma\n"
	got, errs := ParseCSV("drivers.csv", []byte(in))
	want := []CSVEntry{{CSVDev, "/dev/nvmap", "drivers.csv:3"}, {CSVLib, "/usr/lib/x/libcuda.so.1.1", "drivers.csv:4"},
		{CSVSym, "/usr/lib/x/libcuda.so", "drivers.csv:5"}, {CSVFolder, "/usr/lib/firmware/gv11b", "drivers.csv:6"}}
	if len(got) != len(want) {
		t.Fatalf("entries %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if len(errs) != 3 || !strings.Contains(errs[0].Error(), `drivers.csv:7: unknown kind "foo" (valid: dev, lib, sym, dir)`) ||
		!strings.Contains(errs[1].Error(), "drivers.csv:8") || !strings.Contains(errs[2].Error(), "drivers.csv:9") {
		t.Errorf("errors %v", errs)
	}
	for data, want := range map[string]string{
		"# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n": "R36.4.3",
		"# R32 (release), REVISION: 7.4\n":                                 "R32.7.4",
		"nonsense":                                                         "",
	} {
		if got := tegraRelease([]byte(data)); got != want {
			t.Errorf("tegraRelease(%q) = %q, want %q", data, got, want)
		}
	}
}

// FuzzParseCSV: every entry it returns has a known kind and a clean absolute path, and
// every line is either an entry, blank or a comment, or an error.
func FuzzParseCSV(f *testing.F) {
	f.Add("dev, /dev/nvmap\nlib, /usr/lib/libcuda.so.1.1\n# c\n")
	f.Add("sym,/a/../../b\ndir , /x/ \nbogus, /x\n")
	f.Fuzz(func(t *testing.T, in string) {
		got, errs := ParseCSV("f.csv", []byte(in))
		for _, e := range got {
			if e.Kind != CSVDev && e.Kind != CSVLib && e.Kind != CSVSym && e.Kind != CSVFolder {
				t.Fatalf("kind %q", e.Kind)
			}
			if !strings.HasPrefix(e.Path, "/") || strings.Contains(e.Path, "/../") || strings.HasSuffix(e.Path, "/..") || strings.ContainsRune(e.Path, 0) {
				t.Fatalf("path %q", e.Path)
			}
		}
		lines := 0
		for _, l := range strings.Split(in, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines++
			}
		}
		if len(got)+len(errs) < lines && len(errs) == 0 {
			t.Fatalf("%d lines, %d entries and no error", lines, len(got))
		}
	})
}
