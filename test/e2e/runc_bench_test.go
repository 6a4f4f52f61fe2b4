package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// BenchmarkRuncHookStage times `runc run` of a bundle the CDI library injected with
// nvbind's layout spec (every GPU and capability), with runc 1.2.6 (Docker's) and nothing
// between it and the benchmark, against a plain bundle: the spec as generated (its hook at
// spec.HookStage), the same hook at createContainer, the spec without its hook, and with
// a static do-nothing program as its hook at each stage. Interleaved; medians of each
// round's difference from the plain run beside it.
func BenchmarkRuncHookStage(b *testing.B) {
	testutil.RequiresRoot(b)
	runc := filepath.Join(dockerTools(b), "runc")
	driverRoot := testutil.DriverRoot(b, "debian-535")
	bin := testutil.BuildNVBind(b, b.TempDir())
	specDir := b.TempDir()
	writeSpec(b, driverRoot, specDir, testutil.HookBinary(bin), spec.Options{})
	base := runcBundle(b, runc, specDir, "nvidia.com/gpu=all", "true")
	plain := runcBundle(b, runc, "", "", "true")
	noop := filepath.Join(b.TempDir(), "noop")
	src := noop + ".c"
	if err := os.WriteFile(src, []byte("int main(void) { return 0; }\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command(testutil.CCompiler(), "-static", "-O2", "-o", noop, src).CombinedOutput(); err != nil {
		b.Fatalf("cc: %v\n%s", err, out)
	}
	s := readBundleSpec(b, base)
	if s.Hooks == nil || len(s.Hooks.CreateRuntime) != 1 || !slices.Contains(s.Hooks.CreateRuntime[0].Args, "--"+hookargs.FlagEnterMountNS) {
		b.Fatalf("the layout's bundle has no nvbind hook at createRuntime: %+v", s.Hooks)
	}
	ours := s.Hooks.CreateRuntime[0]
	atContainer := ours
	atContainer.Args = slices.DeleteFunc(slices.Clone(ours.Args), func(a string) bool { return a == "--"+hookargs.FlagEnterMountNS })
	cases := []struct {
		name string
		edit func(*oci.Spec)
	}{
		{"layout", func(*oci.Spec) {}},
		{"layout-hook-at-createContainer", func(s *oci.Spec) { s.Hooks = &oci.Hooks{CreateContainer: []oci.Hook{atContainer}} }},
		{"layout-without-hook", func(s *oci.Spec) { s.Hooks = nil }},
		{"layout-noop-hook-at-createRuntime", func(s *oci.Spec) { s.Hooks = &oci.Hooks{CreateRuntime: []oci.Hook{{Path: noop}}} }},
		{"layout-noop-hook-at-createContainer", func(s *oci.Spec) { s.Hooks = &oci.Hooks{CreateContainer: []oci.Hook{{Path: noop}}} }},
	}
	bundles := []string{plain}
	for _, c := range cases {
		d := b.TempDir()
		if out, err := exec.Command("cp", "-a", base+"/.", d).CombinedOutput(); err != nil {
			b.Fatalf("cp: %v\n%s", err, out)
		}
		s := readBundleSpec(b, d)
		c.edit(&s)
		data, err := json.Marshal(s)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "config.json"), data, 0o644); err != nil {
			b.Fatal(err)
		}
		bundles = append(bundles, d)
	}
	times := make([][]time.Duration, len(bundles))
	for b.Loop() {
		for i, bundle := range bundles {
			id := "nvbind-bench-" + filepath.Base(filepath.Dir(bundle)) + filepath.Base(bundle)
			start := time.Now()
			out, err := exec.Command(runc, "run", "--bundle", bundle, id).CombinedOutput()
			took := time.Since(start)
			_ = exec.Command(runc, "delete", "-f", id).Run()
			if err != nil {
				b.Fatalf("runc run %s: %v\n%s", bundle, err, out)
			}
			times[i] = append(times[i], took)
		}
	}
	b.ReportMetric(median(times[0]), "ms-median/plain")
	for i, c := range cases {
		b.ReportMetric(pairedMedian(times, i+1), "ms-paired/"+c.name)
	}
	b.ReportMetric(0, "ns/op")
}

func readBundleSpec(b *testing.B, bundle string) oci.Spec {
	b.Helper()
	var s oci.Spec
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		b.Fatal(err)
	}
	return s
}
