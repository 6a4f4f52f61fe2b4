package dra

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	runtime2 "runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	sigsyaml "sigs.k8s.io/yaml"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/gputest"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
)

const (
	testNode = "node-a"
	hookPath = "/opt/nvbind/bin/nvbind-hook"
)

func testInventory() *gpu.Inventory {
	inv := gputest.Inventory()
	inv.Devices[1].Architecture, inv.Devices[1].Memory = "ampere", 40<<30
	inv.Devices[0].MIG[0].Profile, inv.Devices[0].MIG[0].Memory = "3g.20gb", 20<<30
	return inv
}

func newDriver(t *testing.T, inv func() *gpu.Inventory) (*Driver, string, string) {
	t.Helper()
	cdiDir, dataDir := t.TempDir(), t.TempDir()
	d, err := New(Config{NodeName: testNode, CDIDir: cdiDir, DataDir: dataDir, Spec: spec.Options{HookPath: hookPath},
		Discover: func(context.Context) (*gpu.Inventory, error) { return inv(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	return d, cdiDir, dataDir
}

type result struct{ request, device string }

// claim is an allocated claim of this driver's devices, with opaque configurations
// (raw JSON) of the claim.
func claim(uid types.UID, name string, results []result, configs ...string) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{UID: uid, Name: name, Namespace: "default"}}
	alloc := &resourceapi.AllocationResult{}
	for _, r := range results {
		alloc.Devices.Results = append(alloc.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: r.request, Driver: DriverName, Pool: testNode, Device: r.device})
	}
	for _, cfg := range configs {
		alloc.Devices.Config = append(alloc.Devices.Config, resourceapi.DeviceAllocationConfiguration{
			Source: resourceapi.AllocationConfigSourceClaim,
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
				Driver: DriverName, Parameters: runtime.RawExtension{Raw: []byte(cfg)}}},
		})
	}
	c.Status.Allocation = alloc
	return c
}

func TestDevices(t *testing.T) {
	t.Parallel()
	inv := testInventory()
	var got []resourceapi.Device
	for _, tg := range Targets(inv, nil) {
		got = append(got, Device(inv, tg))
	}
	var names []string
	for _, d := range got {
		names = append(names, d.Name)
	}
	// GPU 0 is in MIG mode: its MIG devices, never the whole GPU
	if strings.Join(names, " ") != "gpu-0-mig-1-0 gpu-0-mig-2-0 gpu-1" {
		t.Fatalf("devices %v", names)
	}
	str := func(d resourceapi.Device, k string) string {
		if a, ok := d.Attributes[resourceapi.QualifiedName(k)]; ok && a.StringValue != nil {
			return *a.StringValue
		}
		if a, ok := d.Attributes[resourceapi.QualifiedName(k)]; ok && a.VersionValue != nil {
			return "v" + *a.VersionValue
		}
		if a, ok := d.Attributes[resourceapi.QualifiedName(k)]; ok && a.IntValue != nil {
			return "i" + strconv.FormatInt(*a.IntValue, 10)
		}
		return ""
	}
	g1 := got[2]
	for k, want := range map[string]string{"type": "gpu", "uuid": "GPU-bbbbbbbb-0000-0000-0000-000000000000", "index": "i1", "minor": "i1",
		"productName": "NVIDIA A100", "brand": "tesla", "architecture": "ampere", "driverVersion": "v535.261.3",
		"cudaDriverVersion": "v12.2.0", "cudaComputeCapability": "v8.0.0", "resource.kubernetes.io/pciBusID": "0000:86:00.0"} {
		if v := str(g1, k); v != want {
			t.Errorf("gpu-1 %s = %q, want %q", k, v, want)
		}
	}
	if q := g1.Capacity["memory"].Value; q.Value() != 40<<30 {
		t.Errorf("gpu-1 memory %s", q.String())
	}
	m := got[0]
	for k, want := range map[string]string{"type": "mig", "uuid": "MIG-11111111-0000-0000-0000-000000000000", "parentUUID": "GPU-aaaaaaaa-0000-0000-0000-000000000000",
		"profile": "3g.20gb", "parentIndex": "i0", "resource.kubernetes.io/pciBusID": "0000:3b:00.0"} {
		if v := str(m, k); v != want {
			t.Errorf("MIG %s = %q, want %q", k, v, want)
		}
	}
	if q := m.Capacity["memory"].Value; q.Value() != 20<<30 {
		t.Errorf("MIG memory %s", q.String())
	}
	// procfs knows no memory, architecture, brand or compute capability: none is published
	inv.Source = gpu.SourceProcfs
	for i := range inv.Devices {
		inv.Devices[i].Arch, inv.Devices[i].Brand, inv.Devices[i].Architecture, inv.Devices[i].Memory = "", "", "", 0
	}
	p := Device(inv, Targets(inv, nil)[2])
	for _, k := range []string{"brand", "architecture", "cudaComputeCapability"} {
		if _, ok := p.Attributes[resourceapi.QualifiedName(k)]; ok {
			t.Errorf("procfs device has %s", k)
		}
	}
	if len(p.Capacity) != 0 || str(p, "uuid") == "" || str(p, "productName") == "" || str(p, "driverVersion") == "" {
		t.Errorf("procfs device: %+v", p)
	}
	// a partition: only GPU 1 is the driver's
	ts := Targets(inv, func(d gpu.Device) bool { return d.Index == 1 })
	if len(ts) != 1 || ts[0].Name != "gpu-1" {
		t.Errorf("partition: %v", ts)
	}
}

