package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/nvbind/nvbind/internal/version"
)

// containerdState is what a running containerd says of itself over its API socket, and
// the NRI settings of its effective configuration (`containerd config dump`: the main
// file, its drop-in imports and the defaults merged), which no API exposes.
type containerdState struct {
	Version     string
	NRILoaded   bool
	NRIInitErr  string
	CDIEnabled  bool
	CDISpecDirs []string
	NRI         nriConfig
	NRIFrom     string // where the NRI settings came from, "" when unknown
}

// nriConfig is the part of containerd's NRI plugin configuration doctor judges.
type nriConfig struct {
	Disable          bool   `toml:"disable"`
	SocketPath       string `toml:"socket_path"`
	DefaultValidator struct {
		Enable                    bool     `toml:"enable"`
		RejectOCIHookAdjustment   bool     `toml:"reject_oci_hook_adjustment"`
		RequiredPlugins           []string `toml:"required_plugins"`
		TolerateMissingAnnotation string   `toml:"tolerate_missing_plugins_annotation"`
	} `toml:"default_validator"`
}

// probeContainerd asks the containerd on socket for its version, its NRI plugin's load
// status (introspection) and its CRI configuration (CRI Status, verbose); the NRI
// settings come from `containerd config dump` run with the same configuration file.
func probeContainerd(ctx context.Context, socket, binary, config string) (*containerdState, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("containerd socket %s: %w", socket, err)
	}
	defer func() { _ = conn.Close() }()
	v, err := versionapi.NewVersionClient(conn).Version(ctx, &emptypb.Empty{})
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", socket, err)
	}
	st := &containerdState{Version: v.GetVersion()}
	plugins, err := introspection.NewIntrospectionClient(conn).Plugins(ctx, &introspection.PluginsRequest{Filters: []string{`type=="io.containerd.nri.v1"`}})
	if err != nil {
		return nil, fmt.Errorf("containerd introspection: %w", err)
	}
	for _, p := range plugins.GetPlugins() {
		if p.GetID() == "nri" {
			st.NRILoaded = p.GetInitErr() == nil
			st.NRIInitErr = p.GetInitErr().GetMessage()
		}
	}
	if status, err := cri.NewRuntimeServiceClient(conn).Status(ctx, &cri.StatusRequest{Verbose: true}); err == nil {
		var c struct {
			EnableCDI   *bool    `json:"enableCDI"`
			CDISpecDirs []string `json:"cdiSpecDirs"`
		}
		if json.Unmarshal([]byte(status.GetInfo()["config"]), &c) == nil {
			st.CDISpecDirs = c.CDISpecDirs
			// containerd 2.0 and later always enable CDI and dropped the setting
			st.CDIEnabled = (c.EnableCDI != nil && *c.EnableCDI) || !version.Less(majorMinor(st.Version), "2.0")
		}
	}
	if binary != "" {
		args := []string{"config", "dump"}
		if config != "" {
			args = append([]string{"--config", config}, args...)
		}
		var out, errb bytes.Buffer
		cmd := exec.CommandContext(ctx, binary, args...)
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err == nil {
			if n, err := parseNRIConfig(out.Bytes()); err == nil {
				st.NRI, st.NRIFrom = n, binary+" config dump"
			}
		}
	}
	return st, nil
}

// parseNRIConfig reads the NRI plugin's table from a containerd configuration (version 2
// or 3) in TOML.
func parseNRIConfig(data []byte) (nriConfig, error) {
	var m map[string]any
	if err := toml.Unmarshal(data, &m); err != nil {
		return nriConfig{}, fmt.Errorf("containerd configuration: %w", err)
	}
	t, ok := lookup(m, "plugins", "io.containerd.nri.v1.nri")
	if !ok {
		return nriConfig{Disable: true}, nil
	}
	b, err := toml.Marshal(t)
	if err != nil {
		return nriConfig{}, err
	}
	var n nriConfig
	if err := toml.Unmarshal(b, &n); err != nil {
		return nriConfig{}, fmt.Errorf("containerd NRI configuration: %w", err)
	}
	return n, nil
}

// containerdResults judges a running containerd.
func containerdResults(st *containerdState, socket string) []Result {
	var out []Result
	r := Result{Check: "containerd", Status: OK, Message: fmt.Sprintf("containerd %s answers on %s; NRI plugin loaded", st.Version, socket)}
	if !st.NRILoaded {
		r.Status, r.Message = Fail, fmt.Sprintf("containerd %s answers on %s but its NRI plugin is not loaded: %s", st.Version, socket, orDash(st.NRIInitErr))
		r.Fix = "set disable = false under [plugins.'io.containerd.nri.v1.nri'] and restart containerd (manifests/runtime/containerd-2.x-nri.toml)"
	}
	out = append(out, r)
	cdi := Result{Check: "containerd cdi", Status: OK, Message: "CDI is on, spec dirs: " + strings.Join(st.CDISpecDirs, ", ")}
	if !st.CDIEnabled {
		cdi.Status, cdi.Message = Info, "CDI is off: nvbind nri --cdi-mode and CDI annotations will not work; direct edits do"
		cdi.Fix = "set enable_cdi = true under the CRI plugin (containerd 1.7) or upgrade to containerd 2"
	}
	out = append(out, cdi)
	if st.NRIFrom == "" {
		return out
	}
	dv := st.NRI.DefaultValidator
	switch {
	case !dv.Enable:
		out = append(out, Result{"nri validator", Info,
			"NRI's default validator is off: a GPU pod created while nvbind is away starts without its GPUs",
			"enable [plugins.'io.containerd.nri.v1.nri'.default_validator] and annotate GPU pods with required-plugins.noderesource.dev/container.<name>: '[\"nvbind\"]' (README: No GPU container starts without its GPU)"})
	case dv.RejectOCIHookAdjustment:
		mode := "nvbind nri --cdi-mode (containerd applies nvbind's CDI spec and its hook itself)"
		if !st.CDIEnabled {
			mode = "nvbind nri --disable-hooks all (hookless: no ld cache entry), since CDI is off"
		}
		out = append(out, Result{"nri validator", Warn,
			"NRI's default validator rejects OCI hook adjustments (" + st.NRIFrom + "): nvbind's direct edits carry its hook and are refused",
			"run " + mode})
	default:
		out = append(out, Result{"nri validator", OK, "NRI's default validator is on and accepts nvbind's hook", ""})
	}
	if slices.Contains(dv.RequiredPlugins, "nvbind") {
		r := Result{"nri validator", Warn,
			"nvbind is a globally required NRI plugin: every container on the node, nvbind's own pod included, is refused while nvbind is away",
			"require nvbind per pod (required-plugins.noderesource.dev annotation) instead, or set tolerate_missing_plugins_annotation and put it on nvbind's pod"}
		if dv.TolerateMissingAnnotation != "" {
			r.Status, r.Message, r.Fix = Info, "nvbind is a globally required NRI plugin; pods annotated "+dv.TolerateMissingAnnotation+" start without it (nvbind's own pod needs that annotation)", ""
		}
		out = append(out, r)
	}
	return out
}

// majorMinor returns "2.4" of "v2.4.2", "2.4.2-dirty" or "1.7.27~ds1".
func majorMinor(v string) string {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return "0"
	}
	minor := strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	return parts[0] + "." + minor
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
