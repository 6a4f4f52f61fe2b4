package nriplugin

import (
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/plugin"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

// Annotation keys and environment variables that select GPUs.
const (
	AnnotationGPUs         = "gpus.nvbind.io"
	AnnotationCapabilities = "capabilities.nvbind.io"
	AnnotationNVIDIACDI    = "nvidia.cdi.k8s.io"
	EnvVisibleDevices      = "NVIDIA_VISIBLE_DEVICES"
	EnvDriverCapabilities  = "NVIDIA_DRIVER_CAPABILITIES"
	EnvRequirePrefix       = "NVIDIA_REQUIRE_"
	EnvDisableRequire      = "NVIDIA_DISABLE_REQUIRE"
)

// SourceKind is the kind of source a request came from.
type SourceKind string

// Source kinds, the values of the metrics' source label.
const (
	KindAnnotation SourceKind = "annotation"
	KindCDI        SourceKind = "cdi"
	KindEnv        SourceKind = "env"
	KindAllocation SourceKind = "allocation"
)

// Request is what a container asks for.
type Request struct {
	// Kind is the kind of source, for metrics: annotation, cdi, env or allocation.
	Kind SourceKind
	// Source names where the request came from, for logs and errors:
	// `annotation "gpus.nvbind.io/pod"`, `env NVIDIA_VISIBLE_DEVICES`, ...
	Source string
	// All asks for every GPU; None for the driver without GPUs.
	All, None bool
	// Devices are the selectors as written: 0, gpu0, GPU-<uuid>, 0:1, mig0:1, MIG-<uuid>.
	Devices []string
	// Caps are the driver capabilities and CapsSource where they came from.
	Caps       gpu.Capabilities
	CapsSource string
	// FromEnv is set when the container's environment made the request.
	FromEnv bool
	// Require holds NVIDIA_REQUIRE_* constraints (unless NVIDIA_DISABLE_REQUIRE).
	Require []Requirement
}

// ValidSelectors describes the accepted GPU selectors.
const ValidSelectors = "all, none, or a comma list of indexes (0), gpuN, GPU-<uuid>, MIG N:M, migN:M or MIG-<uuid>"

// ParseDeviceList parses a GPU list: "all", "none", or a comma list of selectors.
// Duplicates are dropped; order is kept.
func ParseDeviceList(v string) (all, none bool, devices []string, err error) {
	v = strings.TrimSpace(v)
	switch v {
	case "all":
		return true, false, nil, nil
	case "none":
		return false, true, nil, nil
	case "":
		return false, false, nil, fmt.Errorf("empty GPU list (valid: %s)", ValidSelectors)
	}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		switch {
		case item == "":
			continue
		case item == "all" || item == "none":
			return false, false, nil, fmt.Errorf("%q cannot be combined with other GPUs in %q", item, v)
		case !spec.IsName(item):
			return false, false, nil, fmt.Errorf("bad GPU %q in %q (valid: %s)", truncate(item, 64), truncate(v, 128), ValidSelectors)
		}
		if !slices.Contains(devices, item) {
			devices = append(devices, item)
		}
	}
	if len(devices) == 0 {
		return false, false, nil, fmt.Errorf("empty GPU list %q (valid: %s)", v, ValidSelectors)
	}
	return false, false, devices, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// effective looks an annotation up with NRI's per-container precedence and returns the
// key that matched.
func effective(pod *api.PodSandbox, key, ctr string) (string, string, bool) {
	v, ok := plugin.GetEffectiveAnnotation(pod, key, ctr)
	if !ok {
		return "", "", false
	}
	for _, k := range []string{key + "/container." + ctr, key + "/pod", key} {
		if pv, found := pod.GetAnnotations()[k]; found && pv == v {
			return k, v, true
		}
	}
	return key, v, true
}

// envMap turns KEY=VALUE entries into a map; the last entry of a key wins, as in exec.
func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, e := range env {
		if k, v, ok := strings.Cut(e, "="); ok {
			m[k] = v
		}
	}
	return m
}

// ParseRequest reads a container's GPU request. It returns nil when nothing asks for GPUs.
// Checked in order, the first that asks wins: the gpus.nvbind.io annotation, CDI
// annotations naming kind (vendor/class), then, with envRequests, NVIDIA_VISIBLE_DEVICES.
func ParseRequest(pod *api.PodSandbox, ctr *api.Container, kind string, envRequests bool) (*Request, error) {
	name := ctr.GetName()
	env := envMap(ctr.GetEnv())
	var req *Request
	if key, v, ok := effective(pod, AnnotationGPUs, name); ok {
		all, none, devs, err := ParseDeviceList(v)
		if err != nil {
			return nil, fmt.Errorf("annotation %q: %w", key, err)
		}
		req = &Request{Kind: KindAnnotation, Source: fmt.Sprintf("annotation %q", key), All: all, None: none, Devices: devs}
	}
	if req == nil {
		r, err := cdiRequest(pod, ctr, kind)
		if err != nil {
			return nil, err
		}
		req = r
	}
	if req == nil && envRequests {
		if v, ok := env[EnvVisibleDevices]; ok {
			switch strings.TrimSpace(v) {
			case NVIDIAVolumeMountsRoot:
				// NVIDIA's device plugin, volume-mounts strategy: one mount per device
				if devs := volumeMountDevices(ctr); len(devs) > 0 {
					req = &Request{Kind: KindEnv, Source: "mounts under " + NVIDIAVolumeMountsRoot, Devices: devs, FromEnv: true}
				}
			case "", "void":
			default:
				all, none, devs, err := ParseDeviceList(v)
				if err != nil {
					return nil, fmt.Errorf("env %s: %w", EnvVisibleDevices, err)
				}
				req = &Request{Kind: KindEnv, Source: "env " + EnvVisibleDevices, All: all, None: none, Devices: devs, FromEnv: true}
			}
		}
	}
	if req == nil {
		return nil, nil
	}
	return req, req.readCaps(pod, ctr, env, envRequests)
}

