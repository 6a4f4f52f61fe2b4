package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nvbind/nvbind/test/testutil"
)

// The fixture's GPUs (debian-535), as /proc/driver/nvidia lists them.
const (
	fixtureGPU0 = "GPU-4c2a7a2f-6f2e-31d7-7a5c-0c7b2a1e9d01"
	fixtureGPU1 = "GPU-8b9d3c4e-1a2b-4c5d-8e9f-a0b1c2d3e4f5"
	gpu1Proc    = "proc/driver/nvidia/gpus/0000:86:00.0"
)

// draOverlay is the test's overlay of manifests/overlays/dra: the kubelet's folders under
// its --root-dir, a 5 s rescan, the fake XID event path, and the API server, which listens
// on the host's loopback only (no kube-proxy here), reached from the host's network.
func (s *setup) draOverlay(xidEvents string, extra string) string {
	kubelet := filepath.Join(s.dir, "kubelet")
	mport := freePort(s.t)
	return s.writeOverlayOf("overlay-dra", "manifests/overlays/dra", fmt.Sprintf(`      - {op: add, path: /spec/template/spec/hostNetwork, value: true}
      - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
      - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_PORT, value: "%d"}}
      - {op: replace, path: /spec/template/spec/containers/0/args/6, value: "--metrics-address=:%d"}
      - {op: replace, path: /spec/template/spec/containers/0/ports/0/containerPort, value: %d}
      - {op: replace, path: /spec/template/spec/volumes/8/hostPath/path, value: %s/plugins/gpu.nvbind.io}
      - {op: replace, path: /spec/template/spec/volumes/9/hostPath/path, value: %s/plugins_registry}
      - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/7/mountPath, value: %s/plugins/gpu.nvbind.io}
      - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/8/mountPath, value: %s/plugins_registry}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --kubelet-plugin-dir=%s/plugins/gpu.nvbind.io}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --kubelet-registrar-dir=%s/plugins_registry}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --rescan-interval=5s}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --xid-events=%s}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --xid-recover-after=0s}
%s`, s.apiPort, mport, mport, kubelet, kubelet, kubelet, kubelet, kubelet, kubelet, xidEvents, extra))
}

type sliceList struct {
	Items []struct {
		Spec struct {
			Driver   string `json:"driver"`
			NodeName string `json:"nodeName"`
			Pool     struct {
				Name string `json:"name"`
			} `json:"pool"`
			Devices []sliceDevice `json:"devices"`
		} `json:"spec"`
	} `json:"items"`
}

type sliceDevice struct {
	Name       string `json:"name"`
	Attributes map[string]struct {
		String  *string `json:"string"`
		Int     *int64  `json:"int"`
		Version *string `json:"version"`
	} `json:"attributes"`
	Capacity map[string]any `json:"capacity"`
}

// slicedDevices lists the devices of the driver's ResourceSlices, by name.
func (s *setup) slicedDevices() map[string]sliceDevice {
	var l sliceList
	s.getJSON(&l, "resourceslices")
	out := map[string]sliceDevice{}
	for _, it := range l.Items {
		if it.Spec.Driver != "gpu.nvbind.io" {
			continue
		}
		for _, d := range it.Spec.Devices {
			out[d.Name] = d
		}
	}
	return out
}

func (s *setup) waitSlices(t testing.TB, want ...string) map[string]sliceDevice {
	t.Helper()
	var got map[string]sliceDevice
	s.waitFor("ResourceSlices of "+strings.Join(want, ","), 90*time.Second, func() error {
		got = s.slicedDevices()
		var names []string
		for n := range got {
			names = append(names, n)
		}
		slices.Sort(names)
		if !slices.Equal(names, want) {
			return errorf("devices %v", names)
		}
		return nil
	})
	return got
}

// claimPod is a pod whose container has one GPU of a claim template (or a claim).
func claimPod(name, claimRef, script string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  annotations: {required-plugins.noderesource.dev/container.cuda: '["nvbind"]'}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  resourceClaims:
    - {name: gpu, %s}
  containers:
    - name: cuda
      image: %s
      command: ["sh", "-c", %q]
      resources:
        claims: [{name: gpu}]
`, name, claimRef, cudaImage, script)
}

// claimTemplate is a ResourceClaimTemplate of one GPU with a CEL selector and, if set, an
// opaque configuration's parameters.
func claimTemplate(name, cel, params string) string {
	t := fmt.Sprintf(`apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: %s}
