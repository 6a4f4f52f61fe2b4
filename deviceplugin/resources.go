package deviceplugin

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

// MIG strategies, as NVIDIA's device plugin names them.
const (
	MIGNone   = "none"   // full GPUs only; MIG devices are not advertised
	MIGSingle = "single" // every GPU is MIG-enabled with one profile: its MIG devices are nvidia.com/gpu
	MIGMixed  = "mixed"  // full GPUs as nvidia.com/gpu, MIG devices as nvidia.com/mig-<profile>
)

// Device list strategies: how Allocate hands the devices to the runtime.
const (
	// ListCDICRI puts CDI device names in the CRI CDIDevices field (kubelet 1.31+), which
	// containerd 2.x and CRI-O resolve from nvbind's spec.
	ListCDICRI = "cdi-cri"
	// ListAnnotations leaves injection to the nvbind NRI plugin, which reads the
	// allocation annotation.
	ListAnnotations = "annotations"
)

// AnnotationAllocated is the container annotation Allocate sets in every mode: the
// allocated GPUs and MIG devices by UUID. The kubelet sets container annotations from
// device plugins only, so a pod cannot forge it; the NRI plugin injects from it and
// enforces it.
const AnnotationAllocated = "allocated.gpus.nvbind.io"

// AnnotationReplicas and EnvReplicas tell a container it shares its GPUs by
// time-slicing, and with how many others per GPU.
const (
	AnnotationReplicas = "replicas.gpus.nvbind.io"
	EnvReplicas        = "NVBIND_GPU_REPLICAS"
)

// Config configures the device plugin.
type Config struct {
	// Resource is the full GPUs' resource name (nvidia.com/gpu); MIG resources take its
	// domain.
	Resource string
	// MIGStrategy is MIGNone, MIGSingle or MIGMixed.
	MIGStrategy string
	// Replicas > 1 advertises each device that many times (time-slicing).
	Replicas int
	// ListStrategy is ListCDICRI or ListAnnotations.
	ListStrategy string
	// Kind is the CDI kind of nvbind's spec (nvidia.com/gpu).
	Kind string
}

// Validate checks the configuration and names the valid choices.
func (c Config) Validate() error {
	var errs []error
	if !slices.Contains([]string{MIGNone, MIGSingle, MIGMixed}, c.MIGStrategy) {
		errs = append(errs, fmt.Errorf("MIG strategy %q: valid: none, single, mixed", c.MIGStrategy))
	}
	if !slices.Contains([]string{ListCDICRI, ListAnnotations}, c.ListStrategy) {
		errs = append(errs, fmt.Errorf("device list strategy %q: valid: cdi-cri, annotations", c.ListStrategy))
	}
	if c.Replicas < 1 || c.Replicas > 1024 {
		errs = append(errs, fmt.Errorf("replicas %d: valid: 1 to 1024", c.Replicas))
	}
	domain, name, ok := strings.Cut(c.Resource, "/")
	if !ok || domain == "" || name == "" || strings.Contains(name, "/") {
		errs = append(errs, fmt.Errorf("resource %q: want a domain-qualified name such as nvidia.com/gpu", c.Resource))
	}
	return errors.Join(errs...)
}

// Unit is one allocatable device: a full GPU or a MIG device.
type Unit struct {
	// UUID is the GPU's or MIG device's UUID, its name in nvbind's CDI spec.
	UUID string
	// Index is the GPU's index, or "gpu:mig" for a MIG device.
	Index string
	// GPU is the index of the (parent) GPU, for topology.
	GPU int
	// PCIBusID of the (parent) GPU.
	PCIBusID string
	// Pos is the (parent) GPU's position in the inventory, and Topology its NVML
	// topology levels to each GPU by position (empty without NVML).
	Pos      int
	Topology []int
}

func sameUnit(a, b Unit) bool {
	return a.UUID == b.UUID && a.Index == b.Index && a.GPU == b.GPU && a.PCIBusID == b.PCIBusID && a.Pos == b.Pos && slices.Equal(a.Topology, b.Topology)
}

// Resources returns the units of each resource name the inventory offers under the
// MIG strategy, in index order.
func Resources(inv *gpu.Inventory, c Config) (map[string][]Unit, error) {
	domain, _, _ := strings.Cut(c.Resource, "/")
	out := map[string][]Unit{}
	pos := map[int]int{}
	for i, d := range inv.Devices {
		pos[d.Index] = i
	}
	full := func(d gpu.Device) Unit {
		return Unit{UUID: d.UUID, Index: spec.Name(d, nil, spec.NameIndex), GPU: d.Index, PCIBusID: d.PCIBusID, Pos: pos[d.Index], Topology: d.Topology}
	}
	mig := func(d gpu.Device, m gpu.MIGDevice) Unit {
		return Unit{UUID: m.UUID, Index: spec.Name(d, &m, spec.NameIndex), GPU: d.Index, PCIBusID: d.PCIBusID, Pos: pos[d.Index], Topology: d.Topology}
	}
	switch c.MIGStrategy {
	case MIGNone:
		for _, d := range inv.Devices {
			out[c.Resource] = append(out[c.Resource], full(d))
		}
	case MIGSingle:
		profiles := map[string]bool{}
		for _, d := range inv.Devices {
			if len(d.MIG) == 0 {
				out[c.Resource] = append(out[c.Resource], full(d))
				continue
			}
			for _, m := range d.MIG {
				profiles[m.Profile] = true
				out[c.Resource] = append(out[c.Resource], mig(d, m))
			}
		}
		migs, fulls := 0, 0
		for _, d := range inv.Devices {
			if len(d.MIG) > 0 {
				migs++
			} else {
				fulls++
			}
		}
		if migs > 0 && (fulls > 0 || len(profiles) > 1) {
			return nil, fmt.Errorf("MIG strategy single needs every GPU MIG-enabled with one profile (found %d MIG-enabled GPUs, %d without MIG, profiles %s): use mixed",
				migs, fulls, strings.Join(sortedKeys(profiles), ", "))
		}
	case MIGMixed:
		for _, d := range inv.Devices {
			if len(d.MIG) == 0 {
				out[c.Resource] = append(out[c.Resource], full(d))
				continue
			}
			for _, m := range d.MIG {
				if m.Profile == "" {
					return nil, fmt.Errorf("MIG device %s has no profile name: NVML is needed for the mixed strategy", m.UUID)
				}
				r := domain + "/mig-" + m.Profile
				out[r] = append(out[r], mig(d, m))
			}
		}
	default:
		return nil, c.Validate()
	}
	return out, nil
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ReplicaID is the device ID the kubelet sees for replica n of a unit; replica 0 of an
// unshared unit is its UUID.
func ReplicaID(uuid string, n, replicas int) string {
	if replicas <= 1 {
		return uuid
	}
	return uuid + "::" + strconv.Itoa(n)
}

// UnitOf returns the UUID of a device ID, with or without a replica suffix.
func UnitOf(id string) string {
	u, _, _ := strings.Cut(id, "::")
	return u
}

// CDIName is the qualified CDI name of a unit in nvbind's spec (kind=UUID).
func CDIName(kind, uuid string) string { return kind + "=" + uuid }
