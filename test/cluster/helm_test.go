package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// serviceMonitorCRDVersion is the Prometheus Operator release whose ServiceMonitor CRD the
// API server checks the chart's ServiceMonitor against (from the module proxy).
const serviceMonitorCRDVersion = "v0.94.0"

// helm runs the helm test/deps.sh builds against the cluster, with no state of the
// machine's user, and fails the test on an error.
func (s *setup) helm(args ...string) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cacheBin(s.t, "helm"), append([]string{"--kubeconfig", s.kubeconfig}, args...)...)
	home := filepath.Join(s.dir, "helm-home")
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (s *setup) chart() string { return filepath.Join(s.repo, "manifests/helm/nvbind") }

// chartExamples are the chart's values files users start from.
func (s *setup) chartExamples() []string {
	s.t.Helper()
	files, err := filepath.Glob(filepath.Join(s.chart(), "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		s.t.Fatalf("chart examples: %v", err)
	}
	return files
}

// dryRunChart has the API server accept what the chart renders with its defaults and
// with each example, ServiceMonitor included (against the Prometheus Operator's own CRD).
func (s *setup) dryRunChart(t *testing.T) {
	t.Helper()
	s.kubectl("apply", "--server-side", "-f", serviceMonitorCRD(t))
	s.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s")
	for _, values := range append([]string{""}, s.chartExamples()...) {
		args := []string{"template", "nvbind", s.chart(), "--namespace", "nvbind-system"}
		if values != "" {
			args = append(args, "-f", values)
		}
		out := filepath.Join(t.TempDir(), "rendered.yaml")
		if err := os.WriteFile(out, []byte(s.helm(args...)), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := s.kubectl("apply", "--dry-run=server", "-f", out); !strings.Contains(got, "daemonset.apps/nvbind") {
			t.Errorf("dry run of %s: %s", filepath.Base(values), got)
		}
	}
}

// serviceMonitorCRD is the path of the ServiceMonitor CRD as the Prometheus Operator ships it.
func serviceMonitorCRD(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", "github.com/prometheus-operator/prometheus-operator@"+serviceMonitorCRDVersion)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	out, err := cmd.Output()
	var mod struct{ Dir, Error string }
	if err != nil || json.Unmarshal(out, &mod) != nil || mod.Dir == "" {
		t.Fatalf("go mod download the Prometheus Operator %s: %v %s\n%s", serviceMonitorCRDVersion, err, mod.Error, out)
	}
	return filepath.Join(mod.Dir, "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml")
}

// helmValues writes the values of the test's node: the cluster's NRI, CDI and layout
// folders and the fixture driver root, whose dev/ holds the device nodes. Everything else
// is the chart's.
func (s *setup) helmValues(t *testing.T) string {
	t.Helper()
	values := fmt.Sprintf(`nri: {socketDir: %q}
cdiSpecDir: %q
driverRoot: %q
devRoot: %q
layouts: {layoutRoot: %q}
allowedNamespaces: [default]
devicePlugin: {enabled: true, rescanInterval: 5s}
requireAllocation: true
metrics:
  serviceMonitor: {enabled: true}
  dashboard: {enabled: true}
`, s.nriDir, s.cdiDir, s.driverRoot, s.driverRoot, s.runNVBind())
	p := filepath.Join(s.dir, "helm-values.yaml")
	if err := os.WriteFile(p, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// helmLifecycle installs the chart with the device plugin, upgrades it to two replicas of
// each GPU and uninstalls it; GPU pods run after each step, and a pod started first keeps
// its GPU throughout. The node has one GPU left (the device-plugin scenario removed GPU 1).
func (s *setup) helmLifecycle(t *testing.T) {
	s.waitFor("nvbind-system to go", 2*time.Minute, func() error {
		if _, err := s.kubectlErr("get", "namespace", "nvbind-system"); err == nil {
			return errorf("still there")
		}
		return nil
	})
	values := s.helmValues(t)
	start := time.Now()
	s.helm("install", "nvbind", s.chart(), "--namespace", "nvbind-system", "--create-namespace", "-f", values, "--wait", "--timeout", "3m")
	t.Logf("helm install --wait: %s", time.Since(start).Round(100*time.Millisecond))
	if out := s.helm("status", "nvbind", "--namespace", "nvbind-system"); !strings.Contains(out, "STATUS: deployed") {
		t.Errorf("helm status:\n%s", out)
	}
	for _, obj := range []string{"servicemonitor/nvbind", "configmap/nvbind-dashboard", "service/nvbind-metrics", "serviceaccount/nvbind"} {
		s.kubectl("-n", "nvbind-system", "get", obj)
	}
	s.waitCapacity(t, "1")
	s.applyPod(resourcePod("helm-long", 1, "ls /dev/nvidia*; echo replicas=$NVBIND_GPU_REPLICAS; sleep 3600"))
	s.waitPhase("default", "helm-long", 2*time.Minute, "Running")
	s.waitFor("the log of helm-long", 30*time.Second, func() error {
		if log := s.logs("default", "helm-long", "cuda"); !strings.Contains(log, "replicas=") {
			return errorf("no log yet")
		}
		return nil
	})
	if log := s.logs("default", "helm-long", "cuda"); !slices.Contains(nvidiaNodes(log), "/dev/nvidia0") {
		t.Errorf("helm-long after helm install:\n%s", log)
	}

	// helm upgrade: two replicas of the GPU; a second pod shares it with the first
	start = time.Now()
	s.helm("upgrade", "nvbind", s.chart(), "--namespace", "nvbind-system", "-f", values, "--set", "devicePlugin.replicas=2", "--wait", "--timeout", "3m")
	t.Logf("helm upgrade --wait: %s", time.Since(start).Round(100*time.Millisecond))
	var ds struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct{ Args []string }
				}
			}
		}
	}
	s.getJSON(&ds, "-n", "nvbind-system", "ds", "nvbind")
	if !slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, "--replicas=2") {
		t.Errorf("after helm upgrade the plugin runs %v", ds.Spec.Template.Spec.Containers[0].Args)
	}
	s.waitCapacity(t, "2")
	s.applyPod(resourcePod("helm-upgraded", 1, "ls /dev/nvidia*; echo replicas=$NVBIND_GPU_REPLICAS"))
	s.waitPhase("default", "helm-upgraded", 2*time.Minute, "Succeeded", "Failed")
	if log := s.logs("default", "helm-upgraded", "cuda"); !slices.Contains(nvidiaNodes(log), "/dev/nvidia0") || !strings.Contains(log, "replicas=2") {
		t.Errorf("helm-upgraded after helm upgrade:\n%s", log)
	}

	// helm uninstall: nvbind's objects go; the running GPU pod keeps its GPU
	s.helm("uninstall", "nvbind", "--namespace", "nvbind-system", "--wait", "--timeout", "3m")
	if out, err := s.kubectlErr("-n", "nvbind-system", "get", "ds,svc,sa,servicemonitor,configmap", "-l", "app.kubernetes.io/name=nvbind", "-o", "name"); err != nil || out != "" {
		t.Errorf("after helm uninstall: %v %s", err, out)
	}
	s.waitFor("the device plugin to go", 90*time.Second, func() error {
		if got := s.kubectl("get", "node", nodeName, "-o", `jsonpath={.status.allocatable.nvidia\.com/gpu}`); got != "0" {
			return errorf("allocatable %q", got)
		}
		return nil
	})
	p := s.pod("default", "helm-long")
	if p.Status.Phase != "Running" || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the GPU pod did not survive helm upgrade and uninstall: %+v", p.Status)
	}
	s.kubectl("delete", "pod", "helm-long", "helm-upgraded", "--grace-period=1")
	s.kubectl("delete", "namespace", "nvbind-system", "--timeout=120s")
}
