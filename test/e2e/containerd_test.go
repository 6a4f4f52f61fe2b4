package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/testutil"
)

// nriPlugin runs `nvbind nri` against a containerd's NRI socket.
type nriPlugin struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	out     bytes.Buffer
	metrics string
}

func (p *nriPlugin) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *nriPlugin) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func startPlugin(t testing.TB, bin, nriSock, driverRoot string, extra ...string) *nriPlugin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	p := &nriPlugin{metrics: addr}
	args := append([]string{"nri", "--socket", nriSock, "--driver-root", driverRoot, "--dev-root", driverRoot, "--no-nvml",
		"--hook-path", testutil.HookBinary(bin), "--metrics-address", addr, "--log-level", "debug", "--layout-dir", testLayouts(t),
		// the fixture root is shared by every test: the plugin leaves its /dev alone
		"--dev-char-links=false"}, extra...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		_ = p.cmd.Wait()
		if t.Failed() {
			t.Logf("nvbind nri log:\n%s", p.logs())
		}
	})
	p.waitHealthy(t, 30*time.Second)
	return p
}

// waitHealthy polls /readyz until the plugin is registered with the runtime.
func (p *nriPlugin) waitHealthy(t testing.TB, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if r, err := http.Get("http://" + p.metrics + "/readyz"); err == nil {
			_ = r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the plugin did not register within %s\n%s", d, p.logs())
}

func (p *nriPlugin) metricsText(t testing.TB) string {
	r, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Body.Close() }()
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

const gpuScript = `ls /dev/ | grep nvidia | sort | tr '\n' ' '; echo;
` + linkOfLibcuda + `; ldconfig -p | grep -m1 'libcuda.so.1 (libc6,x86-64)';
ldconfig -p | grep -c 'libcuda.so.1 ' ; cuda-probe; echo CAPS=$NVIDIA_DRIVER_CAPABILITIES VISIBLE=$NVIDIA_VISIBLE_DEVICES`

func TestContainerdNRI(t *testing.T) { testContainerdNRI(t, "") }

// TestContainerd17NRI runs the same suite on containerd 1.7, with NRI turned on by the
// shipped snippet: its NRI is older, and the plugin must work there unchanged.
func TestContainerd17NRI(t *testing.T) { testContainerdNRI(t, "1.7") }

func testContainerdNRI(t *testing.T, release string) {
	driverRoot := testutil.DriverRoot(t, "debian-535")
	c := newContainerdOf(t, release)
	c.start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	v, err := c.cri.Version(ctx, &cri.VersionRequest{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"": "v2.", "1.7": "1.7."}[release]; !strings.HasPrefix(strings.TrimPrefix(v.RuntimeVersion, "v"), strings.TrimPrefix(want, "v")) {
		t.Fatalf("containerd %s, want %s", v.RuntimeVersion, want)
	}
	t.Logf("containerd %s", v.RuntimeVersion)
	c.importImages()
	bin := testutil.BuildNVBind(t, t.TempDir())
	plugin := startPlugin(t, bin, c.NRISock, driverRoot)

	t.Run("annotation selects GPU 1", func(t *testing.T) {
		p := c.runPod("gpu1", "default", map[string]string{"gpus.nvbind.io": "1"})
		defer c.stopPod(p)
		out, err := c.run(p, "cuda", gpuScript, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("container output:\n%s", out)
		for _, want := range []string{"nvidia-uvm nvidia-uvm-tools nvidia1 nvidiactl", "LINK=nvidia/current/libcuda.so.535.261.03", "=> " + layout.Dest + "/compute+utility/",
			"cuda-probe: loaded libcuda.so.1, CUDA driver API 12020", "CAPS=compute,utility VISIBLE=void"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		if strings.Contains(out, "nvidia0") {
			t.Error("GPU 0 was injected into a pod that asked for GPU 1")
		}
		if !strings.Contains(out, "\n2\n") { // two ld cache lines for libcuda.so.1
			t.Error("ldconfig -p does not list libcuda.so.1")
		}
	})

	// the plugin runs as root on the host: it runs the driver's steps itself, at
	// StartContainer, and names no hook
	t.Run("the plugin's steps, on a read-only root and for another user too", func(t *testing.T) {
		if m := plugin.metricsText(t); !strings.Contains(m, "nvbind_start_container_duration_seconds_count 1\n") ||
			!strings.Contains(m, "nvbind_start_container_failures_total 0\n") {
			t.Fatalf("the plugin did not run the steps of the first GPU container:\n%s", m)
		}
		p := c.runPod("ro", "default", map[string]string{"gpus.nvbind.io": "0"})
		defer c.stopPod(p)
		p.readOnlyRoot = true
		out, err := c.run(p, "cuda", gpuScript+`; touch /x 2>/dev/null && echo ROOT-WRITABLE || echo ROOT-READ-ONLY`, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("container output:\n%s", out)
		for _, want := range []string{"nvidia0 nvidiactl", "LINK=nvidia/current/libcuda.so.535.261.03", "=> " + layout.Dest + "/compute+utility/",
			"cuda-probe: loaded libcuda.so.1", "\n2\n", "\nROOT-READ-ONLY"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		// a container of another user (runc's init takes it before the start)
		p.readOnlyRoot, p.uid = false, 1000
		out, err = c.run(p, "cuda-user", gpuScript+`; id -u`, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"nvidia0 nvidiactl", "cuda-probe: loaded libcuda.so.1", "\n2\n", "\n1000"} {
			if !strings.Contains(out, want) {
				t.Errorf("uid 1000: output lacks %q:\n%s", want, out)
			}
		}
		if m := plugin.metricsText(t); !strings.Contains(m, "nvbind_start_container_duration_seconds_count 3\n") || !strings.Contains(m, "nvbind_start_container_failures_total 0\n") {
			t.Errorf("the plugin did not run the steps of the read-only and the uid 1000 containers:\n%s", m)
		}
	})

	t.Run("container env NVIDIA_VISIBLE_DEVICES=0", func(t *testing.T) {
		p := c.runPod("env0", "default", nil)
		defer c.stopPod(p)
		out, err := c.run(p, "cuda", gpuScript, map[string]string{"NVIDIA_VISIBLE_DEVICES": "0", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility,video"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("container output:\n%s", out)
		if !strings.Contains(out, "nvidia0 nvidiactl") || strings.Contains(out, "nvidia1") || !strings.Contains(out, "CAPS=compute,utility,video") {
			t.Errorf("unexpected devices or capabilities:\n%s", out)
		}
	})

	t.Run("unannotated pod gets nothing", func(t *testing.T) {
		p := c.runPod("plain", "default", nil)
		defer c.stopPod(p)
		out, err := c.run(p, "plain", `ls /dev | grep -c nvidia; test -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 && echo HAS-LIBCUDA; echo done`, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out, "0\n") || strings.Contains(out, "HAS-LIBCUDA") || !strings.Contains(out, "done") {
			t.Errorf("a plain container got GPU parts:\n%s", out)
		}
	})

	t.Run("bad request fails with a clear message", func(t *testing.T) {
		p := c.runPod("bad", "default", map[string]string{"gpus.nvbind.io/container.cuda": "7"})
		defer c.stopPod(p)
		_, err := c.run(p, "cuda", "true", nil, nil)
		if err == nil {
			t.Fatal("a request for a GPU the node lacks was accepted")
		}
		for _, want := range []string{`annotation "gpus.nvbind.io/container.cuda"`, `GPU "7" is not on this node`, "valid: all, none, 0, 1"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
		_, err = c.run(p, "cuda2", "true", map[string]string{"NVIDIA_VISIBLE_DEVICES": "0", "NVIDIA_REQUIRE_CUDA": "cuda>=12.4"}, nil)
		if err == nil || !strings.Contains(err.Error(), `unmet requirement NVIDIA_REQUIRE_CUDA="cuda>=12.4"`) || !strings.Contains(err.Error(), "12.2") {
			t.Errorf("unmet requirement: %v", err)
		}
	})

	t.Run("containerd restarts under the plugin", func(t *testing.T) {
		c.restart()
		plugin.waitHealthy(t, 30*time.Second)
		p := c.runPod("after", "default", map[string]string{"gpus.nvbind.io": "gpu0"})
		defer c.stopPod(p)
		out, err := c.run(p, "cuda", gpuScript, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "nvidia0 nvidiactl") || !strings.Contains(out, "cuda-probe: loaded") {
			t.Errorf("after the restart:\n%s", out)
		}
		if m := plugin.metricsText(t); !strings.Contains(m, "nvbind_runtime_reconnects_total 1") ||
			!strings.Contains(m, `nvbind_requests_total{outcome="refused",reason="unknown_device",source="annotation"} 1`) {
			t.Errorf("metrics:\n%s", m)
		}
	})
}

// TestContainerdPrivileged: a privileged container has every host device, NVIDIA's nodes
// among them, but none of the driver's files; one that asks for a GPU gets the files, the
// hook and the env of its request, and one that asks for nothing gets nothing. The host's
// /dev gets the fixture's NVIDIA nodes for the test (those it lacks, removed after).
func TestContainerdPrivileged(t *testing.T) {
	driverRoot := testutil.DriverRoot(t, "debian-535")
	for _, n := range []string{"nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"} {
		host := filepath.Join("/dev", n)
		if _, err := os.Lstat(host); err == nil {
			continue // a GPU host's own node
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(driverRoot, "dev", n), &st); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(host, unix.S_IFCHR|0o666, int(st.Rdev)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Remove(host) })
	}
	c := startContainerd(t)
	c.importImages()
	bin := testutil.BuildNVBind(t, t.TempDir())
	startPlugin(t, bin, c.NRISock, driverRoot)
	p := c.runPodWith("privileged", "default", nil, true)
	defer c.stopPod(p)
	out, err := c.run(p, "gpu", gpuScript, map[string]string{"NVIDIA_VISIBLE_DEVICES": "1"}, nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.log())
	}
	t.Logf("privileged container asking for GPU 1:\n%s", out)
	for _, want := range []string{"nvidia0 nvidia1", "LINK=nvidia/current/libcuda.so.535.261.03", "=> " + layout.Dest + "/compute+utility/",
		"cuda-probe: loaded libcuda.so.1", "CAPS=compute,utility"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	out, err = c.run(p, "plain", gpuScript, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "LINK=\n") || strings.Contains(out, "loaded libcuda") {
		t.Errorf("a privileged container that asks for nothing got the driver:\n%s", out)
	}
}

// BenchmarkContainerdCreateStart times create+start through containerd's CRI with the
// nvbind NRI plugin registered, for a container with every GPU and capability, against a
// plain one: through the NRI plugin (the layout, the default), and through containerd's own
// CDI injection (the CRI's CDIDevices, as the kubelet passes a device plugin's CDI names)
// of nvbind's spec with the layout (and with its hook at createContainer instead of
// HookStage), nvbind's spec with one mount per file, and NVIDIA's
// spec for the same root (nvidia-ctk cdi generate, when $NVBIND_NVIDIA_TOOLKIT has it).
// Interleaved, so that drift of the machine hits every case alike; medians, and what each
// adds over plain.
func BenchmarkContainerdCreateStart(b *testing.B) {
	testutil.KeepHostDevNodes(b) // NVIDIA's tools make /dev/nvidiactl on the host
	driverRoot := testutil.DriverRoot(b, "debian-535")
	c := startContainerd(b)
	c.importImages()
	bin := testutil.BuildNVBind(b, b.TempDir())
	hook := testutil.HookBinary(bin)
	// the pod's namespace may ask for every GPU: elsewhere NVIDIA_VISIBLE_DEVICES=all in the
	// env is ignored, and the case would time a plain container
	plugin := startPlugin(b, bin, c.NRISock, driverRoot, "--all-gpus-namespaces", "default")
	cdiDir := filepath.Join(c.dir, "cdi")
	layoutSpec := writeSpec(b, driverRoot, cdiDir, hook, spec.Options{Vendor: "layout.nvbind.io"})
	createContainerVariant(b, layoutSpec, filepath.Join(cdiDir, "create-container.yaml"), "create-container.nvbind.io")
	writeSpecFiles(b, driverRoot, cdiDir, hook, spec.Options{Vendor: "per-file.nvbind.io"})
	type bcase struct {
		name string
		env  map[string]string
		cdi  []string
	}
	// every GPU and capability: NVIDIA's management-mode spec has the one device "all"
	all := map[string]string{"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "all"}
	cases := []bcase{
		{name: "plain"},
		{name: "nri-layout", env: all},
		{name: "cdi-layout", cdi: []string{"layout.nvbind.io/gpu=all"}},
		{name: "cdi-layout-hook-at-createContainer", cdi: []string{"create-container.nvbind.io/gpu=all"}},
		{name: "cdi-per-file", cdi: []string{"per-file.nvbind.io/gpu=all"}},
	}
	if toolkit := nvidiaToolkitDir(); toolkit != "" {
		out, err := exec.Command(filepath.Join(toolkit, "nvidia-ctk"), "cdi", "generate", "--mode=management", "--driver-root", driverRoot,
			"--dev-root", driverRoot, "--nvidia-cdi-hook-path", filepath.Join(toolkit, "nvidia-cdi-hook"), "--vendor", "nvidia-toolkit.com",
			"--output", filepath.Join(cdiDir, "nvidia-toolkit.yaml")).CombinedOutput()
		if err != nil {
			b.Fatalf("nvidia-ctk: %v\n%s", err, out)
		}
		cases = append(cases, bcase{name: "cdi-nvidia-spec", cdi: []string{"nvidia-toolkit.com/gpu=all"}})
	}
	p := c.runPod("timing", "default", nil)
	defer c.stopPod(p)
	// the env case gets the GPU, its files and the layout before it is timed
	out, err := c.run(p, "check", "test -c /dev/nvidiactl && test -e /usr/bin/nvidia-smi && grep -q ' /usr/local/nvbind/' /proc/self/mountinfo && echo gpu", all, nil)
	if err != nil || out != "gpu" {
		b.Fatalf("the NRI case got no GPU, files or layout: %q, %v\n%s", out, err, c.log())
	}
	once := func(name string, tc bcase) time.Duration {
		start := time.Now()
		id, err := c.createStart(p, name, "true", tc.env, nil, tc.cdi...)
		d := time.Since(start)
		if err != nil {
			b.Fatalf("%s: %v", tc.name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = c.cri.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: id})
		_, _ = c.cri.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: id})
		return d
	}
	times := make([][]time.Duration, len(cases))
	i := 0
	for b.Loop() {
		i++
		for k, tc := range cases {
			times[k] = append(times[k], once(fmt.Sprintf("%s%d", tc.name, i), tc))
		}
	}
	plain := median(times[0])
	b.ReportMetric(plain, "plain-ms")
	// the plugin's own time on the driver's steps at StartContainer, a mean over every
	// GPU container it started
	m := plugin.metricsText(b)
	sum, count := metricValue(m, "nvbind_start_container_duration_seconds_sum"), metricValue(m, "nvbind_start_container_duration_seconds_count")
	if count == 0 {
		b.Fatalf("the plugin ran no driver steps:\n%s", m)
	}
	b.ReportMetric(sum/count*1e3, "nri-steps-ms")
	for k, tc := range cases[1:] {
		b.ReportMetric(median(times[k+1])-plain, tc.name+"-added-ms")
		b.ReportMetric(pairedMedian(times, k+1), tc.name+"-paired-ms")
	}
}

// TestContainerdPreRegisteredCDIMode has containerd start the plugin itself from its
// plugin folder (NRI_PLUGIN_* set, a connected socket handed over) in CDI mode: the plugin
// writes the spec into containerd's CDI folder and answers with CDI device names, which
// containerd resolves.
func TestContainerdPreRegisteredCDIMode(t *testing.T) {
	driverRoot := testutil.DriverRoot(t, "debian-535")
	bin := testutil.BuildNVBind(t, t.TempDir())
	c := newContainerd(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	logFile := filepath.Join(c.dir, "plugin.log")
	script := fmt.Sprintf("#!/bin/sh\nexec %s nri --driver-root %s --dev-root %s --no-nvml --hook-path %s --cdi-mode --cdi-spec-dir %s --metrics-address %s --log-level debug --layout-dir %s --dev-char-links=false 2>>%s\n",
		bin, driverRoot, driverRoot, testutil.HookBinary(bin), filepath.Join(c.dir, "cdi"), addr, testLayouts(t), logFile)
	if err := os.MkdirAll(filepath.Join(c.dir, "plugins"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, "plugins", "10-nvbind"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	c.start()
	c.importImages()
	plugin := &nriPlugin{metrics: addr}
	plugin.waitHealthy(t, 30*time.Second)
	defer func() {
		if t.Failed() {
			data, _ := os.ReadFile(logFile)
			t.Logf("plugin log:\n%s", data)
		}
	}()
	p := c.runPod("cdimode", "default", map[string]string{"gpus.nvbind.io": "1"})
	defer c.stopPod(p)
	out, err := c.run(p, "cuda", gpuScript, nil, nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.log())
	}
	t.Logf("container output:\n%s", out)
	if !strings.Contains(out, "nvidia1 nvidiactl") || strings.Contains(out, "nvidia0") || !strings.Contains(out, "cuda-probe: loaded libcuda.so.1") {
		t.Errorf("CDI-mode container:\n%s", out)
	}
	data, _ := os.ReadFile(logFile)
	if !strings.Contains(string(data), "pre_registered=true") || !strings.Contains(string(data), "CDI spec refreshed") {
		t.Errorf("plugin log:\n%s", data)
	}
}

// metricValue is the value of a series without labels in Prometheus text (0 if none).
func metricValue(text, name string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
