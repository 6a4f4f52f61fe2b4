package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

// TestCluster installs nvbind on a single-node cluster and runs each scenario users meet,
// in order, on the same cluster.
func TestCluster(t *testing.T) { testCluster(t, k8sVersion) }

// TestClusterNewest runs the same scenarios on the newest Kubernetes release.
func TestClusterNewest(t *testing.T) { testCluster(t, k8sVersionNew) }

func testCluster(t *testing.T, version string) {
	hook := "/opt/nvbind/bin/nvbind-hook"
	if _, err := os.Stat("/opt/nvbind"); os.IsNotExist(err) {
		// the init container installs the hook on the host, as on a real node; the
		// test removes what it put there
		t.Cleanup(func() { _ = os.RemoveAll("/opt/nvbind") })
	}
	if _, err := os.Stat("/var/lib/kubelet"); os.IsNotExist(err) {
		// the kubelet's device-plugin folder is always /var/lib/kubelet/device-plugins
		t.Cleanup(func() { _ = os.RemoveAll("/var/lib/kubelet") })
	}
	s := newSetup(t, version)
	if v := s.kubectl("version", "-o", "json"); !strings.Contains(v, `"gitVersion": "`+version+`"`) {
		t.Fatalf("the cluster does not run Kubernetes %s:\n%s", version, v)
	}
	// the harness reports to the running subtest, then to the test again
	run := func(name string, f func(t *testing.T)) {
		t.Run(name, func(st *testing.T) {
			s.t = st
			defer func() { s.t = t }()
			f(st)
		})
	}
	run("Install", func(t *testing.T) {
		took := s.install()
		t.Logf("kubectl apply -k to a Ready DaemonSet: %s", took.Round(100*time.Millisecond))
		var ds struct {
			Status struct{ NumberReady, DesiredNumberScheduled int }
		}
		s.getJSON(&ds, "-n", "nvbind-system", "ds", "nvbind")
		if ds.Status.NumberReady != 1 || ds.Status.DesiredNumberScheduled != 1 {
			t.Fatalf("DaemonSet status %+v", ds.Status)
		}
		// Ready means registered: the readiness probe is /healthz, 200 only once the
		// runtime has synchronised the plugin, and containerd logs the registration
		if !strings.Contains(s.logTail("containerd", 1000), `plugin \"10-nvbind\" connected and synchronized`) {
			t.Errorf("containerd never registered the plugin:\n%s", s.logTail("containerd", 20))
		}
		if fi, err := os.Stat(hook); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("the init container did not install %s: %v", hook, err)
		}
		if fi, err := os.Stat("/opt/nvbind/bin/nvbind-runtime"); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("the init container did not install nvbind-runtime: %v", err)
		}
		// the plugin keeps the /dev/char links of the (fixture's) device nodes
		s.waitFor("/dev/char links", 30*time.Second, func() error {
			if l, err := os.Readlink(filepath.Join(s.driverRoot, "dev/char/195:1")); err != nil || l != "../nvidia1" {
				return errorf("dev/char/195:1 -> %q, %v", l, err)
			}
			return nil
		})
		// the layouts container builds the driver layouts on the host (the plugin's
		// default capability sets), which GPU containers then mount in one mount
		s.waitFor("the driver layouts", 60*time.Second, func() error {
			complete, _ := filepath.Glob(filepath.Join(s.layoutDir(), "*", ".complete"))
			if len(complete) < 2 {
				return errorf("%d complete layouts in %s", len(complete), s.layoutDir())
			}
			return nil
		})
		// Ready means registered, not merely running: pointed at a socket no runtime
		// serves, the plugin runs and answers /livez, but never becomes Ready
		s.kubectl("-n", "nvbind-system", "patch", "ds", "nvbind", "--type=json",
			`-p=[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--socket=/var/run/nri/nobody.sock"}]`)
		var unready podList
		s.waitFor("the unregistered plugin to run", 90*time.Second, func() error {
			s.getJSON(&unready, "-n", "nvbind-system", "pods")
			if len(unready.Items) != 1 || unready.Items[0].Status.Phase != "Running" || len(unready.Items[0].Status.ContainerStatuses) == 0 ||
				!strings.Contains(strings.Join(unready.Items[0].Spec.Containers[0].Args, " "), "nobody.sock") {
				return errorf("not yet")
			}
			return nil
		})
		time.Sleep(25 * time.Second) // two readiness periods and more
		s.getJSON(&unready, "-n", "nvbind-system", "pods")
		if st := pluginStatus(unready.Items[0].Status.ContainerStatuses); st.Name == "" || st.Ready || st.RestartCount != 0 {
			t.Errorf("a plugin that never registered: ready %v, restarts %d", st.Ready, st.RestartCount)
		}
		s.kubectl("-n", "nvbind-system", "rollout", "undo", "ds/nvbind")
		s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")

		// every overlay users apply passes the real API server's validation, too
		for _, dir := range []string{"manifests/base", "manifests/overlays/gpu-operator", "manifests/overlays/crio", "manifests/overlays/mig", "manifests/overlays/device-plugin"} {
			s.kubectl("apply", "--dry-run=server", "-k", filepath.Join(s.repo, dir))
		}
		// and so does the Helm chart, with its defaults and every example values file
		s.dryRunChart(t)
	})

	run("Examples", func(t *testing.T) {
		for _, tc := range []struct {
			file, pod string
			nodes     []string
			// layout: the driver comes in one mount (a set the layouts container built at
			// start); else the first container of its set mounts one file at a time while
			// the plugin asks for its layout
			layout bool
		}{
			{"pod-annotation.yaml", "cuda-gpu1", []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia1", "/dev/nvidiactl"}, true},
			{"pod-env.yaml", "cuda-env-gpu0", []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidiactl"}, false},
			{"pod-cdi.yaml", "cuda-cdi-gpu0", []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidiactl"}, true},
		} {
			s.kubectl("apply", "-f", filepath.Join(s.repo, "manifests/examples", tc.file))
			s.waitPhase("default", tc.pod, 2*time.Minute, "Succeeded", "Failed")
			log := s.logs("default", tc.pod, "cuda")
			if got := nvidiaNodes(log); !slices.Equal(got, tc.nodes) {
				t.Errorf("%s: device nodes %v, want %v\n%s", tc.file, got, tc.nodes, log)
			}
			// nvidia-smi is the driver's own binary: without a GPU it says so
			if !strings.Contains(log, "libcuda.so.1 (libc6,x86-64) => ") || !strings.Contains(log, "NVIDIA-SMI has failed") {
				t.Errorf("%s: no libcuda.so.1 in ldconfig -p, or no nvidia-smi:\n%s", tc.file, log)
			}
			// the driver came in one mount of the layout the layouts container built
			if tc.layout && !strings.Contains(log, "libcuda.so.1 (libc6,x86-64) => /usr/local/nvbind/") {
				t.Errorf("%s: libcuda.so.1 is not the driver layout's:\n%s", tc.file, log)
			}
			if p := s.pod("default", tc.pod); p.Status.Phase != "Succeeded" {
				t.Errorf("%s: phase %s\n%s", tc.file, p.Status.Phase, log)
			}
		}
		// pod-env.yaml's set (compute,utility,video) was asked of the layouts container
		s.waitFor("the layout of compute+utility+video", 30*time.Second, func() error {
			if m, _ := filepath.Glob(filepath.Join(s.layoutDir(), "*-compute+utility+video-*", ".complete")); len(m) != 1 {
				return errorf("not built")
			}
			return nil
		})
		s.applyPod(gpuPod("default", "plain", "", "", "ls /dev/nvidia* ; ldconfig -p | grep -c libcuda; true"))
		s.waitPhase("default", "plain", 2*time.Minute, "Succeeded", "Failed")
		if log := s.logs("default", "plain", "cuda"); len(nvidiaNodes(log)) != 0 || !strings.Contains(log, "\n0") {
			t.Errorf("a pod that asks for nothing got GPUs or driver files:\n%s", log)
		}
	})

	run("BadRequests", func(t *testing.T) {
		s.kubectl("create", "namespace", "no-gpus")
		for _, tc := range []struct {
			ns, name, annotations, env string
			wants                      []string
		}{
			{"default", "bad-gpu", `gpus.nvbind.io/container.cuda: "7"`, "", []string{`gpus.nvbind.io/container.cuda`, `"7"`, "valid:", "gpu0"}},
			{"default", "bad-caps", `gpus.nvbind.io: "0", capabilities.nvbind.io: "compute,warp"`, "", []string{"capabilities.nvbind.io", "warp", "compute", "utility"}},
			{"default", "old-cuda", "", `{name: NVIDIA_VISIBLE_DEVICES, value: "0"}, {name: NVIDIA_REQUIRE_CUDA, value: "cuda>=99.0"}`, []string{"NVIDIA_REQUIRE_CUDA", "cuda>=99.0", "12.2"}},
			{"no-gpus", "denied", `gpus.nvbind.io: "0"`, "", []string{`namespace "no-gpus"`, "may not request GPUs"}},
		} {
			s.applyPod(gpuPod(tc.ns, tc.name, tc.annotations, tc.env, "sleep 1"))
			ev := s.waitEvent(tc.ns, tc.name, 90*time.Second, append([]string{"nvbind"}, tc.wants...)...)
			t.Logf("%s/%s:\n%s", tc.ns, tc.name, lastLine(ev, "nvbind"))
			if p := s.pod(tc.ns, tc.name); p.Status.Phase == "Running" || p.Status.Phase == "Succeeded" {
				t.Errorf("%s/%s is %s", tc.ns, tc.name, p.Status.Phase)
			}
			describe := s.kubectl("-n", tc.ns, "describe", "pod", tc.name)
			for _, w := range tc.wants {
				if !strings.Contains(describe, w) {
					t.Errorf("kubectl describe pod %s lacks %q:\n%s", tc.name, w, describe)
				}
			}
			s.kubectl("-n", tc.ns, "delete", "pod", tc.name, "--wait=false")
		}
	})

	run("Metrics", func(t *testing.T) {
		m := s.metrics(t)
		for _, series := range []string{`nvbind_requests_total{outcome="injected",reason="",source="annotation"}`,
			`nvbind_requests_total{outcome="injected",reason="",source="env"}`, `nvbind_requests_total{outcome="injected",reason="",source="cdi"}`,
			`nvbind_requests_total{outcome="refused",reason="unknown_device",source="annotation"}`,
			`nvbind_requests_total{outcome="refused",reason="unmet_requirement",source="env"}`,
			`nvbind_requests_total{outcome="refused",reason="denied",source="annotation"}`} {
			if v := metricValue(m, series); v == "" || v == "0" {
				t.Errorf("%s = %q", series, v)
			}
		}
	})

	run("NoCPUOnlyStart", func(t *testing.T) {
		long := gpuPod("default", "long-gpu", `gpus.nvbind.io: "1", required-plugins.noderesource.dev/container.cuda: '["nvbind"]'`, "",
			"ls /dev/nvidia*; sleep 3600")
		s.applyPod(long)
		s.waitPhase("default", "long-gpu", 2*time.Minute, "Running")

		// the plugin away: the DaemonSet no longer matches the node
		s.kubectl("-n", "nvbind-system", "patch", "ds", "nvbind", "--type=json",
			`-p=[{"op":"add","path":"/spec/template/spec/nodeSelector/nvbind.io~1paused","value":"true"}]`)
		s.waitFor("the plugin's pod to go", 90*time.Second, func() error {
			if out := s.kubectl("-n", "nvbind-system", "get", "pods", "-o", "name"); out != "" {
				return errorf("still there: %s", out)
			}
			return nil
		})
		s.applyPod(gpuPod("default", "while-away", `gpus.nvbind.io: "0", required-plugins.noderesource.dev/container.cuda: '["nvbind"]'`, "", "ls /dev/nvidia*"))
		ev := s.waitEvent("default", "while-away", 90*time.Second, `required plugin "nvbind" not present`)
		t.Logf("while nvbind is away:\n%s", lastLine(ev, "required plugin"))
		if p := s.pod("default", "while-away"); p.Status.Phase != "Pending" {
			t.Errorf("a GPU pod started while nvbind was away: %s", p.Status.Phase)
		}
		// without the annotation the validator lets a GPU pod through: nvbind-guard, the
		// runc handler's binary, refuses to start it (runc create never runs, so the
		// kubelet restarts it: restartPolicy OnFailure); a plain pod starts meanwhile
		s.applyPod(restartOnFailure(gpuPod("default", "guarded", "", `{name: NVIDIA_VISIBLE_DEVICES, value: "0"}`,
			"test -c /dev/nvidia0 && ldconfig -p | grep -q 'libcuda.so.1 ' && echo HAS-GPU || { echo NO-GPU; exit 3; }")))
		s.applyPod(gpuPod("default", "plain-while-away", "", "", "ls /dev/nvidia* 2>&1; true"))
		ev = s.waitEvent("default", "guarded", 90*time.Second, "nvbind's NRI plugin did not handle this container")
		t.Logf("nvbind-guard, while nvbind is away:\n%s", lastLine(ev, "did not handle"))
		s.waitPhase("default", "plain-while-away", 2*time.Minute, "Succeeded")
		if p := s.pod("default", "guarded"); p.Status.Phase == "Succeeded" || strings.Contains(s.logs("default", "guarded", "cuda"), "NO-GPU") {
			t.Errorf("a GPU pod started without nvbind: %s\n%s", p.Status.Phase, s.logs("default", "guarded", "cuda"))
		}
		s.kubectl("-n", "nvbind-system", "patch", "ds", "nvbind", "--type=json",
			`-p=[{"op":"remove","path":"/spec/template/spec/nodeSelector/nvbind.io~1paused"}]`)
		s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
		s.waitPhase("default", "while-away", 3*time.Minute, "Succeeded")
		if log := s.logs("default", "while-away", "cuda"); !slices.Contains(nvidiaNodes(log), "/dev/nvidia0") {
			t.Errorf("after nvbind came back while-away got %v:\n%s", nvidiaNodes(log), log)
		}
		s.waitPhase("default", "guarded", 4*time.Minute, "Succeeded")
		if log := s.logs("default", "guarded", "cuda"); !strings.Contains(log, "HAS-GPU") || strings.Contains(log, "NO-GPU") {
			t.Errorf("after nvbind came back the guarded pod printed:\n%s", log)
		}
		s.kubectl("delete", "pod", "while-away", "guarded", "plain-while-away", "--wait=false")

		// a rolling restart of the plugin, then a containerd restart: the running pod
		// keeps running and new GPU pods work
		s.kubectl("-n", "nvbind-system", "rollout", "restart", "ds/nvbind")
		s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
		s.gpuPodWorks(t, "after-rollout")
		s.stop("containerd")
		s.startContainerd()
		s.gpuPodWorks(t, "after-containerd-restart")
		p := s.pod("default", "long-gpu")
		if p.Status.Phase != "Running" || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("the running GPU pod did not survive the restarts: %+v", p.Status)
		}
		s.kubectl("delete", "pod", "long-gpu", "--wait=false")
	})

	run("BurstWithKills", func(t *testing.T) {
		runs := 1
		if n, err := strconv.Atoi(os.Getenv("NVBIND_BURST_RUNS")); err == nil && n > 0 {
			runs = n
		}
		for i := range runs {
			s.burstWithKills(t, uint64(20261201+i), 24, 6, 3)
		}
	})

	run("Validator", func(t *testing.T) {
		// nvbind doctor asks the running containerd: its version and NRI plugin, and the
		// validator settings of its effective configuration
		d := s.doctor(t)
		if !strings.Contains(d["containerd"], "ok: containerd ") || !strings.Contains(d["containerd"], "2.4.2") || !strings.Contains(d["nri validator"], "ok: NRI's default validator is on") {
			t.Errorf("doctor before: %v", d)
		}
		// containerd's default validator rejecting OCI hooks: direct edits carry the hook,
		// so they are refused; CDI mode passes
		s.stop("containerd")
		s.validator = "  [plugins.'io.containerd.nri.v1.nri'.default_validator]\n    enable = true\n    reject_oci_hook_adjustment = true\n"
		s.startContainerd()
		s.waitFor("the plugin to reconnect", 60*time.Second, func() error {
			if !strings.Contains(s.kubectl("-n", "nvbind-system", "get", "pods", "-o", `jsonpath={.items[*].status.containerStatuses[?(@.name=="nvbind")].ready}`), "true") {
				return errorf("not ready")
			}
			return nil
		})
		d = s.doctor(t)
		if v := d["nri validator"]; !strings.Contains(v, "warn: NRI's default validator rejects OCI hook adjustments") || !strings.Contains(v, "--cdi-mode") {
			t.Errorf("doctor with hooks rejected: %v", d)
		}
		t.Logf("nvbind doctor: %s", d["nri validator"])
		s.applyPod(gpuPod("default", "hooks-rejected", `gpus.nvbind.io: "0"`, "", "ls /dev/nvidia*"))
		ev := s.waitEvent("default", "hooks-rejected", 90*time.Second, "OCI hook")
		t.Logf("direct edits with hooks rejected:\n%s", lastLine(ev, "OCI hook"))
		s.kubectl("delete", "pod", "hooks-rejected", "--wait=false")
		// a host whose cdi-refresh (or a user, as NVIDIA's docs teach) left nvbind's spec
		// under another name: the DaemonSet's CDI mode takes the kind over, so that the
		// folder never holds two specs of nvidia.com/gpu, which runtimes would refuse
		s.cdiGenerate(t, filepath.Join(s.cdiDir, "nvidia.yaml"), hook)
		s.kubectl("-n", "nvbind-system", "patch", "ds", "nvbind", "--type=json",
			`-p=[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--cdi-mode"}]`)
		s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
		s.gpuPodWorks(t, "cdi-mode")
		s.oneSpecOfKind(t, "nvidia.com-gpu.yaml")
	})

	run("Uninstall", func(t *testing.T) {
		s.kubectl("delete", "-k", s.overlay, "--timeout=120s")
		s.waitFor("nvbind-system to go", 2*time.Minute, func() error {
			if _, err := s.kubectlErr("get", "namespace", "nvbind-system"); err == nil {
				return errorf("still there")
			}
			return nil
		})
		// as the README says: the hook binary stays in /opt/nvbind/bin (running GPU
		// containers may still need it), and new GPU requests are no longer served
		if _, err := os.Stat(hook); err != nil {
			t.Errorf("%s: %v", hook, err)
		}
		s.applyPod(gpuPod("default", "after-uninstall", `gpus.nvbind.io: "0", required-plugins.noderesource.dev/container.cuda: '["nvbind"]'`, "", "ls /dev/nvidia*"))
		s.waitEvent("default", "after-uninstall", 90*time.Second, `required plugin "nvbind" not present`)
		// the CDI mode's spec stays (running containers were made from it); the demo's
		// command writes the kind's one spec again, and every name resolves
		s.cdiGenerate(t, s.cdiDir+"/", hook)
		s.oneSpecOfKind(t, "nvidia.com-gpu.yaml")
		if d := s.doctor(t); d["cdi conflicts"] != "" {
			t.Errorf("doctor after the demo: %s", d["cdi conflicts"])
		}
	})

	run("RuntimeClass", func(t *testing.T) {
		// a node without nvbind's NRI plugin: the RuntimeClass nvbind runs pods through
		// nvbind-runtime (the test's containerd has the handler of
		// manifests/runtime/containerd-runtime-class.toml), which reads NVIDIA's env contract
		s.kubectl("apply", "-k", filepath.Join(s.repo, "manifests/runtime-class"))
		s.kubectl("apply", "-f", filepath.Join(s.repo, "manifests/examples/pod-runtime-class.yaml"))
		s.waitPhase("default", "cuda-runtime-class-gpu1", 2*time.Minute, "Succeeded", "Failed")
		log := s.logs("default", "cuda-runtime-class-gpu1", "cuda")
		want := []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia1", "/dev/nvidiactl"}
		if got := nvidiaNodes(log); !slices.Equal(got, want) || !strings.Contains(log, "libcuda.so.1 (libc6,x86-64) => ") ||
			!strings.Contains(log, "NVIDIA-SMI has failed") {
			t.Errorf("pod-runtime-class.yaml: nodes %v, want %v:\n%s", got, want, log)
		}
		s.applyPod(`apiVersion: v1
kind: Pod
metadata: {name: runtime-class-plain}
spec:
  runtimeClassName: nvbind
  restartPolicy: Never
  containers:
    - {name: cuda, image: ` + cudaImage + `, command: ["sh", "-c", "ls /dev/nvidia* 2>&1; true"]}
`)
		s.waitPhase("default", "runtime-class-plain", 2*time.Minute, "Succeeded")
		if got := nvidiaNodes(s.logs("default", "runtime-class-plain", "cuda")); len(got) != 0 {
			t.Errorf("a pod of the RuntimeClass that asks for nothing got %v", got)
		}
		s.kubectl("delete", "pod", "cuda-runtime-class-gpu1", "runtime-class-plain", "--wait=false")
		s.kubectl("delete", "-k", filepath.Join(s.repo, "manifests/runtime-class"))
	})

	run("DevicePlugin", func(t *testing.T) {
		// the device-plugin overlay: nvidia.com/gpu through the kubelet, allocations
		// enforced; a 5 s rescan so that a lost GPU shows quickly
		// (the kubelet's device-plugin folder is /var/lib/kubelet/device-plugins whatever
		// its --root-dir, so the overlay's host path stays)
		// XID events come from the fake event path (no GPU here to raise them through NVML)
		xidEvents := filepath.Join(s.runNVBind(), "xid-events")
		dp := s.writeOverlayOf("overlay-dp", "manifests/overlays/device-plugin",
			"      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --rescan-interval=5s}\n"+
				"      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --forget-after=15s}\n"+
				"      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --xid-events="+xidEvents+"}\n"+
				"      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --xid-recover-after=30s}\n")
		s.kubectl("apply", "-k", dp)
		s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
		s.waitCapacity(t, "2")

		// the example, unchanged: one GPU, allocated by the kubelet
		s.kubectl("apply", "-f", filepath.Join(s.repo, "manifests/examples/pod-resource.yaml"))
		s.waitPhase("default", "cuda-resource", 2*time.Minute, "Succeeded", "Failed")
		if log := s.logs("default", "cuda-resource", "cuda"); len(slices.DeleteFunc(nvidiaNodes(log), func(n string) bool { return !isGPUNode(n) })) != 1 ||
			!strings.Contains(log, "libcuda.so.1 (libc6,x86-64) => ") {
			t.Errorf("pod-resource.yaml:\n%s", log)
		}
		s.kubectl("delete", "pod", "cuda-resource")

		// two pods of one GPU each get different GPUs; a third waits
		for _, name := range []string{"res-a", "res-b"} {
			s.applyPod(resourcePod(name, 1, "ls /dev/nvidia*; sleep 3600"))
		}
		var nodes []string
		for _, name := range []string{"res-a", "res-b"} {
			s.waitPhase("default", name, 2*time.Minute, "Running")
			var got []string
			s.waitFor("the device list of "+name, 30*time.Second, func() error {
				if got = nvidiaNodes(s.logs("default", name, "cuda")); len(got) == 0 {
					return errorf("no log yet")
				}
				return nil
			})
			gpus := slices.DeleteFunc(got, func(n string) bool { return !isGPUNode(n) })
			if len(gpus) != 1 {
				t.Errorf("%s got GPUs %v, want one", name, gpus)
			}
			nodes = append(nodes, gpus...)
		}
		if len(nodes) == 2 && nodes[0] == nodes[1] {
			t.Errorf("both pods got %s", nodes[0])
		}
		t.Logf("res-a and res-b got %v", nodes)
		s.applyPod(resourcePod("res-c", 1, "true"))
		s.waitEvent("default", "res-c", 60*time.Second, "Insufficient nvidia.com/gpu")
		if p := s.pod("default", "res-c"); p.Status.Phase != "Pending" {
			t.Errorf("a third pod is %s", p.Status.Phase)
		}
		s.kubectl("delete", "pod", "res-a", "res-b", "res-c", "--grace-period=1")

		// a pod that names a GPU without asking the scheduler for one
		s.applyPod(gpuPod("default", "forged", `gpus.nvbind.io: "0"`, "", "ls /dev/nvidia*"))
		ev := s.waitEvent("default", "forged", 90*time.Second, "nvbind", "the kubelet allocated none", "nvidia.com/gpu")
		t.Logf("forged request:\n%s", lastLine(ev, "allocated none"))
		s.kubectl("delete", "pod", "forged", "--wait=false")

		// the kubelet restarts: the plugin registers again and capacity returns
		s.stop("kubelet")
		s.startKubelet()
		s.waitCapacity(t, "2")
		s.waitFor("a second registration", 60*time.Second, func() error {
			if v := metricValue(s.metrics(t), `nvbind_device_plugin_registrations_total{resource="nvidia.com/gpu"}`); v != "2" {
				return errorf("registrations %q", v)
			}
			return nil
		})

		s.xidOutOfService(t, xidEvents)

		// GPU 1 goes away: capacity drops within a rescan
		for _, p := range []string{"proc/driver/nvidia/gpus/0000:86:00.0", "dev/nvidia1"} {
			if err := os.RemoveAll(filepath.Join(s.driverRoot, p)); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		s.waitCapacity(t, "1")
		t.Logf("allocatable dropped to 1 in %s", time.Since(start).Round(100*time.Millisecond))
		// gone for good (--forget-after): the kubelet's capacity drops too, rather than
		// counting a device that will not return
		s.waitFor("capacity 1", 90*time.Second, func() error {
			if got := s.kubectl("get", "node", nodeName, "-o", `jsonpath={.status.capacity.nvidia\.com/gpu}`); got != "1" {
				return errorf("capacity %q", got)
			}
			return nil
		})
		t.Logf("capacity dropped to 1 in %s", time.Since(start).Round(100*time.Millisecond))

		// time-slicing: two replicas of the one GPU left, shared by two pods
		s.kubectl("-n", "nvbind-system", "patch", "ds", "nvbind", "--type=json",
			`-p=[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--replicas=2"}]`)
		s.kubectl("-n", "nvbind-system", "rollout", "status", "ds/nvbind", "--timeout=180s")
		s.waitCapacity(t, "2")
		for _, name := range []string{"shared-a", "shared-b"} {
			s.applyPod(resourcePod(name, 1, "ls /dev/nvidia*; echo replicas=$NVBIND_GPU_REPLICAS; sleep 3600"))
		}
		for _, name := range []string{"shared-a", "shared-b"} {
			s.waitPhase("default", name, 2*time.Minute, "Running")
			var log string
			s.waitFor("the log of "+name, 30*time.Second, func() error {
				if log = s.logs("default", name, "cuda"); !strings.Contains(log, "replicas=") {
					return errorf("no log yet")
				}
				return nil
			})
			if !slices.Contains(nvidiaNodes(log), "/dev/nvidia0") || !strings.Contains(log, "replicas=2") {
				t.Errorf("%s: %s", name, log)
			}
		}
		s.kubectl("delete", "pod", "shared-a", "shared-b", "--grace-period=1")
		s.kubectl("delete", "-k", dp, "--timeout=120s")
	})

	run("Helm", s.helmLifecycle)

	run("DRA", s.draScenarios)
}

// xidOutOfService: the driver reports XIDs of GPU 0 (lines on the fake event path stand
// for NVML's events): an application's XID (13) leaves it in service; a critical one (79)
// takes it out, so allocatable drops, and it returns once --xid-recover-after passes
// without another.
func (s *setup) xidOutOfService(t *testing.T, events string) {
	t.Helper()
	d, err := gpu.New(gpu.WithDriverRoot(s.driverRoot), gpu.WithDevRoot(s.driverRoot), gpu.WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	uuid := inv.Devices[0].UUID
	report := func(line string) { appendXID(t, events, line) }
	series := func(name, labels string) string { return metricValue(s.metrics(t), name+"{"+labels+"}") }
	s.waitCapacity(t, "2")
	lists := series("nvbind_device_plugin_list_and_watch_updates_total", `resource="nvidia.com/gpu"`)
	if lists == "" {
		t.Fatal("no nvbind_device_plugin_list_and_watch_updates_total for nvidia.com/gpu")
	}
	report(uuid + " 13")
	s.waitFor("XID 13 counted", 30*time.Second, func() error {
		if v := series("nvbind_gpu_xid_errors_total", `uuid="`+uuid+`",xid="13"`); v != "1" {
			return errorf("counter %q", v)
		}
		return nil
	})
	if v := series("nvbind_gpu_health", `uuid="`+uuid+`"`); v != "1" {
		t.Errorf("after XID 13, nvbind_gpu_health = %q, want 1", v)
	}
	// an application's XID changes nothing the kubelet sees: no device list is sent (a
	// send would follow the count at once; give it time to)
	time.Sleep(3 * time.Second)
	if got := series("nvbind_device_plugin_list_and_watch_updates_total", `resource="nvidia.com/gpu"`); got != lists {
		t.Errorf("after XID 13, %s device lists sent to the kubelet, %s before", got, lists)
	}
	start := time.Now()
	report("0 79")
	s.waitFor("GPU 0 out of service", 30*time.Second, func() error {
		if v := series("nvbind_gpu_health", `uuid="`+uuid+`"`); v != "0" {
			return errorf("nvbind_gpu_health %q", v)
		}
		return nil
	})
	s.waitCapacity(t, "1")
	t.Logf("allocatable dropped to 1 in %s after XID 79", time.Since(start).Round(100*time.Millisecond))
	s.waitCapacity(t, "2")
	t.Logf("allocatable back to 2 in %s after XID 79 (--xid-recover-after=30s)", time.Since(start).Round(100*time.Millisecond))
	if since := time.Since(start); since < 30*time.Second {
		t.Errorf("GPU 0 returned after %s, before --xid-recover-after", since)
	}
	if v := series("nvbind_gpu_health", `uuid="`+uuid+`"`); v != "1" {
		t.Errorf("after the recovery, nvbind_gpu_health = %q, want 1", v)
	}
}

// cdiGenerate writes the spec of the node's driver root as nvbind cdi generate --output.
func (s *setup) cdiGenerate(t *testing.T, output, hook string) {
	t.Helper()
	if out, err := exec.Command(s.nvbind, "cdi", "generate", "--driver-root", s.driverRoot, "--dev-root", s.driverRoot,
		"--hook-path", hook, "--output", output).CombinedOutput(); err != nil {
		t.Fatalf("nvbind cdi generate --output %s: %v\n%s", output, err, out)
	}
}

// oneSpecOfKind checks that the CDI folder holds one spec of nvidia.com/gpu, under name,
// and that the CDI library resolves its names without error (a second spec of the kind
// would make it refuse them all).
func (s *setup) oneSpecOfKind(t *testing.T, name string) {
	t.Helper()
	files, err := spec.ScanDir(s.cdiDir)
	var gpus []string
	for _, f := range files {
		if f.Kind == "nvidia.com/gpu" {
			gpus = append(gpus, filepath.Base(f.Path))
		}
	}
	if err != nil || !slices.Equal(gpus, []string{name}) {
		t.Errorf("specs of nvidia.com/gpu in %s: %v (%v), want %s alone", s.cdiDir, gpus, err, name)
	}
	out, err := exec.Command(s.nvbind, "cdi", "list", "--spec-dir", s.cdiDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nvidia.com/gpu=0\n") {
		t.Errorf("nvbind cdi list --spec-dir %s: %v\n%s", s.cdiDir, err, out)
	}
}

// gpuPodWorks runs a pod that asks for GPU 1 and checks it got it.
func (s *setup) gpuPodWorks(t *testing.T, name string) {
	t.Helper()
	s.applyPod(gpuPod("default", name, `gpus.nvbind.io: "1", required-plugins.noderesource.dev/container.cuda: '["nvbind"]'`, "",
		"ls /dev/nvidia*; ldconfig -p | grep libcuda.so.1"))
	s.waitPhase("default", name, 3*time.Minute, "Succeeded", "Failed")
	log := s.logs("default", name, "cuda")
	if got := nvidiaNodes(log); !slices.Contains(got, "/dev/nvidia1") || slices.Contains(got, "/dev/nvidia0") || !strings.Contains(log, "libcuda.so.1") {
		t.Errorf("%s: got %v\n%s", name, got, log)
	}
}