spec:
  spec:
    devices:
      requests:
        - name: gpu
          exactly:
            deviceClassName: gpu.nvbind.io
            selectors: [{cel: {expression: %q}}]
`, name, cel)
	if params != "" {
		t += fmt.Sprintf(`      config:
        - requests: [gpu]
          opaque: {driver: gpu.nvbind.io, parameters: %s}
`, params)
	}
	return t
}

// claimSpecs lists the claims' CDI specs in the cluster's CDI folder.
func (s *setup) claimSpecs() []string {
	m, _ := filepath.Glob(filepath.Join(s.cdiDir, "k8s.gpu.nvbind.io-claim_*.yaml"))
	return m
}

// restoreGPU1 puts GPU 1 back in the driver root (an earlier scenario took it away).
func (s *setup) restoreGPU1(t *testing.T) {
	t.Helper()
	fixture := testutil.DriverRoot(t, "debian-535")
	for _, p := range []string{gpu1Proc, "dev/nvidia1"} {
		if _, err := os.Lstat(filepath.Join(s.driverRoot, p)); err == nil {
			continue
		}
		if out, err := exec.Command("cp", "-a", filepath.Join(fixture, p), filepath.Join(s.driverRoot, p)).CombinedOutput(); err != nil {
			t.Fatalf("restore %s: %v\n%s", p, err, out)
		}
	}
}

// draScenarios installs the DRA overlay and runs what users of DRA meet: slices with the
// GPUs' attributes, a GPU chosen by attribute, a claim nothing matches, a claim shared by
// two pods, bad opaque configuration, a pod deleted while the driver is away, a GPU lost,
// XID health, enforcement, and the device plugin beside the driver.
func (s *setup) draScenarios(t *testing.T) {
	s.waitFor("nvbind-system to go", 2*time.Minute, func() error {
		if _, err := s.kubectlErr("get", "namespace", "nvbind-system"); err == nil {
			return errorf("still there")
		}
		return nil
	})
	s.restoreGPU1(t)
	xidEvents := filepath.Join(s.runNVBind(), "xid-events-dra")
	overlay := s.draOverlay(xidEvents, "")
	start := time.Now()
	s.kubectl("apply", "-k", overlay)
	s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
	t.Logf("kubectl apply -k of the DRA overlay to a Ready DaemonSet (driver registered): %s", time.Since(start).Round(100*time.Millisecond))

	// the slices: both GPUs, with what procfs knows (the pod is not privileged: no NVML)
	devs := s.waitSlices(t, "gpu-0", "gpu-1")

	// the admission policy: the driver's account may write only its own node's slices
	// (the driver itself just did), not another node's, and not without a node
	forged := filepath.Join(t.TempDir(), "slice.yaml")
	if err := os.WriteFile(forged, []byte(`apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata: {name: forged}
