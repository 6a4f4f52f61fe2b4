package wrapper

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/nvbind/nvbind/internal/fileio"
	"github.com/nvbind/nvbind/layout"
)

// DefaultConfigFile is the wrapper's configuration; $NVBIND_RUNTIME_CONFIG names another.
const DefaultConfigFile = "/etc/nvbind/runtime.toml"

// EnvConfig names another configuration file.
const EnvConfig = "NVBIND_RUNTIME_CONFIG"

// Modes of the wrapper.
const (
	// ModeInject adds the GPUs a container asks for (Docker, a RuntimeClass without NRI).
	ModeInject = "inject"
	// ModeGuard refuses a container that asks for GPUs which nvbind's NRI plugin did not
	// handle (the plugin was not running, or died while the runtime asked it), so that no
	// GPU container starts without its GPU; the kubelet retries. It never edits.
	ModeGuard = "guard"
)

// Config is the wrapper's configuration.
type Config struct {
	// Runtime is the OCI runtime to run: a path, or a name looked up in PATH. Default:
	// runc, then crun.
	Runtime string `toml:"runtime"`
	// Mode is ModeInject (default) or ModeGuard.
	Mode string `toml:"mode"`
	// DriverRoot and DevRoot are discovery's roots (default "/").
	DriverRoot string `toml:"driver-root"`
	DevRoot    string `toml:"dev-root"`
	// HookPath is the nvbind-hook the edits name (default: nvbind-hook beside the wrapper).
	HookPath string `toml:"hook-path"`
	// DisableHooks turns hook actions off, as --disable-hooks does.
	DisableHooks string `toml:"disable-hooks"`
	// EnvRequests lets NVIDIA_VISIBLE_DEVICES ask for GPUs (default true).
	EnvRequests *bool `toml:"env-requests"`
	// NoNVML lists GPUs from /proc/driver/nvidia only.
	NoNVML bool `toml:"no-nvml"`
	// Layout is "auto" (default: the driver's files in one mount of a layout, which the
	// wrapper builds) or "files" (one mount per file); LayoutDir is the layouts' folder.
	Layout    string `toml:"layout"`
	LayoutDir string `toml:"layout-dir"`
	// Socket is where nvbind-runtime asks the edit service (nvbind-runtime-edit serve)
	// before it runs nvbind-runtime-edit itself: DefaultSocket when absent, "" for never.
	Socket *string `toml:"socket"`
	// Stage is who runs the driver's steps (links, ld cache, params copy, CUDA
	// compatibility, application profile) of a container created through the edit
	// service: StageAuto (default) has the service run them once the runtime has created
	// the container, where it may (runc or crun, no user namespace of the container's
	// own, a create with --pid-file); StageHook leaves them to the hook.
	Stage string `toml:"stage"`
}

// Values of Config.Stage.
const (
	StageAuto = "auto"
	StageHook = "hook"
)

// maxConfigSize bounds the configuration file.
const maxConfigSize = 64 << 10

// LoadConfig reads the configuration: $NVBIND_RUNTIME_CONFIG, else DefaultConfigFile when
// it exists, else the defaults. Unknown keys and values are errors that list the valid
// ones.
func LoadConfig() (Config, string, error) {
	path, explicit := os.LookupEnv(EnvConfig)
	if !explicit {
		path = DefaultConfigFile
	}
	c, err := loadConfigFile(path, explicit)
	return c, path, err
}

// loadConfigFile reads the configuration at path; explicit says whether it was named
// (else a missing file means the defaults).
func loadConfigFile(path string, explicit bool) (Config, error) {
	var c Config
	data, err := fileio.ReadFile(path, maxConfigSize)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !explicit:
		return c, c.check()
	case err != nil:
		return c, fmt.Errorf("configuration: %w", err)
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var sme *toml.StrictMissingError
		if errors.As(err, &sme) {
			return c, fmt.Errorf("%s: unknown key %s (valid: %s)", path, strings.TrimSpace(sme.String()), strings.Join(configKeys(), ", "))
		}
		return c, fmt.Errorf("%s: %w", path, err)
	}
	if err := c.check(); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func configKeys() []string {
	keys := []string{"runtime", "mode", "driver-root", "dev-root", "hook-path", "disable-hooks", "env-requests", "no-nvml", "layout", "layout-dir", "socket", "stage"}
	sort.Strings(keys)
	return keys
}

func (c *Config) check() error {
	if c.Mode == "" {
		c.Mode = ModeInject
	}
	if !slices.Contains([]string{ModeInject, ModeGuard}, c.Mode) {
		return fmt.Errorf("mode %q: valid: %s, %s", c.Mode, ModeInject, ModeGuard)
	}
	if c.Layout == "" {
		c.Layout = "auto"
	}
	if c.Layout != "auto" && c.Layout != "files" {
		return fmt.Errorf("layout %q: valid: auto, files", c.Layout)
	}
	if c.Stage == "" {
		c.Stage = StageAuto
	}
	if c.Stage != StageAuto && c.Stage != StageHook {
		return fmt.Errorf("stage %q: valid: %s, %s", c.Stage, StageAuto, StageHook)
	}
	if c.LayoutDir == "" {
		c.LayoutDir = layout.DefaultBase
	}
	for _, d := range []struct{ key, v string }{{"driver-root", c.DriverRoot}, {"dev-root", c.DevRoot}, {"hook-path", c.HookPath}, {"layout-dir", c.LayoutDir}, {"socket", c.socket()}} {
		if d.v != "" && !filepath.IsAbs(d.v) {
			return fmt.Errorf("%s %q is not an absolute path", d.key, d.v)
		}
	}
	if c.DriverRoot == "" {
		c.DriverRoot = "/"
	}
	if c.DevRoot == "" {
		c.DevRoot = "/"
	}
	if c.EnvRequests == nil {
		t := true
		c.EnvRequests = &t
	}
	return nil
}

// socket is the edit service's socket, "" for none.
func (c Config) socket() string {
	if c.Socket == nil {
		return DefaultSocket
	}
	return *c.Socket
}

// defaultRuntimes are looked up in PATH, in order, when the configuration names none.
var defaultRuntimes = []string{"runc", "crun"}

// RealRuntime finds the OCI runtime to run, never the wrapper itself.
func (c Config) RealRuntime() (string, error) {
	self, _ := os.Executable()
	if self != "" {
		if r, err := filepath.EvalSymlinks(self); err == nil {
			self = r
		}
	}
	want := defaultRuntimes
	if c.Runtime != "" {
		want = []string{c.Runtime}
	}
	for _, name := range want {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if r, err := filepath.EvalSymlinks(p); err == nil && r == self {
			continue // a runtime named like ours that is ours
		}
		return p, nil
	}
	if c.Runtime != "" {
		return "", fmt.Errorf("runtime %q: not found, or it is nvbind-runtime itself", c.Runtime)
	}
	return "", fmt.Errorf("no OCI runtime found in PATH (looked for %s): set runtime in %s", strings.Join(defaultRuntimes, ", "), DefaultConfigFile)
}
