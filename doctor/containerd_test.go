package doctor

import (
	"strings"
	"testing"
)

func TestParseNRIConfig(t *testing.T) {
	t.Parallel()
	n, err := parseNRIConfig([]byte(`version = 3
[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = '/var/run/nri/nri.sock'
  [plugins.'io.containerd.nri.v1.nri'.default_validator]
    enable = true
    reject_oci_hook_adjustment = true
    required_plugins = ["nvbind"]
`))
	if err != nil || n.Disable || n.SocketPath != "/var/run/nri/nri.sock" || !n.DefaultValidator.Enable ||
		!n.DefaultValidator.RejectOCIHookAdjustment || len(n.DefaultValidator.RequiredPlugins) != 1 {
		t.Errorf("%+v %v", n, err)
	}
	if n, err := parseNRIConfig([]byte("version = 3\n")); err != nil || !n.Disable {
		t.Errorf("no NRI table: %+v %v", n, err)
	}
	if _, err := parseNRIConfig([]byte("version = [")); err == nil {
		t.Error("bad TOML accepted")
	}
}

func TestContainerdResults(t *testing.T) {
	t.Parallel()
	base := func() *containerdState {
		return &containerdState{Version: "v2.4.2", NRILoaded: true, CDIEnabled: true, CDISpecDirs: []string{"/etc/cdi", "/var/run/cdi"}, NRIFrom: "containerd config dump"}
	}
	for _, tc := range []struct {
		name   string
		modify func(*containerdState)
		want   []string // "status check: text" fragments, in order
	}{
		{"validator off", func(*containerdState) {}, []string{"ok containerd: v2.4.2", "ok containerd cdi: /var/run/cdi", "info nri validator: is off"}},
		{"hooks rejected, CDI on", func(s *containerdState) {
			s.NRI.DefaultValidator.Enable, s.NRI.DefaultValidator.RejectOCIHookAdjustment = true, true
		}, []string{"ok containerd", "ok containerd cdi", "warn nri validator: rejects OCI hook adjustments|--cdi-mode"}},
		{"hooks rejected, CDI off", func(s *containerdState) {
			s.Version, s.CDIEnabled = "1.7.27", false
			s.NRI.DefaultValidator.Enable, s.NRI.DefaultValidator.RejectOCIHookAdjustment = true, true
		}, []string{"ok containerd", "info containerd cdi: CDI is off", "warn nri validator: rejects|--disable-hooks all"}},
		{"nvbind required globally", func(s *containerdState) {
			s.NRI.DefaultValidator.Enable, s.NRI.DefaultValidator.RequiredPlugins = true, []string{"nvbind"}
		}, []string{"ok containerd", "ok containerd cdi", "ok nri validator", "warn nri validator: globally required"}},
		{"NRI not loaded", func(s *containerdState) { s.NRILoaded, s.NRIInitErr, s.NRIFrom = false, "disabled", "" },
			[]string{"fail containerd: not loaded: disabled", "ok containerd cdi"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := base()
			tc.modify(st)
			rs := containerdResults(st, "/run/containerd/containerd.sock")
			if len(rs) != len(tc.want) {
				t.Fatalf("%d results, want %d: %+v", len(rs), len(tc.want), rs)
			}
			for i, w := range tc.want {
				head, frag, _ := strings.Cut(w, ": ")
				got := string(rs[i].Status) + " " + rs[i].Check
				if got != head {
					t.Errorf("result %d = %q, want %q", i, got, head)
				}
				for _, f := range strings.Split(frag, "|") {
					if !strings.Contains(rs[i].Message+" "+rs[i].Fix, f) {
						t.Errorf("result %d %q lacks %q", i, rs[i].Message+" "+rs[i].Fix, f)
					}
				}
			}
		})
	}
}