spec:
  driver: gpu.nvbind.io
  nodeName: other-node
  pool: {name: other-node, generation: 1, resourceSliceCount: 1}
  devices: [{name: gpu-0}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	// impersonated through the kubeconfig (kubectl before 1.35 has no --as-user-extra)
	admin, err := os.ReadFile(s.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for extra, want := range map[string]string{
		"authentication.kubernetes.io/node-name: [" + nodeName + "]": "may write only the ResourceSlices of its own node",
		"other: [x]": "names no node",
	} {
		as := strings.Replace(string(admin), "user: {token: ",
			"user: {as: system:serviceaccount:nvbind-system:nvbind, as-user-extra: {"+extra+"}, token: ", 1)
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		if err := os.WriteFile(kc, []byte(as), 0o600); err != nil || as == string(admin) {
			t.Fatalf("impersonating kubeconfig: %v", err)
		}
		out, err := exec.Command(filepath.Join(s.bin, "kubectl"), "--kubeconfig", kc, "create", "-f", forged).CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("a slice of another node written by the driver's account (%s): %v\n%s", extra, err, out)
		}
	}
	attr := func(d sliceDevice, k string) string {
		a := d.Attributes[k]
		switch {
		case a.String != nil:
			return *a.String
		case a.Version != nil:
			return "v" + *a.Version
		case a.Int != nil:
			return fmt.Sprint(*a.Int)
		}
		return ""
	}
	for name, want := range map[string]map[string]string{
		"gpu-0": {"type": "gpu", "uuid": fixtureGPU0, "index": "0", "minor": "0", "driverVersion": "v535.261.3"},
		"gpu-1": {"type": "gpu", "uuid": fixtureGPU1, "index": "1", "minor": "1", "resource.kubernetes.io/pciBusID": "0000:86:00.0"},
	} {
		for k, v := range want {
			if got := attr(devs[name], k); got != v {
				t.Errorf("%s %s = %q, want %q", name, k, got, v)
			}
		}
		if attr(devs[name], "productName") == "" || attr(devs[name], "cudaComputeCapability") != "" || len(devs[name].Capacity) != 0 {
			t.Errorf("%s: %+v", name, devs[name])
		}
	}

	// the examples, unchanged: one GPU; the GPU at 0000:86:00.0 (GPU 1)
	for _, tc := range []struct{ file, pod, gpu string }{
		{"dra-select.yaml", "cuda-dra-at-86", "/dev/nvidia1"},
		{"dra-one-gpu.yaml", "cuda-dra", ""},
	} {
		start := time.Now()
		s.kubectl("apply", "-f", filepath.Join(s.repo, "manifests/examples", tc.file))
		s.waitPhase("default", tc.pod, 2*time.Minute, "Succeeded", "Failed")
		log := s.logs("default", tc.pod, "cuda")
		gpus := slices.DeleteFunc(nvidiaNodes(log), func(n string) bool { return !isGPUNode(n) })
		if len(gpus) != 1 || (tc.gpu != "" && gpus[0] != tc.gpu) || !strings.Contains(log, "libcuda.so.1 (libc6,x86-64) => ") {
			t.Errorf("%s: GPUs %v, want one (%s):\n%s", tc.file, gpus, tc.gpu, log)
		}
		// compute,utility has a layout from the start: the claim's spec mounts it
		if !strings.Contains(log, "libcuda.so.1 (libc6,x86-64) => /usr/local/nvbind/") {
			t.Errorf("%s: libcuda.so.1 is not the driver layout's:\n%s", tc.file, log)
		}
		t.Logf("%s: %s to %s in %s", tc.file, tc.pod, s.pod("default", tc.pod).Status.Phase, time.Since(start).Round(100*time.Millisecond))
		s.kubectl("delete", "pod", tc.pod, "--wait=true", "--timeout=60s")
	}
	s.waitFor("the examples' claims unprepared", 60*time.Second, func() error {
		if m := s.claimSpecs(); len(m) != 0 {
			return errorf("specs %v", m)
		}
		return nil
	})

	// a claim nothing matches stays Pending, with the scheduler's reason: the example's
	// big GPU (compute capability and memory, which procfs does not give), and a product
	// name no GPU here has
	s.applyPod(claimTemplate("no-such-gpu", `device.attributes["gpu.nvbind.io"].productName == "NVIDIA H900"`, ""))
	for _, tmpl := range []string{"big-gpu", "no-such-gpu"} {
		s.applyPod(claimPod("unmatched", "resourceClaimTemplateName: "+tmpl, "true"))
		ev := s.waitEvent("default", "unmatched", 90*time.Second, "FailedScheduling", "cannot allocate all claims")
		t.Logf("a claim nothing matches (%s):\n%s", tmpl, lastLine(ev, "cannot allocate"))
		if strings.Contains(ev, "CEL") || strings.Contains(ev, "no such key") {
			t.Errorf("%s: the selector failed to evaluate:\n%s", tmpl, ev)
		}
		if p := s.pod("default", "unmatched"); p.Status.Phase != "Pending" {
			t.Errorf("unmatched is %s", p.Status.Phase)
		}
		s.kubectl("delete", "pod", "unmatched", "--grace-period=0", "--force")
		s.kubectl("delete", "events", "--field-selector", "involvedObject.name=unmatched")
	}
	s.kubectl("delete", "-f", filepath.Join(s.repo, "manifests/examples/dra-one-gpu.yaml"), "--ignore-not-found")
	s.kubectl("delete", "-f", filepath.Join(s.repo, "manifests/examples/dra-select.yaml"), "--ignore-not-found")

	// one claim, two pods: the same GPU
	s.kubectl("apply", "-f", filepath.Join(s.repo, "manifests/examples/dra-shared.yaml"))
	var shared []string
	for _, pod := range []string{"cuda-shared-a", "cuda-shared-b"} {
		s.waitPhase("default", pod, 2*time.Minute, "Succeeded", "Failed")
		log := s.logs("default", pod, "cuda")
		gpus := slices.DeleteFunc(nvidiaNodes(log), func(n string) bool { return !isGPUNode(n) })
		if len(gpus) != 1 || !strings.Contains(log, "NVBIND_DRA_DEVICE_GPU_") {
			t.Errorf("%s:\n%s", pod, log)
		}
		shared = append(shared, gpus...)
	}
	if len(shared) != 2 || shared[0] != shared[1] {
		t.Errorf("the pods of one claim got %v", shared)
	}
	t.Logf("cuda-shared-a and cuda-shared-b got %v", shared)
	s.kubectl("delete", "-f", filepath.Join(s.repo, "manifests/examples/dra-shared.yaml"), "--wait=true", "--timeout=60s")

	// bad opaque configuration: the preparation fails with an event that names the field
	s.applyPod(claimTemplate("typo", `device.attributes["gpu.nvbind.io"].index == 0`,
		`{apiVersion: gpus.nvbind.io/v1alpha1, kind: GpuConfig, capability: [compute]}`))
	s.applyPod(claimPod("bad-config", "resourceClaimTemplateName: typo", "true"))
	ev := s.waitEvent("default", "bad-config", 90*time.Second, `unknown field "capability"`, "valid fields")
	t.Logf("bad opaque configuration:\n%s", lastLine(ev, "capability"))
	s.kubectl("delete", "pod", "bad-config", "--grace-period=1")

	// enforcement: no annotation widens a claim, and a container without one gets no GPU
	s.applyPod(claimTemplate("gpu-zero", `device.attributes["gpu.nvbind.io"].index == 0`, ""))
	s.applyPod(strings.Replace(claimPod("widened", "resourceClaimTemplateName: gpu-zero", "ls /dev/nvidia*"),
		"annotations: {", "annotations: {gpus.nvbind.io: "+fixtureGPU1+", ", 1))
	ev = s.waitEvent("default", "widened", 90*time.Second, "nvbind", "asks for GPU", fixtureGPU0)
	t.Logf("a claim widened by an annotation:\n%s", lastLine(ev, "asks for GPU"))
	s.applyPod(gpuPod("default", "unclaimed", `required-plugins.noderesource.dev/container.cuda: '["nvbind"]'`, `{name: NVIDIA_VISIBLE_DEVICES, value: "0"}`, "ls /dev/nvidia*"))
	s.waitEvent("default", "unclaimed", 90*time.Second, "nvbind", "allocated none")
	s.kubectl("delete", "pod", "widened", "unclaimed", "--wait=false")

	// a pod deleted while the driver is away: its claim is unprepared once it is back
	s.applyPod(claimPod("held", "resourceClaimTemplateName: gpu-zero", "ls /dev/nvidia*; sleep 3600"))
	s.waitPhase("default", "held", 2*time.Minute, "Running")
	if m := s.claimSpecs(); len(m) != 1 {
		t.Fatalf("claim specs while held runs: %v", m)
	}
	s.kubectl("-n", "nvbind-system", "patch", "ds", "nvbind", "--type=json",
		`-p=[{"op":"add","path":"/spec/template/spec/nodeSelector/nvbind.io~1paused","value":"true"}]`)
	s.waitFor("the driver's pod to go", 90*time.Second, func() error {
		if out := s.kubectl("-n", "nvbind-system", "get", "pods", "-o", "name"); out != "" {
			return errorf("still there: %s", out)
		}
		return nil
	})
	s.kubectl("delete", "pod", "held", "--wait=false")
	time.Sleep(10 * time.Second)
	if m := s.claimSpecs(); len(m) != 1 {
		t.Errorf("the claim's spec went while the driver was away: %v", m)
	}
	s.kubectl("-n", "nvbind-system", "patch", "ds", "nvbind", "--type=json",
		`-p=[{"op":"remove","path":"/spec/template/spec/nodeSelector/nvbind.io~1paused"}]`)
	s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
	start = time.Now()
	s.waitFor("the held claim unprepared", 2*time.Minute, func() error {
		if m := s.claimSpecs(); len(m) != 0 {
			return errorf("specs %v", m)
		}
		if _, err := s.kubectlErr("get", "pod", "held"); err == nil {
			return errorf("the pod is still there")
		}
		return nil
	})
	t.Logf("the claim of a pod deleted while the driver was away was unprepared %s after it came back", time.Since(start).Round(100*time.Millisecond))

	// GPU 1 taken away: it leaves the slices within a rescan, and returns with the GPU
	for _, p := range []string{gpu1Proc, "dev/nvidia1"} {
		if err := os.RemoveAll(filepath.Join(s.driverRoot, p)); err != nil {
			t.Fatal(err)
		}
	}
	start = time.Now()
	s.waitSlices(t, "gpu-0")
	t.Logf("GPU 1 gone: it left the slices in %s", time.Since(start).Round(100*time.Millisecond))
	s.restoreGPU1(t)
	s.waitSlices(t, "gpu-0", "gpu-1")

	// XID 79 on GPU 1 (the fake event path): out of the slices
	appendXID(t, xidEvents, fixtureGPU1+" 79")
	start = time.Now()
	s.waitSlices(t, "gpu-0")
	t.Logf("XID 79: gpu-1 left the slices in %s", time.Since(start).Round(100*time.Millisecond))

	// the device plugin beside the driver: GPU 1 is the driver's, GPU 0 the device
	// plugin's; a driver restart (new process) forgets the XID
	overlay = s.draOverlay(xidEvents, withDevicePlugin)
	s.kubectl("apply", "-k", overlay)
	s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
	s.waitSlices(t, "gpu-1")
	s.waitCapacity(t, "1")
	s.applyPod(resourcePod("by-resource", 1, "ls /dev/nvidia*"))
	s.applyPod(claimTemplate("any-gpu", `device.driver == "gpu.nvbind.io"`, ""))
	s.applyPod(claimPod("by-claim", "resourceClaimTemplateName: any-gpu", "ls /dev/nvidia*"))
	for pod, want := range map[string]string{"by-resource": "/dev/nvidia0", "by-claim": "/dev/nvidia1"} {
		s.waitPhase("default", pod, 2*time.Minute, "Succeeded", "Failed")
		log := s.logs("default", pod, "cuda")
		if gpus := slices.DeleteFunc(nvidiaNodes(log), func(n string) bool { return !isGPUNode(n) }); !slices.Equal(gpus, []string{want}) {
			t.Errorf("%s got %v, want %s:\n%s", pod, gpus, want, log)
		}
	}
	s.kubectl("delete", "pod", "by-resource", "by-claim", "--grace-period=1")
	s.kubectl("delete", "resourceclaimtemplate", "no-such-gpu", "typo", "gpu-zero", "any-gpu")
	s.kubectl("delete", "-k", overlay, "--timeout=120s")
	s.waitFor("the driver's slices to go", 90*time.Second, func() error {
		if d := s.slicedDevices(); len(d) != 0 {
			return errorf("devices %v", d)
		}
		return nil
	})
}

// withDevicePlugin are the patch lines of draOverlay that run the device plugin beside
// the driver, which serves GPU 1.
const withDevicePlugin = `      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --device-plugin}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --dra-gpus=1}
      - {op: add, path: /spec/template/spec/volumes/-, value: {name: device-plugins, hostPath: {path: /var/lib/kubelet/device-plugins, type: Directory}}}
      - {op: add, path: /spec/template/spec/containers/0/volumeMounts/-, value: {name: device-plugins, mountPath: /var/lib/kubelet/device-plugins}}
`

// appendXID appends a line to the fake XID event file.
func appendXID(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}
