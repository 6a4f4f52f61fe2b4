package testutil

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// ContainerdConfig is what a test's private containerd differs in.
type ContainerdConfig struct {
	// Dir holds root/ and state/ of this containerd.
	Dir string
	// Socket is the API socket; NRISocket the NRI socket; PluginDir where pre-registered
	// NRI plugins and their configuration live.
	Socket, NRISocket, PluginDir string
	// PauseImage is the pinned sandbox image; CDIDir the CDI spec folder.
	PauseImage, CDIDir string
	// CNIConfDir, when set, enables pod networking with Debian's CNI plugins; without it
	// pods run in the host's network.
	CNIConfDir string
	// Extra is appended inside the NRI plugin's table (the default validator).
	Extra string
	// RuncBinary is the runc handler's BinaryName (default: runc in PATH); RuncOptions
	// are extra lines of the handler's own table (pod_annotations, ...).
	RuncBinary, RuncOptions string
	// Runtimes are further runtime handlers, as TOML tables.
	Runtimes string
}

// TOML is the configuration (version 3) of a private containerd with CRI, CDI, runc
// (Debian's, from PATH) and NRI.
func (c ContainerdConfig) TOML() string {
	runc := c.RuncBinary
	if runc == "" {
		runc, _ = exec.LookPath("runc")
	}
	cni := ""
	if c.CNIConfDir != "" {
		cni = fmt.Sprintf("  [plugins.'io.containerd.cri.v1.runtime'.cni]\n    bin_dirs = [\"/usr/lib/cni\"]\n    conf_dir = %q\n", c.CNIConfDir)
	}
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[4]q
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  enable_cdi = true
  cdi_spec_dirs = [%[5]q]
%[6]s  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
%[11]s      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[7]q
%[12]s[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = %[8]q
  plugin_path = %[9]q
  plugin_config_path = %[9]q
%[10]s`, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), c.Socket, c.PauseImage, c.CDIDir, cni,
		runc, c.NRISocket, c.PluginDir, c.Extra, c.RuncOptions, c.Runtimes)
}

// TOML17 is the configuration (version 2) of a private containerd 1.7 with CRI, CDI and
// runc, with NRI turned on by nri, the shipped snippet
// (manifests/runtime/containerd-1.7-nri.toml) as it is but for its paths: the NRI
// socket and plugin folders become this containerd's, and each of the three must be
// there. The snippet's top-level keys go before every table, its tables after this
// configuration's; Extra goes into its last table, which must be NRI's.
func (c ContainerdConfig) TOML17(nri string) (string, error) {
	if c.RuncOptions != "" || c.Runtimes != "" {
		return "", fmt.Errorf("TOML17 has no runc options or further runtimes")
	}
	runc := c.RuncBinary
	if runc == "" {
		runc, _ = exec.LookPath("runc")
	}
	var top, tables []string
	version, table := false, ""
	replaced := map[string]bool{}
	for _, line := range strings.Split(nri, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "[") {
			table = trimmed
		}
		k, v, ok := strings.Cut(trimmed, "=")
		k = strings.TrimSpace(k)
		switch {
		case table == "" && ok && k == "version":
			if strings.TrimSpace(v) != "2" {
				return "", fmt.Errorf("the containerd 1.7 snippet says version = %s, want 2", strings.TrimSpace(v))
			}
			version = true
			continue
		case table == `[plugins."io.containerd.nri.v1.nri"]` && ok && k == "socket_path":
			line, replaced[k] = fmt.Sprintf("  socket_path = %q", c.NRISocket), true
		case table == `[plugins."io.containerd.nri.v1.nri"]` && ok && (k == "plugin_path" || k == "plugin_config_path"):
			line, replaced[k] = fmt.Sprintf("  %s = %q", k, c.PluginDir), true
		}
		if table == "" {
			top = append(top, line)
		} else {
			tables = append(tables, line)
		}
	}
	if !version {
		return "", fmt.Errorf("the containerd 1.7 snippet lacks version = 2")
	}
	if len(replaced) != 3 {
		return "", fmt.Errorf("the containerd 1.7 snippet sets %d of socket_path, plugin_path and plugin_config_path in NRI's table: the test's containerd would use the host's", len(replaced))
	}
	if table != `[plugins."io.containerd.nri.v1.nri"]` {
		return "", fmt.Errorf("the containerd 1.7 snippet's last table is %s, not NRI's", table)
	}
	cni := ""
	if c.CNIConfDir != "" {
		cni = fmt.Sprintf("  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n    conf_dir = %q\n", c.CNIConfDir)
	}
	return fmt.Sprintf(`version = 2
%[8]s
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[4]q
  restrict_oom_score_adj = true
  enable_cdi = true
  cdi_spec_dirs = [%[5]q]
%[6]s  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %[7]q
%[9]s
%[10]s`, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), c.Socket, c.PauseImage, c.CDIDir, cni, runc,
		strings.Join(top, "\n"), strings.Join(tables, "\n"), c.Extra), nil
}
