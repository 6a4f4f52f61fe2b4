package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nvbind/nvbind/test/testutil"
)

// setup is a cluster with the test images imported and the node labelled, ready for
// `kubectl apply -k` of the test overlay.
type setup struct {
	*cluster
	repo, driverRoot, overlay, image string
	nvbind                           string // the binary in the image, built for the test
}

func newSetup(t testing.TB, version string) *setup {
	t.Helper()
	c := newCluster(t, version)
	s := &setup{cluster: c, repo: testutil.RepoRoot(t), driverRoot: filepath.Join(c.dir, "driver-root")}
	// a linked copy of the fixture root, so that a GPU can be taken away without touching
	// the fixture other tests read
	if out, err := exec.Command("cp", "-al", testutil.DriverRoot(t, "debian-535"), s.driverRoot).CombinedOutput(); err != nil {
		t.Fatalf("copy the driver root: %v\n%s", err, out)
	}
	s.image = s.manifestImage()
	images := s.buildImages()
	s.installRuntime()
	c.validator = "  [plugins.'io.containerd.nri.v1.nri'.default_validator]\n    enable = true\n"
	c.startContainerd()
	for _, tarball := range images {
		if out, err := c.ctr("images", "import", "--snapshotter", "overlayfs", tarball); err != nil {
			t.Fatalf("ctr images import %s: %v\n%s", tarball, err, out)
		}
	}
	c.startControlPlane()
	c.startKubelet()
	c.kubectl("label", "node", nodeName, "nvbind.io/gpu=true")
	s.writeOverlay()
	return s
}

