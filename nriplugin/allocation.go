package nriplugin

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/deviceplugin"
)

// ErrNotAllocated is a GPU request outside what the kubelet allocated (with
// --require-allocation).
var ErrNotAllocated = errors.New("GPUs not allocated by the kubelet")

// NVIDIA's k8s-device-plugin conventions that nvbind reads.
const (
	// NVIDIADevicePluginKind is the CDI kind NVIDIA's device plugin names devices with
	// in its cdi-annotations and cdi-cri strategies.
	NVIDIADevicePluginKind = "k8s.device-plugin.nvidia.com/gpu"
	// NVIDIAVolumeMountsRoot is where its volume-mounts strategy mounts /dev/null once per
	// device ID, with NVIDIA_VISIBLE_DEVICES set to this folder.
	NVIDIAVolumeMountsRoot = "/var/run/nvidia-container-devices"
)

// allocation returns the GPUs the kubelet allocated to the container through nvbind's
// device plugin (the container annotation only device plugins can set), or nil.
func allocation(ctr *api.Container) []string {
	v, ok := ctr.GetAnnotations()[deviceplugin.AnnotationAllocated]
	if !ok {
		return nil
	}
	var out []string
	for _, id := range strings.Split(v, ",") {
		if id = strings.TrimSpace(id); id != "" && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// volumeMountDevices returns the device IDs of NVIDIA's volume-mounts strategy: the
// names of the mounts under /var/run/nvidia-container-devices.
func volumeMountDevices(ctr *api.Container) []string {
	var out []string
	for _, m := range ctr.GetMounts() {
		dir, id := path.Split(path.Clean(m.GetDestination()))
		if path.Clean(dir) == NVIDIAVolumeMountsRoot && id != "" && id != "imex" && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// checkAllocation applies --require-allocation to a parsed request: req (nil: nothing
// asked) may only name GPUs of the allocation alloc (nil: none). An image's own
// NVIDIA_VISIBLE_DEVICES=all is no request and passes; it gets the allocation, or nothing.
func checkAllocation(req *Request, alloc []string, ctrName string) error {
	if req == nil || req.FromEnv && (req.All || req.None) {
		return nil
	}
	if len(alloc) == 0 {
		return fmt.Errorf("%w: %s asks for GPUs, but the kubelet allocated none to container %q: ask for nvidia.com/gpu in its resources.limits",
			ErrNotAllocated, req.Source, ctrName)
	}
	if req.All {
		return fmt.Errorf("%w: %s asks for every GPU, but the kubelet allocated %s to container %q", ErrNotAllocated, req.Source, strings.Join(alloc, ","), ctrName)
	}
	for _, d := range req.Devices {
		if !slices.Contains(alloc, d) {
			return fmt.Errorf("%w: %s asks for GPU %q, but the kubelet allocated %s to container %q",
				ErrNotAllocated, req.Source, d, strings.Join(alloc, ","), ctrName)
		}
	}
	return nil
}

// fromAllocation is the request to serve for a container with an allocation: its GPUs,
// with the capabilities and requirements the container asks for. No allocation: nothing.
func fromAllocation(req *Request, alloc []string, pod *api.PodSandbox, ctr *api.Container, envRequests bool) (*Request, error) {
	if len(alloc) == 0 {
		return nil, nil
	}
	out := &Request{Kind: KindAllocation, Source: fmt.Sprintf("kubelet allocation (annotation %q)", deviceplugin.AnnotationAllocated), Devices: alloc}
	if req != nil {
		out.Caps, out.CapsSource, out.Require = req.Caps, req.CapsSource, req.Require
		return out, nil
	}
	return out, out.readCaps(pod, ctr, envMap(ctr.GetEnv()), envRequests)
}

// injectedByRuntime reports whether the container already has the device nodes of every
// target: the runtime applied the CDI devices of the kubelet's allocation (cdi-cri), so
// nvbind adds nothing.
func injectedByRuntime(ctr *api.Container, targets []*target) bool {
	if len(targets) == 0 {
		return false
	}
	have := map[string]bool{}
	for _, d := range ctr.GetLinux().GetDevices() {
		have[d.GetPath()] = true
	}
	for _, t := range targets {
		for _, n := range t.nodes {
			if !have[n.GetPath()] {
				return false
			}
		}
	}
	return true
}
