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
// socket and plugin folders become this containerd's.
func (c ContainerdConfig) TOML17(nri string) (string, error) {
	runc := c.RuncBinary
	if runc == "" {
		runc, _ = exec.LookPath("runc")
	}
	var body []string
	version := false
	for _, line := range strings.Split(nri, "\n") {
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		switch {
		case ok && k == "version" && strings.TrimSpace(v) == "2":
			version = true
			continue
		case ok && k == "socket_path":
			line = fmt.Sprintf("  socket_path = %q", c.NRISocket)
		case ok && (k == "plugin_path" || k == "plugin_config_path"):
			line = fmt.Sprintf("  %s = %q", k, c.PluginDir)
		}
		body = append(body, line)
	}
	if !version {
		return "", fmt.Errorf("the containerd 1.7 snippet lacks version = 2")
	}
	cni := ""
	if c.CNIConfDir != "" {
		cni = fmt.Sprintf("  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n    conf_dir = %q\n", c.CNIConfDir)
	}
	return fmt.Sprintf(`version = 2
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
%[8]s
%[9]s`, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), c.Socket, c.PauseImage, c.CDIDir, cni, runc,
		strings.Join(body, "\n"), c.Extra), nil
}
