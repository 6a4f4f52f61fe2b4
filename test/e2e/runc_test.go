package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// writeSpec discovers a test driver root and writes its CDI spec into dir, with the
// driver's files in one mount of a layout (built in a folder of the test, detached at its
// end) unless the options are hookless.
func writeSpec(t testing.TB, driverRoot, dir, hookPath string, o spec.Options) string {
	t.Helper()
	if !o.Hookless() && o.LayoutBase == "" {
		o.LayoutBase = testLayouts(t)
	}
	return writeSpecWith(t, driverRoot, dir, hookPath, o)
}

// writeSpecFiles writes the spec with one mount per driver file.
func writeSpecFiles(t testing.TB, driverRoot, dir, hookPath string, o spec.Options) string {
	t.Helper()
	o.LayoutBase = ""
	return writeSpecWith(t, driverRoot, dir, hookPath, o)
}

func writeSpecWith(t testing.TB, driverRoot, dir, hookPath string, o spec.Options) string {
	t.Helper()
	d, err := gpu.New(gpu.WithDriverRoot(driverRoot), gpu.WithDevRoot(driverRoot), gpu.WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	o.HookPath = hookPath
	s, err := spec.Generate(inv, o)
	if err != nil {
		t.Fatal(err)
	}
	plans, err := spec.Layouts(inv, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range plans {
		if err := layout.Ensure(o.LayoutBase, p, nil); err != nil {
			t.Fatal(err)
		}
	}
	name, err := spec.FileName(s, spec.FormatYAML)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := spec.WriteFile(s, p, spec.FormatYAML); err != nil {
		t.Fatal(err)
	}
	return p
}

// testLayouts is a folder for the test's driver layouts, whose mounts are detached when
// the test ends.
func testLayouts(t testing.TB) string {
	t.Helper()
	base := filepath.Join(t.TempDir(), "layouts")
	t.Cleanup(func() {
		if _, err := layout.Collect(base, nil); err != nil {
			t.Errorf("detach the test's layouts: %v", err)
		}
	})
	return base
}

// runcBundle makes an OCI bundle whose config.json is runc's default spec with the CDI
// device applied by the CDI library, as a CDI-aware runtime does.
func runcBundle(t testing.TB, runc, specDir string, device string, script string) string {
	t.Helper()
	bundle := t.TempDir()
	rootfs := filepath.Join(bundle, "rootfs")
	testutil.BuildRootfs(t, rootfs)
	if out, err := exec.Command(runc, "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s oci.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	s.Process.Terminal = false
	s.Process.Args = []string{"/bin/sh", "-c", script}
	s.Root.Readonly = false
	var ns []oci.LinuxNamespace
	for _, n := range s.Linux.Namespaces {
		if n.Type != oci.NetworkNamespace {
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
	s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil
	if device != "" {
		cache, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(specDir))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cache.InjectDevices(&s, device); err != nil {
			t.Fatalf("inject %s: %v", device, err)
		}
	}
	data, err = json.MarshalIndent(&s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return bundle
}

func runcRun(t *testing.T, runc, bundle string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := "nvbind-e2e-" + filepath.Base(filepath.Dir(bundle)) + filepath.Base(bundle)
	cmd := exec.CommandContext(ctx, runc, "run", "--bundle", bundle, id)
	out, err := cmd.CombinedOutput()
	_ = exec.Command(runc, "delete", "-f", id).Run()
	if err != nil {
		t.Fatalf("runc run: %v\n%s", err, out)
	}
	return string(out)
}

// libcudaIn is the ld cache's libcuda.so.1 line in a container whose driver files come in
// the layout of the capability set named set ("all", "compute+utility"), or one mount per
// file (set "").
func libcudaIn(set string) string {
	if set == "" {
		return "libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1"
	}
	return "libcuda.so.1 (libc6,x86-64) => " + layout.Dest + "/" + set + "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
}

// linkOfLibcuda prints LINK= and where the ld cache's libcuda.so.1 points, in either layout.
const linkOfLibcuda = `echo LINK=$(readlink $(ldconfig -p | sed -n 's/.*libcuda.so.1 (libc6,x86-64) => //p' | head -n 1))`

const inside = `ls -l /dev/nvidia0 /dev/nvidiactl; test -e /dev/nvidia1 && echo HAS-NVIDIA1;
` + linkOfLibcuda + `;
ldconfig -p | grep 'libcuda.so.1 ';
grep ModifyDeviceFiles /proc/driver/nvidia/params || echo NO-DRIVER-PROCFS;
ls -l /usr/bin/nvidia-smi;
cat /etc/nvidia/nvidia-application-profiles-rc.d/10-nvbind-container.conf;
for f in /usr/share/nvidia/nvoptix.bin /lib/firmware/nvidia/535.261.03/gsp_ga10x.bin \
  /usr/lib/nvidia/current/nvidia_drv.so /usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-vulkan-producer.so.535.261.03; do
  test -r $f && echo "READABLE $f"; done;
echo "SHARE-NVIDIA=$(readlink /usr/share/nvidia)";
cuda-probe`

func TestRuncWithGeneratedSpec(t *testing.T) {
	testutil.RequiresRoot(t)
	runc := testutil.RequiresCommand(t, "runc")
	driverRoot := testutil.DriverRoot(t, "debian-535")
	bin := testutil.BuildNVBind(t, t.TempDir())
	for _, mode := range []struct{ name, set string }{{"layout", "all"}, {"one mount per file", ""}} {
		t.Run(mode.name, func(t *testing.T) { runcGeneratedSpec(t, runc, driverRoot, bin, mode.set) })
	}
}

func runcGeneratedSpec(t *testing.T, runc, driverRoot, bin, set string) {
	specDir := t.TempDir()
	if set != "" {
		writeSpec(t, driverRoot, specDir, bin, spec.Options{})
	} else {
		writeSpecFiles(t, driverRoot, specDir, bin, spec.Options{})
	}
	out := runcRun(t, runc, runcBundle(t, runc, specDir, "nvidia.com/gpu=0", inside))
	shareNVIDIA := "SHARE-NVIDIA=\n" // one mount per file: a folder of mounts
	if set != "" {
		// the layout links the driver's folder whole to its own
		shareNVIDIA = "SHARE-NVIDIA=" + layout.Dest + "/" + set + "/usr/share/nvidia\n"
	}
	t.Logf("container output:\n%s", out)
	for _, want := range []string{
		"195,   0 ",
		"LINK=nvidia/current/libcuda.so.535.261.03",
		libcudaIn(set),
		"/usr/bin/nvidia-smi",
		"cuda-probe: loaded libcuda.so.1, CUDA driver API 12020",
		// EGL and Vulkan see GPU 0 only (minor 0: bit 0)
		`"settings":["EGLVisibleDGPUDevices",1]`,
		// files the layout's folder links give (one link per driver folder), as one
		// mount per file does
		"READABLE /usr/share/nvidia/nvoptix.bin",
		"READABLE /lib/firmware/nvidia/535.261.03/gsp_ga10x.bin",
		"READABLE /usr/lib/nvidia/current/nvidia_drv.so",
		"READABLE /usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-vulkan-producer.so.535.261.03",
		shareNVIDIA,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q", want)
		}
	}
	// Without an NVIDIA kernel module the container's procfs has no params file and the
	// hook leaves it alone (the bind mount itself is tested in a private mount namespace in
	// hook/); with one, the container must read ModifyDeviceFiles: 0.
	if _, err := os.Stat("/proc/driver/nvidia/params"); err == nil {
		if !strings.Contains(out, "ModifyDeviceFiles: 0") {
			t.Error("the container's params file still allows device-node modification")
		}
	} else if !strings.Contains(out, "NO-DRIVER-PROCFS") {
		t.Error("the container has a params file on a host without the driver")
	}
	if strings.Contains(out, "HAS-NVIDIA1") {
		t.Error("the container got /dev/nvidia1 but asked for GPU 0 only")
	}
}

func TestRuncHookless(t *testing.T) {
	testutil.RequiresRoot(t)
	runc := testutil.RequiresCommand(t, "runc")
	driverRoot := testutil.DriverRoot(t, "debian-535")
	specDir := t.TempDir()
	writeSpec(t, driverRoot, specDir, "", spec.Options{DisabledHooks: spec.AllHooks})
	out := runcRun(t, runc, runcBundle(t, runc, specDir, "nvidia.com/gpu=1",
		`ls -l /dev/nvidia1; test -L /usr/lib/x86_64-linux-gnu/libcuda.so.1 || echo SONAME-IS-A-MOUNT; ldconfig -p | grep -c libcuda; cuda-probe`))
	t.Logf("container output:\n%s", out)
	for _, want := range []string{"195,   1 ", "SONAME-IS-A-MOUNT", "cuda-probe: loaded libcuda.so.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q", want)
		}
	}
}
