package nriplugin

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/request"
)

// ErrNotAllocated is a GPU request outside what the kubelet allocated (with
// --require-allocation).
var ErrNotAllocated = errors.New("GPUs not allocated by the kubelet")

// allocation returns the GPUs the kubelet allocated to the container through nvbind's
// device plugin (the container annotations only device plugins can set), or nil: the
// UUIDs of every resource's annotation (allocated.gpus.nvbind.io/<resource>) and of the
// single annotation of earlier versions (allocated.gpus.nvbind.io), merged.
func allocation(ctr *api.Container) []string {
	anns := ctr.GetAnnotations()
	var out []string
	seen := map[string]bool{}
	for _, k := range allocationKeys(ctr) {
		for rest := anns[k]; rest != "" && len(out) < request.MaxDevices; {
			var id string
			id, rest, _ = strings.Cut(rest, ",")
			if id = strings.TrimSpace(id); id != "" && !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	return out
}

// allocationKeys returns the container's allocation annotations, sorted: the earlier
// versions' one first, then by resource.
func allocationKeys(ctr *api.Container) []string {
	var keys []string
	for k := range ctr.GetAnnotations() {
		if deviceplugin.IsAllocationKey(k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// checkAllocation applies --require-allocation to a parsed request: req (nil: nothing
// asked) may only name GPUs of the allocation alloc (nil: none). An image's own
// NVIDIA_VISIBLE_DEVICES=all is no request and passes; it gets the allocation, or nothing.
func checkAllocation(req *request.Request, alloc []string, ctrName string) error {
	if req == nil || req.FromEnv && (req.All || req.None) {
		return nil
	}
	if len(alloc) == 0 {
		return fmt.Errorf("%w: %s asks for GPUs, but the kubelet allocated none to container %q: ask for nvidia.com/gpu in its resources.limits, or claim a GPU of the DeviceClass gpu.nvbind.io",
			ErrNotAllocated, req.Source, ctrName)
	}
	if req.All {
		return fmt.Errorf("%w: %s asks for every GPU, but the kubelet allocated %s to container %q", ErrNotAllocated, req.Source, strings.Join(alloc, ","), ctrName)
	}
	allocated := make(map[string]bool, len(alloc))
	for _, id := range alloc {
		allocated[id] = true
	}
	for _, d := range req.Devices {
		if !allocated[d] {
			return fmt.Errorf("%w: %s asks for GPU %q, but the kubelet allocated %s to container %q",
				ErrNotAllocated, req.Source, d, strings.Join(alloc, ","), ctrName)
		}
	}
	return nil
}

// fromAllocation is the request to serve for a container with an allocation: its GPUs,
// with the capabilities and requirements the container asks for. No allocation: nothing.
func fromAllocation(req *request.Request, alloc []string, in request.Input, o request.Options, ctr *api.Container) (*request.Request, error) {
	if len(alloc) == 0 {
		return nil, nil
	}
	keys := allocationKeys(ctr)
	label := "annotation"
	if len(keys) > 1 {
		label += "s"
	}
	for i, k := range keys {
		keys[i] = strconv.Quote(k)
	}
	out := &request.Request{Kind: request.KindAllocation, Source: fmt.Sprintf("kubelet allocation (%s %s)", label, strings.Join(keys, ", ")), Devices: alloc}
	if req != nil {
		out.Caps, out.CapsSource, out.Require = req.Caps, req.CapsSource, req.Require
		return out, nil
	}
	return out, out.WithCaps(in, o)
}

// nodesInjected reports whether the container already has the device nodes of every
// target: the runtime applied the CDI devices of the kubelet's allocation (cdi-cri), or
// the container is privileged and has every host device.
func nodesInjected(ctr *api.Container, p *prepared, targets []*request.Target) bool {
	if len(targets) == 0 {
		return false
	}
	have := map[string]bool{}
	for _, d := range ctr.GetLinux().GetDevices() {
		have[d.GetPath()] = true
	}
	for _, t := range targets {
		for _, n := range p.nodes[t] {
			if !have[n.GetPath()] {
				return false
			}
		}
	}
	return true
}

// mountsInjected reports whether the container already has every driver file of the
// request mounted: with the nodes, the runtime applied nvbind's CDI spec. A privileged
// container has the nodes but not the files.
func mountsInjected(ctr *api.Container, cp *commonParts) bool {
	if cp.layoutOthers != nil {
		// the layout of a set that holds the request's, and the mounts that go with it
		layoutOK, others := false, 0
		for _, m := range ctr.GetMounts() {
			d := m.GetDestination()
			if path.Dir(d) == layout.Dest {
				if c, ok := layout.CapsOfName(path.Base(d)); ok && c&cp.caps == cp.caps {
					layoutOK = true
				}
			} else if cp.layoutOthers[d] {
				others++
			}
		}
		if layoutOK && others == len(cp.layoutOthers) {
			return true
		}
	}
	for _, paths := range cp.paths {
		have := make(map[string]bool, len(paths))
		for _, m := range ctr.GetMounts() {
			if d := m.GetDestination(); paths[d] {
				have[d] = true
			}
		}
		if len(have) == len(paths) {
			return true
		}
	}
	return false
}
