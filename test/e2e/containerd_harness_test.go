package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/nvbind/nvbind/test/testutil"
)

const (
	busyboxImage = "nvbind.test/busybox:1"
	pauseImage   = "nvbind.test/pause:1"
)

// findTool looks a program up in PATH, then in the tool cache test/deps.sh fills.
func findTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	cache := os.Getenv("NVBIND_CACHE")
	if cache == "" {
		cache = "/var/cache/nvbind"
	}
	p := filepath.Join(cache, "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if os.Getenv(testutil.EnvRoot) == "1" {
		t.Fatalf("%s is not installed: run make deps", name)
	}
	t.Skipf("%s is not installed: run make deps", name)
	return ""
}

// containerd is a private containerd with NRI on a socket of its own, under one short
// temp folder, driven over CRI.
type containerd struct {
	t       testing.TB
	dir     string
	bin     string
	ctr     string
	cmd     *exec.Cmd
	cri     cri.RuntimeServiceClient
	conn    *grpc.ClientConn
	sock    string
	NRISock string
}

func startContainerd(t testing.TB) *containerd {
	t.Helper()
	c := newContainerd(t)
	c.start()
	return c
}

// newContainerd writes a containerd's configuration under a short temp folder; start
// runs it.
func newContainerd(t testing.TB) *containerd { return newContainerdOf(t, "") }

// containerd17 is where test/deps.sh builds containerd 1.7, beside the 2.x of the tool
// cache: the release Debian 13 and Ubuntu 24.04 ship, with NRI off by default.
func containerd17(t testing.TB) string {
	t.Helper()
	cache := os.Getenv("NVBIND_CACHE")
	if cache == "" {
		cache = "/var/cache/nvbind"
	}
	dir := filepath.Join(cache, "containerd-1.7", "bin")
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			if os.Getenv(testutil.EnvRoot) == "1" {
				t.Fatalf("containerd 1.7 is not built: run make deps (test/deps.sh containerd): %v", err)
			}
			t.Skip("containerd 1.7 is not built: run make deps")
		}
	}
	return dir
}

// newContainerdOf is newContainerd for a release: "" (2.x, configuration version 3) or
// "1.7" (version 2, NRI turned on by manifests/runtime/containerd-1.7-nri.toml as shipped).
func newContainerdOf(t testing.TB, release string) *containerd {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "runc")
	var bin, ctr string
	switch release {
	case "":
		bin, ctr = findTool(t, "containerd"), findTool(t, "ctr")
		findTool(t, "containerd-shim-runc-v2")
	case "1.7":
		dir := containerd17(t)
		bin, ctr = filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr")
	default:
		t.Fatalf("containerd release %q (valid: \"\", 1.7)", release)
	}
	dir, err := os.MkdirTemp("", "nvb") //nolint:usetesting // unix socket paths under it must stay short
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd{t: t, dir: dir, bin: bin, ctr: ctr, sock: filepath.Join(dir, "c.sock"), NRISock: filepath.Join(dir, "nri.sock")}
	t.Cleanup(c.cleanup)
	cfg := testutil.ContainerdConfig{Dir: dir, Socket: c.sock, NRISocket: c.NRISock, PluginDir: filepath.Join(dir, "plugins"),
		PauseImage: pauseImage, CDIDir: filepath.Join(dir, "cdi")}
	config := cfg.TOML()
	if release == "1.7" {
		snippet, err := os.ReadFile("../../manifests/runtime/containerd-1.7-nri.toml")
		if err != nil {
			t.Fatal(err)
		}
		if config, err = cfg.TOML17(string(snippet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *containerd) start() {
	c.t.Helper()
	logf, err := os.OpenFile(filepath.Join(c.dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	c.cmd = exec.Command(c.bin, "--config", filepath.Join(c.dir, "config.toml"))
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(c.bin)+":"+os.Getenv("PATH"))
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+c.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		c.t.Fatal(err)
	}
	c.conn, c.cri = conn, cri.NewRuntimeServiceClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.cri.Version(ctx, &cri.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("containerd did not come up: %v\n%s", err, c.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *containerd) stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
	_ = c.conn.Close()
	c.cmd = nil
}

func (c *containerd) restart() {
	c.stop()
	c.start()
}

func (c *containerd) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if c.cmd != nil {
		if pods, err := c.cri.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.Items {
				_, _ = c.cri.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.Id})
				_, _ = c.cri.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.Id})
			}
		}
	}
	c.stop()
	// unmount what a killed containerd may have left, then remove the folder
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var mounts []string
		sc := bufio.NewScanner(strings.NewReader(string(data)))
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
	if !c.t.Failed() {
		_ = os.RemoveAll(c.dir)
	} else {
		c.t.Logf("containerd folder kept: %s", c.dir)
	}
}

