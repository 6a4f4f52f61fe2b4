package dra

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/nvbind/nvbind/gpu"
)

// The opaque configuration a claim or DeviceClass gives the driver:
//
//	apiVersion: gpus.nvbind.io/v1alpha1
//	kind: GpuConfig
//	capabilities: [compute, utility]
const (
	ConfigAPIVersion = "gpus.nvbind.io/v1alpha1"
	ConfigKind       = "GpuConfig"
	// maxConfigSize bounds one opaque configuration (the API server allows 10 KiB).
	maxConfigSize = 64 << 10
)

// GpuConfig is the driver's opaque configuration.
type GpuConfig struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Capabilities are the driver capabilities the containers get (NVIDIA's names:
	// compute, utility, graphics, video, display, compat32, ngx, or all); default
	// compute,utility.
	Capabilities []string `json:"capabilities,omitempty"`
}

// ParseConfig decodes one opaque configuration strictly: an unknown field, kind,
// version or capability is an error that names it and the valid choices.
func ParseConfig(raw []byte) (gpu.Capabilities, error) {
	if len(raw) > maxConfigSize {
		return 0, fmt.Errorf("opaque configuration of %d bytes, more than %d", len(raw), maxConfigSize)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var c GpuConfig
	if err := dec.Decode(&c); err != nil {
		return 0, fmt.Errorf("opaque configuration: %s (valid fields: apiVersion, kind, capabilities)", short(strings.TrimPrefix(err.Error(), "json: ")))
	}
	if dec.More() {
		return 0, errors.New("opaque configuration: more than one object")
	}
	if c.APIVersion != ConfigAPIVersion || c.Kind != ConfigKind {
		return 0, fmt.Errorf("opaque configuration: apiVersion %q, kind %q (valid: apiVersion %s, kind %s)", short(c.APIVersion), short(c.Kind), ConfigAPIVersion, ConfigKind)
	}
	if len(c.Capabilities) == 0 {
		return gpu.CapsDefault, nil
	}
	if len(c.Capabilities) > 32 {
		return 0, fmt.Errorf("opaque configuration: %d capabilities, more than 32", len(c.Capabilities))
	}
	caps, err := gpu.ParseCapabilities(strings.Join(c.Capabilities, ","))
	if err != nil {
		return 0, fmt.Errorf("opaque configuration: capabilities: %s", short(err.Error()))
	}
	return caps, nil
}

// requestCaps returns the capabilities each request of an allocation gets: the opaque
// configurations of this driver that apply to it, the class's first and the claim's
// after (the later wins, as Kubernetes orders them), default compute,utility. Another
// driver's configuration is not this driver's to read.
func requestCaps(alloc *resourceapi.AllocationResult, request string) (gpu.Capabilities, error) {
	caps := gpu.CapsDefault
	if alloc == nil {
		return caps, nil
	}
	for _, c := range alloc.Devices.Config {
		if c.Opaque == nil || c.Opaque.Driver != DriverName {
			continue
		}
		if len(c.Requests) > 0 && !appliesTo(c.Requests, request) {
			continue
		}
		got, err := ParseConfig(c.Opaque.Parameters.Raw)
		if err != nil {
			return 0, fmt.Errorf("%w (from the %s)", err, sourceName(c.Source))
		}
		caps = got
	}
	return caps, nil
}

// appliesTo tells whether a configuration for requests applies to a request, which may be
// a subrequest (<request>/<subrequest>): a configuration of the main request applies to
// its subrequests.
func appliesTo(requests []string, request string) bool {
	main, _, _ := strings.Cut(request, "/")
	for _, r := range requests {
		if r == request || r == main {
			return true
		}
	}
	return false
}

func sourceName(s resourceapi.AllocationConfigSource) string {
	if s == resourceapi.AllocationConfigSourceClass {
		return "DeviceClass"
	}
	return "ResourceClaim"
}

// short keeps what an error quotes of its input short: it goes into the pod's events.
func short(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
