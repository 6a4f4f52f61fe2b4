package manifests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
	"tags.cncf.io/container-device-interface/pkg/parser"

	"github.com/nvbind/nvbind/hook"
	"github.com/nvbind/nvbind/test/testutil"
)

// strict decodes YAML into a typed Kubernetes object, failing on unknown fields.
func strict(t *testing.T, data []byte, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
}

func build(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out := map[string][]byte{}
	for _, r := range rm.Resources() {
		data, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		out[r.GetKind()+"/"+r.GetName()] = data
	}
	return out
}

func TestKustomizeOverlays(t *testing.T) {
	t.Parallel()
	allowedHostPaths := []string{"/var/run/nri", "/dev", "/dev/char", "/var/run/cdi", "/opt/nvbind/bin", "/var/lib/kubelet/device-plugins", "/run/nvbind", "/run/nvbind/driver/.want",
		"/var/lib/kubelet/plugins/gpu.nvbind.io", "/var/lib/kubelet/plugins_registry"}
	for _, tc := range []struct {
		dir, driverRoot string
		selector        map[string]string
		privileged      bool
	}{
		{"base", "/", map[string]string{"nvbind.io/gpu": "true"}, false},
		{"overlays/mig", "/", map[string]string{"nvbind.io/gpu": "true"}, true},
		{"overlays/gpu-operator", "/run/nvidia/driver", map[string]string{"nvbind.io/gpu": "true", "nvidia.com/gpu.deploy.driver": "true"}, false},
		{"overlays/crio", "/", map[string]string{"nvbind.io/gpu": "true", "nvbind.io/runtime": "cri-o"}, false},
		{"overlays/device-plugin", "/", map[string]string{"nvbind.io/gpu": "true"}, false},
		{"overlays/dra", "/", map[string]string{"nvbind.io/gpu": "true"}, false},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			t.Parallel()
			objs := build(t, tc.dir)
			var kinds []string
			for k, data := range objs {
				kinds = append(kinds, k)
				switch {
				case strings.HasPrefix(k, "Namespace/"):
					strict(t, data, &corev1.Namespace{})
				case strings.HasPrefix(k, "ServiceAccount/"):
					var sa corev1.ServiceAccount
					strict(t, data, &sa)
					if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
						t.Error("the service account mounts an API token nvbind never uses")
					}
				case strings.HasPrefix(k, "Service/"):
					var svc corev1.Service
					strict(t, data, &svc)
					if svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Selector["app.kubernetes.io/name"] != "nvbind" {
						t.Errorf("metrics service: %+v", svc.Spec)
					}
				case strings.HasPrefix(k, "DaemonSet/"):
					var ds appsv1.DaemonSet
					strict(t, data, &ds)
					checkDaemonSet(t, &ds, tc.driverRoot, tc.selector, allowedHostPaths, tc.privileged)
					if tc.dir == "overlays/dra" {
						checkDRA(t, &ds)
					}
				case tc.dir == "overlays/dra" && strings.HasPrefix(k, "ClusterRole/"):
					var r rbacv1.ClusterRole
					strict(t, data, &r)
					checkDRARole(t, &r)
				case tc.dir == "overlays/dra" && strings.HasPrefix(k, "ClusterRoleBinding/"):
					var b rbacv1.ClusterRoleBinding
					strict(t, data, &b)
					if b.RoleRef.Name != "nvbind-dra" || len(b.Subjects) != 1 || b.Subjects[0].Name != "nvbind" || b.Subjects[0].Namespace != "nvbind-system" {
						t.Errorf("binding %+v", b)
					}
				case tc.dir == "overlays/dra" && strings.HasPrefix(k, "DeviceClass/"):
					strict(t, data, &resourcev1.DeviceClass{})
				case tc.dir == "overlays/dra" && strings.HasPrefix(k, "ValidatingAdmissionPolicy/"):
					strict(t, data, &admissionv1.ValidatingAdmissionPolicy{})
				case tc.dir == "overlays/dra" && strings.HasPrefix(k, "ValidatingAdmissionPolicyBinding/"):
					strict(t, data, &admissionv1.ValidatingAdmissionPolicyBinding{})
				default:
					t.Errorf("unexpected object %s", k)
				}
			}
			slices.Sort(kinds)
			want := "DaemonSet/nvbind Namespace/nvbind-system Service/nvbind-metrics ServiceAccount/nvbind"
			if tc.dir == "overlays/dra" {
				want = "ClusterRole/nvbind-dra ClusterRoleBinding/nvbind-dra DaemonSet/nvbind DeviceClass/gpu.nvbind.io DeviceClass/mig.nvbind.io " +
					"Namespace/nvbind-system Service/nvbind-metrics ServiceAccount/nvbind " +
					"ValidatingAdmissionPolicy/nvbind-dra-resourceslices ValidatingAdmissionPolicyBinding/nvbind-dra-resourceslices"
			}
			if strings.Join(kinds, " ") != want {
				t.Errorf("objects = %v", kinds)
			}
		})
	}
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet, driverRoot string, selector map[string]string, allowed []string, privileged bool) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if ds.Namespace != "nvbind-system" || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("namespace %q, priority class %q", ds.Namespace, spec.PriorityClassName)
	}
	for k, v := range selector {
		if spec.NodeSelector[k] != v {
			t.Errorf("node selector %s = %q, want %q", k, spec.NodeSelector[k], v)
		}
	}
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != "nvbind" ||
		ds.Spec.Template.Labels["app.kubernetes.io/name"] != "nvbind" {
		t.Error("the selector does not match the pod labels")
	}
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			continue
		}
		if !slices.Contains(allowed, v.HostPath.Path) && v.HostPath.Path != driverRoot {
			t.Errorf("host path %s is mounted: only the NRI socket, /dev, the driver root, /var/run/cdi, the hook folder and /run/nvbind may be", v.HostPath.Path)
		}
		if v.Name == "driver-root" && v.HostPath.Path != driverRoot {
			t.Errorf("driver root volume %s, want %s", v.HostPath.Path, driverRoot)
		}
	}
	c := spec.Containers[0]
	if !slices.Contains(c.Args, "--driver-root="+driverRoot) || !slices.Contains(c.Args, "--hook-path=/opt/nvbind/bin/nvbind-hook") {
		t.Errorf("args = %v", c.Args)
	}
	sc := c.SecurityContext
	switch {
	case privileged:
		// the MIG overlay: privileged for NVML, nothing else added
		if sc == nil || sc.Privileged == nil || !*sc.Privileged || sc.Capabilities != nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("MIG overlay security context: %+v", sc)
		}
	case sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0:
		t.Errorf("the container has more privilege than it needs: %+v", sc)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/livez" {
		t.Error("probes missing")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("resource requests and a memory limit are required")
	}
	for _, m := range c.VolumeMounts {
		if (m.Name == "dev" || m.Name == "driver-root") && !m.ReadOnly {
			t.Errorf("%s is mounted writable", m.Name)
		}
		// a read-only mount over the container's /dev fails the container's start: the
		// kubelet mounts /dev/termination-log into it
		if m.MountPath == "/dev" || strings.HasPrefix(m.MountPath, "/dev/") {
			t.Errorf("volume %s is mounted at %s, over the container's /dev", m.Name, m.MountPath)
		}
	}
	if len(spec.InitContainers) != 1 || !slices.Contains(spec.InitContainers[0].Command, "hook,runtime") {
		t.Error("no init container installs the hook and runtime binaries on the host")
	}
	checkLayoutBuilder(t, spec.Containers, driverRoot)
}

