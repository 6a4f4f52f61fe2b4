package request

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"tags.cncf.io/container-device-interface/pkg/parser"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

// Annotation keys and environment variables that select GPUs.
const (
	AnnotationGPUs         = "gpus.nvbind.io"
	AnnotationCapabilities = "capabilities.nvbind.io"
	AnnotationNVIDIACDI    = "nvidia.cdi.k8s.io"
	// AnnotationCDIPrefix starts the CDI annotations device plugins and DRA drivers write
	// on containers (cdi.k8s.io/<key>: vendor.com/class=dev,...).
	AnnotationCDIPrefix   = "cdi.k8s.io/"
	EnvVisibleDevices     = "NVIDIA_VISIBLE_DEVICES"
	EnvDriverCapabilities = "NVIDIA_DRIVER_CAPABILITIES"
	EnvRequirePrefix      = "NVIDIA_REQUIRE_"
	EnvDisableRequire     = "NVIDIA_DISABLE_REQUIRE"
)

// NVIDIA's k8s-device-plugin conventions that nvbind reads.
const (
	// NVIDIADevicePluginKind is the CDI kind NVIDIA's device plugin names devices with
	// in its cdi-annotations and cdi-cri strategies; its device names are nvbind's too.
	NVIDIADevicePluginKind = "k8s.device-plugin.nvidia.com/gpu"
	// NVIDIAVolumeMountsRoot is where its volume-mounts strategy mounts /dev/null once per
	// device ID, with NVIDIA_VISIBLE_DEVICES set to this folder.
	NVIDIAVolumeMountsRoot = "/var/run/nvidia-container-devices"
)

// Budgets of a request. An image sets env and a pod author annotations, so every value
// is checked against these before it is parsed; beyond them the request fails with an
// error that names the value and the budget. Real requests are far below them: a node has
// at most a few dozen GPUs and MIG devices, whose UUIDs are 40 characters.
const (
	// MaxListBytes bounds a GPU list: an annotation, NVIDIA_VISIBLE_DEVICES, or the
	// value of one CDI annotation.
	MaxListBytes = 64 << 10
	// MaxDevices bounds the entries of a GPU list, and the devices of a request.
	MaxDevices = 1024
	// MaxValueBytes bounds a capability list and each NVIDIA_REQUIRE_* value.
	MaxValueBytes = 4 << 10
	// MaxRequirements bounds the NVIDIA_REQUIRE_* variables of a container.
	MaxRequirements = 32
)

// SourceKind is the kind of source a request came from.
type SourceKind string

// Source kinds, the values of the metrics' source label.
const (
	KindAnnotation SourceKind = "annotation"
	KindCDI        SourceKind = "cdi"
	KindEnv        SourceKind = "env"
	KindAllocation SourceKind = "allocation"
	KindDRA        SourceKind = "dra"
)