func TestSemver(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"535.261.03": "535.261.3", "12.2": "12.2.0", "8.0": "8.0.0", "470.256.02": "470.256.2", "": "", "1.2.3.4": "", "12.x": "", "9999999999.1": ""} {
		if got, _ := semver(in); got != want {
			t.Errorf("semver(%q) = %q, want %q", in, got, want)
		}
	}
}

// inject resolves CDI names with the CDI library, as a runtime does, into an empty spec.
func inject(t *testing.T, dir string, names ...string) *oci.Spec {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(dir))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI errors: %v", errs)
	}
	o := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(o, names...); err != nil {
		t.Fatalf("inject %v: %v (unresolved %v)", names, err, unresolved)
	}
	return o
}

func paths(o *oci.Spec) (devs, mounts []string) {
	for _, d := range o.Linux.Devices {
		devs = append(devs, d.Path)
	}
	for _, m := range o.Mounts {
		mounts = append(mounts, m.Destination)
	}
	slices.Sort(devs)
	return devs, mounts
}

func TestPrepareUnprepare(t *testing.T) {
	t.Parallel()
	d, cdiDir, dataDir := newDriver(t, testInventory)
	ctx := context.Background()
	c := claim(uidOf(1), "one-gpu", []result{{"gpu", "gpu-1"}}, `{"apiVersion":"gpus.nvbind.io/v1alpha1","kind":"GpuConfig","capabilities":["compute","utility","graphics"]}`)
	res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if err != nil {
		t.Fatal(err)
	}
	r := res[uidOf(1)]
	if r.Err != nil || len(r.Devices) != 1 || r.Devices[0].DeviceName != "gpu-1" || r.Devices[0].PoolName != testNode ||
		!slices.Equal(r.Devices[0].CDIDeviceIDs, []string{"k8s.gpu.nvbind.io/claim=" + string(uidOf(1)) + "-gpu-1"}) {
		t.Fatalf("prepare: %+v", r)
	}
	o := inject(t, cdiDir, r.Devices[0].CDIDeviceIDs...)
	devs, mounts := paths(o)
	// GPU 1 and the control nodes, modeset with graphics; not GPU 0
	if !slices.Equal(devs, []string{"/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia1", "/dev/nvidiactl"}) {
		t.Errorf("devices %v", devs)
	}
	for _, want := range []string{"/usr/lib/x86_64-linux-gnu/libcuda.so.535.261.03", "/usr/bin/nvidia-smi", "/usr/lib/x86_64-linux-gnu/libnvidia-glcore.so.535.261.03"} {
		if !slices.Contains(mounts, want) {
			t.Errorf("no mount of %s in %v", want, mounts)
		}
	}
	if o.Hooks == nil || len(o.Hooks.CreateRuntime) != 1 || o.Hooks.CreateRuntime[0].Path != hookPath {
		t.Errorf("hooks %+v", o.Hooks)
	}
	if !slices.Contains(o.Process.Env, "NVBIND_DRA_DEVICE_GPU_1=GPU-bbbbbbbb-0000-0000-0000-000000000000") {
		t.Errorf("env %v", o.Process.Env)
	}
	files, _ := filepath.Glob(filepath.Join(cdiDir, "*"))
	if len(files) != 1 || filepath.Base(files[0]) != "k8s.gpu.nvbind.io-claim_"+string(uidOf(1))+".yaml" {
		t.Fatalf("spec files %v", files)
	}
	// idempotent: asked again, the same answer and still one spec
	again, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if err != nil || again[uidOf(1)].Err != nil || !slices.Equal(again[uidOf(1)].Devices[0].CDIDeviceIDs, r.Devices[0].CDIDeviceIDs) {
		t.Fatalf("prepare again: %+v %v", again, err)
	}
	// a restarted driver unprepares what this one prepared
	d2, err := New(Config{NodeName: testNode, CDIDir: cdiDir, DataDir: dataDir, Discover: d.cfg.Discover, Spec: d.cfg.Spec})
	if err != nil {
		t.Fatal(err)
	}
	if got := d2.Prepared(); !slices.Equal(got, []types.UID{uidOf(1)}) {
		t.Fatalf("the checkpoint holds %v", got)
	}
	un, err := d2.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: uidOf(1), NamespacedName: types.NamespacedName{Namespace: "default", Name: "one-gpu"}}, {UID: "never"}})
	if err != nil || un[uidOf(1)] != nil || un["never"] != nil || len(un) != 2 {
		t.Fatalf("unprepare: %v %v", un, err)
	}
	if files, _ := filepath.Glob(filepath.Join(cdiDir, "*")); len(files) != 0 {
		t.Errorf("left %v", files)
	}
	if got := d2.Prepared(); len(got) != 0 {
		t.Errorf("still prepared: %v", got)
	}
}