// checkDRA: the DRA overlay runs the driver in the plugin's container, which alone gets
// an API token, with the node's name and the kubelet's folders at the kubelet's paths.
func checkDRA(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the pod mounts an API token in every container")
	}
	for i, ctr := range append(spec.InitContainers, spec.Containers...) {
		has := slices.ContainsFunc(ctr.VolumeMounts, func(m corev1.VolumeMount) bool {
			return m.Name == "kube-api-access" && m.MountPath == "/var/run/secrets/kubernetes.io/serviceaccount" && m.ReadOnly
		})
		if has != (ctr.Name == "nvbind" && i == len(spec.InitContainers)) {
			t.Errorf("container %s: API token mounted %v; the driver's container alone has it", ctr.Name, has)
		}
	}
	if !slices.Contains(c.Args, "--dra") || !slices.Contains(c.Args, "--require-allocation") {
		t.Errorf("args %v", c.Args)
	}
	if len(c.Env) != 1 || c.Env[0].Name != "NODE_NAME" || c.Env[0].ValueFrom == nil || c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("env %+v", c.Env)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	for _, v := range spec.Volumes {
		if (v.Name == "kubelet-plugins" || v.Name == "kubelet-registry") && mounts[v.Name] != v.HostPath.Path {
			t.Errorf("%s: host %s mounted at %s: the kubelet's paths must be the same inside", v.Name, v.HostPath.Path, mounts[v.Name])
		}
	}
}

