package doctor

import (
	"bytes"
	"context"
	"flag"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/driverroot"
	"github.com/nvbind/nvbind/test/testutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

func writeSpecFrom(t *testing.T, r driverroot.Root, dir string) {
	t.Helper()
	d, err := gpu.New(r.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s, err := spec.Generate(inv, spec.Options{HookPath: "/usr/bin/nvbind-hook"})
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.WriteFile(s, filepath.Join(dir, "nvidia.yaml"), spec.FormatYAML); err != nil {
		t.Fatal(err)
	}
}

func runDoctor(t *testing.T, c Config, r driverroot.Root) string {
	t.Helper()
	d, err := gpu.New(r.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	c.Discoverer = d
	var buf bytes.Buffer
	Print(&buf, Run(context.Background(), c))
	return buf.String()
}

func golden(t *testing.T, name, got string, replace map[string]string) {
	t.Helper()
	for from, to := range replace {
		got = strings.ReplaceAll(got, from, to)
	}
	testutil.Golden(t, filepath.Join("testdata", name), []byte(got), *update)
}

func TestDoctorGoodHost(t *testing.T) {
	root := driverroot.Open(t, "debian-535")
	dir := t.TempDir()
	specs := filepath.Join(dir, "cdi")
	writeSpecFrom(t, root, specs)
	sock := filepath.Join(dir, "nri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	conf := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(conf, []byte("version = 3\n[plugins.'io.containerd.nri.v1.nri']\n  disable = false\n  socket_path = \""+sock+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) }))
	defer health.Close()
	out := runDoctor(t, Config{SpecDirs: []string{specs}, ContainerdConfig: conf, ContainerdSocket: "/nonexistent", CRIOConfigs: []string{filepath.Join(dir, "none.conf")},
		DockerConfig: filepath.Join(dir, "daemon.json"), NRISocket: sock, HealthURL: health.URL + "/healthz"}, root)
	golden(t, "good.txt", out, map[string]string{dir: "/TMP", root.Path: "/DRIVER_ROOT"})
	if !strings.Contains(out, "GPU containers can run") {
		t.Errorf("verdict:\n%s", out)
	}
}

