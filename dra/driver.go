package dra

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
)

// The CDI names of prepared claims: k8s.gpu.nvbind.io/claim=<claim UID>-<device>, in one
// spec file per claim, k8s.gpu.nvbind.io-claim_<claim UID>.yaml. A UID is never reused,
// so a runtime's cached spec never answers for another claim.
const (
	ClaimVendor = "k8s." + DriverName
	ClaimClass  = "claim"
	ClaimKind   = ClaimVendor + "/" + ClaimClass
)

// Writer is the writer line of the claims' specs.
const Writer = "nvbind dra"

// maxSliceDevices is the API's limit of devices in one ResourceSlice.
const maxSliceDevices = resourceapi.ResourceSliceMaxDevices

// Config configures the driver.
type Config struct {
	// NodeName is the node's name: the pool's name and the slices' node.
	NodeName string
	// CDIDir is where the claims' specs go (the runtime's CDI folder).
	CDIDir string
	// DataDir is the driver's plugin folder on the host (the kubelet's plugins/<driver>):
	// its socket and the checkpoint.
	DataDir string
	// Spec are the options of the edits (driver root, hook path, dev root).
	Spec spec.Options
	// Discover runs discovery now: Prepare calls it for every request, so that a claim
	// gets the devices and driver files there are, never a cached list's.
	Discover func(context.Context) (*gpu.Inventory, error)
	// Serve says which GPUs the driver publishes (nil: all); the device plugin serves the
	// others on a node that runs both.
	Serve func(gpu.Device) bool
	// Kube is the API client the kubelet plugin helper reads claims and writes slices
	// with; RegistrarDir the kubelet's plugin registration folder.
	Kube         kubernetes.Interface
	RegistrarDir string
	// Options are more options of the kubelet plugin helper (tests).
	Options []kubeletplugin.Option
	// Layouts, when set, are the driver layouts: a claim whose capability set has a
	// complete layout gets the driver in one mount (and one not complete yet asks for it).
	Layouts *layout.Provider
	Log     *slog.Logger
}

// Driver is the DRA driver: the kubelet plugin helper calls Prepare and Unprepare; Update
// and SetFaults change the published slices.
type Driver struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex // serialises claims and the checkpoint
	cp     *checkpoint
	helper *kubeletplugin.Helper

	pubMu     sync.Mutex
	inv       *gpu.Inventory
	faults    map[string]string // GPU UUID: why it is out of service
	published []resourceapi.Device
	havePub   bool
}

