package request

import (
	"os"
	"path"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// TestGuardSnippet: the guard's runtime handler passes every request key through to
// config.json (containerd matches them with path.Match), and not the key that marks a
// container handled, which only nvbind's NRI plugin may set.
func TestGuardSnippet(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../manifests/runtime/containerd-2.x-guard.toml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Plugins map[string]struct {
			Containerd struct {
				Runtimes map[string]struct {
					PodAnnotations       []string          `toml:"pod_annotations"`
					ContainerAnnotations []string          `toml:"container_annotations"`
					Options              map[string]string `toml:"options"`
				} `toml:"runtimes"`
			} `toml:"containerd"`
		} `toml:"plugins"`
	}
	if err := toml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	runc := c.Plugins["io.containerd.cri.v1.runtime"].Containerd.Runtimes["runc"]
	if runc.Options["BinaryName"] != "/opt/nvbind/bin/nvbind-guard" {
		t.Errorf("BinaryName %q", runc.Options["BinaryName"])
	}
	matches := func(patterns []string, key string) bool {
		for _, p := range patterns {
			if ok, _ := path.Match(p, key); ok {
				return true
			}
		}
		return false
	}
	for _, k := range []string{"gpus.nvbind.io", "gpus.nvbind.io/pod", "gpus.nvbind.io/container.cuda", "nvidia.cdi.k8s.io/container.cuda",
		"required-plugins.noderesource.dev/container.cuda", "required-plugins.noderesource.dev/pod"} {
		if !matches(runc.PodAnnotations, k) {
			t.Errorf("pod annotation %s does not reach config.json", k)
		}
	}
	for _, k := range []string{"cdi.k8s.io/nvidia-device-plugin_GPU-1", "allocated.gpus.nvbind.io/gpu", "allocated.gpus.nvbind.io"} {
		if !matches(runc.ContainerAnnotations, k) {
			t.Errorf("container annotation %s does not reach config.json", k)
		}
	}
	if matches(runc.PodAnnotations, AnnotationHandled) || matches(runc.ContainerAnnotations, AnnotationHandled) {
		t.Errorf("a pod could forge %s", AnnotationHandled)
	}
}
