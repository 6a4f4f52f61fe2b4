package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// dockerd is a private Docker Engine (built by test/deps.sh docker: moby's dockerd and a
// runc that knows time namespaces) with CDI on and nvbind's spec in its CDI folder,
// driven through the Engine API on its own socket.
type dockerd struct {
	t      testing.TB
	dir    string
	sock   string
	cmd    *exec.Cmd
	log    bytes.Buffer
	client *http.Client
}

func dockerTools(t testing.TB) string {
	t.Helper()
	cache := os.Getenv("NVBIND_CACHE")
	if cache == "" {
		cache = "/var/cache/nvbind"
	}
	dir := filepath.Join(cache, "docker")
	for _, b := range []string{"dockerd", "runc"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			if os.Getenv(testutil.EnvRoot) == "1" {
				t.Fatalf("%s is not built: run test/deps.sh docker (make test does)", b)
			}
			t.Skipf("%s is not built: run test/deps.sh docker", b)
		}
	}
	return dir
}

// startDockerd starts the engine with nvbind's CDI spec for driverRoot in its CDI
// folder. hookDir holds nvidia-cdi-hook, the name Docker looks for before it maps --gpus
// to CDI devices.
func startDockerd(t testing.TB, bin, driverRoot string, opts ...func(conf string, env *[]string)) *dockerd {
	t.Helper()
	tools := dockerTools(t)
	containerdDir := filepath.Dir(findTool(t, "containerd"))
	dir := t.TempDir()
	d := &dockerd{t: t, dir: dir, sock: filepath.Join(dir, "docker.sock")}
	specDir := filepath.Join(dir, "cdi")
	writeSpec(t, driverRoot, specDir, testutil.HookBinary(bin), spec.Options{})
	hookDir := filepath.Join(dir, "hookbin")
	if err := os.MkdirAll(hookDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(testutil.HookBinary(bin), filepath.Join(hookDir, "nvidia-cdi-hook")); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{
		"features":       map[string]bool{"cdi": true},
		"cdi-spec-dirs":  []string{specDir},
		"data-root":      filepath.Join(dir, "data"),
		"exec-root":      filepath.Join(dir, "exec"),
		"pidfile":        filepath.Join(dir, "docker.pid"),
		"hosts":          []string{"unix://" + d.sock},
		"bridge":         "none",
		"iptables":       false,
		"ip6tables":      false,
		"userland-proxy": false,
		"log-level":      "info",
	}
	data, _ := json.Marshal(cfg)
	conf := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(conf, data, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + strings.Join([]string{tools, containerdDir, hookDir, "/usr/sbin:/usr/bin:/sbin:/bin"}, ":"), "HOME=" + dir}
	for _, o := range opts {
		o(conf, &env)
	}
	d.cmd = exec.Command(filepath.Join(tools, "dockerd"), "--config-file", conf)
	d.cmd.Env = env
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
	}}, Timeout: 2 * time.Minute}
	t.Cleanup(d.stop)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := d.client.Get("http://docker/_ping"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd did not answer /_ping:\n%s", d.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return d
}

func (d *dockerd) stop() {
	if d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if d.t.Failed() {
		d.t.Logf("dockerd log:\n%s", d.log.String())
	}
	// the engine's mounts must go before the test removes its folder
	_ = exec.Command("umount", "-R", d.dir).Run()
}