// checkDRARole: the driver may read claims and write ResourceSlices, read nodes, and
// nothing else.
func checkDRARole(t *testing.T, r *rbacv1.ClusterRole) {
	t.Helper()
	var got []string
	for _, rule := range r.Rules {
		for _, res := range rule.Resources {
			for _, v := range rule.Verbs {
				got = append(got, res+":"+v)
			}
		}
	}
	for _, g := range got {
		res, verb, _ := strings.Cut(g, ":")
		switch {
		case res == "resourceslices" && verb != "patch" && verb != "deletecollection":
		case res == "resourceclaims" && verb == "get":
		case res == "nodes" && verb == "get":
		default:
			t.Errorf("the DRA driver may %s %s", verb, res)
		}
	}
	if !slices.Contains(got, "resourceslices:create") || !slices.Contains(got, "resourceclaims:get") {
		t.Errorf("rules %v", got)
	}
}

// checkLayoutBuilder: the one privileged container of the base runs only nvbind layout
// build, on the same driver root as the plugin, and is the only one whose mounts reach the
// host (/run/nvbind, Bidirectional); the plugin sees its layouts (HostToContainer).
func checkLayoutBuilder(t *testing.T, containers []corev1.Container, driverRoot string) {
	t.Helper()
	if len(containers) != 2 || containers[1].Name != "layouts" {
		t.Fatalf("containers: want nvbind and layouts, got %d", len(containers))
	}
	b := containers[1]
	if strings.Join(b.Args[:3], " ") != "layout build --watch" || !slices.Contains(b.Args, "--driver-root="+driverRoot) {
		t.Errorf("layout builder args = %v", b.Args)
	}
	if b.Resources.Limits.Memory().IsZero() || b.SecurityContext == nil || b.SecurityContext.ReadOnlyRootFilesystem == nil || !*b.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("the layout builder needs a memory limit and a read-only root")
	}
	for i, c := range containers {
		for _, m := range c.VolumeMounts {
			bidi := m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional
			if bidi != (i == 1 && m.Name == "layouts") {
				t.Errorf("container %s mounts %s with propagation %v", c.Name, m.Name, m.MountPropagation)
			}
			if m.Name == "layouts" && (m.MountPath != "/run/nvbind" || m.MountPropagation == nil) {
				t.Errorf("container %s mounts the layouts at %s (%v): they must be at the host's path, propagated", c.Name, m.MountPath, m.MountPropagation)
			}
			// the plugin only reads the layouts, and writes only its asks
			if i == 0 && m.Name == "layouts" && !m.ReadOnly {
				t.Error("the plugin mounts the layouts writable")
			}
			if i == 0 && strings.HasPrefix(m.MountPath, "/run/nvbind") && !m.ReadOnly && m.MountPath != "/run/nvbind/driver/.want" {
				t.Errorf("the plugin writes %s", m.MountPath)
			}
		}
	}
}

// TestExamplePods decodes the example pods strictly; nriplugin's tests check the requests
// they make.
func TestExamplePods(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"examples/pod-annotation.yaml", "examples/pod-env.yaml", "examples/pod-cdi.yaml", "examples/pod-resource.yaml",
		"examples/pod-runtime-class.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		strict(t, data, &corev1.Pod{})
		for _, bad := range testutil.ValidateKubeYAML(data) {
			t.Errorf("%s: %s", f, bad)
		}
	}
}