// New makes a driver and reads the checkpoint an earlier process left.
func New(cfg Config) (*Driver, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("the DRA driver needs the node's name (--node-name, or NODE_NAME from the downward API)")
	}
	switch {
	case cfg.Discover == nil:
		return nil, errors.New("the DRA driver needs discovery")
	case cfg.CDIDir == "":
		return nil, errors.New("the DRA driver needs a CDI spec folder (--cdi-spec-dir)")
	case cfg.DataDir == "":
		return nil, errors.New("the DRA driver needs its kubelet plugin folder (--kubelet-plugin-dir)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cp, err := loadCheckpoint(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	return &Driver{cfg: cfg, log: cfg.Log.With("component", "dra"), cp: cp}, nil
}

// Run registers the driver with the kubelet (the registration socket in RegistrarDir,
// the DRA socket in DataDir), publishes the slices of the inventories it is given, and
// serves the kubelet until ctx ends.
func (d *Driver) Run(ctx context.Context) error {
	if d.cfg.Kube == nil {
		return errors.New("the DRA driver needs an API client")
	}
	if err := os.MkdirAll(d.cfg.DataDir, 0o750); err != nil {
		return err
	}
	opts := append([]kubeletplugin.Option{
		kubeletplugin.DriverName(DriverName),
		kubeletplugin.NodeName(d.cfg.NodeName),
		kubeletplugin.KubeClient(d.cfg.Kube),
		kubeletplugin.RegistrarDirectoryPath(d.cfg.RegistrarDir),
		kubeletplugin.PluginDataDirectoryPath(d.cfg.DataDir),
		// out-of-service GPUs leave the slices (SetFaults) rather than being reported
		kubeletplugin.HealthService(false),
	}, d.cfg.Options...)
	h, err := kubeletplugin.Start(ctx, d, opts...)
	if err != nil {
		return fmt.Errorf("start the DRA kubelet plugin: %w", err)
	}
	d.pubMu.Lock()
	d.helper = h
	d.havePub = false
	d.pubMu.Unlock()
	d.publish()
	<-ctx.Done()
	h.Stop()
	return nil
}

// Registered reports whether the kubelet accepted the driver's registration.
func (d *Driver) Registered() bool {
	d.pubMu.Lock()
	h := d.helper
	d.pubMu.Unlock()
	if h == nil {
		return false
	}
	st := h.RegistrationStatus()
	return st != nil && st.PluginRegistered
}

// Update publishes the devices of a new inventory (when they changed).
func (d *Driver) Update(inv *gpu.Inventory) {
	d.pubMu.Lock()
	d.inv = inv
	d.pubMu.Unlock()
	d.publish()
}

// SetFaults takes GPUs out of the slices while they are out of service (by GPU UUID,
// with the reason), and back once they are not listed: a MIG device follows its GPU.
func (d *Driver) SetFaults(faults map[string]string) {
	d.pubMu.Lock()
	d.faults = faults
	d.pubMu.Unlock()
	d.publish()
}

// Devices returns the devices of the last inventory the driver would publish.
func (d *Driver) Devices() []resourceapi.Device {
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	return d.devicesLocked()
}

func (d *Driver) devicesLocked() []resourceapi.Device {
	if d.inv == nil {
		return nil
	}
	var out []resourceapi.Device
	for _, t := range Targets(d.inv, d.cfg.Serve) {
		if _, bad := d.faults[t.GPU.UUID]; bad {
			continue
		}
		out = append(out, Device(d.inv, t))
	}
	return out
}

func (d *Driver) publish() {
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	if d.helper == nil || d.inv == nil {
		return
	}
	devs := d.devicesLocked()
	if d.havePub && reflect.DeepEqual(devs, d.published) {
		return
	}
	if len(devs) == 0 && d.cfg.Serve != nil && len(d.inv.Devices) > 0 {
		d.log.Warn("none of this node's GPUs is the DRA driver's (--dra-gpus): the slices are empty")
	}
	var slices []resourceslice.Slice
	for len(devs) > maxSliceDevices {
		slices = append(slices, resourceslice.Slice{Devices: devs[:maxSliceDevices]})
		devs = devs[maxSliceDevices:]
	}
	slices = append(slices, resourceslice.Slice{Devices: devs})
	res := resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{d.cfg.NodeName: {Slices: slices}}}
	if err := d.helper.PublishResources(context.Background(), res); err != nil {
		d.log.Error("ResourceSlices not published", slog.Any("error", err))
		return
	}
	d.published, d.havePub = d.devicesLocked(), true
	names := make([]string, 0, len(d.published))
	for _, dev := range d.published {
		names = append(names, dev.Name)
	}
	d.log.Info("ResourceSlices published", "pool", d.cfg.NodeName, "devices", strings.Join(names, ","))
}

// PrepareResourceClaims prepares each claim from a discovery run now: its devices' nodes,
// the driver files of its capabilities, the hook, in one CDI spec of its own, recorded in
// the checkpoint before the kubelet hears of it.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	inv, err := d.cfg.Discover(ctx)
	if err != nil {
		return nil, fmt.Errorf("discover the node's GPUs: %w", err)
	}
	cp := d.cp.clone()
	var written []string // specs of claims the checkpoint did not hold
	for _, c := range claims {
		st, res := d.prepare(ctx, inv, cp, c)
		if res.Err == nil {
			if d.cp.Claims[c.UID] == nil {
				written = append(written, st.Spec)
			}
			cp.Claims[c.UID] = st
		}
		out[c.UID] = res
	}
	if err := cp.save(d.cfg.DataDir); err != nil {
		// not recorded, so not prepared: the new specs go, and the kubelet asks again
		for _, p := range written {
			_ = os.Remove(p)
		}
		return nil, fmt.Errorf("record the prepared claims: %w", err)
	}
	d.cp = cp
	return out, nil
}

