package spec

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"tags.cncf.io/container-device-interface/pkg/parser"

	"github.com/nvbind/nvbind/gpu"
)

// HookName names one action of the nvbind hook.
type HookName string

// The hook actions.
const (
	HookSymlinks    HookName = "create-symlinks"
	HookLDCache     HookName = "update-ldcache"
	HookDeviceNodes HookName = "disable-device-node-modification"
	HookCUDACompat  HookName = "enable-cuda-compat"
	HookAppProfile  HookName = "update-application-profile"
)

// AllHooks lists the hook actions in the order they run.
var AllHooks = []HookName{HookSymlinks, HookLDCache, HookDeviceNodes, HookCUDACompat, HookAppProfile}

// NameStrategy picks how devices are named in a CDI spec.
type NameStrategy string

// Device naming strategies.
const (
	NameIndex     NameStrategy = "index"      // 0, 1, 0:1
	NameTypeIndex NameStrategy = "type-index" // gpu0, gpu1, mig0:1
	NameUUID      NameStrategy = "uuid"       // GPU-<uuid>, MIG-<uuid>
)

// ValidNameStrategies is the help text for --device-name-strategy.
const ValidNameStrategies = "index, type-index, uuid"

// DefaultVendor and DefaultClass give the kind nvidia.com/gpu, so commands written for
// NVIDIA's toolkit keep working.
const (
	DefaultVendor = "nvidia.com"
	DefaultClass  = "gpu"
)

// Options configures edits and specs.
type Options struct {
	Vendor, Class string
	// Writer names who writes the spec (a command), recorded under the YAML spec's first
	// line, so that two nvbind writers of one kind on a host are told apart and warned of.
	Writer string
	// NameStrategies lists the names each device gets; default index, type-index and uuid.
	NameStrategies []NameStrategy
	// Capabilities selects the driver files of a static spec; default all.
	Capabilities gpu.Capabilities
	// HookPath is the absolute path of the nvbind binary that hooks call.
	HookPath string
	// CapabilityDevices puts the driver files in one device per capability instead of in
	// the spec's own edits (see Generate): the layout of the NRI plugin's CDI mode.
	CapabilityDevices bool
	// DisabledHooks turns hook actions off. With every action off the edits are hookless:
	// library links become extra bind mounts.
	DisabledHooks []HookName
	// LayoutBase, when set, gives a container the driver's files of a capability set in one
	// mount: the layout (package layout) under this host folder, which the caller builds
	// (layout.Ensure) before the edits are used. Empty: one bind mount per file.
	LayoutBase string
}

// ParseNameStrategies parses a comma list of naming strategies.
func ParseNameStrategies(v string) ([]NameStrategy, error) {
	var out []NameStrategy
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		n := NameStrategy(s)
		if !slices.Contains([]NameStrategy{NameIndex, NameTypeIndex, NameUUID}, n) {
			return nil, fmt.Errorf("unknown device name strategy %q (valid: %s)", s, ValidNameStrategies)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty device name strategy list (valid: %s)", ValidNameStrategies)
	}
	return out, nil
}

// ParseHookNames parses --disable-hooks: "all" or a comma list of hook actions.
func ParseHookNames(v string) ([]HookName, error) {
	var out []HookName
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		switch {
		case s == "":
			continue
		case s == "all":
			return slices.Clone(AllHooks), nil
		case slices.Contains(AllHooks, HookName(s)):
			if !slices.Contains(out, HookName(s)) {
				out = append(out, HookName(s))
			}
		default:
			return nil, fmt.Errorf("unknown hook %q (valid: all, %s, %s, %s, %s, %s)", s, HookSymlinks, HookLDCache, HookDeviceNodes, HookCUDACompat, HookAppProfile)
		}
	}
	return out, nil
}

func (o Options) withDefaults() (Options, error) {
	if o.Vendor == "" {
		o.Vendor = DefaultVendor
	}
	if o.Class == "" {
		o.Class = DefaultClass
	}
	if len(o.NameStrategies) == 0 {
		o.NameStrategies = []NameStrategy{NameIndex, NameTypeIndex, NameUUID}
	}
	if o.Capabilities == 0 {
		o.Capabilities = gpu.CapsAll
	}
	if o.HookPath == "" && !o.Hookless() {
		return o, errors.New("hook path is empty: pass the absolute path of the nvbind binary, or disable all hooks")
	}
	if o.HookPath != "" && !strings.HasPrefix(o.HookPath, "/") {
		return o, fmt.Errorf("hook path %q is not absolute: runtimes run hooks without PATH", o.HookPath)
	}
	if o.LayoutBase != "" && (!o.enabled(HookSymlinks) || !o.enabled(HookLDCache)) {
		return o, fmt.Errorf("the one-mount driver layout needs the hook's %s and %s actions: use --layout files with them off", HookSymlinks, HookLDCache)
	}
	if o.LayoutBase != "" && !strings.HasPrefix(o.LayoutBase, "/") {
		return o, fmt.Errorf("layout folder %q is not absolute", o.LayoutBase)
	}
	return o, nil
}

// Validate checks the options before any discovery runs.
func (o Options) Validate() error {
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	if err := parser.ValidateVendorName(o.Vendor); err != nil {
		return fmt.Errorf("vendor %q: %w", o.Vendor, err)
	}
	if err := parser.ValidateClassName(o.Class); err != nil {
		return fmt.Errorf("class %q: %w", o.Class, err)
	}
	return nil
}

func (o Options) enabled(h HookName) bool { return !slices.Contains(o.DisabledHooks, h) }

// Hookless reports whether every hook action is disabled.
func (o Options) Hookless() bool {
	for _, h := range AllHooks {
		if o.enabled(h) {
			return false
		}
	}
	return true
}
