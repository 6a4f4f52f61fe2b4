package manifests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/nvbind/nvbind/test/testutil"
)

const chart = "helm/nvbind"

// helmBin is the helm that test/deps.sh builds from the module proxy (make test installs
// it), or one in PATH; without either the chart's tests skip, unless fixtures are required.
func helmBin(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("NVBIND_CACHE")
	if cache == "" {
		cache = "/var/cache/nvbind"
	}
	if p := filepath.Join(cache, "bin", "helm"); isExecutable(p) {
		return p
	}
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if os.Getenv(testutil.EnvRequireFixtures) == "1" {
		t.Fatal("helm is not installed: run test/deps.sh helm (make test does)")
	}
	t.Skip("helm is not installed: run test/deps.sh helm")
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	// no repositories, plugins or caches of the machine's user
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if err != nil {
		return out.String(), errors.New(strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// render runs helm template as `helm install nvbind -n nvbind-system` would, and returns the
// objects by kind/name.
func render(t *testing.T, args ...string) map[string][]byte {
	t.Helper()
	out, err := helm(t, append([]string{"template", "nvbind", chart, "--namespace", "nvbind-system"}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v", args, err)
	}
	objs := map[string][]byte{}
	dec := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		if meta.Kind == "" {
			continue
		}
		key := meta.Kind + "/" + meta.Metadata.Name
		if _, dup := objs[key]; dup {
			t.Fatalf("%s rendered twice", key)
		}
		objs[key] = doc
	}
	return objs
}

// helmLabels are the labels Helm's conventions add to every object's metadata; manifests/base
// has only the selector labels.
var helmLabels = []string{"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version", "helm.sh/chart"}

// normal decodes an object for comparison, without Helm's own labels.
func normal(t *testing.T, data []byte) map[string]any {
	t.Helper()
	var o map[string]any
	if err := yaml.Unmarshal(data, &o); err != nil {
		t.Fatal(err)
	}
	if md, ok := o["metadata"].(map[string]any); ok {
		if labels, ok := md["labels"].(map[string]any); ok {
			for _, l := range helmLabels {
				delete(labels, l)
			}
		}
	}
	return o
}

// TestHelmRendersKustomize: the chart's defaults render the objects of manifests/base, and
// the examples that match an overlay render that overlay's objects, field for field (only
// Helm's labels told apart). The Namespace is the one object of the base the chart leaves
// to `helm install --create-namespace`, as Helm's conventions have it.
func TestHelmRendersKustomize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ values, kustomization string }{
		{"", "base"},
		{"examples/device-plugin.yaml", "overlays/device-plugin"},
		{"examples/gpu-operator.yaml", "overlays/gpu-operator"},
		{"examples/crio.yaml", "overlays/crio"},
		{"examples/mig.yaml", "overlays/mig"},
		{"examples/dra.yaml", "overlays/dra"},
	} {
		t.Run(tc.kustomization, func(t *testing.T) {
			t.Parallel()
			var args []string
			if tc.values != "" {
				args = []string{"-f", filepath.Join(chart, tc.values)}
			}
			got := render(t, args...)
			want := build(t, tc.kustomization)
			delete(want, "Namespace/nvbind-system")
			if g, w := sortedKeys(got), sortedKeys(want); !slices.Equal(g, w) {
				t.Fatalf("objects: chart %v, kustomize %v", g, w)
			}
			for k := range want {
				g, w := normal(t, got[k]), normal(t, want[k])
				if !reflect.DeepEqual(g, w) {
					gy, _ := yaml.Marshal(g)
					wy, _ := yaml.Marshal(w)
					t.Errorf("%s differs:\n%s", k, lineDiff(string(wy), string(gy)))
				}
			}
			// Helm's labels are there, on metadata only: the selectors stay the base's,
			// so a release and the kustomize install select the same pods
			var ds appsv1.DaemonSet
			strict(t, got["DaemonSet/nvbind"], &ds)
			if ds.Labels["app.kubernetes.io/managed-by"] != "Helm" || ds.Labels["helm.sh/chart"] == "" || len(ds.Spec.Selector.MatchLabels) != 2 {
				t.Errorf("labels %v, selector %v", ds.Labels, ds.Spec.Selector.MatchLabels)
			}
		})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// lineDiff lists the lines only one side has (enough to see a drift).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- kustomize: " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ chart:     " + l + "\n")
		}
	}
	return b.String()
}

func examples(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chart, "examples", "*.yaml"))
	if err != nil || len(files) < 8 {
		t.Fatalf("examples: %v %v", files, err)
	}
	return files
}

