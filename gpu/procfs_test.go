package gpu

import (
	"bytes"
	"regexp"
	"testing"
)

var versionCases = []struct {
	name, in, version string
	flavour           Flavour
	wantErr           bool
}{
	{"proprietary", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  Mon Jun 30 21:20:11 UTC 2025\nGCC version:  gcc version 12.2.0\n", "535.261.03", FlavourProprietary, false},
	{"open", "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  560.35.03  Release Build  (dvs-builder@U16-I3-B03-4-3)  Fri Aug 16 21:22:33 UTC 2024\n", "560.35.03", FlavourOpen, false},
	{"aarch64", "NVRM version: NVIDIA UNIX aarch64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\n", "470.256.02", FlavourProprietary, false},
	{"garbage", "hello\n", "", FlavourUnknown, true},
	{"empty", "", "", FlavourUnknown, true},
}

func TestParseVersionFile(t *testing.T) {
	t.Parallel()
	for _, tc := range versionCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v, fl, err := ParseVersionFile([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if v != tc.version || fl != tc.flavour {
				t.Fatalf("got %q %q, want %q %q", v, fl, tc.version, tc.flavour)
			}
		})
	}
}

// The patterns ParseVersionFile and soVersion match by hand; the fuzz targets below keep
// them equal.
var (
	reOpenModule = regexp.MustCompile(`NVRM version: NVIDIA UNIX Open Kernel Module for \S+\s+(\d+(?:\.\d+)+)`)
	reModule     = regexp.MustCompile(`NVRM version: NVIDIA UNIX \S+ Kernel Module\s+(\d+(?:\.\d+)+)`)
	reVersioned  = regexp.MustCompile(`^(.+\.so)\.(\d+\.\d+(?:\.\d+)?)$`)
)

// FuzzModuleVersion: moduleVersion finds what the version file's patterns find.
func FuzzModuleVersion(f *testing.F) {
	for _, tc := range versionCases {
		f.Add([]byte(tc.in))
	}
	for _, s := range []string{
		"NVRM version: NVIDIA UNIX x86_64 Kernel Module 1.2.",
		"NVRM version: NVIDIA UNIX x86_64 Kernel Module\t\v535.1",
		"NVRM version: NVIDIA UNIX  Kernel Module 535.1 NVRM version: NVIDIA UNIX a Kernel Module 1.2",
		"NVRM version: NVIDIA UNIX Open Kernel Module for a\n\f9.9.9x",
		"NVRM version: NVIDIA UNIX Open Kernel Module for  1.2 NVRM version: NVIDIA UNIX Open Kernel Module for b 3.4",
		"NVRM version: NVIDIA UNIX a b Kernel Module 1.2", "NVRM version: NVIDIA UNIX \xff Kernel Module 10.20.30.40.",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range []struct {
			re     *regexp.Regexp
			prefix string
			km     bool
		}{{reOpenModule, "NVRM version: NVIDIA UNIX Open Kernel Module for ", false}, {reModule, "NVRM version: NVIDIA UNIX ", true}} {
			want := ""
			if m := c.re.FindSubmatch(data); m != nil {
				want = string(m[1])
			}
			if got := moduleVersion(data, c.prefix, c.km); got != want {
				t.Fatalf("%q in %q: got %q, want %q", c.re, data, got, want)
			}
		}
	})
}

// FuzzSOVersion: soVersion reads the version in a library's name as reVersioned does.
func FuzzSOVersion(f *testing.F) {
	for _, s := range []string{"libcuda.so.535.261.03", "libnvidia-ml.so.470.57", "libcuda.so.1", "libnvidia-nvvm.so.4.0.0",
		".so.1.2", "a.so.1.2.3.4", "a.so.so.1.2", "a.so.1.so.2.3", "a\n.so.1.2", "a.so.1.2\n", "a.so.1..2", "a.so..1.2",
		"a.so.1.2.", "a.so.\u0661.2", "libGLX_nvidia.so.0", "x.so.12345678901234567890.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := ""
		if m := reVersioned.FindStringSubmatch(name); m != nil {
			want = m[2]
		}
		if got := soVersion(name); got != want {
			t.Fatalf("%q: got %q, want %q", name, got, want)
		}
	})
}

