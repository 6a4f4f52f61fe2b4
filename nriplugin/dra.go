package nriplugin

import (
	"strings"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/dra"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/request"
)

// claimUIDLen is the length of a claim's UID, which starts its CDI device names.
const claimUIDLen = 36

// claimed returns the GPUs of the container's DRA claims of nvbind's driver: the CDI
// devices the kubelet passed to the runtime (which only the kubelet sets, never a pod),
// by UUID where the inventory knows the device, else by its name in the slice. The
// runtime injected them from the claims' specs.
func claimed(ctr *api.Container, inv *gpu.Inventory) []string {
	var targets []dra.Target
	var out []string
	for _, d := range ctr.GetCDIDevices() {
		rest, ok := strings.CutPrefix(d.GetName(), dra.ClaimKind+"=")
		if !ok || len(out) >= request.MaxDevices {
			continue
		}
		name := rest
		if len(rest) > claimUIDLen+1 && rest[claimUIDLen] == '-' {
			name = rest[claimUIDLen+1:]
		}
		if targets == nil {
			targets = dra.Targets(inv, nil)
		}
		if t, ok := dra.Lookup(targets, name); ok {
			name = t.UUID()
		}
		out = append(out, name)
	}
	return out
}