func (d *Driver) prepare(ctx context.Context, inv *gpu.Inventory, cp *checkpoint, c *resourceapi.ResourceClaim) (*claimState, kubeletplugin.PrepareResult) {
	fail := func(err error) (*claimState, kubeletplugin.PrepareResult) {
		d.log.Error("claim not prepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, slog.Any("error", err))
		return nil, kubeletplugin.PrepareResult{Err: err}
	}
	if !validUID(c.UID) {
		// the UID names the claim's spec file
		return fail(fmt.Errorf("claim %s/%s has UID %q, not a UUID", c.Namespace, c.Name, c.UID))
	}
	if c.Status.Allocation == nil {
		return fail(fmt.Errorf("claim %s/%s is not allocated", c.Namespace, c.Name))
	}
	targets := Targets(inv, d.cfg.Serve)
	st := &claimState{Namespace: c.Namespace, Name: c.Name, Spec: d.specPath(c.UID)}
	s := &cdispecs.Spec{Kind: ClaimKind}
	var caps gpu.Capabilities
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver != DriverName {
			continue
		}
		if r.Pool != d.cfg.NodeName {
			return fail(fmt.Errorf("device %s of claim %s/%s is in pool %q, not this node's (%s)", r.Device, c.Namespace, c.Name, r.Pool, d.cfg.NodeName))
		}
		t, ok := Lookup(targets, r.Device)
		if !ok {
			return fail(fmt.Errorf("device %s of claim %s/%s is not on this node now (devices here: %s)", r.Device, c.Namespace, c.Name, targetNames(targets)))
		}
		if !adminAccess(r) {
			if other := d.holder(ctx, cp, t, c.UID); other != "" {
				return fail(fmt.Errorf("device %s of claim %s/%s is held by claim %s, prepared on this node", r.Device, c.Namespace, c.Name, other))
			}
		}
		rc, err := requestCaps(c.Status.Allocation, r.Request)
		if err != nil {
			return fail(fmt.Errorf("claim %s/%s, request %s: %w", c.Namespace, c.Name, r.Request, err))
		}
		caps |= rc
		name := string(c.UID) + "-" + t.Name
		var e spec.Edits
		if t.MIG != nil {
			e = spec.MIGEdits(t.GPU, *t.MIG)
		} else {
			e = spec.DeviceEdits(t.GPU, rc)
		}
		e.Env = append(e.Env, "NVBIND_DRA_DEVICE_"+strings.ToUpper(strings.ReplaceAll(t.Name, "-", "_"))+"="+t.UUID())
		s.Devices = append(s.Devices, cdispecs.Device{Name: name, ContainerEdits: e.ToCDI()})
		dev := preparedDevice{Requests: []string{r.Request}, Pool: r.Pool, Device: r.Device, UUID: t.UUID(), GPU: t.GPU.UUID,
			CDI: []string{ClaimKind + "=" + name}, Admin: adminAccess(r)}
		st.Devices = append(st.Devices, dev)
	}
	if len(st.Devices) == 0 {
		return fail(fmt.Errorf("claim %s/%s has no device of %s", c.Namespace, c.Name, DriverName))
	}
	so := d.cfg.Spec
	if d.cfg.Layouts != nil && d.cfg.Layouts.Ready(inv, caps) {
		so.LayoutBase = d.cfg.Layouts.Base
	}
	common, err := spec.CommonEdits(inv, caps, so)
	if err != nil {
		return fail(err)
	}
	s.ContainerEdits = common.ToCDI()
	if _, err := spec.WithMinimumVersion(s); err != nil {
		return fail(err)
	}
	if err := spec.WriteFileAs(s, st.Spec, spec.FormatYAML, Writer); err != nil {
		return fail(fmt.Errorf("claim %s/%s: write its CDI spec: %w", c.Namespace, c.Name, err))
	}
	res := kubeletplugin.PrepareResult{}
	for _, dev := range st.Devices {
		res.Devices = append(res.Devices, kubeletplugin.Device{Requests: dev.Requests, PoolName: dev.Pool, DeviceName: dev.Device, CDIDeviceIDs: dev.CDI})
	}
	d.log.Info("claim prepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "devices", targetNamesOf(st.Devices), "capabilities", caps.String())
	return st, res
}

// holder is the other prepared claim that holds a target's hardware, if any: the same
// GPU or MIG device, or a whole GPU and a MIG device of it (a claim prepared before MIG
// was turned on or off). Admin-access devices hold nothing. A holder whose claim the API
// no longer has (deleted while the kubelet lost track of it) is stale: its spec and
// record go, and it holds nothing.
func (d *Driver) holder(ctx context.Context, cp *checkpoint, t Target, self types.UID) types.UID {
	for uid, st := range cp.Claims {
		if uid == self {
			continue
		}
		for _, dev := range st.Devices {
			if dev.Admin || !dev.overlaps(t.UUID(), t.GPU.UUID) {
				continue
			}
			if d.stale(ctx, uid, st) {
				d.log.Warn("a prepared claim the API server no longer has was dropped", "claim", st.Namespace+"/"+st.Name, "uid", uid)
				_ = os.Remove(st.Spec)
				delete(cp.Claims, uid)
				break
			}
			return uid
		}
	}
	return ""
}

// stale tells a prepared claim the API server no longer has (or has under another UID).
func (d *Driver) stale(ctx context.Context, uid types.UID, st *claimState) bool {
	if d.cfg.Kube == nil {
		return false
	}
	c, err := d.cfg.Kube.ResourceV1().ResourceClaims(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil {
		d.log.Warn("the holder of a device could not be looked up: it keeps the device", "claim", st.Namespace+"/"+st.Name, slog.Any("error", err))
		return false
	}
	return c.UID != uid || c.Status.Allocation == nil
}

func adminAccess(r resourceapi.DeviceRequestAllocationResult) bool {
	return r.AdminAccess != nil && *r.AdminAccess
}

// UnprepareResourceClaims removes each claim's spec and forgets it; a claim the driver
// does not know (already unprepared, or never prepared here) is no error.
func (d *Driver) UnprepareResourceClaims(_ context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[types.UID]error, len(claims))
	cp := d.cp.clone()
	for _, c := range claims {
		p := d.specPath(c.UID)
		if st := cp.Claims[c.UID]; st != nil {
			p = st.Spec
		} else if !validUID(c.UID) {
			out[c.UID] = nil // never prepared: it could not have been
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			out[c.UID] = fmt.Errorf("remove the CDI spec of claim %s/%s: %w", c.Namespace, c.Name, err)
			continue
		}
		delete(cp.Claims, c.UID)
		out[c.UID] = nil
		d.log.Info("claim unprepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID)
	}
	if err := cp.save(d.cfg.DataDir); err != nil {
		return nil, fmt.Errorf("record the unprepared claims: %w", err)
	}
	d.cp = cp
	return out, nil
}

// HandleError logs errors of the helper's background work (publishing slices); the
// helper retries what can be retried.
func (d *Driver) HandleError(_ context.Context, err error, msg string) {
	if errors.Is(err, kubeletplugin.ErrRecoverable) {
		d.log.Warn(msg, slog.Any("error", err))
		return
	}
	d.log.Error(msg, slog.Any("error", err))
}

// WatchHealthStatus reports nothing: a GPU out of service leaves the slices instead
// (SetFaults), so that the scheduler never picks it.
func (d *Driver) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}

// Prepared returns the UIDs of the claims the checkpoint holds.
func (d *Driver) Prepared() []types.UID {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []types.UID
	for uid := range d.cp.Claims {
		out = append(out, uid)
	}
	slices.Sort(out)
	return out
}

// specPath is a claim's spec file.
func (d *Driver) specPath(uid types.UID) string {
	return filepath.Join(d.cfg.CDIDir, ClaimVendor+"-"+ClaimClass+"_"+string(uid)+".yaml")
}

func targetNames(ts []Target) string {
	if len(ts) == 0 {
		return "none"
	}
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	return strings.Join(names, ", ")
}

func targetNamesOf(devs []preparedDevice) string {
	names := make([]string, len(devs))
	for i, d := range devs {
		names[i] = d.Device
	}
	return strings.Join(names, ",")
}

// validUID tells a UID the API server makes (a UUID), which can name a file.
func validUID(uid types.UID) bool {
	if len(uid) != 36 {
		return false
	}
	for i, c := range string(uid) {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case (c < '0' || c > '9') && (c < 'a' || c > 'f'):
			return false
		}
	}
	return true
}
