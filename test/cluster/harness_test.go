package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/nvbind/nvbind/test/testutil"
)

// The releases the cluster test runs on: the one test/k8s/build.sh builds by default,
// and the newest the module proxy serves (make k8s builds both).
const (
	k8sVersion    = "v1.34.4"
	k8sVersionNew = "v1.37.2"
)

const (
	nodeName   = "nvbind-node"
	token      = "nvbind-test-token"
	podSubnet  = "10.244.77.0/24"
	pauseImage = "registry.k8s.io/pause:3.10.1"
	// cudaImage is the image the example pods name; the test imports a small stand-in
	// (busybox, glibc, ldconfig) under that name, since no registry is reachable.
	cudaImage = "nvcr.io/nvidia/cuda:12.2.2-base-ubuntu22.04"
)

// cluster is a single-node Kubernetes cluster under one short temp folder.
type cluster struct {
	t          testing.TB
	version    string // Kubernetes
	dir        string
	bin        string // Kubernetes binaries
	cbin       string // containerd's
	kubeconfig string
	procs      map[string]*proc
	order      []string
	csock      string
	nriDir     string
	cdiDir     string
	podLogs    string
	pki        pki
	apiPort    int
	validator  string // containerd's NRI default-validator table
	// runtimeBin holds nvbind's runtime wrapper, installed by nvbind install before
	// containerd starts: nvbind-guard is the runc handler's binary, nvbind-runtime the
	// handler of the RuntimeClass nvbind; runtimeConfig is their configuration
	runtimeBin, runtimeConfig string
}

func k8sBin(t testing.TB, version string) string {
	t.Helper()
	dir := os.Getenv("NVBIND_K8S_BIN")
	if dir == "" || version != k8sVersion {
		cache := os.Getenv("NVBIND_CACHE")
		if cache == "" {
			cache = "/var/cache/nvbind"
		}
		dir = filepath.Join(cache, "k8s", version, "bin")
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			if os.Getenv(testutil.EnvRequireFixtures) == "1" {
				t.Fatalf("%s is missing from %s: run test/k8s/build.sh", b, dir)
			}
			t.Skipf("%s is missing from %s: run test/k8s/build.sh", b, dir)
		}
	}
	return dir
}

func cacheBin(t testing.TB, name string) string {
	t.Helper()
	cache := os.Getenv("NVBIND_CACHE")
	if cache == "" {
		cache = "/var/cache/nvbind"
	}
	p := filepath.Join(cache, "bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is not installed: run make deps", name)
	}
	return p
}

// controllers are the kube-controller-manager's: all but node IPAM (no pod CIDRs are
// allocated here) and, before 1.37 (which dropped them from the manager), the cloud ones.
func controllers(version string) string {
	if version == k8sVersion {
		return "*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle"
	}
	return "*,-nodeipam"
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

func newCluster(t testing.TB, version string) *cluster {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "runc")
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Fatal("Debian's containernetworking-plugins are not installed: run make deps")
	}
	bin := k8sBin(t, version)
	dir, err := os.MkdirTemp("", "nvbk") //nolint:usetesting // socket paths under it must stay short
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, version: version, dir: dir, bin: bin, cbin: filepath.Dir(cacheBin(t, "containerd")), procs: map[string]*proc{},
		csock: filepath.Join(dir, "containerd.sock"), nriDir: filepath.Join(dir, "nri"), cdiDir: filepath.Join(dir, "cdi"),
		podLogs: filepath.Join(dir, "pod-logs")}
	for _, d := range []string{"logs", "nri", "cdi", "cni", "etcd", "kubelet", "pod-logs", "pki"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(c.cleanup)
	// HostToContainer propagation needs a shared or slave source, as on systemd hosts
	if out, err := exec.Command("mount", "--make-rshared", "/").CombinedOutput(); err != nil {
		t.Fatalf("mount --make-rshared /: %v %s", err, out)
	}
	c.pki = newPKI(t, filepath.Join(dir, "pki"))
	return c
}