// TestHelmLint: helm lint --strict accepts the chart with its defaults and with every
// example, and each example renders objects Kubernetes' types decode strictly, with the
// DaemonSet's checks of the kustomize test.
func TestHelmLint(t *testing.T) {
	t.Parallel()
	if out, err := helm(t, "lint", "--strict", chart); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	allowed := []string{"/var/run/nri", "/dev", "/dev/char", "/var/run/cdi", "/opt/nvbind/bin", "/var/lib/kubelet/device-plugins", "/run/nvbind", "/run/nvbind/driver/.want",
		"/var/lib/kubelet/plugins/gpu.nvbind.io", "/var/lib/kubelet/plugins_registry"}
	for _, f := range examples(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			if out, err := helm(t, "lint", "--strict", chart, "-f", f); err != nil {
				t.Fatalf("helm lint -f %s: %v\n%s", f, err, out)
			}
			var values struct {
				DriverRoot string `json:"driverRoot"`
				Privileged bool   `json:"privileged"`
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(data, &values); err != nil {
				t.Fatal(err)
			}
			if values.DriverRoot == "" {
				values.DriverRoot = "/"
			}
			for k, data := range render(t, "-f", f) {
				for _, bad := range testutil.ValidateKubeYAML(data) {
					t.Errorf("%s: %s", k, bad)
				}
				switch kind, _, _ := strings.Cut(k, "/"); kind {
				case "DaemonSet":
					var ds appsv1.DaemonSet
					strict(t, data, &ds)
					checkDaemonSet(t, &ds, values.DriverRoot, map[string]string{"nvbind.io/gpu": "true"}, allowed, values.Privileged)
				case "ServiceAccount":
					strict(t, data, &corev1.ServiceAccount{})
				case "Service":
					strict(t, data, &corev1.Service{})
				case "ConfigMap":
					strict(t, data, &corev1.ConfigMap{})
				case "RuntimeClass":
					strict(t, data, &nodev1.RuntimeClass{})
				case "ClusterRole":
					var r rbacv1.ClusterRole
					strict(t, data, &r)
					checkDRARole(t, &r)
				case "ClusterRoleBinding":
					strict(t, data, &rbacv1.ClusterRoleBinding{})
				case "DeviceClass":
					strict(t, data, &resourcev1.DeviceClass{})
				case "ValidatingAdmissionPolicy":
					strict(t, data, &admissionv1.ValidatingAdmissionPolicy{})
				case "ValidatingAdmissionPolicyBinding":
					strict(t, data, &admissionv1.ValidatingAdmissionPolicyBinding{})
				case "ServiceMonitor":
					// the real CRD's schema checks it: the cluster test dry-runs every example
				default:
					t.Errorf("unexpected object %s", k)
				}
			}
		})
	}
}

// TestHelmRefusesBadValues: the schema names what is wrong, and the chart renders nothing.
func TestHelmRefusesBadValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		set   string
		wants []string
	}{
		{"devicePlugin.migStrategy=mixd", []string{"/devicePlugin/migStrategy", "none", "single", "mixed"}},
		{"devicePlugin.replicas=0", []string{"/devicePlugin/replicas", "minimum"}},
		{"devicePluign.enabled=true", []string{"devicePluign"}},
		{"driverRoot=run/nvidia/driver", []string{"/driverRoot", "^/"}},
		{"log.format=xml", []string{"/log/format", "text", "json"}},
		{"nri.pluginIndex=100", []string{"/nri/pluginIndex"}},
		{"dra.enabled=true,devicePlugin.enabled=true,requireAllocation=true,dra.gpus=all", []string{"dra.gpus", "never both"}},
		{"health.xidRecoverAfter=ten", []string{"/health/xidRecoverAfter"}},
		{"devicePlugin.resourceName=gpu", []string{"/devicePlugin/resourceName"}},
		{"extraArgs={-v}", []string{"/extraArgs/0"}},
		{"metrics.serviceMonitor.enabled=true,metrics.service.enabled=false", []string{"metrics.serviceMonitor.enabled needs metrics.service.enabled"}},
		{"dra.enabled=true,devicePlugin.enabled=true,requireAllocation=true", []string{"dra.gpus", "never both"}},
		{"dra.enabled=true", []string{"dra.enabled needs requireAllocation: true"}},
		{"dra.gpus=one", []string{"/dra/gpus"}},
	} {
		out, err := helm(t, "template", "nvbind", chart, "--set", tc.set)
		if err == nil {
			t.Errorf("--set %s rendered:\n%s", tc.set, out)
			continue
		}
		for _, w := range tc.wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("--set %s: error lacks %q: %v", tc.set, w, err)
			}
		}
	}
}

// TestHelmValuesDocumented: every key of values.yaml is in the schema and every key of the
// schema in values.yaml, so that neither drifts from the other.
func TestHelmValuesDocumented(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(chart, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	data, err = os.ReadFile(filepath.Join(chart, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatal(err)
	}
	var walk func(prefix string, v, s map[string]any)
	walk = func(prefix string, v, s map[string]any) {
		props, _ := s["properties"].(map[string]any)
		for k, sv := range props {
			sub, _ := sv.(map[string]any)
			vv, ok := v[k]
			if !ok {
				if k != "global" {
					t.Errorf("%s%s is in the schema, not in values.yaml", prefix, k)
				}
				continue
			}
			if vm, ok := vv.(map[string]any); ok && sub["properties"] != nil {
				walk(prefix+k+".", vm, sub)
			}
		}
		for k := range v {
			if _, ok := props[k]; !ok {
				t.Errorf("%s%s is in values.yaml, not in the schema", prefix, k)
			}
		}
	}
	walk("", values, schema)
}
