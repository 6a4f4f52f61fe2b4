package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// specVariant writes the spec at src as vendor's, with edit applied to its container
// edits and each device's; edit returns how many hooks it changed, and a spec where it
// changed none fails the benchmark.
func specVariant(b *testing.B, src, dst, vendor string, edit func(*cdispecs.ContainerEdits) int) {
	b.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		b.Fatal(err)
	}
	var s cdispecs.Spec
	if err := yaml.Unmarshal(data, &s); err != nil {
		b.Fatal(err)
	}
	s.Kind = vendor + "/gpu"
	changed := 0
	for _, e := range append([]*cdispecs.ContainerEdits{&s.ContainerEdits}, editsOf(s.Devices)...) {
		changed += edit(e)
	}
	if changed == 0 {
		b.Fatalf("%s: no hook to change", src)
	}
	if err := spec.WriteFile(&s, dst, spec.FormatYAML); err != nil {
		b.Fatal(err)
	}
}

// hookVariant writes the spec at src as vendor's, with its hooks' program replaced by
// program, or without hooks when program is "".
func hookVariant(b *testing.B, src, dst, vendor, program string) {
	b.Helper()
	specVariant(b, src, dst, vendor, func(e *cdispecs.ContainerEdits) int {
		n := len(e.Hooks)
		for _, h := range e.Hooks {
			h.Path = program
		}
		if program == "" {
			e.Hooks = nil
		}
		return n
	})
}

// createContainerVariant writes src's spec under vendor with its hook at createContainer,
// where it runs in the container's mount namespace already (no --enter-mount-namespace):
// where nvbind's hook ran before HookStage.
func createContainerVariant(b *testing.B, src, dst, vendor string) {
	b.Helper()
	specVariant(b, src, dst, vendor, func(e *cdispecs.ContainerEdits) int {
		moved := 0
		for _, h := range e.Hooks {
			if h.HookName == spec.HookStage && slices.Contains(h.Args, "--"+hookargs.FlagEnterMountNS) {
				h.HookName = "createContainer"
				h.Args = slices.DeleteFunc(h.Args, func(a string) bool { return a == "--"+hookargs.FlagEnterMountNS })
				moved++
			}
		}
		return moved
	})
}

// editsOf returns the container edits of each device.
func editsOf(devs []cdispecs.Device) []*cdispecs.ContainerEdits {
	var out []*cdispecs.ContainerEdits
	for i := range devs {
		out = append(out, &devs[i].ContainerEdits)
	}
	return out
}

// BenchmarkDriverMountsDocker: what a GPU container with every capability adds to create
// and start over a plain one, through Docker Engine 29 with runc 1.2.6, for each way of
// giving it the driver's files: nvbind's spec with one mount of a layout (the default),
// nvbind's spec with one bind mount per file, and NVIDIA's spec for the same root
// (nvidia-ctk cdi generate, when $NVBIND_NVIDIA_TOOLKIT has it); and what the GPU's nodes
// alone add; and the layout's cost taken apart: its spec without the hook, and with the
// hook's program replaced by /bin/true (what runc's starting a hook costs), and the hook
// at createContainer instead of HookStage. Interleaved, medians.
func BenchmarkDriverMountsDocker(b *testing.B) {
	testutil.KeepHostDevNodes(b) // NVIDIA's tools make /dev/nvidiactl on the host
	testutil.RequiresRoot(b)
	driverRoot := testutil.DriverRoot(b, "debian-535")
	bin := testutil.BuildNVBind(b, b.TempDir())
	hook := testutil.HookBinary(bin)
	d := startDockerd(b, bin, driverRoot, func(conf string, _ *[]string) {
		specs := filepath.Join(filepath.Dir(conf), "cdi")
		writeSpecFiles(b, driverRoot, specs, hook, spec.Options{Vendor: "per-file.nvbind.io"})
		layoutSpec := writeSpec(b, driverRoot, specs, hook, spec.Options{Vendor: "layout.nvbind.io"})
		// the layout's cost taken apart: without its hook, and with a hook that does nothing
		hookVariant(b, layoutSpec, filepath.Join(specs, "no-hook.yaml"), "no-hook.nvbind.io", "")
		hookVariant(b, layoutSpec, filepath.Join(specs, "hook-true.yaml"), "hook-true.nvbind.io", "/bin/true")
		createContainerVariant(b, layoutSpec, filepath.Join(specs, "create-container.yaml"), "create-container.nvbind.io")
		writeSpec(b, driverRoot, specs, hook, spec.Options{Vendor: "nodes.nvbind.io", CapabilityDevices: true})
	})
	d.loadBusybox()
	cases := []struct {
		name string
		c    container
	}{
		{"plain", container{script: "true"}},
		{"layout", container{script: "true", reqs: []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"layout.nvbind.io/gpu=all"}}}}},
		{"layout-without-hook", container{script: "true", reqs: []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"no-hook.nvbind.io/gpu=all"}}}}},
		{"layout-hook-bin-true", container{script: "true", reqs: []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"hook-true.nvbind.io/gpu=all"}}}}},
		{"layout-hook-at-createContainer", container{script: "true", reqs: []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"create-container.nvbind.io/gpu=all"}}}}},
		{"per-file", container{script: "true", reqs: []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"per-file.nvbind.io/gpu=all"}}}}},
		// the capability-devices spec's GPU devices carry the nodes alone
		{"nodes-only", container{script: "true", reqs: []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"nodes.nvbind.io/gpu=all"}}}}},
	}
	if toolkit := nvidiaToolkitDir(); toolkit != "" {
		out, err := exec.Command(filepath.Join(toolkit, "nvidia-ctk"), "cdi", "generate", "--mode=management", "--driver-root", driverRoot,
			"--dev-root", driverRoot, "--nvidia-cdi-hook-path", filepath.Join(toolkit, "nvidia-cdi-hook"), "--vendor", "nvidia-toolkit.com",
			"--output", filepath.Join(d.dir, "cdi", "nvidia-toolkit.yaml")).CombinedOutput()
		if err != nil {
			b.Fatalf("nvidia-ctk: %v\n%s", err, out)
		}
		cases = append(cases, struct {
			name string
			c    container
		}{"nvidia-spec", container{script: "true", reqs: []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"nvidia-toolkit.com/gpu=all"}}}}})
	}
	times := make([][]time.Duration, len(cases))
	for b.Loop() {
		for i, tc := range cases {
			_, took, err := d.runContainer(tc.c)
			if err != nil {
				b.Fatalf("%s: %v", tc.name, err)
			}
			times[i] = append(times[i], took)
		}
	}
	plain := median(times[0])
	b.ReportMetric(plain, "ms-median/plain")
	for i, tc := range cases[1:] {
		b.ReportMetric(median(times[i+1])-plain, "ms-added/"+tc.name)
		b.ReportMetric(pairedMedian(times, i+1), "ms-paired/"+tc.name)
	}
	b.ReportMetric(0, "ns/op")
}