func TestPrepareRefuses(t *testing.T) {
	t.Parallel()
	d, cdiDir, _ := newDriver(t, testInventory)
	ctx := context.Background()
	held := claim(uidOf(2), "held", []result{{"gpu", "gpu-1"}})
	if res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{held}); err != nil || res[uidOf(2)].Err != nil {
		t.Fatal(res, err)
	}
	for _, tc := range []struct {
		c     *resourceapi.ResourceClaim
		wants []string
	}{
		{claim(uidOf(11), "typo", []result{{"gpu", "gpu-0-mig-1-0"}}, `{"apiVersion":"gpus.nvbind.io/v1alpha1","kind":"GpuConfig","capability":["compute"]}`),
			[]string{"claim default/typo", "request gpu", `unknown field "capability"`, "valid fields: apiVersion, kind, capabilities"}},
		{claim(uidOf(12), "warp", []result{{"gpu", "gpu-0-mig-1-0"}}, `{"apiVersion":"gpus.nvbind.io/v1alpha1","kind":"GpuConfig","capabilities":["compute","warp"]}`),
			[]string{`unknown driver capability "warp"`, "compute", "utility", "graphics"}},
		{claim(uidOf(13), "kind", []result{{"gpu", "gpu-0-mig-1-0"}}, `{"apiVersion":"gpus.nvbind.io/v1","kind":"GpuConf"}`),
			[]string{`apiVersion "gpus.nvbind.io/v1"`, "valid: apiVersion gpus.nvbind.io/v1alpha1, kind GpuConfig"}},
		{claim(uidOf(14), "gone", []result{{"gpu", "gpu-7"}}), []string{"device gpu-7 of claim default/gone is not on this node now", "gpu-0-mig-1-0, gpu-0-mig-2-0, gpu-1"}},
		{claim(uidOf(15), "twice", []result{{"gpu", "gpu-1"}}), []string{"gpu-1", "held by claim " + string(uidOf(2))}},
		{claim(uidOf(16), "whole", []result{{"gpu", "gpu-0"}}), []string{"device gpu-0 of claim default/whole is not on this node now"}},
	} {
		res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{tc.c})
		if err != nil {
			t.Fatal(err)
		}
		e := res[tc.c.UID].Err
		if e == nil {
			t.Errorf("%s prepared", tc.c.Name)
			continue
		}
		for _, w := range tc.wants {
			if !strings.Contains(e.Error(), w) {
				t.Errorf("%s: error lacks %q: %v", tc.c.Name, w, e)
			}
		}
	}
	// nothing of a refused claim is left: only the held claim's spec and record
	if files, _ := filepath.Glob(filepath.Join(cdiDir, "*")); len(files) != 1 {
		t.Errorf("spec files %v", files)
	}
	if got := d.Prepared(); !slices.Equal(got, []types.UID{uidOf(2)}) {
		t.Errorf("prepared %v", got)
	}
}