// start launches a component with its log in logs/<name>.log.
func (c *cluster) start(name string, args ...string) {
	c.t.Helper()
	logf, err := os.OpenFile(filepath.Join(c.dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	bin := filepath.Join(c.bin, name)
	if name == "containerd" {
		bin = filepath.Join(c.cbin, name)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+c.cbin+":"+os.Getenv("PATH"))
	if name == "containerd" && c.runtimeConfig != "" {
		// the shims, and so nvbind's runtime wrapper, inherit containerd's environment
		cmd.Env = append(cmd.Env, "NVBIND_RUNTIME_CONFIG="+c.runtimeConfig)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(p.done) }()
	if !slices.Contains(c.order, name) {
		c.order = append(c.order, name)
	}
	c.procs[name] = p
}

// proc is a running component; done closes when it has exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// stop ends a component: SIGTERM, then SIGKILL after 15 s.
func (c *cluster) stop(name string) {
	p := c.procs[name]
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	delete(c.procs, name)
}

func (c *cluster) logTail(name string, n int) string {
	data, _ := os.ReadFile(filepath.Join(c.dir, "logs", name+".log"))
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *cluster) cleanup() {
	if c.t.Failed() {
		for _, name := range c.order {
			c.t.Logf("--- last lines of %s.log:\n%s", name, c.logTail(name, 30))
		}
		if out, err := c.kubectlErr("get", "pods,ds,events", "-A", "-o", "wide"); err == nil {
			c.t.Logf("--- kubectl get pods,ds,events -A:\n%s", out)
		}
	}
	// pods first, through the kubelet, so their mounts and network go away
	if _, ok := c.procs["kubelet"]; ok {
		_, _ = c.kubectlErr("delete", "pods", "--all", "-A", "--grace-period=0", "--force", "--timeout=30s")
	}
	for i := len(c.order) - 1; i >= 0; i-- {
		if c.order[i] == "containerd" {
			c.removeSandboxes()
		}
		c.stop(c.order[i])
	}
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var mounts []string
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) > 4 && strings.HasPrefix(f[4], c.dir+"/") {
				mounts = append(mounts, f[4])
			}
		}
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
	_ = exec.Command("ip", "link", "delete", "nvbt0").Run()
	if c.t.Failed() {
		c.t.Logf("cluster folder kept with every component's log: %s/logs", c.dir)
		return
	}
	_ = os.RemoveAll(c.dir)
}

// removeSandboxes stops and removes, over CRI, what the kubelet left in containerd.
func (c *cluster) removeSandboxes() {
	conn, err := grpc.NewClient("unix://"+c.csock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer func() { _ = conn.Close() }()
	rs := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pods, err := rs.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		return
	}
	for _, p := range pods.Items {
		_, _ = rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.Id})
		_, _ = rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.Id})
	}
}