// api calls the Engine API; out, when set, receives the JSON answer.
func (d *dockerd) api(method, path string, body io.Reader, out any) error {
	req, err := http.NewRequest(method, "http://docker/v1.47"+path, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// loadBusybox loads the tests' busybox image (with ldconfig and cuda-probe).
func (d *dockerd) loadBusybox() {
	d.t.Helper()
	work := d.t.TempDir()
	rootfs := filepath.Join(work, "rootfs")
	testutil.BuildRootfs(d.t, rootfs)
	testutil.OCIImageTar(d.t, rootfs, busyboxImage, []string{"/bin/sh"}, filepath.Join(work, "busybox.tar"))
	d.loadImage(filepath.Join(work, "busybox.tar"))
}

func (d *dockerd) loadImage(tarball string) {
	d.t.Helper()
	f, err := os.Open(tarball)
	if err != nil {
		d.t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	req, _ := http.NewRequest(http.MethodPost, "http://docker/v1.47/images/load?quiet=1", f)
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := d.client.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || bytes.Contains(data, []byte(`"error"`)) {
		d.t.Fatalf("load %s: %s %s", tarball, resp.Status, data)
	}
}

// deviceRequest is the Engine API's device request, as `--gpus` and Compose's
// deploy.resources.reservations.devices write it (and `--device vendor/class=name`, driver cdi).
type deviceRequest struct {
	Driver       string     `json:"Driver,omitempty"`
	Count        int        `json:"Count,omitempty"`
	DeviceIDs    []string   `json:"DeviceIDs,omitempty"`
	Capabilities [][]string `json:"Capabilities,omitempty"`
}

// run creates, starts and waits for a container and returns its output (a TTY, so one
// stream) and how long create and start took.
func (d *dockerd) run(script string, reqs []deviceRequest, devices []map[string]string) (string, time.Duration, error) {
	return d.runContainer(container{script: script, reqs: reqs, devices: devices})
}

// container is what a test asks the Engine for: the script, device requests and
// devices, the runtime (--runtime), the env (-e) and --privileged.
type container struct {
	script     string
	reqs       []deviceRequest
	devices    []map[string]string
	runtime    string
	env        []string
	privileged bool
}

// runContainer creates, starts and waits for a container and returns its output and how
// long create and start took.
func (d *dockerd) runContainer(c container) (string, time.Duration, error) {
	host := map[string]any{"NetworkMode": "none", "DeviceRequests": c.reqs, "Devices": c.devices, "Privileged": c.privileged}
	if c.runtime != "" {
		host["Runtime"] = c.runtime
	}
	body := map[string]any{
		"Image": busyboxImage, "Entrypoint": []string{"/bin/sh", "-c"}, "Cmd": []string{c.script}, "Tty": true, "Env": c.env,
		"HostConfig": host,
	}
	data, _ := json.Marshal(body)
	var created struct{ ID string }
	start := time.Now()
	if err := d.api(http.MethodPost, "/containers/create", bytes.NewReader(data), &created); err != nil {
		return "", 0, err
	}
	defer func() { _ = d.api(http.MethodDelete, "/containers/"+created.ID+"?force=1", nil, nil) }()
	if err := d.api(http.MethodPost, "/containers/"+created.ID+"/start", nil, nil); err != nil {
		return "", 0, err
	}
	took := time.Since(start)
	var waited struct{ StatusCode int }
	if err := d.api(http.MethodPost, "/containers/"+created.ID+"/wait", nil, &waited); err != nil {
		return "", took, err
	}
	req, _ := http.NewRequest(http.MethodGet, "http://docker/v1.47/containers/"+created.ID+"/logs?stdout=1&stderr=1", nil)
	resp, err := d.client.Do(req)
	if err != nil {
		return "", took, err
	}
	out, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if waited.StatusCode != 0 {
		return string(out), took, fmt.Errorf("container exited %d", waited.StatusCode)
	}
	return strings.ReplaceAll(string(out), "\r\n", "\n"), took, nil
}

// dockerWithBusybox is a private engine with nvbind's spec for the debian-535 root and the
// busybox image (root only).
func dockerWithBusybox(t testing.TB) *dockerd {
	t.Helper()
	testutil.RequiresRoot(t)
	driverRoot := testutil.DriverRoot(t, "debian-535")
	bin := testutil.BuildNVBind(t, t.TempDir())
	d := startDockerd(t, bin, driverRoot)
	d.loadBusybox()
	return d
}

const dockerInside = `for d in /dev/nvidia0 /dev/nvidia1; do test -c $d && echo $d; done; ldconfig -p | grep 'libcuda.so.1 '; ls /usr/bin/nvidia-smi; cuda-probe`

// TestDockerEngine runs Docker Engine with nvbind's CDI spec: --device nvidia.com/gpu=1,
// --gpus all and --gpus device=1 (which Docker maps to nvbind's CDI devices), and
// Compose's device reservations, each giving exactly the GPUs asked for with the driver
// libraries, the ld cache and nvidia-smi.
func TestDockerEngine(t *testing.T) {
	d := dockerWithBusybox(t)

	for _, tc := range []struct {
		name    string
		reqs    []deviceRequest
		devices []map[string]string
		gpus    []string
	}{
		{"--device nvidia.com/gpu=1", []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"nvidia.com/gpu=1"}}}, nil, []string{"/dev/nvidia1"}},
		{"--gpus all", []deviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}, nil, []string{"/dev/nvidia0", "/dev/nvidia1"}},
		{"--gpus device=1", []deviceRequest{{DeviceIDs: []string{"1"}, Capabilities: [][]string{{"gpu"}}}}, nil, []string{"/dev/nvidia1"}},
		// what Compose sends for `devices: [nvidia.com/gpu=gpu0]` (CDI names become CDI requests)
		{"compose devices: [nvidia.com/gpu=gpu0]", []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"nvidia.com/gpu=gpu0"}}}, nil, []string{"/dev/nvidia0"}},
		// and for deploy.resources.reservations.devices: [{driver: nvidia, device_ids: ["0"], capabilities: [gpu]}]
		{"compose reservations (driver: nvidia, device_ids: [0])", []deviceRequest{{Driver: "nvidia", DeviceIDs: []string{"0"}, Capabilities: [][]string{{"gpu"}}}}, nil, []string{"/dev/nvidia0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := d.run(dockerInside, tc.reqs, tc.devices)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var gpus []string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "/dev/nvidia") {
					gpus = append(gpus, strings.TrimSpace(l))
				}
			}
			if !slices.Equal(gpus, tc.gpus) {
				t.Errorf("GPUs %v, want %v:\n%s", gpus, tc.gpus, out)
			}
			for _, want := range []string{libcudaIn("all"), "/usr/bin/nvidia-smi", "cuda-probe: loaded libcuda.so.1"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// BenchmarkDockerDeviceStart measures what --device nvidia.com/gpu=0 adds to a
// container's create and start, against a plain one, interleaved; it reports medians.
func BenchmarkDockerDeviceStart(b *testing.B) {
	d := dockerWithBusybox(b)
	var plain, gpu []time.Duration
	for b.Loop() {
		_, t1, err := d.run("true", nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		_, t2, err := d.run("true", []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"nvidia.com/gpu=0"}}}, nil)
		if err != nil {
			b.Fatal(err)
		}
		plain, gpu = append(plain, t1), append(gpu, t2)
	}
	med := func(d []time.Duration) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[len(s)/2]) / float64(time.Millisecond)
	}
	b.ReportMetric(med(plain), "ms-median/plain")
	b.ReportMetric(med(gpu), "ms-median/device-gpu0")
	b.ReportMetric(med(gpu)-med(plain), "ms-added")
	b.ReportMetric(0, "ns/op")
}
