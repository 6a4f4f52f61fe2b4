package nriplugin

import (
	"slices"
	"strings"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

// nriEdits are spec.Edits in NRI's types, ready to put in an adjustment.
type nriEdits struct {
	devices []*api.LinuxDevice
	mounts  []*api.Mount
	hooks   *api.Hooks
	env     []*api.KeyValue
}

// toNRI is the one conversion from nvbind's edits to NRI's types.
func toNRI(e spec.Edits) nriEdits {
	var out nriEdits
	out.devices = nriDevices(e.Nodes)
	for _, m := range e.Mounts {
		out.mounts = append(out.mounts, &api.Mount{Destination: m.Path, Source: m.HostPath, Type: "bind", Options: slices.Clone(m.Options)})
	}
	for _, h := range e.Hooks { // at spec.HookStage
		if out.hooks == nil {
			out.hooks = &api.Hooks{}
		}
		out.hooks.CreateRuntime = append(out.hooks.CreateRuntime, &api.Hook{Path: h.Path, Args: slices.Clone(h.Args), Env: slices.Clone(h.Env)})
	}
	for _, kv := range e.Env {
		k, v, _ := strings.Cut(kv, "=")
		out.env = append(out.env, &api.KeyValue{Key: k, Value: v})
	}
	return out
}

func nriDevice(n gpu.DeviceNode) *api.LinuxDevice {
	d := &api.LinuxDevice{Path: n.Path, Type: "c", Major: n.Major, Minor: n.Minor, FileMode: &api.OptionalFileMode{Value: uint32(n.FileMode)}}
	if n.UID != 0 {
		d.Uid = &api.OptionalUInt32{Value: n.UID}
	}
	if n.GID != 0 {
		d.Gid = &api.OptionalUInt32{Value: n.GID}
	}
	return d
}

func nriDevices(nodes []gpu.DeviceNode) []*api.LinuxDevice {
	out := make([]*api.LinuxDevice, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, nriDevice(n))
	}
	return out
}
