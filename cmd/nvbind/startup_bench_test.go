package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvbind/nvbind/test/testutil"
)

// BenchmarkStartupVsToolkit runs whole commands side by side, one of each per iteration
// so that the machine's load weighs on all alike, and reports their medians: the lean
// nvbind's version and cdi generate (NVML left to the command: it is not started when
// procfs answers) into a new folder each time (the whole write: temp file, fsyncs,
// rename), the same onto the spec it wrote before, as a boot or a restarted service does
// (the file holds the spec already and stays), the first with GODEBUG=disablethp=1 (no
// huge pages for its heap, as before internal/hugeheap), the full build's cdi generate,
// and, with $NVBIND_NVIDIA_CTK naming NVIDIA's nvidia-ctk, its cdi generate
// --mode=management on the same root (make bench-startup installs it; it writes its file
// every time), with the ratios to it; on every fixture root.
func BenchmarkStartupVsToolkit(b *testing.B) {
	testutil.KeepHostDevNodes(b) // NVIDIA's tools make /dev/nvidiactl on the host
	bin := testutil.BuildNVBind(b, b.TempDir())
	for _, name := range []string{"debian-535", "flat-535", "lib64-470"} {
		b.Run(name, func(b *testing.B) { startupVsToolkit(b, bin, testutil.DriverRoot(b, name)) })
	}
}

func startupVsToolkit(b *testing.B, bin, root string) {
	// each writes into a folder of its own, as on a host with one spec of the kind: nvbind
	// reads the other specs of its folder (one spec per kind), which is no part of generating
	type command struct {
		name string
		argv []string
		env  string
		// fresh: the output goes into a new folder each time
		fresh bool
	}
	generate := func(bin string) []string {
		return []string{bin, "cdi", "generate", "--driver-root", root, "--dev-root", root, "--output", filepath.Join(b.TempDir(), "a.yaml")}
	}
	cmds := []command{
		{"nvbind-version", []string{bin, "version"}, "", false},
		{"nvbind-cdi-generate", generate(bin), "", true},
		{"nvbind-cdi-generate-unchanged", generate(bin), "", false},
		{"nvbind-cdi-generate-4k-pages", generate(bin), "GODEBUG=disablethp=1", true},
		{"nvbind-node-cdi-generate", generate(filepath.Join(filepath.Dir(bin), nodeBinaryName)), "", true},
	}
	freshBase, fresh := b.TempDir(), 0
	ctk := os.Getenv("NVBIND_NVIDIA_CTK")
	if ctk != "" {
		cmds = append(cmds, command{"nvidia-ctk-cdi-generate", []string{ctk, "cdi", "generate", "--mode=management", "--driver-root", root, "--dev-root", root, "--output", filepath.Join(b.TempDir(), "c.yaml")}, "", false})
	}
	times := make([][]time.Duration, len(cmds))
	for b.Loop() {
		for i, c := range cmds {
			argv := c.argv
			if c.fresh {
				fresh++
				argv = append(slices.Clone(argv[:len(argv)-1]), filepath.Join(freshBase, strconv.Itoa(fresh), "a.yaml"))
			}
			cmd := exec.Command(argv[0], argv[1:]...)
			if c.env != "" {
				cmd.Env = append(os.Environ(), c.env) // exec keeps the last of a key
				if g := os.Getenv("GODEBUG"); g != "" && strings.HasPrefix(c.env, "GODEBUG=") {
					// the variant's settings after the ambient ones: the last one wins
					cmd.Env = append(os.Environ(), "GODEBUG="+g+","+strings.TrimPrefix(c.env, "GODEBUG="))
				}
			}
			start := time.Now()
			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v: %v\n%s", argv, err, o)
			}
			times[i] = append(times[i], time.Since(start))
		}
	}
	median := func(d []time.Duration) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[len(s)/2]) / float64(time.Millisecond)
	}
	for i, c := range cmds {
		b.ReportMetric(median(times[i]), "ms-median/"+c.name)
	}
	if ctk != "" {
		b.ReportMetric(median(times[1])/median(times[len(cmds)-1]), "ratio/cdi-generate-vs-ctk")
		b.ReportMetric(median(times[2])/median(times[len(cmds)-1]), "ratio/cdi-generate-unchanged-vs-ctk")
	}
	b.ReportMetric(0, "ns/op")
}
