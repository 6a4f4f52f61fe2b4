package deviceplugin

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

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

// AnnotationAllocated is the prefix of the container annotations Allocate sets in every
// mode, one per resource (AllocationKey): the allocated GPUs and MIG devices by UUID,
// comma-separated. The kubelet sets container annotations from device plugins only, so a
// pod cannot forge them; the NRI plugin injects from them and enforces them. Bare, it is
// the single key of earlier versions, which the NRI plugin still reads.
const AnnotationAllocated = "allocated.gpus.nvbind.io"

// AllocationKey is the container annotation of one resource's allocation:
// AnnotationAllocated, a slash and the resource name without its domain
// (allocated.gpus.nvbind.io/gpu, allocated.gpus.nvbind.io/mig-1g.5gb), a Kubernetes
// qualified name. The kubelet merges the annotations of every resource of a container and
// keeps one value per key, so each resource needs its own key; the resources of one plugin
// share their domain, so the name alone tells them apart.
func AllocationKey(resource string) string {
	return AnnotationAllocated + "/" + resource[strings.LastIndex(resource, "/")+1:]
}

// IsAllocationKey reports whether a container annotation carries an allocation: the
// AllocationKey of a resource, or the bare AnnotationAllocated of earlier versions.
func IsAllocationKey(key string) bool {
	rest, ok := strings.CutPrefix(key, AnnotationAllocated)
	if !ok {
		return false
	}
	if rest == "" {
		return true
	}
	name, ok := strings.CutPrefix(rest, "/")
	return ok && name != "" && !strings.Contains(name, "/")
}

// AnnotationReplicas and EnvReplicas tell a container it shares its GPUs by
// time-slicing, and with how many others per GPU. Every resource of a plugin has the same
// replicas, so one key for all of them loses nothing when the kubelet merges them.
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
	// ForgetAfter is how long a unit whose GPU vanished from discovery stays advertised
	// Unhealthy before it is dropped from the device list: a GPU that fell off the bus may
	// come back. Zero means DefaultForgetAfter, a negative value at once. A MIG device
	// gone while its GPU stays (MIG repartitioned) is dropped at once.
	ForgetAfter time.Duration
	// Serve says which GPUs the plugin advertises (nil: all): on a node that runs the
	// DRA driver too, the others are the driver's, so no GPU is handed out twice.
	Serve func(gpu.Device) bool
}

// DefaultForgetAfter is ForgetAfter's default.
const DefaultForgetAfter = 5 * time.Minute

// forgetAfter resolves ForgetAfter.
func (c Config) forgetAfter() time.Duration {
	switch {
	case c.ForgetAfter == 0:
		return DefaultForgetAfter
	case c.ForgetAfter < 0:
		return 0
	}
	return c.ForgetAfter
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
	// Parent is the UUID of the (parent) GPU: a full GPU's own.
	Parent string
	// PCIBusID of the (parent) GPU.
	PCIBusID string
	// Pos is the (parent) GPU's position in the inventory, and Topology its NVML
	// topology levels to each GPU by position (empty without NVML).
	Pos      int
	Topology []int
}

func sameUnit(a, b Unit) bool {
	return a.UUID == b.UUID && a.Index == b.Index && a.GPU == b.GPU && a.Parent == b.Parent && a.PCIBusID == b.PCIBusID && a.Pos == b.Pos && slices.Equal(a.Topology, b.Topology)
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
	// the GPUs this plugin serves; positions stay the inventory's (topology is by position)
	devs := inv.Devices
	if c.Serve != nil {
		devs = nil
		for _, d := range inv.Devices {
			if c.Serve(d) {
				devs = append(devs, d)
			}
		}
	}
	full := func(d gpu.Device) Unit {
		return Unit{UUID: d.UUID, Index: spec.Name(d, nil, spec.NameIndex), GPU: d.Index, Parent: d.UUID, PCIBusID: d.PCIBusID, Pos: pos[d.Index], Topology: d.Topology}
	}
	mig := func(d gpu.Device, m gpu.MIGDevice) Unit {
		return Unit{UUID: m.UUID, Index: spec.Name(d, &m, spec.NameIndex), GPU: d.Index, Parent: d.UUID, PCIBusID: d.PCIBusID, Pos: pos[d.Index], Topology: d.Topology}
	}
	switch c.MIGStrategy {
	case MIGNone:
		for _, d := range devs {
			out[c.Resource] = append(out[c.Resource], full(d))
		}
	case MIGSingle:
		profiles := map[string]bool{}
		for _, d := range devs {
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
		for _, d := range devs {
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
		for _, d := range devs {
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

// ParseReplicaID is ReplicaID's inverse: the UUID of a device ID as the plugin advertises
// it with that many replicas, and false for an ID of any other form (a replica suffix on
// an unshared unit is part of the ID, so no unit has it; a replica number out of range or
// not as ReplicaID writes it). Whether the UUID is a unit is the caller's to check.
func ParseReplicaID(id string, replicas int) (string, bool) {
	if replicas <= 1 {
		return id, id != ""
	}
	i := strings.LastIndex(id, "::")
	if i <= 0 {
		return "", false
	}
	n, err := strconv.Atoi(id[i+2:])
	if err != nil || n < 0 || n >= replicas || strconv.Itoa(n) != id[i+2:] {
		return "", false
	}
	return id[:i], true
}

// quoteID quotes a device ID for an error message, cut short: IDs come from the kubelet's
// request.
func quoteID(id string) string {
	const limit = 64
	if len(id) <= limit {
		return strconv.Quote(id)
	}
	return strconv.Quote(id[:limit]) + fmt.Sprintf("... (%d bytes)", len(id))
}

// CDIName is the qualified CDI name of a unit in nvbind's spec (kind=UUID).
func CDIName(kind, uuid string) string { return kind + "=" + uuid }