// Request is what a container asks for.
type Request struct {
	// Kind is the kind of source, for metrics.
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

// Input is what a container carries that can ask for GPUs, in no runtime's types.
type Input struct {
	// Container is the container's name: annotations KEY/container.<name> are its own.
	Container string
	// PodAnnotations are the pod's annotations (KEY/container.<name>, KEY/pod, KEY).
	PodAnnotations map[string]string
	// Annotations are the container's own: CDI annotations, device-plugin allocations.
	Annotations map[string]string
	// Env holds the container's KEY=VALUE entries; the last entry of a key wins.
	Env []string
	// Mounts are the container paths of its mounts (NVIDIA's volume-mounts strategy).
	Mounts []string
}

// Options say how to read an Input.
type Options struct {
	// Kind is the CDI kind (vendor/class) whose devices are nvbind's: nvidia.com/gpu.
	Kind string
	// EnvRequests lets NVIDIA_VISIBLE_DEVICES request GPUs. Any pod can set env, so this
	// can be turned off.
	EnvRequests bool
}

// ValidSelectors describes the accepted GPU selectors.
const ValidSelectors = "all, none, or a comma list of indexes (0), gpuN, GPU-<uuid>, MIG N:M, migN:M or MIG-<uuid>"

// ParseDeviceList parses a GPU list: "all", "none", or a comma list of selectors, at
// most MaxListBytes and MaxDevices entries. Duplicates are dropped; order is kept.
func ParseDeviceList(v string) (all, none bool, devices []string, err error) {
	if len(v) > MaxListBytes {
		return false, false, nil, fmt.Errorf("a GPU list of %d bytes is longer than the %d a list may be", len(v), MaxListBytes)
	}
	v = strings.TrimSpace(v)
	switch v {
	case "all":
		return true, false, nil, nil
	case "none":
		return false, true, nil, nil
	case "":
		return false, false, nil, fmt.Errorf("empty GPU list (valid: %s)", ValidSelectors)
	}
	seen := map[string]bool{}
	for rest := v; rest != ""; {
		var item string
		item, rest, _ = strings.Cut(rest, ",")
		item = strings.TrimSpace(item)
		switch {
		case item == "":
			continue
		case item == "all" || item == "none":
			return false, false, nil, fmt.Errorf("%q cannot be combined with other GPUs in %q", item, truncate(v, 128))
		case !spec.IsName(item):
			return false, false, nil, fmt.Errorf("bad GPU %q in %q (valid: %s)", truncate(item, 64), truncate(v, 128), ValidSelectors)
		case seen[item]:
			continue
		}
		if len(devices) == MaxDevices {
			return false, false, nil, fmt.Errorf("more than %d GPUs in %q", MaxDevices, truncate(v, 128))
		}
		seen[item] = true
		devices = append(devices, item)
	}
	if len(devices) == 0 {
		return false, false, nil, fmt.Errorf("empty GPU list %q (valid: %s)", truncate(v, 128), ValidSelectors)
	}
	return false, false, devices, nil
}

// truncate shortens input quoted in messages: a request's values end in kubectl describe.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Effective looks an annotation up with NRI's per-container precedence (KEY/container.<name>,
// then KEY/pod, then KEY) and returns the key that matched.
func Effective(ann map[string]string, key, container string) (string, string, bool) {
	for _, k := range [...]string{key + "/container." + container, key + "/pod", key} {
		if v, ok := ann[k]; ok {
			return k, v, true
		}
	}
	return "", "", false
}

// env is what a request reads of a container's environment, in one pass.
type env struct {
	visible, caps                 string
	hasVisible, hasCaps, disabled bool
	// require holds NVIDIA_REQUIRE_* by name; the last entry of a name wins
	require map[string]string
	// tooMany is set when more than MaxRequirements names were seen
	tooMany bool
}

func readEnv(entries []string) env {
	var e env
	for _, kv := range entries {
		if !strings.HasPrefix(kv, "NVIDIA_") {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch {
		case k == EnvVisibleDevices:
			e.visible, e.hasVisible = v, true
		case k == EnvDriverCapabilities:
			e.caps, e.hasCaps = v, true
		case k == EnvDisableRequire:
			e.disabled = isTrue(v)
		case strings.HasPrefix(k, EnvRequirePrefix):
			if e.require == nil {
				e.require = map[string]string{}
			}
			if _, ok := e.require[k]; !ok && len(e.require) == MaxRequirements {
				e.tooMany = true
				continue
			}
			e.require[k] = v
		}
	}
	return e
}

// Which says which kind of source would make a request, and names it, without parsing
// any value: a policy that refuses annotations and ignores env decides before the request
// is read. It returns "" when nothing asks.
func Which(in Input, o Options) (SourceKind, string) {
	if key, _, ok := Effective(in.PodAnnotations, AnnotationGPUs, in.Container); ok {
		return KindAnnotation, fmt.Sprintf("annotation %q", key)
	}
	var cdiKeys []string
	for k, v := range in.Annotations {
		if strings.HasPrefix(k, AnnotationCDIPrefix) && (strings.Contains(v, o.Kind+"=") || strings.Contains(v, NVIDIADevicePluginKind+"=")) {
			cdiKeys = append(cdiKeys, k)
		}
	}
	if len(cdiKeys) > 0 {
		sort.Strings(cdiKeys)
		return KindCDI, fmt.Sprintf("annotation %q", truncate(cdiKeys[0], 128))
	}
	if key, _, ok := Effective(in.PodAnnotations, AnnotationNVIDIACDI, in.Container); ok {
		return KindCDI, fmt.Sprintf("annotation %q", key)
	}
	if !o.EnvRequests {
		return "", ""
	}
	for i := len(in.Env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(in.Env[i], EnvVisibleDevices+"="); ok {
			if v = strings.TrimSpace(v); v != "" && v != "void" {
				return KindEnv, "env " + EnvVisibleDevices
			}
			return "", ""
		}
	}
	return "", ""
}

// Parse reads a container's request. It returns nil when nothing asks for GPUs. Checked
// in order, the first that asks wins: the gpus.nvbind.io annotation, CDI annotations
// naming o.Kind (or NVIDIA's device plugin's kind), then, with o.EnvRequests,
// NVIDIA_VISIBLE_DEVICES.
func Parse(in Input, o Options) (*Request, error) {
	var req *Request
	if key, v, ok := Effective(in.PodAnnotations, AnnotationGPUs, in.Container); ok {
		all, none, devs, err := ParseDeviceList(v)
		if err != nil {
			return nil, fmt.Errorf("annotation %q: %w", key, err)
		}
		req = &Request{Kind: KindAnnotation, Source: fmt.Sprintf("annotation %q", key), All: all, None: none, Devices: devs}
	}
	if req == nil {
		r, err := cdiRequest(in, o.Kind)
		if err != nil {
			return nil, err
		}
		req = r
	}
	e := readEnv(in.Env)
	if req == nil && o.EnvRequests && e.hasVisible {
		switch strings.TrimSpace(e.visible) {
		case NVIDIAVolumeMountsRoot:
			// NVIDIA's device plugin, volume-mounts strategy: one mount per device
			devs, err := volumeMountDevices(in.Mounts)
			if err != nil {
				return nil, err
			}
			if len(devs) > 0 {
				req = &Request{Kind: KindEnv, Source: "mounts under " + NVIDIAVolumeMountsRoot, Devices: devs, FromEnv: true}
			}
		case "", "void":
		default:
			all, none, devs, err := ParseDeviceList(e.visible)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", EnvVisibleDevices, err)
			}
			req = &Request{Kind: KindEnv, Source: "env " + EnvVisibleDevices, All: all, None: none, Devices: devs, FromEnv: true}
		}
	}
	if req == nil {
		return nil, nil
	}
	return req, req.readCaps(in, e, o.EnvRequests)
}

// WithCaps sets the capabilities and requirements of a request whose GPUs come from
// elsewhere (a kubelet allocation, a DRA claim) from what the container asks.
func (req *Request) WithCaps(in Input, o Options) error {
	return req.readCaps(in, readEnv(in.Env), o.EnvRequests)
}

// readCaps sets the request's capabilities (annotation, else env, else the default)
// and requirements (env).
func (req *Request) readCaps(in Input, e env, envRequests bool) error {
	req.Caps, req.CapsSource = gpu.CapsDefault, "default"
	if key, v, ok := Effective(in.PodAnnotations, AnnotationCapabilities, in.Container); ok {
		c, err := parseCaps(v)
		if err != nil {
			return fmt.Errorf("annotation %q: %w", key, err)
		}
		req.Caps, req.CapsSource = c, fmt.Sprintf("annotation %q", key)
	} else if envRequests && e.hasCaps && strings.TrimSpace(e.caps) != "" {
		c, err := parseCaps(e.caps)
		if err != nil {
			return fmt.Errorf("env %s: %w", EnvDriverCapabilities, err)
		}
		req.Caps, req.CapsSource = c, "env "+EnvDriverCapabilities
	}
	if envRequests && !e.disabled && e.tooMany {
		return fmt.Errorf("env: more than %d %s* variables", MaxRequirements, EnvRequirePrefix)
	}
	if envRequests && !e.disabled && len(e.require) > 0 {
		reqs, err := parseRequirements(e.require)
		if err != nil {
			return err
		}
		req.Require = reqs
	}
	return nil
}

func parseCaps(v string) (gpu.Capabilities, error) {
	if len(v) > MaxValueBytes {
		return 0, fmt.Errorf("a capability list of %d bytes is longer than the %d it may be", len(v), MaxValueBytes)
	}
	return gpu.ParseCapabilities(v)
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
// Only devices of kind count; their names are resolved against nvbind's own inventory.
func cdiRequest(in Input, kind string) (*Request, error) {
	var sources, names []string
	var keys []string
	for k := range in.Annotations {
		if strings.HasPrefix(k, AnnotationCDIPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	found := false
	for _, k := range keys {
		n, err := cdiDevices(k, in.Annotations[k], kind, &names)
		if err != nil {
			return nil, err
		}
		found = found || n > 0
	}
	if found {
		for _, k := range keys {
			sources = append(sources, fmt.Sprintf("annotation %q", k))
		}
	}
	if key, v, ok := Effective(in.PodAnnotations, AnnotationNVIDIACDI, in.Container); ok {
		n, err := cdiDevices(key, v, kind, &names)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			sources = append(sources, fmt.Sprintf("annotation %q", key))
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	req := &Request{Kind: KindCDI, Source: strings.Join(sources, ", ")}
	seen := map[string]bool{}
	for _, n := range names {
		if n == "all" {
			req.All, req.Devices = true, nil
			break
		}
		if !spec.IsName(n) {
			return nil, fmt.Errorf("%s: CDI device %s=%s is not a device nvbind knows (valid: %s)", req.Source, kind, truncate(n, 64), ValidSelectors)
		}
		if !seen[n] {
			seen[n] = true
			req.Devices = append(req.Devices, n)
		}
	}
	return req, nil
}

// cdiDevices appends to names the devices of kind that one CDI annotation value lists,
// and returns how many it found; every name must be a qualified CDI name.
func cdiDevices(key, v, kind string, names *[]string) (int, error) {
	if len(v) > MaxListBytes {
		return 0, fmt.Errorf("annotation %q: a CDI device list of %d bytes is longer than the %d it may be", truncate(key, 128), len(v), MaxListBytes)
	}
	n := 0
	for rest := v; rest != ""; {
		var d string
		d, rest, _ = strings.Cut(rest, ",")
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		vendor, class, name, err := parser.ParseQualifiedName(d)
		if err != nil {
			return 0, fmt.Errorf("annotation %q: bad CDI device %q: want vendor.com/class=name", truncate(key, 128), truncate(d, 64))
		}
		if k := vendor + "/" + class; k == kind || k == NVIDIADevicePluginKind {
			if len(*names) == MaxDevices {
				return 0, fmt.Errorf("annotation %q: more than %d CDI devices", truncate(key, 128), MaxDevices)
			}
			*names = append(*names, name)
			n++
		}
	}
	return n, nil
}

// volumeMountDevices returns the device IDs of NVIDIA's volume-mounts strategy: the
// names of the mounts under /var/run/nvidia-container-devices.
func volumeMountDevices(mounts []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, m := range mounts {
		rest, ok := strings.CutPrefix(m, NVIDIAVolumeMountsRoot+"/")
		if !ok {
			continue
		}
		id := strings.TrimRight(rest, "/")
		if id == "" || id == "imex" || strings.Contains(id, "/") || seen[id] {
			continue
		}
		if !spec.IsName(id) {
			return nil, fmt.Errorf("mount %s: %q is not a GPU (valid: %s)", NVIDIAVolumeMountsRoot, truncate(id, 64), ValidSelectors)
		}
		if len(out) == MaxDevices {
			return nil, fmt.Errorf("more than %d mounts under %s", MaxDevices, NVIDIAVolumeMountsRoot)
		}
		seen[id] = true
		out = append(out, id)
	}
	return out, nil
}

// AnnotationHandled is the annotation nvbind's NRI plugin puts on every container it saw
// that asks for GPUs or names nvbind a required plugin, whatever it decided. In
// config.json it tells nvbind-runtime's guard that the plugin handled the container.
const AnnotationHandled = "handled.gpus.nvbind.io"

// AnnotationStage is the annotation nvbind's NRI plugin puts on a container whose hook
// actions it runs itself at StartContainer instead of naming the hook: CAPABILITIES@ID,
// the capability set and the name of the actions' arguments.
const AnnotationStage = "stage.gpus.nvbind.io"

// AnnotationRuntimeSteps is the annotation nvbind-runtime's edit service puts in a
// config.json it gave the driver without nvbind's hook, whose steps it runs itself once
// the container is created: an edit asked again of such a file (the service did not
// answer) refuses the container rather than let it start without them.
const AnnotationRuntimeSteps = "runtime-steps.gpus.nvbind.io"

// AnnotationRequiredPlugins is NRI's annotation naming the plugins a container needs
// (required-plugins.noderesource.dev/container.<name>, /pod): a JSON list of names.
const AnnotationRequiredPlugins = "required-plugins.noderesource.dev"

// RequiresPlugin reports whether the container names plugin among its required NRI
// plugins. The value is read only up to MaxValueBytes.
func RequiresPlugin(in Input, plugin string) bool {
	_, v, ok := Effective(in.PodAnnotations, AnnotationRequiredPlugins, in.Container)
	if !ok || len(v) > MaxValueBytes {
		return false
	}
	var names []string
	if err := json.Unmarshal([]byte(v), &names); err != nil {
		return false
	}
	return slices.Contains(names, plugin)
}