// installRuntime puts nvbind's runtime wrapper on the node with nvbind install, as an
// administrator does before pointing containerd at it, and writes its configuration for
// the test's driver root.
func (s *setup) installRuntime() {
	s.t.Helper()
	prefix := filepath.Join(s.dir, "nvbind-runtime")
	out, err := exec.Command(s.nvbind, "install", "--components", "runtime", "--prefix", prefix).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nvbind-guard -> nvbind-runtime") {
		s.t.Fatalf("nvbind install --components runtime: %v\n%s", err, out)
	}
	s.runtimeBin = filepath.Join(prefix, "bin")
	runc, err := exec.LookPath("runc")
	if err != nil {
		s.t.Fatal(err)
	}
	s.runtimeConfig = filepath.Join(s.dir, "runtime.toml")
	conf := fmt.Sprintf("runtime = %q\ndriver-root = %q\ndev-root = %q\nno-nvml = true\nlayout-dir = %q\n", runc, s.driverRoot, s.driverRoot, s.layoutDir())
	if err := os.WriteFile(s.runtimeConfig, []byte(conf), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// manifestImage is the image manifests/base names: `make image` writes the same.
func (s *setup) manifestImage() string {
	s.t.Helper()
	data, err := os.ReadFile(filepath.Join(s.repo, "manifests/base/kustomization.yaml"))
	if err != nil {
		s.t.Fatal(err)
	}
	var k struct {
		Images []struct{ NewName, NewTag string } `json:"images"`
	}
	if err := yaml.Unmarshal(data, &k); err != nil || len(k.Images) != 1 {
		s.t.Fatalf("manifests/base images: %v", err)
	}
	return k.Images[0].NewName + ":" + k.Images[0].NewTag
}

// buildImages builds nvbind's image as `make image` does, the stand-in CUDA image and
// the pause image, and returns their archives.
func (s *setup) buildImages() []string {
	s.t.Helper()
	work := s.t.TempDir()
	nvbind := testutil.BuildNVBind(s.t, filepath.Join(work, "bin"))
	s.nvbind = nvbind
	name, tag, _ := strings.Cut(s.image, ":")
	mk := exec.Command("go", "run", "./internal/cmd/mkimage", "-bin", filepath.Dir(nvbind), "-name", name+":"+tag,
		"-version", tag, "-out", filepath.Join(work, "nvbind.tar"))
	mk.Dir = s.repo
	if out, err := mk.CombinedOutput(); err != nil {
		s.t.Fatalf("mkimage: %v\n%s", err, out)
	}
	rootfs := filepath.Join(work, "rootfs")
	testutil.BuildRootfs(s.t, rootfs)
	testutil.OCIImageTar(s.t, rootfs, cudaImage, []string{"/bin/sh"}, filepath.Join(work, "cuda.tar"))
	testutil.PauseImageTar(s.t, pauseImage, filepath.Join(work, "pause.tar"))
	return []string{filepath.Join(work, "nvbind.tar"), filepath.Join(work, "cuda.tar"), filepath.Join(work, "pause.tar")}
}

// writeOverlay writes the test's overlay of manifests/base: the fixture driver root (and
// its device nodes), and the cluster's own NRI and CDI folders. The image, the hook folder
// and everything else are the base's.
func (s *setup) writeOverlay() {
	s.t.Helper()
	s.overlay = s.writeOverlayOf("overlay", "manifests/base", "")
}

// writeOverlayOf writes an overlay of one of the repository's kustomizations with the
// test's paths, plus extra JSON patch lines.
func (s *setup) writeOverlayOf(name, of, extra string) string {
	s.t.Helper()
	dir := filepath.Join(s.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	base, err := filepath.Rel(dir, filepath.Join(s.repo, of))
	if err != nil {
		s.t.Fatal(err)
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
patches:
  - target: {kind: DaemonSet, name: nvbind}
    patch: |-
      - {op: replace, path: /spec/template/spec/volumes/0/hostPath/path, value: %s}
      - {op: replace, path: /spec/template/spec/volumes/2/hostPath/path, value: %s}
      - {op: replace, path: /spec/template/spec/volumes/3/hostPath/path, value: %s}
      - {op: replace, path: /spec/template/spec/containers/0/args/2, value: --driver-root=%s}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --dev-root=%s}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --dev-root-mount=/host/driver-root}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --allowed-namespaces=default}
      - {op: replace, path: /spec/template/spec/volumes/5/hostPath/path, value: %s/dev/char}
      - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/4/mountPath, value: /host/driver-root/dev/char}
      - {op: replace, path: /spec/template/spec/volumes/6/hostPath/path, value: %s}
      - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/5/mountPath, value: %s}
      - {op: replace, path: /spec/template/spec/containers/1/volumeMounts/2/mountPath, value: %s}
      - {op: replace, path: /spec/template/spec/volumes/7/hostPath/path, value: %s/.want}
      - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/6/mountPath, value: %s/.want}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --layout-dir=%s}
      - {op: replace, path: /spec/template/spec/containers/1/args/3, value: --driver-root=%s}
      - {op: add, path: /spec/template/spec/containers/1/args/-, value: --dev-root=%s}
      - {op: add, path: /spec/template/spec/containers/1/args/-, value: --dev-root-mount=/host/driver-root}
      - {op: add, path: /spec/template/spec/containers/1/args/-, value: --layout-dir=%s}
%s`, base, s.nriDir, s.driverRoot, s.cdiDir, s.driverRoot, s.driverRoot, s.driverRoot,
		s.runNVBind(), s.runNVBind(), s.runNVBind(), s.layoutDir(), s.layoutDir(), s.layoutDir(), s.driverRoot, s.driverRoot, s.layoutDir(), extra)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		s.t.Fatal(err)
	}
	return dir
}

// runNVBind stands for the host's /run/nvbind: the layout builder's mounts reach the
// host there, and the plugin sees them at the same path.
func (s *setup) runNVBind() string { return filepath.Join(s.dir, "run-nvbind") }

// layoutDir is the test's --layout-dir, for the DaemonSet and the runtime wrapper.
func (s *setup) layoutDir() string { return filepath.Join(s.runNVBind(), "driver") }

// install applies the overlay and waits for the DaemonSet to be Ready; it returns how
// long that took.
func (s *setup) install() time.Duration {
	s.t.Helper()
	start := time.Now()
	s.kubectl("apply", "-k", s.overlay)
	s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
	return time.Since(start)
}

type podList struct {
	Items []struct {
		Spec struct {
			Containers []struct {
				Args []string `json:"args"`
			} `json:"containers"`
		} `json:"spec"`
		Status struct {
			Phase             string            `json:"phase"`
			ContainerStatuses []containerStatus `json:"containerStatuses"`
		} `json:"status"`
	} `json:"items"`
}

type containerStatus struct {
	Name         string `json:"name"`
	Ready        bool   `json:"ready"`
	RestartCount int    `json:"restartCount"`
}

// pluginStatus is the status of the pod's nvbind container (the plugin), not of its
// layouts container.
func pluginStatus(statuses []containerStatus) containerStatus {
	for _, st := range statuses {
		if st.Name == "nvbind" {
			return st
		}
	}
	return containerStatus{}
}

type podStatus struct {
	Metadata struct {
		Name, Namespace, UID string
	} `json:"metadata"`
	Status struct {
		Phase             string `json:"phase"`
		PodIP             string `json:"podIP"`
		ContainerStatuses []struct {
			Name         string `json:"name"`
			RestartCount int    `json:"restartCount"`
			State        struct {
				Running *struct {
					StartedAt string `json:"startedAt"`
				} `json:"running"`
				Waiting *struct {
					Reason, Message string
				} `json:"waiting"`
				Terminated *struct {
					ExitCode int `json:"exitCode"`
				} `json:"terminated"`
			} `json:"state"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