// startContainerd writes containerd's configuration (CRI with CNI, CDI from cdiDir, NRI
// on nriDir/nri.sock with the default validator as c.validator says) and starts it.
func (c *cluster) startContainerd() {
	c.t.Helper()
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "nvbind-test", "plugins": [
  {"type": "bridge", "bridge": "nvbt0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "dataDir": %q}}]}
`, podSubnet, filepath.Join(c.dir, "ipam"))
	if err := os.WriteFile(filepath.Join(c.dir, "cni", "10-nvbind-test.conflist"), []byte(conflist), 0o644); err != nil {
		c.t.Fatal(err)
	}
	config := testutil.ContainerdConfig{Dir: filepath.Join(c.dir, "containerd"), Socket: c.csock,
		NRISocket: filepath.Join(c.nriDir, "nri.sock"), PluginDir: filepath.Join(c.dir, "nri-plugins"),
		PauseImage: pauseImage, CDIDir: c.cdiDir, CNIConfDir: filepath.Join(c.dir, "cni"), Extra: c.validator}
	if c.runtimeBin != "" {
		// as manifests/runtime/containerd-2.x-guard.toml and containerd-runtime-class.toml
		// configure a node
		config.RuncBinary = filepath.Join(c.runtimeBin, "nvbind-guard")
		config.RuncOptions = guardAnnotations
		config.Runtimes = fmt.Sprintf(`    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvbind]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ["gpus.nvbind.io", "gpus.nvbind.io/*", "capabilities.nvbind.io", "capabilities.nvbind.io/*"]
      container_annotations = ["cdi.k8s.io/*"]
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvbind.options]
        BinaryName = %q
`, filepath.Join(c.runtimeBin, "nvbind-runtime"))
	}
	config.Dir = filepath.Join(c.dir, "containerd")
	cfg := filepath.Join(c.dir, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(config.TOML()), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.start("containerd", "--config", cfg)
	c.waitFor("containerd", 30*time.Second, func() error {
		_, err := c.ctr("version")
		return err
	})
}

func (c *cluster) ctr(args ...string) (string, error) {
	a := append([]string{"--address", c.csock, "-n", "k8s.io"}, args...)
	out, err := exec.Command(filepath.Join(c.cbin, "ctr"), a...).CombinedOutput()
	return string(out), err
}

// waitFor polls check until it succeeds or d passes.
func (c *cluster) waitFor(what string, d time.Duration, check func() error) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not ready after %s: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startControlPlane starts etcd, the API server, the controller manager and the scheduler
// and writes the admin kubeconfig.
func (c *cluster) startControlPlane() {
	c.t.Helper()
	etcdClient, etcdPeer := freePort(c.t), freePort(c.t)
	c.start("etcd", "--data-dir", filepath.Join(c.dir, "etcd"), "--name", "nvbind-test",
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer),
		"--initial-cluster", fmt.Sprintf("nvbind-test=http://127.0.0.1:%d", etcdPeer),
		"--unsafe-no-fsync", "--log-level", "warn")
	tokens := filepath.Join(c.dir, "pki", "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
	c.apiPort = freePort(c.t)
	c.start("kube-apiserver", "--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(c.apiPort),
		"--tls-cert-file", c.pki.certFile, "--tls-private-key-file", c.pki.keyFile,
		"--token-auth-file", tokens, "--authorization-mode", "RBAC",
		"--service-account-key-file", c.pki.saPub, "--service-account-signing-key-file", c.pki.saKey,
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-cluster-ip-range", "10.96.0.0/24",
		"--allow-privileged=true", "--endpoint-reconciler-type", "none", "--v", "1")
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:%d", certificate-authority-data: %s}
users:
- name: admin
  user: {token: %s}
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, c.apiPort, base64.StdEncoding.EncodeToString(c.pki.caPEM), token)
	c.kubeconfig = filepath.Join(c.dir, "kubeconfig")
	if err := os.WriteFile(c.kubeconfig, []byte(kubeconfig), 0o600); err != nil {
		c.t.Fatal(err)
	}
	c.waitFor("kube-apiserver", 90*time.Second, func() error {
		out, err := c.kubectlErr("get", "--raw", "/readyz")
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	c.start("kube-controller-manager", "--kubeconfig", c.kubeconfig, "--leader-elect=false",
		"--service-account-private-key-file", c.pki.saKey, "--root-ca-file", c.pki.caFile,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(freePort(c.t)),
		"--controllers", controllers(c.version), "--v", "1")
	c.start("kube-scheduler", "--kubeconfig", c.kubeconfig, "--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(freePort(c.t)), "--v", "1")
}

// startKubelet starts the node's kubelet on containerd and waits for the node to be Ready.
func (c *cluster) startKubelet() {
	c.t.Helper()
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: 127.0.0.1
port: %d
healthzBindAddress: 127.0.0.1
healthzPort: %d
readOnlyPort: 0
failSwapOn: false
localStorageCapacityIsolation: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
`, c.csock, c.podLogs, freePort(c.t), freePort(c.t))
	cfg := filepath.Join(c.dir, "kubelet.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.start("kubelet", "--config", cfg, "--kubeconfig", c.kubeconfig, "--root-dir", filepath.Join(c.dir, "kubelet"),
		"--hostname-override", nodeName, "--v", "1")
	c.waitFor("node "+nodeName+" Ready", 120*time.Second, func() error {
		out, err := c.kubectlErr("get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		if out != "True" {
			return fmt.Errorf("Ready=%q", out)
		}
		return nil
	})
}

// kubectl runs kubectl against the cluster and fails the test on an error.
func (c *cluster) kubectl(args ...string) string {
	c.t.Helper()
	out, err := c.kubectlErr(args...)
	if err != nil {
		c.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cluster) kubectlErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return strings.TrimSpace(string(out) + stderr.String()), err
	}
	return strings.TrimSpace(string(out)), nil
}

// getJSON runs kubectl get -o json into v.
func (c *cluster) getJSON(v any, args ...string) {
	c.t.Helper()
	out := c.kubectl(append([]string{"get", "-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("decode kubectl get %v: %v", args, err)
	}
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }

// guardAnnotations are the runc handler's annotation lines of
// manifests/runtime/containerd-2.x-guard.toml.
const guardAnnotations = `      pod_annotations = ["gpus.nvbind.io", "gpus.nvbind.io/*", "nvidia.cdi.k8s.io", "nvidia.cdi.k8s.io/*",
        "required-plugins.noderesource.dev", "required-plugins.noderesource.dev/*"]
      container_annotations = ["cdi.k8s.io/*", "allocated.gpus.nvbind.io", "allocated.gpus.nvbind.io/*"]
`
