//go:build !nvbind_lean

package main

import (
	"strings"
	"testing"

	"github.com/nvbind/nvbind/gpu"
)

// TestDRAPartition: --dra-gpus names the DRA driver's GPUs by index or UUID; with the
// device plugin in the same process it is required, and the plugin gets the others.
func TestDRAPartition(t *testing.T) {
	t.Parallel()
	g0 := gpu.Device{Index: 0, UUID: "GPU-aaaa"}
	g1 := gpu.Device{Index: 1, UUID: "GPU-bbbb"}
	for _, tc := range []struct {
		dra, dp   bool
		gpus      string
		err       string
		draG, dpG string // which of g0, g1 each serves ("all": nil filter)
	}{
		{dra: true, gpus: "", draG: "all", dpG: "all"},
		{dra: true, gpus: "all", draG: "all", dpG: "all"},
		{dra: true, dp: true, gpus: "1", draG: "1", dpG: "0"},
		{dra: true, dp: true, gpus: "GPU-aaaa", draG: "0", dpG: "1"},
		{dra: true, dp: true, gpus: "", err: "--dra-gpus"},
		{dra: true, gpus: "gpu1", err: `"gpu1" is neither a GPU index nor a GPU UUID`},
		{dra: false, gpus: "1", err: "--dra-gpus without --dra"},
	} {
		f := &nriFlags{dra: tc.dra, devicePlugin: tc.dp}
		f.gpus = tc.gpus
		draServe, dpServe, err := f.partition()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%+v: err = %v, want %q", tc, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%+v: %v", tc, err)
		}
		which := func(serve func(gpu.Device) bool) string {
			if serve == nil {
				return "all"
			}
			var out []string
			for _, g := range []gpu.Device{g0, g1} {
				if serve(g) {
					out = append(out, string(rune('0'+g.Index)))
				}
			}
			return strings.Join(out, ",")
		}
		if got := which(draServe); got != tc.draG {
			t.Errorf("%+v: DRA serves %s, want %s", tc, got, tc.draG)
		}
		if tc.dp {
			if got := which(dpServe); got != tc.dpG {
				t.Errorf("%+v: device plugin serves %s, want %s", tc, got, tc.dpG)
			}
		}
	}
}
