package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/devchar"
	"github.com/nvbind/nvbind/internal/fileio"
	"github.com/nvbind/nvbind/internal/version"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
)

// Status of a check.
type Status string

// Statuses, from good to bad. Fail means GPU containers cannot work until it is fixed.
const (
	OK   Status = "ok"
	Info Status = "info"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check's verdict.
type Result struct {
	Check   string `json:"check"`
	Status  Status `json:"status"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

// Config says where to look. Zero values mean the usual host paths.
type Config struct {
	Discoverer       *gpu.Discoverer
	SpecDirs         []string
	Vendor, Class    string
	ContainerdConfig string
	// ContainerdSocket is the running containerd's API socket, which doctor asks first;
	// ContainerdBinary is the containerd whose `config dump` gives the effective
	// configuration (found in PATH when empty).
	ContainerdSocket string
	ContainerdBinary string
	CRIOConfigs      []string
	DockerConfig     string
	NRISocket        string
	HealthURL        string
	HTTPClient       *http.Client
	// DevRoot is where doctor reads the host's /dev, for the /dev/char links (empty: not
	// checked).
	DevRoot string
}

func (c *Config) defaults() {
	if len(c.SpecDirs) == 0 {
		c.SpecDirs = []string{"/etc/cdi", "/var/run/cdi"}
	}
	if c.Vendor == "" {
		c.Vendor = spec.DefaultVendor
	}
	if c.Class == "" {
		c.Class = spec.DefaultClass
	}
	if c.ContainerdConfig == "" {
		c.ContainerdConfig = "/etc/containerd/config.toml"
	}
	if c.ContainerdSocket == "" {
		c.ContainerdSocket = "/run/containerd/containerd.sock"
	}
	if c.ContainerdBinary == "" {
		c.ContainerdBinary, _ = exec.LookPath("containerd")
	}
	if c.CRIOConfigs == nil {
		c.CRIOConfigs = []string{"/etc/crio/crio.conf"}
		if m, _ := filepath.Glob("/etc/crio/crio.conf.d/*.conf"); len(m) > 0 {
			c.CRIOConfigs = append(c.CRIOConfigs, m...)
		}
	}
	if c.DockerConfig == "" {
		c.DockerConfig = "/etc/docker/daemon.json"
	}
	if c.NRISocket == "" {
		c.NRISocket = "/var/run/nri/nri.sock"
	}
	if c.HealthURL == "" {
		c.HealthURL = "http://127.0.0.1:9402/readyz"
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 2 * time.Second}
	}
}

// Run runs every check. Checks that depend on a discovery are reported as failed when
// the discovery fails.
func Run(ctx context.Context, c Config) []Result {
	c.defaults()
	var out []Result
	add := func(r ...Result) { out = append(out, r...) }
	inv, err := c.Discoverer.Discover(ctx)
	add(checkDriver(inv, err)...)
	if inv != nil && inv.Driver.Version != "" {
		add(checkNodes(inv, err))
		add(checkDevChar(c, inv)...)
		add(checkNVML(inv))
		add(checkLibraries(inv))
	}
	add(checkSpecs(c, inv)...)
	add(checkContainerd(ctx, c)...)
	add(checkCRIO(c)...)
	add(checkDocker(c)...)
	add(checkPlugin(ctx, c))
	return out
}

// Failed reports whether any result blocks GPU containers.
func Failed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return r.Status == Fail })
}

// Print writes one line per check, and the fix on the next.
func Print(w io.Writer, rs []Result) {
	for _, r := range rs {
		fmt.Fprintf(w, "%-4s  %-18s %s\n", strings.ToUpper(string(r.Status)), r.Check, r.Message)
		if r.Fix != "" && r.Status != OK {
			fmt.Fprintf(w, "      %-18s fix: %s\n", "", r.Fix)
		}
	}
	n := map[Status]int{}
	for _, r := range rs {
		n[r.Status]++
	}
	verdict := "GPU containers can run"
	if Failed(rs) {
		verdict = "GPU containers are blocked"
	}
	fmt.Fprintf(w, "%s: %d ok, %d warnings, %d failures\n", verdict, n[OK], n[Warn], n[Fail])
}

func checkDriver(inv *gpu.Inventory, err error) []Result {
	switch {
	case errors.Is(err, gpu.ErrNoDriver):
		return []Result{{"driver", Fail, err.Error(), "install the NVIDIA driver, or point --driver-root at it (/run/nvidia/driver under the GPU Operator)"}}
	case errors.Is(err, gpu.ErrNoLibraries):
		return []Result{{"driver", Fail, err.Error(), "install the user-space libraries of the loaded driver version, or reboot into the driver the libraries belong to"}}
	case inv == nil:
		return []Result{{"driver", Fail, err.Error(), "see the error above"}}
	}
	d := inv.Driver
	r := Result{Check: "driver", Status: OK, Message: fmt.Sprintf("NVIDIA %s (%s kernel module", d.Version, d.Flavour)}
	if d.CUDAVersion != "" {
		r.Message += ", CUDA " + d.CUDAVersion
	}
	r.Message += "; version from " + d.VersionSource + ")"
	if d.VersionSource != "proc/driver/nvidia/version" {
		r.Status, r.Fix = Fail, "the kernel module is not loaded: modprobe nvidia (or check dmesg for why it failed)"
		r.Message += ": the kernel module is not loaded"
	}
	out := []Result{r}
	for _, w := range inv.Warnings {
		if w.Kind == gpu.WarnLeftover || w.Kind == gpu.WarnVersionMismatch {
			out = append(out, Result{"driver files", Warn, w.Message, "remove the leftovers of the old driver (package manager or nvidia-uninstall)"})
		}
	}
	return out
}

func checkNodes(inv *gpu.Inventory, err error) Result {
	r := Result{Check: "device nodes", Status: OK}
	var missing []string
	have := map[string]bool{}
	for _, n := range inv.ControlNodes {
		have[n.Path] = true
		if n.FileMode&0o006 != 0o006 {
			missing = append(missing, fmt.Sprintf("%s is mode %o (containers' users cannot open it)", n.Path, n.FileMode.Perm()))
		}
	}
	for _, want := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm"} {
		if !have[want] {
			missing = append(missing, want+" is missing")
		}
	}
	if err != nil && !errors.Is(err, gpu.ErrNoDevices) {
		missing = append(missing, err.Error())
	}
	if errors.Is(err, gpu.ErrNoDevices) {
		missing = append(missing, "no GPU is listed")
	}
	if len(missing) > 0 {
		r.Status = Fail
		r.Message = strings.Join(missing, "; ")
		r.Fix = "load the modules and create the nodes: nvidia-modprobe -u -c=0 (or modprobe nvidia-uvm), or run nvidia-persistenced"
		return r
	}
	var gpus []string
	for _, d := range inv.Devices {
		gpus = append(gpus, d.Node.Path)
	}
	r.Message = fmt.Sprintf("%d GPUs (%s) and %d control nodes", len(inv.Devices), strings.Join(gpus, ", "), len(inv.ControlNodes))
	return r
}

func checkNVML(inv *gpu.Inventory) Result {
	if inv.Source == gpu.SourceNVML {
		return Result{"nvml", OK, fmt.Sprintf("NVML lists %d GPUs", len(inv.Devices)), ""}
	}
	return Result{"nvml", Warn, "NVML is unavailable (" + inv.NVMLError + "): GPUs were read from /proc/driver/nvidia; MIG devices and NVIDIA_REQUIRE_ARCH/BRAND cannot be checked",
		"load the kernel module and check that libnvidia-ml.so.1 matches it"}
}

func checkLibraries(inv *gpu.Inventory) Result {
	var parts, missing []string
	for _, c := range []gpu.Capability{gpu.CapCompute, gpu.CapUtility, gpu.CapVideo, gpu.CapGraphics, gpu.CapDisplay, gpu.CapNGX} {
		n := 0
		for _, f := range inv.FilesFor(gpu.CapsOf(c)) {
			if f.Kind == gpu.KindLibrary {
				n++
			}
		}
		parts = append(parts, fmt.Sprintf("%s %d", c, n))
		if n == 0 && (c == gpu.CapCompute || c == gpu.CapUtility) {
			missing = append(missing, string(c))
		}
	}
	hasCUDA := slices.ContainsFunc(inv.Files, func(f gpu.File) bool { return f.SONAME == "libcuda.so.1" && f.Bits == 64 })
	r := Result{Check: "libraries", Status: OK, Message: "libraries per capability: " + strings.Join(parts, ", ")}
	if !hasCUDA {
		missing = append(missing, "libcuda.so.1")
	}
	if len(missing) > 0 {
		r.Status = Fail
		r.Message += "; missing: " + strings.Join(missing, ", ")
		r.Fix = "install the driver's user-space libraries of version " + inv.Driver.Version + " (Debian: libcuda1 libnvidia-ml1)"
	}
	return r
}

// checkSpecs looks for our kind in the CDI spec folders and checks that every host path a
// spec names still exists and that it names the running driver.
func checkSpecs(c Config, inv *gpu.Inventory) []Result {
	kind := c.Vendor + "/" + c.Class
	cache, err := cdi.NewCache(cdi.WithAutoRefresh(false), cdi.WithSpecDirs(c.SpecDirs...))
	if err != nil && cache == nil {
		return []Result{{"cdi spec", Fail, err.Error(), ""}}
	}
	out := checkConflicts(c.SpecDirs)
	var bad []string
	for p, errs := range cache.GetErrors() {
		for _, e := range errs {
			if strings.HasPrefix(e.Error(), "conflicting device") {
				continue // checkConflicts says which files and what to do
			}
			bad = append(bad, fmt.Sprintf("%s: %v", p, e))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		out = append(out, Result{"cdi spec", Fail, "invalid spec: " + strings.Join(bad, "; "), "regenerate it: nvbind cdi generate --output /var/run/cdi/"})
	}
	specs := cache.GetVendorSpecs(c.Vendor)
	var ours []*cdi.Spec
	for _, s := range specs {
		if s.GetClass() == c.Class {
			ours = append(ours, s)
		}
	}
	if len(ours) == 0 {
		return append(out, Result{"cdi spec", Warn, fmt.Sprintf("no %s spec in %s: Podman, Docker and nerdctl cannot use --device %s=...", kind, strings.Join(c.SpecDirs, ", "), kind),
			"nvbind cdi generate --output /var/run/cdi/ (or run nvbind cdi generate --watch, or nvbind nri --cdi-mode)"})
	}
	own := map[string]bool{}
	for _, dir := range c.SpecDirs {
		files, _ := spec.ScanDir(dir) // checkConflicts reported what could not be read
		for _, f := range files {
			own[f.Path] = f.Own
		}
	}
	for _, s := range ours {
		var stale []string
		for _, m := range s.ContainerEdits.Mounts {
			if _, err := os.Stat(m.HostPath); err != nil {
				stale = append(stale, m.HostPath)
			}
		}
		r := Result{Check: "cdi spec", Status: OK, Message: fmt.Sprintf("%s: %d devices, cdiVersion %s", s.GetPath(), len(s.Devices), s.Version)}
		switch {
		case len(stale) > 0:
			r.Status, r.Message = Fail, fmt.Sprintf("%s is stale: %d files it mounts are gone (first: %s)", s.GetPath(), len(stale), stale[0])
			r.Fix = "regenerate it after every driver change: nvbind cdi generate --output " + s.GetPath() + " (or keep nvbind cdi generate --watch running)"
		case inv != nil && inv.Driver.Version != "" && !mountsVersion(s, inv.Driver.Version):
			r.Status, r.Message = Fail, fmt.Sprintf("%s does not mount the running driver %s", s.GetPath(), inv.Driver.Version)
			r.Fix = "regenerate it: nvbind cdi generate --output " + s.GetPath()
		case inv != nil && len(s.Devices) > 0 && !hasDevice(s, len(inv.Devices)-1):
			r.Status, r.Message = Warn, fmt.Sprintf("%s lacks GPU %d of this host", s.GetPath(), len(inv.Devices)-1)
			r.Fix = "regenerate it: nvbind cdi generate --output " + s.GetPath()
		}
		if r.Status != OK && !own[s.GetPath()] {
			r.Fix = "nvbind did not write it: remove it and let nvbind write its own (nvbind cdi generate --output " + filepath.Dir(s.GetPath()) + "/), or regenerate it with the tool that wrote it"
		}
		if v := s.Version; r.Status == OK && version.Less("0.5.0", v) {
			r.Status = Warn
			r.Message += ": newer than 0.5.0, which Podman 4.3 (Debian 12) and containerd 1.7.0 reject"
			r.Fix = "let nvbind cdi generate write it: it uses the minimum version a spec needs"
		}
		out = append(out, r)
	}
	return out
}

// checkConflicts reports devices that two spec files of one folder define: the CDI
// library, and so every runtime, then refuses those devices, whoever wrote the files.
func checkConflicts(dirs []string) []Result {
	conf, err := spec.Conflicts(dirs)
	var out []Result
	if err != nil {
		out = append(out, Result{"cdi conflicts", Warn, "some spec files could not be read: " + err.Error(), "remove or fix them: runtimes skip them too"})
	}
	for _, cf := range conf {
		var own, foreign []string
		for _, f := range cf.Files {
			if f.Own {
				own = append(own, f.Path)
			} else {
				foreign = append(foreign, f.Path)
			}
		}
		all := append(append([]string(nil), own...), foreign...)
		names := cf.Devices
		if len(names) > 4 {
			names = append(names[:4:4], "...")
		}
		r := Result{Check: "cdi conflicts", Status: Fail,
			Message: fmt.Sprintf("%d specs in %s define %s (%s): runtimes refuse as conflicting the devices more than one defines (%d: %s=%s)",
				len(cf.Files), cf.Dir, cf.Kind, strings.Join(all, ", "), len(cf.Devices), cf.Kind, strings.Join(names, ", "))}
		switch {
		case len(foreign) == 0:
			r.Fix = fmt.Sprintf("all are nvbind's: nvbind cdi generate --output %s/ keeps one of them (or remove all but one)", cf.Dir)
		case len(own) == 0:
			r.Fix = "keep one: remove the others (rm " + strings.Join(all[1:], " ") + ")"
		default:
			r.Fix = "nvbind did not write " + strings.Join(foreign, ", ") + ": remove it to use nvbind's (rm " + strings.Join(foreign, " ") + "), or remove nvbind's"
		}
		out = append(out, r)
	}
	return out
}

// mountsVersion tells whether a spec mounts the files of a driver version: one of its
// libraries, or a driver layout of that version (<version>-<set>-<hash>).
func mountsVersion(s *cdi.Spec, version string) bool {
	for _, m := range s.ContainerEdits.Mounts {
		base := filepath.Base(m.HostPath)
		if strings.Contains(base, ".so."+version) || (layout.IsID(base) && strings.HasPrefix(base, version+"-")) {
			return true
		}
	}
	return false
}

func hasDevice(s *cdi.Spec, index int) bool {
	return s.GetDevice(fmt.Sprint(index)) != nil || s.GetDevice(fmt.Sprintf("gpu%d", index)) != nil
}

// maxConfig bounds what is read of a runtime's configuration file.
const maxConfig = 4 << 20

// readTOML decodes a TOML file into a generic map; a missing file is (nil, nil).
func readTOML(p string) (map[string]any, error) {
	data, err := fileio.ReadFile(p, maxConfig)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := toml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return m, nil
}

// lookup walks nested tables.
func lookup(m map[string]any, keys ...string) (any, bool) {
	var cur any = m
	for _, k := range keys {
		t, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = t[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// checkContainerd asks the running containerd when its socket answers, and reads its
// configuration file otherwise.
func checkContainerd(ctx context.Context, c Config) []Result {
	if _, err := os.Stat(c.ContainerdSocket); err == nil {
		config := c.ContainerdConfig
		if _, err := os.Stat(config); err != nil {
			config = "" // containerd's defaults
		}
		st, err := probeContainerd(ctx, c.ContainerdSocket, c.ContainerdBinary, config)
		if err == nil {
			return append(containerdResults(st, c.ContainerdSocket), legacyContainerd(c)...)
		}
		return append([]Result{{"containerd", Warn, err.Error(), "is containerd running? systemctl status containerd"}}, checkContainerdFile(c)...)
	}
	return checkContainerdFile(c)
}

// checkDevChar reports NVIDIA device nodes without a /dev/char link.
func checkDevChar(c Config, inv *gpu.Inventory) []Result {
	if c.DevRoot == "" {
		return nil
	}
	links := devchar.Links(inv)
	var missing []string
	for i, st := range devchar.Check(c.DevRoot, links) {
		if st != devchar.OK {
			missing = append(missing, links[i].Path)
		}
	}
	if len(missing) == 0 {
		return []Result{{"dev char links", OK, fmt.Sprintf("every NVIDIA device node has its /dev/char link (%d)", len(links)), ""}}
	}
	return []Result{{"dev char links", Warn, fmt.Sprintf("%d NVIDIA device nodes have no /dev/char link (%s): with systemd's cgroup driver, systemctl daemon-reload takes them from running containers (\"Failed to initialize NVML: Unknown Error\")",
		len(missing), strings.Join(missing, ", ")), "nvbind install --components dev-char (the nvbind-nri and nvbind-cdi-refresh services and the DaemonSet keep them)"}}
}

// isNVBindRuntime reports whether a runtime path configured under NVIDIA's name runs
// nvbind-runtime (nvbind install --as-nvidia links it).
func isNVBindRuntime(p string) bool {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return filepath.Base(p) == "nvbind-runtime"
}

// nvidiaRuntimePaths finds the paths of nvidia-container-runtime a configuration names.
func nvidiaRuntimePaths(v any) []string {
	var out []string
	switch t := v.(type) {
	case map[string]any:
		for _, x := range t {
			out = append(out, nvidiaRuntimePaths(x)...)
		}
	case []any:
		for _, x := range t {
			out = append(out, nvidiaRuntimePaths(x)...)
		}
	case string:
		if strings.Contains(t, "nvidia-container-runtime") {
			out = append(out, t)
		}
	}
	return out
}

func legacyContainerd(c Config) []Result {
	m, err := readTOML(c.ContainerdConfig)
	if err != nil || m == nil {
		return nil
	}
	paths := nvidiaRuntimePaths(m)
	if len(paths) == 0 {
		return nil
	}
	for _, p := range paths {
		if !isNVBindRuntime(p) {
			return []Result{legacyRuntime(c)}
		}
	}
	return []Result{{"nvidia runtime", OK, c.ContainerdConfig + " names nvidia-container-runtime, which is nvbind-runtime here", ""}}
}

func legacyRuntime(c Config) Result {
	return Result{"legacy runtime", Warn, c.ContainerdConfig + " still names NVIDIA's nvidia-container-runtime: containers through it get GPUs twice (its hook and nvbind) or with a different driver set",
		"nvbind install --components runtime --as-nvidia --prefix /usr (nvidia-container-runtime becomes nvbind-runtime), or remove the nvidia runtime from " + c.ContainerdConfig + "; restart containerd"}
}

// checkContainerdFile judges containerd's configuration file, for a containerd that is
// not running.
func checkContainerdFile(c Config) []Result {
	m, err := readTOML(c.ContainerdConfig)
	if err != nil {
		return []Result{{"containerd", Fail, err.Error(), "fix the TOML syntax"}}
	}
	if m == nil {
		return []Result{{"containerd", Info, c.ContainerdConfig + " not found: containerd is not configured here (its defaults enable NRI from 2.0)", ""}}
	}
	var out []Result
	version, _ := m["version"].(int64)
	nri, hasNRI := lookup(m, "plugins", "io.containerd.nri.v1.nri")
	if !hasNRI {
		nri, hasNRI = lookup(m, "plugins", "nri")
	}
	disabled := version < 3 // containerd 1.7 (config version 2) disables NRI by default
	socket := c.NRISocket
	if t, ok := nri.(map[string]any); hasNRI && ok {
		if d, ok := t["disable"].(bool); ok {
			disabled = d
		}
		if s, ok := t["socket_path"].(string); ok && s != "" {
			socket = s
		}
	}
	r := Result{Check: "containerd nri", Status: OK, Message: fmt.Sprintf("NRI is enabled in %s (socket %s)", c.ContainerdConfig, socket)}
	if disabled {
		r.Status, r.Message = Fail, "NRI is disabled in "+c.ContainerdConfig
		r.Fix = "set disable = false under [plugins.\"io.containerd.nri.v1.nri\"] and restart containerd (see manifests/runtime/)"
	} else if _, err := os.Stat(socket); err != nil {
		r.Status, r.Message = Warn, fmt.Sprintf("NRI is enabled in %s but %s does not exist: is containerd running?", c.ContainerdConfig, socket)
		r.Fix = "systemctl restart containerd"
	}
	out = append(out, r)
	if strings.Contains(fmt.Sprint(m), "nvidia-container-runtime") {
		out = append(out, legacyRuntime(c))
	}
	return out
}

func checkCRIO(c Config) []Result {
	var out []Result
	found, enabled := false, false
	var legacy string
	for _, p := range c.CRIOConfigs {
		m, err := readTOML(p)
		if err != nil {
			out = append(out, Result{"cri-o", Fail, err.Error(), "fix the TOML syntax"})
			continue
		}
		if m == nil {
			continue
		}
		found = true
		if v, ok := lookup(m, "crio", "nri", "enable_nri"); ok {
			enabled, _ = v.(bool)
		} else {
			enabled = true // on by default since CRI-O 1.30
		}
		if strings.Contains(fmt.Sprint(m), "nvidia-container-runtime") {
			legacy = p
		}
	}
	if !found {
		return out
	}
	if enabled {
		out = append(out, Result{"cri-o nri", OK, "NRI is enabled in CRI-O's configuration", ""})
	} else {
		out = append(out, Result{"cri-o nri", Fail, "NRI is disabled in CRI-O's configuration", "set enable_nri = true under [crio.nri] and restart crio"})
	}
	if legacy != "" {
		out = append(out, Result{"legacy runtime", Warn, legacy + " still names nvidia-container-runtime", "remove it and restart crio"})
	}
	return out
}

func checkDocker(c Config) []Result {
	data, err := fileio.ReadFile(c.DockerConfig, maxConfig)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []Result{{"docker", Warn, err.Error(), ""}}
	}
	var cfg struct {
		Runtimes       map[string]any  `json:"runtimes"`
		DefaultRuntime string          `json:"default-runtime"`
		Features       map[string]bool `json:"features"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return []Result{{"docker", Fail, fmt.Sprintf("%s: %v", c.DockerConfig, err), "fix the JSON"}}
	}
	var out []Result
	if rt, ok := cfg.Runtimes["nvidia"]; ok || cfg.DefaultRuntime == "nvidia" {
		entry, _ := rt.(map[string]any)
		path, _ := entry["path"].(string)
		if isNVBindRuntime(path) {
			out = append(out, Result{"nvidia runtime", OK, c.DockerConfig + ": the nvidia runtime is nvbind-runtime (" + path + ")", ""})
		} else {
			out = append(out, Result{"legacy runtime", Warn, c.DockerConfig + " still configures NVIDIA's nvidia runtime" + map[bool]string{true: " as the default", false: ""}[cfg.DefaultRuntime == "nvidia"],
				"nvbind install --enable docker-runtime --as-nvidia (the nvidia runtime becomes nvbind-runtime: --runtime=nvidia keeps working), or remove it and use --device nvidia.com/gpu=... with CDI"})
		}
	}
	if on, ok := cfg.Features["cdi"]; ok && !on {
		out = append(out, Result{"docker cdi", Fail, "CDI is turned off in " + c.DockerConfig, "set \"features\": {\"cdi\": true} and restart docker"})
	}
	return out
}

func checkPlugin(ctx context.Context, c Config) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.HealthURL, nil)
	if err != nil {
		return Result{"nvbind plugin", Fail, err.Error(), ""}
	}
	resp, err := c.HTTPClient.Do(req)
	if err != nil {
		return Result{"nvbind plugin", Warn, "nvbind nri is not running here (no answer at " + c.HealthURL + ")",
			"start it: systemctl enable --now nvbind-nri (hosts) or kubectl apply -k manifests/base (clusters); or use static CDI specs"}
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return Result{"nvbind plugin", Fail, "nvbind nri runs but is not registered with the runtime: " + strings.TrimSpace(string(body)),
			"check that the runtime has NRI enabled and that --socket names its NRI socket"}
	}
	return Result{"nvbind plugin", OK, "nvbind nri is registered with the runtime", ""}
}
