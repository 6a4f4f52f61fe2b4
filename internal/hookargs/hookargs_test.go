package hookargs

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseLink(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    Link
		wantErr bool
	}{
		{"libcuda.so.535::/usr/lib/libcuda.so.1", Link{"libcuda.so.535", "/usr/lib/libcuda.so.1"}, false},
		{"a::/x/../y/./z", Link{"a", "/y/z"}, false},
		{"a::relative", Link{}, true},
		{"::/x", Link{}, true},
		{"a:/x", Link{}, true},
		{"a::", Link{}, true},
	} {
		got, err := ParseLink(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseLink(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func FuzzParseLink(f *testing.F) {
	f.Add("libcuda.so.535::/usr/lib/libcuda.so.1")
	f.Add("a::b::/c")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLink(s)
		if err != nil {
			return
		}
		if !strings.HasPrefix(l.Link, "/") || l.Target == "" || filepath.Clean(l.Link) != l.Link {
			t.Fatalf("accepted %q as %+v", s, l)
		}
	})
}

// TestEncodeDecodeRoundTrip: what spec writes into a CDI spec or NRI adjustment, the
// hook reads back as the same arguments.
func TestEncodeDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	for _, a := range []Args{
		{Links: []Link{{"libcuda.so.535.261.03", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"}, {"../nvidia/current/libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so"}},
			Folders: []string{"/usr/lib/x86_64-linux-gnu/nvidia/current", "/usr/lib/i386-linux-gnu"}, ProtectDeviceNodes: true,
			HostParams: "/run/nvidia/driver/proc/driver/nvidia/params", HostDriverVersion: "535.261.03"},
		{Folders: []string{"/drv"}},
		{FolderLinks: []Link{{"/usr/local/nvbind/all/usr/share/nvidia", "/usr/share/nvidia"}},
			Links: []Link{{"/usr/local/nvbind/all/usr/share/nvidia/nvoptix.bin", "/usr/share/nvidia/nvoptix.bin"}}},
		{ProtectDeviceNodes: true},
		{HostDriverVersion: "470.256.02"},
		{AppProfile: true},
		{EnterMountNamespace: true, Folders: []string{"/drv"}},
	} {
		got, err := Decode(a.Encode())
		if err != nil {
			t.Fatalf("%v: %v", a.Encode(), err)
		}
		if !equal(got, a) {
			t.Errorf("round trip of %q:\n got %+v\nwant %+v", a.Encode(), got, a)
		}
	}
	if !(Args{}).Empty() || (Args{Folders: []string{"/x"}}).Empty() || (Args{AppProfile: true}).Empty() || (Args{FolderLinks: []Link{{"a", "/b"}}}).Empty() ||
		!(Args{EnterMountNamespace: true}).Empty() {
		t.Error("Empty")
	}
	for _, bad := range [][]string{{"hook", "create-symlinks"}, {"hook", "all", "--link", "a::relative"}, {"hook", "all", "extra"}, {"hook", "all", "--nope"},
		{"hook", "all", "--folder-link", "a::/"}, {"hook", "all", "--folder-link", "a::b"}} {
		if _, err := Decode(bad); err == nil {
			t.Errorf("Decode(%q) accepted", bad)
		}
	}
}

func equal(a, b Args) bool {
	return slices.Equal(a.Links, b.Links) && slices.Equal(a.FolderLinks, b.FolderLinks) && slices.Equal(a.Folders, b.Folders) && a.ProtectDeviceNodes == b.ProtectDeviceNodes &&
		a.HostParams == b.HostParams && a.HostDriverVersion == b.HostDriverVersion && a.AppProfile == b.AppProfile &&
		a.EnterMountNamespace == b.EnterMountNamespace
}

// FuzzEncodeDecode: any arguments whose links are valid survive the round trip.
func FuzzEncodeDecode(f *testing.F) {
	f.Add("libcuda.so.1", "/usr/lib/libcuda.so.1", "/drv", true, "535.261.03")
	f.Add("--folder", "/x", "--link", false, "")
	f.Add("a", "/b", "", false, "-1")
	f.Fuzz(func(t *testing.T, target, link, folder string, protect bool, version string) {
		l, err := ParseLink(target + "::" + link)
		if err != nil {
			return
		}
		a := Args{Links: []Link{l}, ProtectDeviceNodes: protect, HostDriverVersion: version, AppProfile: !protect}
		if folder != "" {
			a.Folders = []string{folder}
		}
		got, err := Decode(a.Encode())
		if err != nil {
			t.Fatalf("%q: %v", a.Encode(), err)
		}
		if !equal(got, a) {
			t.Fatalf("round trip of %q: got %+v", a.Encode(), got)
		}
	})
}