func FuzzParseVersionFile(f *testing.F) {
	for _, tc := range versionCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, fl, err := ParseVersionFile(data)
		if err == nil && (v == "" || fl == FlavourUnknown) {
			t.Fatalf("no error but version %q flavour %q", v, fl)
		}
	})
}

const infoA100 = "Model: \t\t NVIDIA A100-SXM4-40GB\nIRQ:   \t\t 186\nGPU UUID: \t GPU-b8ea3855-276c-c9cb-b366-c6fa655957c5\nVideo BIOS: \t 92.00.45.00.06\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\nBus Location: \t 0000:07:00.0\nDevice Minor: \t 3\nGPU Excluded:\t No\n"

func TestParseInformation(t *testing.T) {
	t.Parallel()
	g, err := parseInformation([]byte(infoA100))
	if err != nil {
		t.Fatal(err)
	}
	want := procGPU{BusID: "0000:07:00.0", UUID: "GPU-b8ea3855-276c-c9cb-b366-c6fa655957c5", Model: "NVIDIA A100-SXM4-40GB", Minor: 3}
	if g != want {
		t.Fatalf("got %+v, want %+v", g, want)
	}
	for _, bad := range []string{"Model: x\n", "Device Minor: -1\n", "Device Minor: 255\n", "Device Minor: x\n"} {
		if _, err := parseInformation([]byte(bad)); err == nil {
			t.Errorf("parseInformation(%q): no error", bad)
		}
	}
}

func FuzzParseInformation(f *testing.F) {
	f.Add([]byte(infoA100))
	f.Add([]byte("Device Minor: 1\n:\n::::\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := parseInformation(data)
		if err == nil && (g.Minor < 0 || g.Minor > 254) {
			t.Fatalf("minor %d accepted", g.Minor)
		}
	})
}

const procDevices = "Character devices:\n  1 mem\n195 nvidia-frontend\n195 nvidia\n234 nvidia-uvm\n235 nvidia-caps\n 10 misc\n\nBlock devices:\n  8 sd\n234 nvidia-uvm-bogus-block\n"

func TestParseDevices(t *testing.T) {
	t.Parallel()
	m := ParseDevices([]byte(procDevices))
	for name, want := range map[string]int64{"nvidia-frontend": 195, "nvidia": 195, "nvidia-uvm": 234, "nvidia-caps": 235, "misc": 10} {
		if m[name] != want {
			t.Errorf("%s = %d, want %d", name, m[name], want)
		}
	}
	if _, ok := m["sd"]; ok {
		t.Error("block device listed as character device")
	}
}

func FuzzParseDevices(f *testing.F) {
	f.Add([]byte(procDevices))
	f.Fuzz(func(t *testing.T, data []byte) {
		for name, major := range ParseDevices(data) {
			if major < 0 || name == "" {
				t.Fatalf("bad entry %q=%d", name, major)
			}
		}
	})
}