func (c *containerd) log() string {
	data, _ := os.ReadFile(filepath.Join(c.dir, "containerd.log"))
	lines := strings.Split(string(data), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// importImages builds the busybox/glibc test image and a static pause image and imports
// them into the k8s.io namespace.
func (c *containerd) importImages() {
	c.t.Helper()
	work := c.t.TempDir()
	rootfs := filepath.Join(work, "rootfs")
	testutil.BuildRootfs(c.t, rootfs)
	testutil.OCIImageTar(c.t, rootfs, busyboxImage, []string{"/bin/sh"}, filepath.Join(work, "busybox.tar"))
	testutil.PauseImageTar(c.t, pauseImage, filepath.Join(work, "pause.tar"))
	for _, tarball := range []string{"busybox.tar", "pause.tar"} {
		out, err := exec.Command(c.ctr, "--address", c.sock, "-n", "k8s.io", "images", "import", "--snapshotter", "overlayfs",
			filepath.Join(work, tarball)).CombinedOutput()
		if err != nil {
			c.t.Fatalf("ctr images import %s: %v\n%s", tarball, err, out)
		}
	}
}

type pod struct {
	id  string
	cfg *cri.PodSandboxConfig
	// privileged: the pod and its containers are privileged (every host device)
	privileged bool
	// readOnlyRoot: its containers' roots are read-only (readOnlyRootFilesystem)
	readOnlyRoot bool
	// uid: its containers run as this user (runAsUser), where not 0
	uid int64
}

func (c *containerd) runPod(name, namespace string, annotations map[string]string) pod {
	c.t.Helper()
	return c.runPodWith(name, namespace, annotations, false)
}

func (c *containerd) runPodWith(name, namespace string, annotations map[string]string, privileged bool) pod {
	c.t.Helper()
	cfg := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Namespace: namespace, Uid: name + "-uid"},
		Annotations:  annotations,
		LogDirectory: filepath.Join(c.dir, "logs", name),
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			Privileged:       privileged,
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE}}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := c.cri.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		c.t.Fatalf("RunPodSandbox %s: %v\n%s", name, err, c.log())
	}
	return pod{id: r.PodSandboxId, cfg: cfg, privileged: privileged}
}

func (c *containerd) stopPod(p pod) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = c.cri.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.id})
	_, _ = c.cri.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.id})
}

// createStart creates and starts a container; it returns its id.
func (c *containerd) createStart(p pod, name, script string, env map[string]string, annotations map[string]string, cdiDevices ...string) (string, error) {
	cfg := &cri.ContainerConfig{
		Metadata:    &cri.ContainerMetadata{Name: name},
		Image:       &cri.ImageSpec{Image: busyboxImage},
		Command:     []string{"/bin/sh", "-c", script},
		LogPath:     name + ".log",
		Annotations: annotations,
	}
	if p.privileged || p.readOnlyRoot || p.uid != 0 {
		cfg.Linux = &cri.LinuxContainerConfig{SecurityContext: &cri.LinuxContainerSecurityContext{Privileged: p.privileged, ReadonlyRootfs: p.readOnlyRoot}}
		if p.uid != 0 {
			cfg.Linux.SecurityContext.RunAsUser = &cri.Int64Value{Value: p.uid}
		}
	}
	for _, d := range cdiDevices { // resolved by containerd from its CDI folder, as the kubelet asks
		cfg.CDIDevices = append(cfg.CDIDevices, &cri.CDIDevice{Name: d})
	}
	for k, v := range env {
		cfg.Envs = append(cfg.Envs, &cri.KeyValue{Key: k, Value: []byte(v)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := c.cri.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.cfg})
	if err != nil {
		return "", err
	}
	if _, err := c.cri.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: r.ContainerId}); err != nil {
		return r.ContainerId, err
	}
	return r.ContainerId, nil
}

// run creates, starts and waits for a container, and returns what it printed.
func (c *containerd) run(p pod, name, script string, env, annotations map[string]string) (string, error) {
	id, err := c.createStart(p, name, script, env, annotations)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		st, err := c.cri.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return "", err
		}
		if st.Status.State == cri.ContainerState_CONTAINER_EXITED {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, _ = c.cri.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: id})
	data, err := os.ReadFile(filepath.Join(p.cfg.LogDirectory, name+".log"))
	if err != nil {
		return "", err
	}
	// CRI log lines: "<time> <stream> <tag> <text>"
	var out []string
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if f := strings.SplitN(line, " ", 4); len(f) == 4 {
			out = append(out, f[3])
		}
	}
	return strings.Join(out, "\n"), nil
}