// TestPrepareLiveDiscovery: a claim is prepared from the inventory of the moment, so the
// first claim on a node whose GPU appeared after start gets it.
func TestPrepareLiveDiscovery(t *testing.T) {
	t.Parallel()
	inv := testInventory()
	inv.Devices = inv.Devices[:1]
	current := inv
	d, cdiDir, _ := newDriver(t, func() *gpu.Inventory { return current })
	ctx := context.Background()
	res, _ := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim(uidOf(11), "c", []result{{"gpu", "gpu-1"}})})
	if res[(uidOf(11))].Err == nil {
		t.Fatal("prepared a GPU that is not there")
	}
	current = testInventory()
	res, _ = d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim(uidOf(11), "c", []result{{"gpu", "gpu-1"}})})
	if res[(uidOf(11))].Err != nil {
		t.Fatal(res[(uidOf(11))].Err)
	}
	if devs, _ := paths(inject(t, cdiDir, res[(uidOf(11))].Devices[0].CDIDeviceIDs...)); !slices.Contains(devs, "/dev/nvidia1") {
		t.Errorf("devices %v", devs)
	}
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	c := claim(uidOf(20), "c", []result{{"a", "gpu-1"}, {"b/sub", "gpu-0-mig-1-0"}})
	cfg := func(src resourceapi.AllocationConfigSource, requests []string, caps string) resourceapi.DeviceAllocationConfiguration {
		return resourceapi.DeviceAllocationConfiguration{Source: src, Requests: requests, DeviceConfiguration: resourceapi.DeviceConfiguration{
			Opaque: &resourceapi.OpaqueDeviceConfiguration{Driver: DriverName, Parameters: runtime.RawExtension{Raw: []byte(
				`{"apiVersion":"gpus.nvbind.io/v1alpha1","kind":"GpuConfig","capabilities":[` + caps + `]}`)}}}}
	}
	c.Status.Allocation.Devices.Config = []resourceapi.DeviceAllocationConfiguration{
		cfg(resourceapi.AllocationConfigSourceClass, nil, `"all"`),
		cfg(resourceapi.AllocationConfigSourceClaim, []string{"b"}, `"compute"`),
		{Source: resourceapi.AllocationConfigSourceClaim, DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
			Driver: "other.example.com", Parameters: runtime.RawExtension{Raw: []byte(`{"not":"ours"}`)}}}},
	}
	for req, want := range map[string]gpu.Capabilities{"a": gpu.CapsAll, "b/sub": gpu.CapsOf(gpu.CapCompute)} {
		if got, err := requestCaps(c.Status.Allocation, req); err != nil || got != want {
			t.Errorf("%s: %v %v, want %v", req, got, err, want)
		}
	}
}