func TestParseMIGMinors(t *testing.T) {
	t.Parallel()
	m, err := ParseMIGMinors([]byte("config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m["gpu0/gi1/ci0/access"] != 13 || m["config"] != 1 || len(m) != 4 {
		t.Fatalf("got %v", m)
	}
	for _, bad := range []string{"gpu0 x\n", "a b c\n", "x 99999999\n"} {
		if _, err := ParseMIGMinors([]byte(bad)); err == nil {
			t.Errorf("ParseMIGMinors(%q): no error", bad)
		}
	}
}

func FuzzParseMIGMinors(f *testing.F) {
	f.Add([]byte("config 1\nmonitor 2\ngpu0/gi1/access 12\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseMIGMinors(data)
		if err != nil {
			return
		}
		for k, v := range m {
			if k == "" || v < 0 {
				t.Fatalf("bad entry %q=%d", k, v)
			}
		}
	})
}

func TestParseCapabilities(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    Capabilities
		wantErr bool
	}{
		{"compute,utility", CapsOf(CapCompute, CapUtility), false},
		{" compute , video ,", CapsOf(CapCompute, CapVideo), false},
		{"all", CapsAll, false},
		{"graphics,all", CapsAll, false},
		{"", 0, true},
		{"compute,gpu", 0, true},
		{"other", 0, true},
	} {
		got, err := ParseCapabilities(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseCapabilities(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
	if s := CapsOf(CapUtility, CapCompute).String(); s != "compute,utility" {
		t.Errorf("String = %q", s)
	}
	if s := CapsAll.String(); s != "all" {
		t.Errorf("String(all) = %q", s)
	}
}

func FuzzParseCapabilities(f *testing.F) {
	for _, s := range []string{"compute,utility", "all", "", ",,", "graphics,video,display,ngx,compat32"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCapabilities(s)
		if err != nil {
			return
		}
		if c == 0 {
			t.Fatal("empty set accepted")
		}
		back, err := ParseCapabilities(c.String())
		if err != nil || back&^CapsOf(CapOther) != c&^CapsOf(CapOther) {
			t.Fatalf("round trip %q -> %q -> %v (%v)", s, c.String(), back, err)
		}
	})
}

func TestClassifyLibrary(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]Capabilities{
		"libcuda.so.535.261.03":           CapsOf(CapCompute),
		"libnvidia-nvvm70.so.4":           CapsOf(CapCompute), // a versioned family name
		"libnvidia-ml.so.1":               CapsOf(CapUtility),
		"libnvidia-encode.so.550.54.15":   CapsOf(CapVideo),
		"libGLX_nvidia.so.0":              CapsOf(CapGraphics),
		"nvidia_drv.so":                   CapsOf(CapDisplay),
		"libnvidia-something-new.so.1":    CapsOf(CapOther), // unknown: only in full specs
		"libnvidia-vulkan-producer.so.53": CapsOf(CapGraphics),
	} {
		if got := classifyLibrary(name); got != want {
			t.Errorf("%s: %v, want %v", name, got.List(), want.List())
		}
	}
}

// TestReaderMentionsAcrossWindows finds the version wherever it lies, across the
// boundaries of the scan windows too.
func TestReaderMentionsAcrossWindows(t *testing.T) {
	t.Parallel()
	needle := []byte("535.261.03")
	for _, at := range []int{0, 1, 64<<10 - 5, 64 << 10, 64<<10 - len(needle), 3*64<<10 - 3, 200000} {
		data := bytes.Repeat([]byte{'x'}, 210000)
		copy(data[at:], needle)
		if !readerMentions(bytes.NewReader(data), needle) {
			t.Errorf("needle at %d not found", at)
		}
	}
	if readerMentions(bytes.NewReader(bytes.Repeat([]byte("535.261.0"), 30000)), needle) {
		t.Error("found a needle that is not there")
	}
}

// TestReaderFindTailAcrossWindows returns what follows the needle when it continues in
// the next read.
func TestReaderFindTailAcrossWindows(t *testing.T) {
	t.Parallel()
	needle, after := []byte("release "), []byte("11.4, V11.4.557\x00")
	for _, at := range []int{0, 64<<10 - len(needle) - 3, 64<<10 - len(needle), 64<<10 - 2, 130000, 150000 - len(needle) - len(after)} {
		data := bytes.Repeat([]byte{'x'}, 150000)
		copy(data[at:], append(append([]byte{}, needle...), after...))
		got, ok := readerFind(bytes.NewReader(data), needle, 16, nil)
		if !ok || !bytes.Equal(got, after[:16]) {
			t.Errorf("needle at %d: %q, %v", at, got, ok)
		}
	}
	data := append(bytes.Repeat([]byte{'x'}, 100), []byte("release 11")...)
	if got, ok := readerFind(bytes.NewReader(data), needle, 16, nil); !ok || string(got) != "11" {
		t.Errorf("at the end: %q, %v", got, ok)
	}
}

// TestCUDAReleasePassesFormatStrings: the first build stamp in libcuda can be a format
// string ("release %d.%d,"); the release is the first stamp that has one.
func TestCUDAReleasePassesFormatStrings(t *testing.T) {
	t.Parallel()
	data := append(bytes.Repeat([]byte{'x'}, 70000), []byte("Cuda compilation tools, release %d.%d, V%d\x00")...)
	data = append(data, bytes.Repeat([]byte{'y'}, 65530)...)
	data = append(data, []byte("Cuda compilation tools, release 11.4, V11.4.557\x00")...)
	ok := func(b []byte) bool { rel, _, found := bytes.Cut(b, []byte(",")); return found && isRelease(rel) }
	got, found := readerFind(bytes.NewReader(data), cudaStampPrefix, 16, ok)
	if !found || !bytes.HasPrefix(got, []byte("11.4, V11.4")) {
		t.Fatalf("got %q, %v", got, found)
	}
}