// TestDRAExamples decodes the DRA examples strictly, object by object, and checks that
// every claim asks the driver's classes and every opaque configuration parses.
func TestDRAExamples(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob("examples/dra-*.yaml")
	if len(files) != 4 {
		t.Fatalf("DRA examples: %v", files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			var meta struct{ Kind string }
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatal(err)
			}
			var devices *resourcev1.DeviceClaim
			switch meta.Kind {
			case "Pod":
				var p corev1.Pod
				strict(t, []byte(doc), &p)
				if len(p.Spec.ResourceClaims) != 1 || len(p.Spec.Containers[0].Resources.Claims) != 1 {
					t.Errorf("%s: pod %s claims nothing", f, p.Name)
				}
			case "ResourceClaimTemplate":
				var c resourcev1.ResourceClaimTemplate
				strict(t, []byte(doc), &c)
				devices = &c.Spec.Spec.Devices
			case "ResourceClaim":
				var c resourcev1.ResourceClaim
				strict(t, []byte(doc), &c)
				devices = &c.Spec.Devices
			default:
				t.Errorf("%s: unexpected %s", f, meta.Kind)
			}
			for _, bad := range testutil.ValidateKubeYAML([]byte(doc)) {
				t.Errorf("%s: %s", f, bad)
			}
			if devices == nil {
				continue
			}
			for _, r := range devices.Requests {
				if r.Exactly == nil || (r.Exactly.DeviceClassName != "gpu.nvbind.io" && r.Exactly.DeviceClassName != "mig.nvbind.io") {
					t.Errorf("%s: request %s of class %+v", f, r.Name, r.Exactly)
				}
			}
			// package dra parses the opaque configurations of these files (TestExampleConfigs)
			for _, c := range devices.Config {
				if c.Opaque == nil || c.Opaque.Driver != "gpu.nvbind.io" {
					t.Errorf("%s: configuration %+v", f, c)
				}
			}
		}
	}
}

// TestKubernetesAcceptsEveryKey runs Kubernetes' metadata validation on every object that
// kustomize builds from the base and each overlay, and checks every annotation and label
// key the README teaches. The cluster test (test/cluster) has the real API server accept
// the same objects.
func TestKubernetesAcceptsEveryKey(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"base", "overlays/mig", "overlays/gpu-operator", "overlays/crio", "overlays/device-plugin", "overlays/dra"} {
		for k, data := range build(t, dir) {
			for _, bad := range testutil.ValidateKubeYAML(data) {
				t.Errorf("%s %s: %s", dir, k, bad)
			}
		}
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	keys := testutil.AnnotationKeysIn(string(readme))
	for _, want := range []string{"gpus.nvbind.io/container.cuda", "gpus.nvbind.io/pod", "capabilities.nvbind.io"} {
		if !slices.Contains(keys, want) {
			t.Errorf("README does not document %s (found %v)", want, keys)
		}
	}
	for _, bad := range testutil.InvalidKeys(keys) {
		t.Errorf("README: %s", bad)
	}
}

// TestValidationCatchesBadKeys shows the check above would fail on the keys nvbind
// documented before: more than one '/' in an annotation key.
func TestValidationCatchesBadKeys(t *testing.T) {
	t.Parallel()
	pod := []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    nvbind.io/gpus/container.cuda: \"1\"\n")
	if errs := testutil.ValidateKubeYAML(pod); len(errs) != 1 || !strings.Contains(errs[0], "nvbind.io/gpus/container.cuda") {
		t.Errorf("errors = %q", errs)
	}
	if bad := testutil.InvalidKeys(testutil.AnnotationKeysIn("use `nvbind.io/gpus/pod: all`")); len(bad) != 1 {
		t.Errorf("bad keys = %q", bad)
	}
}

// TestExampleCompose checks the Compose file's devices the way Docker reads them: an entry
// without a host:container colon that is a qualified CDI name.
func TestExampleCompose(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("examples/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image   string   `json:"image"`
			Command string   `json:"command"`
			Devices []string `json:"devices"`
		} `json:"services"`
	}
	strict(t, data, &compose)
	n := 0
	for name, s := range compose.Services {
		for _, d := range s.Devices {
			n++
			if strings.Contains(d, ":") || !parser.IsQualifiedName(d) {
				t.Errorf("service %s: device %q is not a CDI name Docker would inject", name, d)
			}
			if vendor, class, _, _ := parser.ParseQualifiedName(d); vendor+"/"+class != "nvidia.com/gpu" {
				t.Errorf("device %q is not of kind nvidia.com/gpu", d)
			}
		}
	}
	if n == 0 {
		t.Fatal("no devices in the compose example")
	}
}