func TestCheckpointRefusesOtherVersions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, checkpointFile), []byte(`{"version":9,"claims":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadCheckpoint(dir); err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Errorf("err = %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{`{"apiVersion":"gpus.nvbind.io/v1alpha1","kind":"GpuConfig","capabilities":["compute","utility"]}`,
		`{"apiVersion":"gpus.nvbind.io/v1alpha1","kind":"GpuConfig"}`, `{"capability":[]}`, `{} {}`, `[`, `{"capabilities":["` + strings.Repeat("x", 70000) + `"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var before, after runtime2.MemStats
		runtime2.ReadMemStats(&before)
		start := time.Now()
		caps, err := ParseConfig(raw)
		took := time.Since(start)
		runtime2.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(16*len(raw)+256<<10) {
			t.Fatalf("%d bytes of input allocated %d bytes", len(raw), alloc)
		}
		if limit := 200*time.Millisecond + time.Duration(len(raw))*time.Microsecond; took > limit {
			t.Fatalf("%d bytes took %s", len(raw), took)
		}
		if err != nil {
			if len(err.Error()) > 600 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if caps == 0 {
			t.Fatalf("%q: no capabilities", raw)
		}
	})
}

// TestExampleConfigs: the opaque configurations of manifests/examples parse.
func TestExampleConfigs(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob("../manifests/examples/dra-*.yaml")
	n := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			var o struct {
				Spec struct {
					Spec    struct{ Devices resourceapi.DeviceClaim } `json:"spec"`
					Devices resourceapi.DeviceClaim                   `json:"devices"`
				} `json:"spec"`
			}
			if err := sigsyaml.Unmarshal([]byte(doc), &o); err != nil {
				t.Fatal(err)
			}
			for _, c := range append(o.Spec.Spec.Devices.Config, o.Spec.Devices.Config...) {
				n++
				if _, err := ParseConfig(c.Opaque.Parameters.Raw); err != nil || c.Opaque.Driver != DriverName {
					t.Errorf("%s: %v", f, err)
				}
			}
		}
	}
	if n == 0 {
		t.Error("no opaque configuration in the examples")
	}
}