// readCaps sets the request's capabilities (annotation, else env, else the default)
// and requirements (env).
func (req *Request) readCaps(pod *api.PodSandbox, ctr *api.Container, env map[string]string, envRequests bool) error {
	name := ctr.GetName()
	req.Caps, req.CapsSource = gpu.CapsDefault, "default"
	if key, v, ok := effective(pod, AnnotationCapabilities, name); ok {
		c, err := gpu.ParseCapabilities(v)
		if err != nil {
			return fmt.Errorf("annotation %q: %w", key, err)
		}
		req.Caps, req.CapsSource = c, fmt.Sprintf("annotation %q", key)
	} else if v, ok := env[EnvDriverCapabilities]; ok && envRequests && strings.TrimSpace(v) != "" {
		c, err := gpu.ParseCapabilities(v)
		if err != nil {
			return fmt.Errorf("env %s: %w", EnvDriverCapabilities, err)
		}
		req.Caps, req.CapsSource = c, "env "+EnvDriverCapabilities
	}
	if envRequests && !isTrue(env[EnvDisableRequire]) {
		reqs, err := ParseRequirements(env)
		if err != nil {
			return err
		}
		req.Require = reqs
	}
	return nil
}

func isTrue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// cdiRequest reads CDI annotations: cdi.k8s.io/<key> on the container (written by device
// plugins and DRA drivers) and NVIDIA's nvidia.cdi.k8s.io/container.<name> on the pod.
// Only devices of kind count; their names are resolved against our own inventory.
func cdiRequest(pod *api.PodSandbox, ctr *api.Container, kind string) (*Request, error) {
	var sources, names []string
	if ann := ctr.GetAnnotations(); len(ann) > 0 {
		keys, devices, err := cdi.ParseAnnotations(ann)
		if err != nil {
			return nil, fmt.Errorf("CDI annotations of container %q: %w", ctr.GetName(), err)
		}
		for _, d := range devices {
			if n, ok := ofKinds(d, kind); ok {
				names = append(names, n)
			}
		}
		if len(names) > 0 {
			slices.Sort(keys)
			for _, k := range keys {
				sources = append(sources, fmt.Sprintf("annotation %q", k))
			}
		}
	}
	if key, v, ok := effective(pod, AnnotationNVIDIACDI, ctr.GetName()); ok {
		found := false
		for _, d := range strings.Split(v, ",") {
			d = strings.TrimSpace(d)
			if d == "" {
				continue
			}
			if _, _, _, err := parser.ParseQualifiedName(d); err != nil {
				return nil, fmt.Errorf("annotation %q: bad CDI device %q: %w", key, truncate(d, 64), err)
			}
			if n, ok := ofKinds(d, kind); ok {
				names = append(names, n)
				found = true
			}
		}
		if found {
			sources = append(sources, fmt.Sprintf("annotation %q", key))
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	req := &Request{Kind: KindCDI, Source: strings.Join(sources, ", ")}
	for _, n := range names {
		if n == "all" {
			req.All, req.Devices = true, nil
			break
		}
		if !spec.IsName(n) {
			return nil, fmt.Errorf("%s: CDI device %s=%s is not a device nvbind knows (valid: %s)", req.Source, kind, truncate(n, 64), ValidSelectors)
		}
		if !slices.Contains(req.Devices, n) {
			req.Devices = append(req.Devices, n)
		}
	}
	return req, nil
}

// ofKind returns the device name of a qualified CDI name of the given kind.
func ofKind(qualified, kind string) (string, bool) {
	vendor, class, name, err := parser.ParseQualifiedName(qualified)
	if err != nil || vendor+"/"+class != kind {
		return "", false
	}
	return name, true
}

// ofKinds is ofKind for nvbind's kind and for NVIDIA's device plugin's
// (k8s.device-plugin.nvidia.com/gpu), whose device names are nvbind's too.
func ofKinds(qualified, kind string) (string, bool) {
	if n, ok := ofKind(qualified, kind); ok {
		return n, true
	}
	return ofKind(qualified, NVIDIADevicePluginKind)
}