func TestRuntimeSnippets(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"runtime/containerd-2.x-nri.toml", "runtime/containerd-1.7-nri.toml", "runtime/containerd-cdi.toml", "runtime/crio-nri.conf",
		"runtime/containerd-2.x-guard.toml", "runtime/containerd-runtime-class.toml", "runtime/crio-runtime-class.conf"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := toml.Unmarshal(data, &m); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	var daemon struct {
		Features map[string]bool `json:"features"`
		Dirs     []string        `json:"cdi-spec-dirs"`
	}
	data, err := os.ReadFile("runtime/docker-daemon.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &daemon); err != nil || !daemon.Features["cdi"] {
		t.Errorf("docker-daemon.json: %v %+v", err, daemon)
	}
}

// TestImageTagIsWhatMakeImageWrites keeps the image the manifests name equal to the one
// `make image` writes and the Containerfile labels.
func TestImageTagIsWhatMakeImageWrites(t *testing.T) {
	t.Parallel()
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(mk), "\n") {
		if k, v, ok := strings.Cut(line, "?="); ok {
			vars[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	var k struct {
		Images []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
			NewTag  string `json:"newTag"`
		} `json:"images"`
	}
	data, err := os.ReadFile("base/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &k); err != nil || len(k.Images) != 1 {
		t.Fatalf("images: %v %+v", err, k)
	}
	if got := k.Images[0].NewName + ":" + k.Images[0].NewTag; got != vars["IMAGE_REPO"]+":"+vars["IMAGE_TAG"] || vars["IMAGE_TAG"] == "" {
		t.Errorf("manifests/base uses %s, make image writes %s:%s", got, vars["IMAGE_REPO"], vars["IMAGE_TAG"])
	}
	cf, err := os.ReadFile("../Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cf), `org.opencontainers.image.version="`+vars["IMAGE_TAG"]+`"`) {
		t.Errorf("the Containerfile's version label is not %s", vars["IMAGE_TAG"])
	}
}

// TestRuntimeClass: the RuntimeClass names the handler of the runtime snippets.
func TestRuntimeClass(t *testing.T) {
	t.Parallel()
	objs := build(t, "runtime-class")
	data, ok := objs["RuntimeClass/nvbind"]
	if !ok || len(objs) != 1 {
		t.Fatalf("objects %v", objs)
	}
	var rc nodev1.RuntimeClass
	strict(t, data, &rc)
	snippet, err := os.ReadFile("runtime/containerd-runtime-class.toml")
	if err != nil {
		t.Fatal(err)
	}
	if rc.Handler != "nvbind" || !strings.Contains(string(snippet), "containerd.runtimes.nvbind]") || !strings.Contains(string(snippet), "nvbind-runtime") {
		t.Errorf("handler %q does not match the snippet", rc.Handler)
	}
}

// TestNRIUnitGrantsTheSteps: the NRI plugin's unit and the runtime wrapper's edit
// service's give them exactly the capabilities they need to do the driver's steps in
// containers (hook.InContainerCapabilities), and no seccomp filter against setns, so that
// --stage auto and stage = "auto" take them on a host that installed the units.
func TestNRIUnitGrantsTheSteps(t *testing.T) {
	t.Parallel()
	var want []string
	for _, c := range hook.InContainerCapabilities {
		want = append(want, c.Name)
	}
	slices.Sort(want)
	// the NRI plugin and the runtime wrapper's edit service both run the steps
	for _, unit := range []string{"systemd/nvbind-nri.service", "systemd/nvbind-runtime.service"} {
		data, err := Systemd.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		var granted []string
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "CapabilityBoundingSet="); ok {
				granted = append(granted, strings.Fields(v)...)
			}
			// systemd's seccomp filter for it refuses setns, which the steps need
			if strings.HasPrefix(line, "RestrictNamespaces=") {
				t.Errorf("%s: %s", unit, line)
			}
		}
		slices.Sort(granted)
		if !slices.Equal(granted, want) {
			t.Errorf("%s: CapabilityBoundingSet %v, want %v", unit, granted, want)
		}
	}
}