// TestDoctorBrokenHost breaks a copy of the debian-535 root in the ways users meet and
// checks that each problem gets its own line and fix.
func TestDoctorBrokenHost(t *testing.T) {
	dir := t.TempDir()
	host := driverroot.Copy(t, driverroot.Open(t, "debian-535"), filepath.Join(dir, "host"))
	root := host.Path
	// nvidia-uvm never loaded, libcuda removed, an old driver's leftover
	for _, p := range []string{"dev/nvidia-uvm", "dev/nvidia-uvm-tools", "usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.535.261.03"} {
		if err := os.Remove(filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.530.30.02"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// a spec written for another driver install that is gone since
	other := driverroot.Copy(t, driverroot.Open(t, "debian-535-upgrade"), filepath.Join(dir, "other"))
	specs := filepath.Join(dir, "cdi")
	writeSpecFrom(t, other, specs)
	if err := os.RemoveAll(other.Path); err != nil {
		t.Fatal(err)
	}
	// and beside it, NVIDIA's spec of the same kind: every nvidia.com/gpu name conflicts
	if err := os.WriteFile(filepath.Join(specs, "nvidia-ctk.yaml"), []byte("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes: [{path: /dev/nvidia0}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(conf, []byte(`version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
  BinaryName = "/usr/bin/nvidia-container-runtime"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	docker := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(docker, []byte(`{"default-runtime":"nvidia","runtimes":{"nvidia":{"path":"nvidia-container-runtime"}},"features":{"cdi":false}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runDoctor(t, Config{SpecDirs: []string{specs}, ContainerdConfig: conf, ContainerdSocket: "/nonexistent", CRIOConfigs: []string{filepath.Join(dir, "none.conf")},
		DockerConfig: docker, NRISocket: filepath.Join(dir, "nri.sock"), HealthURL: "http://127.0.0.1:1/healthz", DevRoot: root}, host)
	golden(t, "broken.txt", out, map[string]string{dir: "/TMP"})
	for _, want := range []string{"FAIL  device nodes", "/dev/nvidia-uvm is missing", "FAIL  libraries", "missing: libcuda.so.1",
		"WARN  dev char links", "/dev/char/195:0", "daemon-reload", "nvbind install --components dev-char",
		"FAIL  cdi spec", "is stale", "FAIL  cdi conflicts", "runtimes refuse as conflicting the devices more than one defines (1: nvidia.com/gpu=0)", "nvbind did not write " + specs + "/nvidia-ctk.yaml", "FAIL  containerd nri", "WARN  legacy runtime", "FAIL  docker cdi", "GPU containers are blocked"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestRuntimeSnippetsEnableNRI checks that the containerd snippets in manifests/runtime
// are what doctor calls enabled.
func TestRuntimeSnippetsEnableNRI(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"../manifests/runtime/containerd-2.x-nri.toml", "../manifests/runtime/containerd-1.7-nri.toml"} {
		rs := checkContainerdFile(Config{ContainerdConfig: f, NRISocket: "/nonexistent"})
		if len(rs) == 0 || rs[0].Status == Fail || !strings.Contains(rs[0].Message, "NRI is enabled") {
			t.Errorf("%s: %+v", f, rs)
		}
	}
	rs := checkCRIO(Config{CRIOConfigs: []string{"../manifests/runtime/crio-nri.conf"}})
	if len(rs) != 1 || rs[0].Status != OK {
		t.Errorf("crio-nri.conf: %+v", rs)
	}
}

// TestNVIDIARuntimeIsNVBind: a Docker or containerd configuration whose nvidia runtime is
// nvbind-runtime (nvbind install --as-nvidia) is no legacy runtime; NVIDIA's own is.
func TestNVIDIARuntimeIsNVBind(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ours := filepath.Join(dir, "nvbind-runtime")
	if err := os.WriteFile(ours, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "nvidia-container-runtime")
	if err := os.Symlink("nvbind-runtime", link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path   string
		status Status
	}{{link, OK}, {ours, OK}, {"/usr/bin/nvidia-container-runtime", Warn}} {
		docker := filepath.Join(t.TempDir(), "daemon.json")
		if err := os.WriteFile(docker, []byte(`{"default-runtime":"nvidia","runtimes":{"nvidia":{"path":"`+tc.path+`"}}}`), 0o644); err != nil {
			t.Fatal(err)
		}
		rs := checkDocker(Config{DockerConfig: docker})
		if len(rs) != 1 || rs[0].Status != tc.status {
			t.Errorf("docker, nvidia runtime %s: %+v", tc.path, rs)
		}
		conf := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(conf, []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia.options]\n  BinaryName = \""+tc.path+"\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		rs = legacyContainerd(Config{ContainerdConfig: conf})
		if !strings.Contains(tc.path, "nvidia-container-runtime") {
			if len(rs) != 0 {
				t.Errorf("containerd, runtime %s: %+v", tc.path, rs)
			}
			continue
		}
		if len(rs) != 1 || rs[0].Status != tc.status {
			t.Errorf("containerd, nvidia runtime %s: %+v", tc.path, rs)
		}
	}
	if rs := checkDocker(Config{DockerConfig: filepath.Join(dir, "none.json")}); len(rs) != 0 {
		t.Errorf("no daemon.json: %+v", rs)
	}
}

// TestMountsVersionOfLayout: a spec that mounts the driver in one mount (a layout named
// by its driver version) names the running driver; a layout of another version does not.
func TestMountsVersionOfLayout(t *testing.T) {
	t.Parallel()
	spec := func(hostPath string) *cdi.Spec {
		return &cdi.Spec{Spec: &cdispecs.Spec{ContainerEdits: cdispecs.ContainerEdits{Mounts: []*cdispecs.Mount{
			{HostPath: "/dev/shm", ContainerPath: "/dev/shm"},
			{HostPath: hostPath, ContainerPath: "/usr/local/nvbind/all"}}}}}
	}
	for _, tc := range []struct {
		path string
		want bool
	}{
		{"/run/nvbind/driver/535.261.03-all-01f6f2d0ed73", true},
		{"/run/nvbind/driver/535.309.01-all-01f6f2d0ed73", false},
		{"/run/nvbind/driver/535.261.03", false},
		{"/usr/lib/x86_64-linux-gnu/libcuda.so.535.261.03", true},
	} {
		if got := mountsVersion(spec(tc.path), "535.261.03"); got != tc.want {
			t.Errorf("mountsVersion(%s) = %v, want %v", tc.path, got, tc.want)
		}
	}
}
