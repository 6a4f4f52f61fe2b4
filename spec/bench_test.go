package spec

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/testutil"
)

// BenchmarkGenerate times what `nvbind cdi generate` does in-process on the test driver
// roots: a full discovery (procfs, device nodes, every library's ELF header and links)
// plus building the spec.
func BenchmarkGenerate(b *testing.B) {
	for _, name := range []string{"debian-535", "flat-535", "lib64-470"} {
		b.Run(name, func(b *testing.B) {
			root := testutil.DriverRoot(b, name)
			d, err := gpu.New(gpu.WithDriverRoot(root), gpu.WithDevRoot(root), gpu.WithoutNVML(), gpu.WithoutCUDAVersion())
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				inv, err := d.Discover(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Generate(inv, Options{HookPath: hookPath}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGenerateCLI times the whole command, process start and file write included,
// next to a bare process start of /bin/true.
func BenchmarkGenerateCLI(b *testing.B) {
	root := testutil.DriverRoot(b, "debian-535")
	bin := testutil.BuildNVBind(b, b.TempDir())
	out := filepath.Join(b.TempDir(), "nvidia.yaml")
	b.Run("bare-process-start", func(b *testing.B) {
		for b.Loop() {
			if err := exec.Command("/bin/true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("nvbind-cdi-generate", func(b *testing.B) {
		for b.Loop() {
			cmd := exec.Command(bin, "cdi", "generate", "--no-nvml", "--driver-root", root, "--dev-root", root, "--output", out)
			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v\n%s", err, o)
			}
		}
	})
}