func (c *cluster) pod(ns, name string) podStatus {
	c.t.Helper()
	var p podStatus
	c.getJSON(&p, "-n", ns, "pod", name)
	return p
}

// waitPhase waits for a pod to reach one of the phases.
func (c *cluster) waitPhase(ns, name string, d time.Duration, phases ...string) podStatus {
	c.t.Helper()
	var p podStatus
	c.waitFor(fmt.Sprintf("pod %s/%s %v", ns, name, phases), d, func() error {
		p = c.pod(ns, name)
		for _, ph := range phases {
			if p.Status.Phase == ph {
				return nil
			}
		}
		return fmt.Errorf("phase %s", p.Status.Phase)
	})
	return p
}

// logs reads a container's log from the kubelet's pod log folder: what the container
// printed, without the CRI log prefixes.
func (c *cluster) logs(ns, name, ctr string) string {
	c.t.Helper()
	p := c.pod(ns, name)
	files, _ := filepath.Glob(filepath.Join(c.podLogs, fmt.Sprintf("%s_%s_%s", ns, name, p.Metadata.UID), ctr, "*.log"))
	sort.Strings(files)
	var out []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			c.t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
			if f := strings.SplitN(line, " ", 4); len(f) == 4 {
				out = append(out, f[3])
			}
		}
	}
	return strings.Join(out, "\n")
}

// events returns the messages of a pod's events.
func (c *cluster) events(ns, name string) string {
	c.t.Helper()
	var list struct {
		Items []struct {
			Reason, Message string
		} `json:"items"`
	}
	c.getJSON(&list, "-n", ns, "events", "--field-selector", "involvedObject.name="+name)
	var msgs []string
	for _, e := range list.Items {
		msgs = append(msgs, e.Reason+": "+e.Message)
	}
	return strings.Join(msgs, "\n")
}

// waitEvent waits for an event of the pod whose message has every one of wants.
func (c *cluster) waitEvent(ns, name string, d time.Duration, wants ...string) string {
	c.t.Helper()
	var got string
	c.waitFor(fmt.Sprintf("event of %s/%s with %q", ns, name, wants), d, func() error {
		got = c.events(ns, name)
		for _, line := range strings.Split(got, "\n") {
			ok := true
			for _, w := range wants {
				ok = ok && strings.Contains(line, w)
			}
			if ok {
				return nil
			}
		}
		return fmt.Errorf("events:\n%s", got)
	})
	return got
}

