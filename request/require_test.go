package request

import (
	"strings"
	"testing"

	"github.com/nvbind/nvbind/gpu"
)

func TestRequirements(t *testing.T) {
	t.Parallel()
	drv := gpu.Driver{Version: "535.261.03", CUDAVersion: "12.2"}
	a100 := []gpu.Device{{Index: 0, Arch: "8.0", Brand: "tesla"}}
	t4 := []gpu.Device{{Index: 1, Arch: "7.5", Brand: "nvidia"}}
	for _, tc := range []struct {
		v      string
		devs   []gpu.Device
		drv    gpu.Driver
		ok     bool
		reason string
	}{
		{"cuda>=12.2", a100, drv, true, ""},
		{"cuda>=12.4", a100, drv, false, "the driver's CUDA version is 12.2"},
		{"cuda>=12.4 driver>=535", a100, drv, true, ""},                      // OR
		{"cuda>=12.0,driver<530", a100, drv, false, "the driver version is"}, // AND
		{"arch>=8.0", a100, drv, true, ""},
		{"arch>=8.0", t4, drv, false, "compute capability of GPU 1 is 7.5"},
		{"brand=tesla", a100, drv, true, ""},
		{"brand=TESLA", t4, drv, false, "GPU 1 is nvidia"},
		{"brand!=geforce", a100, drv, true, ""},
		{"driver=535.261.03", nil, drv, true, ""},
		{"cuda>=11", nil, gpu.Driver{Version: "535.261.03"}, false, "unknown on this node"},
		{"arch>=7.0", []gpu.Device{{Index: 2}}, drv, false, "unknown on this node"},
	} {
		r, err := ParseRequirement("NVIDIA_REQUIRE_X", tc.v)
		if err != nil {
			t.Fatalf("%q: %v", tc.v, err)
		}
		err = r.Check(tc.drv, tc.devs)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err = %v, want ok %v", tc.v, err, tc.ok)
			continue
		}
		if err != nil && (!strings.Contains(err.Error(), tc.reason) || !strings.Contains(err.Error(), `NVIDIA_REQUIRE_X="`+tc.v+`"`)) {
			t.Errorf("%q: error %q lacks %q", tc.v, err, tc.reason)
		}
	}
	for _, bad := range []string{"cuda", "cuda>=", "gpu>=1", "brand>=tesla", "cuda>=twelve", "driver>=1.2.3.4.5"} {
		if _, err := ParseRequirement("NVIDIA_REQUIRE_X", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseRequirement(f *testing.F) {
	for _, s := range []string{"cuda>=12.2 brand=tesla,driver>=470,driver<471", "arch>=8.0", "", "brand!=x", "cuda==1.2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRequirement("NVIDIA_REQUIRE_F", s)
		if err != nil {
			return
		}
		for _, alt := range r.Any {
			for _, c := range alt {
				if !constraintNames[c.Name] || c.Value == "" {
					t.Fatalf("%q: bad constraint %+v", s, c)
				}
			}
		}
		_ = r.Check(gpu.Driver{Version: "535.1", CUDAVersion: "12.2"}, []gpu.Device{{Arch: "8.0", Brand: "tesla"}})
	})
}