func uidOf(n int) types.UID { return types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012d", n)) }

// TestPrepareHolds: what one prepared claim holds, another cannot get; admin access holds
// nothing; a whole GPU and a MIG device of it are the same hardware; a holder the API
// server no longer has is dropped.
func TestPrepareHolds(t *testing.T) {
	t.Parallel()
	mig := testInventory()
	whole := testInventory()
	whole.Devices[0].MIG = nil
	current := mig
	kube := fake.NewClientset()
	d, cdiDir, _ := newDriver(t, func() *gpu.Inventory { return current })
	d.cfg.Kube = kube
	ctx := context.Background()
	prep := func(c *resourceapi.ResourceClaim) error {
		t.Helper()
		res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
		if err != nil {
			t.Fatal(err)
		}
		return res[c.UID].Err
	}
	inAPI := func(c *resourceapi.ResourceClaim) *resourceapi.ResourceClaim {
		if _, err := kube.ResourceV1().ResourceClaims(c.Namespace).Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// admin access: prepared, and holds nothing
	admin := claim(uidOf(1), "admin", []result{{"gpu", "gpu-1"}})
	yes := true
	admin.Status.Allocation.Devices.Results[0].AdminAccess = &yes
	if err := prep(inAPI(admin)); err != nil {
		t.Fatal(err)
	}
	if err := prep(inAPI(claim(uidOf(2), "user", []result{{"gpu", "gpu-1"}}))); err != nil {
		t.Errorf("a claim after an admin-access one: %v", err)
	}
	// a MIG device, then MIG off: the whole GPU is the same hardware
	if err := prep(inAPI(claim(uidOf(3), "mig", []result{{"gpu", "gpu-0-mig-1-0"}}))); err != nil {
		t.Fatal(err)
	}
	current = whole
	err := prep(inAPI(claim(uidOf(4), "whole", []result{{"gpu", "gpu-0"}})))
	if err == nil || !strings.Contains(err.Error(), "held by claim "+string(uidOf(3))) {
		t.Errorf("the whole GPU of a prepared MIG device: %v", err)
	}
	// the MIG claim gone from the API server (the kubelet lost track of it): stale
	if err := kube.ResourceV1().ResourceClaims("default").Delete(ctx, "mig", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := prep(claim(uidOf(4), "whole", []result{{"gpu", "gpu-0"}})); err != nil {
		t.Errorf("after the holder went: %v", err)
	}
	if slices.Contains(d.Prepared(), (uidOf(3))) {
		t.Error("the stale claim is still recorded")
	}
	if _, err := os.Stat(filepath.Join(cdiDir, "k8s.gpu.nvbind.io-claim_"+string(uidOf(3))+".yaml")); err == nil {
		t.Error("the stale claim's spec is still there")
	}
	// a MIG-mode GPU without MIG devices has nothing to hand out
	current.Devices[0].MIGMode = true
	if ts := Targets(current, nil); len(ts) != 1 || ts[0].Name != "gpu-1" {
		t.Errorf("targets %v", ts)
	}
	// a UID that is not a UUID never names a file
	if err := prep(claim("../../etc/x", "evil", []result{{"gpu", "gpu-1"}})); err == nil || !strings.Contains(err.Error(), "not a UUID") {
		t.Errorf("UID ../../etc/x: %v", err)
	}
}

// TestPrepareUnrecorded: a prepare whose checkpoint cannot be saved leaves no spec behind.
func TestPrepareUnrecorded(t *testing.T) {
	t.Parallel()
	d, cdiDir, dataDir := newDriver(t, testInventory)
	if err := os.Mkdir(filepath.Join(dataDir, checkpointFile), 0o755); err != nil { // the rename onto it fails
		t.Fatal(err)
	}
	if _, err := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{claim(uidOf(1), "c", []result{{"gpu", "gpu-1"}})}); err == nil {
		t.Fatal("prepared without a checkpoint")
	}
	if m, _ := filepath.Glob(filepath.Join(cdiDir, "*")); len(m) != 0 {
		t.Errorf("left %v", m)
	}
	if len(d.Prepared()) != 0 {
		t.Errorf("prepared %v", d.Prepared())
	}
}

// TestPrepareLayout: a claim whose capability set has a complete driver layout gets the
// driver in one mount of it; one without gets a mount per file and asks for the layout.
func TestPrepareLayout(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	inv := testInventory()
	plan := layout.For(inv, gpu.CapsDefault)
	if err := os.MkdirAll(plan.HostPath(base), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plan.HostPath(base), ".complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !layout.Complete(base, plan) {
		t.Fatal("the fake layout is not complete")
	}
	d, cdiDir, _ := newDriver(t, testInventory)
	d.cfg.Layouts = &layout.Provider{Base: base}
	ctx := context.Background()
	for _, tc := range []struct {
		uid    types.UID
		config string
		layout bool
	}{
		{uidOf(1), "", true},
		{uidOf(2), `{"apiVersion":"gpus.nvbind.io/v1alpha1","kind":"GpuConfig","capabilities":["compute","utility","graphics"]}`, false},
	} {
		var configs []string
		if tc.config != "" {
			configs = append(configs, tc.config)
		}
		gpuName := map[types.UID]string{uidOf(1): "gpu-1", uidOf(2): "gpu-0-mig-1-0"}[tc.uid]
		res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim(tc.uid, "c", []result{{"gpu", gpuName}}, configs...)})
		if err != nil || res[tc.uid].Err != nil {
			t.Fatal(err, res)
		}
		_, mounts := paths(inject(t, cdiDir, res[tc.uid].Devices[0].CDIDeviceIDs...))
		inLayout := slices.ContainsFunc(mounts, func(m string) bool { return filepath.Dir(m) == layout.Dest })
		perFile := slices.Contains(mounts, "/usr/lib/x86_64-linux-gnu/libcuda.so.535.261.03")
		if inLayout != tc.layout || perFile == tc.layout {
			t.Errorf("claim %s: layout mount %v, per-file libcuda %v; mounts %v", tc.uid, inLayout, perFile, mounts)
		}
	}
}