// applyPod applies a pod manifest given inline.
func (c *cluster) applyPod(manifest string) {
	c.t.Helper()
	f := filepath.Join(c.dir, fmt.Sprintf("pod-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.kubectl("apply", "-f", f)
}

// gpuPod is a pod of the stand-in CUDA image with the given annotations, env and script.
func gpuPod(ns, name, annotations, env, script string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  annotations: {%s}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: cuda
      image: %s
      command: ["sh", "-c", %q]
      env: [%s]
`, name, ns, annotations, cudaImage, script, env)
}

// restartOnFailure makes a pod manifest restart its container when it fails: a container
// nvbind-guard refuses never ran, and the kubelet starts it again (a new container, which
// nvbind's NRI plugin is asked about again).
func restartOnFailure(manifest string) string {
	return strings.Replace(manifest, "restartPolicy: Never", "restartPolicy: OnFailure", 1)
}

// devices returns the /dev/nvidia* nodes a probe printed.
func nvidiaNodes(log string) []string {
	var nodes []string
	for _, f := range strings.Fields(log) {
		if strings.HasPrefix(f, "/dev/nvidia") && !strings.ContainsAny(f, "*:") {
			nodes = append(nodes, f)
		}
	}
	sort.Strings(nodes)
	return nodes
}

func (s *setup) metrics(t *testing.T) string {
	t.Helper()
	var slices struct {
		Items []struct {
			Endpoints []struct {
				Addresses []string `json:"addresses"`
			} `json:"endpoints"`
			Ports []struct {
				Name string `json:"name"`
				Port int    `json:"port"`
			} `json:"ports"`
		} `json:"items"`
	}
	s.getJSON(&slices, "-n", "nvbind-system", "endpointslices", "-l", "kubernetes.io/service-name=nvbind-metrics")
	if len(slices.Items) == 0 || len(slices.Items[0].Endpoints) == 0 || len(slices.Items[0].Ports) == 0 {
		t.Fatalf("the nvbind-metrics Service has no endpoints: %+v", slices)
	}
	ep, port := slices.Items[0].Endpoints[0].Addresses[0], slices.Items[0].Ports[0].Port
	if slices.Items[0].Ports[0].Name != "metrics" {
		t.Errorf("endpoint port %q", slices.Items[0].Ports[0].Name)
	}
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://%s:%d/metrics", ep, port))
	if err != nil {
		t.Fatalf("scrape %s: %v", ep, err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", ep, resp.StatusCode, err)
	}
	return string(data)
}

// metricValue returns the value of one series in Prometheus text, or "".
func metricValue(text, series string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimSpace(strings.TrimPrefix(line, series))
		}
	}
	return ""
}

// lastLine returns the last line of text that has want.
func lastLine(text, want string) string {
	lines := strings.Split(text, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], want) {
			return lines[i]
		}
	}
	return ""
}

// doctor runs nvbind doctor on the host against the cluster's containerd and returns its
// results by check (the last of each).
func (s *setup) doctor(t *testing.T) map[string]string {
	t.Helper()
	out, _ := exec.Command(s.nvbind, "doctor", "--format", "json", "--driver-root", s.driverRoot, "--dev-root", s.driverRoot,
		"--containerd-address", s.csock, "--containerd-config", filepath.Join(s.dir, "containerd.toml"),
		"--containerd-binary", filepath.Join(s.cbin, "containerd"), "--nri-socket", filepath.Join(s.nriDir, "nri.sock"),
		"--spec-dir", s.cdiDir).Output()
	var rs []struct{ Check, Status, Message, Fix string }
	if err := json.Unmarshal(out, &rs); err != nil {
		t.Fatalf("nvbind doctor: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, r := range rs {
		m[r.Check] += r.Status + ": " + r.Message + " fix: " + r.Fix + "\n"
	}
	return m
}

// resourcePod is a pod of the stand-in CUDA image that asks the scheduler for n GPUs.
func resourcePod(name string, n int, script string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  annotations: {required-plugins.noderesource.dev/container.cuda: '["nvbind"]'}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: cuda
      image: %s
      command: ["sh", "-c", %q]
      resources:
        limits: {nvidia.com/gpu: %d}
`, name, cudaImage, script, n)
}

// isGPUNode reports whether a device node is a GPU's (/dev/nvidia0), not a control node.
func isGPUNode(n string) bool {
	rest := strings.TrimPrefix(n, "/dev/nvidia")
	return rest != n && rest != "" && strings.Trim(rest, "0123456789") == ""
}

// waitCapacity waits for the node's allocatable nvidia.com/gpu.
func (s *setup) waitCapacity(t testing.TB, want string) {
	t.Helper()
	s.waitFor("nvidia.com/gpu allocatable "+want, 90*time.Second, func() error {
		got := s.kubectl("get", "node", nodeName, "-o", `jsonpath={.status.allocatable.nvidia\.com/gpu}`)
		if got != want {
			return errorf("allocatable %q", got)
		}
		return nil
	})
}
