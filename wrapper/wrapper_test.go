package wrapper

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/driverroot"
)

func TestParseCall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want Call
	}{
		{"containerd's shim", []string{"--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json", "--log-format", "json", "--systemd-cgroup",
			"create", "--bundle", "/b", "--pid-file", "/b/init.pid", "--no-pivot", "abc"}, Call{Command: "create", Bundle: "/b", Log: "/b/log.json", LogFormat: "json", ID: "abc", PidFile: "/b/init.pid"}},
		{"docker", []string{"--root", "/var/run/docker/runtime-runc/moby", "--log", "/l", "--log-format", "json", "create", "--bundle", "/x",
			"--pid-file", "/x/init.pid", "--console-socket", "/tmp/c.sock", "id"}, Call{Command: "create", Bundle: "/x", Log: "/l", LogFormat: "json", ID: "id", PidFile: "/x/init.pid"}},
		{"short and inline flags", []string{"--log=/l", "run", "-b", "/y", "--detach", "id"}, Call{Command: "run", Bundle: "/y", Log: "/l", ID: "id"}},
		{"inline bundle", []string{"create", "--bundle=/z", "--preserve-fds", "2", "id"}, Call{Command: "create", Bundle: "/z", ID: "id"}},
		{"single-dash long flag", []string{"create", "-bundle", "/w", "id"}, Call{Command: "create", Bundle: "/w", ID: "id"}},
		{"inline pid file", []string{"create", "--pid-file=p", "id"}, Call{Command: "create", ID: "id", PidFile: "p"}},
		{"two positional arguments name no ID", []string{"create", "id", "other"}, Call{Command: "create"}},
		{"bundle defaults to the current folder", []string{"create", "id"}, Call{Command: "create", ID: "id"}},
		{"other commands are not read", []string{"--root", "/r", "delete", "--force", "-b", "/nope", "id"}, Call{Command: "delete"}},
		{"no command", []string{"--version"}, Call{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := ParseCall(tc.args); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// bundle writes a config.json like the one containerd's CRI writes, with the env and
// annotations given, and returns the bundle folder.
func bundle(t testing.TB, env []string, ann map[string]string, mutate ...func(*oci.Spec)) string {
	t.Helper()
	dir := t.TempDir()
	s := oci.Spec{Version: oci.Version, Root: &oci.Root{Path: "rootfs"}, Annotations: ann,
		Process: &oci.Process{Args: []string{"sh"}, Cwd: "/", Env: append([]string{"PATH=/usr/bin:/bin"}, env...)},
		Mounts:  []oci.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux: &oci.Linux{Resources: &oci.LinuxResources{Devices: []oci.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
			Namespaces: []oci.LinuxNamespace{{Type: oci.PIDNamespace}, {Type: oci.IPCNamespace}, {Type: oci.UTSNamespace}, {Type: oci.MountNamespace}}}}
	for _, m := range mutate {
		m(&s)
	}
	data, err := json.MarshalIndent(&s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readSpec(t *testing.T, dir string) oci.Spec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s oci.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func testConfig(root driverroot.Root, mode string) Config {
	// one mount per file: unit tests mount nothing (the layouts are tested end to end)
	c := Config{Mode: mode, DriverRoot: root.Path, DevRoot: root.Path, HookPath: "/usr/local/bin/nvbind-hook", NoNVML: true, Layout: "files"}
	_ = c.check()
	return c
}

func envOf(s oci.Spec, key string) string {
	for _, e := range s.Process.Env {
		if k, v, _ := strings.Cut(e, "="); k == key {
			return v
		}
	}
	return ""
}

func devicePaths(s oci.Spec) []string {
	var out []string
	for _, d := range s.Linux.Devices {
		out = append(out, d.Path)
	}
	slices.Sort(out)
	return out
}

// TestInject: a container that asks with the env contract gets exactly the edits of the
// one edit model (request.Edits), applied to config.json.
func TestInject(t *testing.T) {
	t.Parallel()
	root := driverroot.Open(t, "debian-535")
	for _, tc := range []struct {
		name  string
		env   []string
		ann   map[string]string
		nodes []string
		caps  string
	}{
		{"GPU by index", []string{"NVIDIA_VISIBLE_DEVICES=1"}, nil,
			[]string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia1", "/dev/nvidiactl"}, "compute,utility"},
		{"all, every capability", []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"}, nil,
			[]string{"/dev/dri/card0", "/dev/dri/card1", "/dev/dri/renderD128", "/dev/dri/renderD129", "/dev/nvidia-modeset", "/dev/nvidia-uvm",
				"/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"}, "all"},
		{"none: the driver without GPUs", []string{"NVIDIA_VISIBLE_DEVICES=none"}, nil,
			[]string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidiactl"}, "compute,utility"},
		{"a pod annotation passed through by the runtime handler", nil,
			map[string]string{criContainerName: "cuda", "gpus.nvbind.io/container.cuda": "0", "capabilities.nvbind.io/pod": "utility"},
			[]string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidiactl"}, "utility"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := bundle(t, tc.env, tc.ann)
			cfg := testConfig(root, ModeInject)
			if err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, cfg, root.Options()...); err != nil {
				t.Fatal(err)
			}
			s := readSpec(t, dir)
			if got := devicePaths(s); !slices.Equal(got, tc.nodes) {
				t.Errorf("devices %v, want %v", got, tc.nodes)
			}
			if got := envOf(s, request.EnvDriverCapabilities); got != tc.caps {
				t.Errorf("NVIDIA_DRIVER_CAPABILITIES=%q, want %q", got, tc.caps)
			}
			if envOf(s, request.EnvVisibleDevices) != "void" && len(tc.env) > 0 {
				t.Errorf("NVIDIA_VISIBLE_DEVICES=%q: a second runtime would inject again", envOf(s, request.EnvVisibleDevices))
			}
			// exactly the one edit model's mounts and hook
			want := editsFor(t, root, tc.env, tc.ann, cfg)
			var mounts []string
			for _, m := range s.Mounts[1:] {
				mounts = append(mounts, m.Destination+"<-"+m.Source)
			}
			var wantMounts []string
			for _, m := range want.Mounts {
				wantMounts = append(wantMounts, m.Path+"<-"+m.HostPath)
			}
			slices.Sort(mounts)
			slices.Sort(wantMounts)
			if !slices.Equal(mounts, wantMounts) || len(mounts) < 5 {
				t.Errorf("mounts differ from the edit model's:\ngot  %v\nwant %v", mounts, wantMounts)
			}
			if s.Hooks == nil || len(s.Hooks.CreateRuntime) != 1 || s.Hooks.CreateRuntime[0].Path != cfg.HookPath ||
				!slices.Equal(s.Hooks.CreateRuntime[0].Args, want.Hooks[0].Args) {
				t.Errorf("hooks %+v", s.Hooks)
			}
			for _, d := range s.Linux.Devices {
				if !slices.ContainsFunc(s.Linux.Resources.Devices, func(r oci.LinuxDeviceCgroup) bool {
					return r.Allow && r.Major != nil && *r.Major == d.Major && r.Minor != nil && *r.Minor == d.Minor
				}) {
					t.Errorf("no device cgroup rule for %s", d.Path)
				}
			}
		})
	}
}

func editsFor(t *testing.T, root driverroot.Root, env []string, ann map[string]string, cfg Config) spec.Edits {
	t.Helper()
	d, err := gpu.New(root.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	in := request.Input{Container: ann[criContainerName], PodAnnotations: ann, Annotations: ann, Env: env}
	req, err := request.Parse(in, request.Options{Kind: "nvidia.com/gpu", EnvRequests: true})
	if err != nil || req == nil {
		t.Fatal(req, err)
	}
	r := request.NewResolver(inv)
	targets, err := r.Resolve(req)
	if err != nil {
		t.Fatal(err)
	}
	so, err := cfg.specOptions()
	if err != nil {
		t.Fatal(err)
	}
	e, err := request.Edits(inv, targets, req.Caps, so)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestLeftAlone: containers that ask for nothing, or that nvbind's NRI plugin or a CDI
// runtime already served, keep config.json byte for byte.
func TestLeftAlone(t *testing.T) {
	t.Parallel()
	root := driverroot.Open(t, "debian-535")
	for _, tc := range []struct {
		name string
		env  []string
		ann  map[string]string
		mode string
	}{
		{"plain container", nil, nil, ModeInject},
		{"void", []string{"NVIDIA_VISIBLE_DEVICES=void"}, nil, ModeInject},
		{"empty", []string{"NVIDIA_VISIBLE_DEVICES="}, nil, ModeInject},
		{"handled by the NRI plugin", []string{"NVIDIA_VISIBLE_DEVICES=0"}, map[string]string{request.AnnotationHandled: "injected"}, ModeInject},
		{"guard: handled by the NRI plugin", []string{"NVIDIA_VISIBLE_DEVICES=0"}, map[string]string{request.AnnotationHandled: "injected"}, ModeGuard},
		{"guard: plain container", nil, map[string]string{criContainerName: "c"}, ModeGuard},
		{"another vendor's CDI annotation", nil, map[string]string{"cdi.k8s.io/x": "vendor.com/fpga=0"}, ModeInject},
		{"guard: a pod's sandbox with the pod's annotations", nil, map[string]string{criContainerType: "sandbox", "gpus.nvbind.io": "0"}, ModeGuard},
		{"a pod's sandbox (CRI-O)", nil, map[string]string{crioContainerType: "sandbox", "gpus.nvbind.io": "0"}, ModeInject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := bundle(t, tc.env, tc.ann)
			before, _ := os.ReadFile(filepath.Join(dir, "config.json"))
			if err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, testConfig(root, tc.mode), root.Options()...); err != nil {
				t.Fatal(err)
			}
			if after, _ := os.ReadFile(filepath.Join(dir, "config.json")); string(after) != string(before) {
				t.Fatal("config.json changed")
			}
		})
	}
	t.Run("already injected from nvbind's CDI spec", func(t *testing.T) {
		t.Parallel()
		env := []string{"NVIDIA_VISIBLE_DEVICES=0"}
		dir := bundle(t, env, nil)
		cfg := testConfig(root, ModeInject)
		if err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, cfg, root.Options()...); err != nil {
			t.Fatal(err)
		}
		// what a CDI runtime leaves: every node and mount, and the request still in env
		s := readSpec(t, dir)
		s.Process.Env = append(s.Process.Env, "NVIDIA_VISIBLE_DEVICES=0")
		data, _ := json.Marshal(&s)
		_ = os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600)
		if err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, cfg, root.Options()...); err != nil {
			t.Fatal(err)
		}
		if after, _ := os.ReadFile(filepath.Join(dir, "config.json")); string(after) != string(data) {
			t.Fatal("config.json changed")
		}
	})
}

// TestPrivileged: a privileged container has every host device already, but not the
// driver's files: it gets them.
func TestPrivileged(t *testing.T) {
	t.Parallel()
	root := driverroot.Open(t, "debian-535")
	dir := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil, func(s *oci.Spec) {
		for _, p := range []string{"/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
			s.Linux.Devices = append(s.Linux.Devices, oci.LinuxDevice{Path: p, Type: "c", Major: 195, Minor: 1})
		}
	})
	if err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, testConfig(root, ModeInject), root.Options()...); err != nil {
		t.Fatal(err)
	}
	s := readSpec(t, dir)
	if !slices.ContainsFunc(s.Mounts, func(m oci.Mount) bool { return strings.HasSuffix(m.Destination, "/libcuda.so.535.261.03") }) {
		t.Fatalf("no libcuda mount: %+v", s.Mounts)
	}
	if s.Hooks == nil || len(s.Hooks.CreateRuntime) != 1 {
		t.Fatalf("no hook: %+v", s.Hooks)
	}
}

// TestErrorsLeaveConfigUntouched: a bad request fails create with a message naming the
// variable, the value and the choices, and config.json stays as it was.
func TestErrorsLeaveConfigUntouched(t *testing.T) {
	t.Parallel()
	root := driverroot.Open(t, "debian-535")
	for _, tc := range []struct {
		name  string
		env   []string
		mode  string
		wants []string
		is    error
	}{
		{"GPU the node lacks", []string{"NVIDIA_VISIBLE_DEVICES=7"}, ModeInject, []string{"env NVIDIA_VISIBLE_DEVICES", `"7"`, "valid: all, none, 0, 1"}, request.ErrUnknownDevice},
		{"bad selector", []string{"NVIDIA_VISIBLE_DEVICES=zero"}, ModeInject, []string{"NVIDIA_VISIBLE_DEVICES", `"zero"`, "valid:"}, nil},
		{"bad capability", []string{"NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,warp"}, ModeInject,
			[]string{"NVIDIA_DRIVER_CAPABILITIES", "warp", "compute"}, nil},
		{"unmet requirement", []string{"NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_DRIVER=driver>=999"}, ModeInject,
			[]string{"NVIDIA_REQUIRE_DRIVER", "driver>=999", "535.261.03"}, request.ErrUnmetRequirement},
		{"guard: the NRI plugin did not handle it", []string{"NVIDIA_VISIBLE_DEVICES=0"}, ModeGuard, []string{"asks for GPUs (env)", "refused"}, ErrUnhandled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := bundle(t, tc.env, nil)
			before, _ := os.ReadFile(filepath.Join(dir, "config.json"))
			err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, testConfig(root, tc.mode), root.Options()...)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if after, _ := os.ReadFile(filepath.Join(dir, "config.json")); string(after) != string(before) {
				t.Fatal("config.json changed")
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Fatalf("the bundle holds %d files: a temp file was left", len(entries))
			}
		})
	}
	t.Run("guard: required plugin", func(t *testing.T) {
		t.Parallel()
		dir := bundle(t, nil, map[string]string{criContainerName: "c", request.AnnotationRequiredPlugins + "/container.c": `["nvbind"]`})
		err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, testConfig(root, ModeGuard), root.Options()...)
		if !errors.Is(err, ErrUnhandled) || !strings.Contains(err.Error(), "required plugin") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a field this build does not know", func(t *testing.T) {
		t.Parallel()
		dir := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
		p := filepath.Join(dir, "config.json")
		data, _ := os.ReadFile(p)
		data = []byte(strings.Replace(string(data), `"ociVersion"`, `"futureField": {"x": 1}, "ociVersion"`, 1))
		_ = os.WriteFile(p, data, 0o600)
		err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, testConfig(root, ModeInject), root.Options()...)
		if err == nil || !strings.Contains(err.Error(), "futureField") || !strings.Contains(err.Error(), "not rewritten") {
			t.Fatalf("err = %v", err)
		}
		if after, _ := os.ReadFile(p); string(after) != string(data) {
			t.Fatal("config.json changed")
		}
	})
}

// TestStageable: the service runs the steps of a container with a mount namespace of its
// own, none of the user kind, and a cgroup path that names its id as the process check
// reads it; others keep the hook.
func TestStageable(t *testing.T) {
	t.Parallel()
	type ns = struct{ Type, Path string }
	for _, tc := range []struct {
		name   string
		ns     []ns
		cgroup string
		want   bool
	}{
		{"runc's default cgroup", []ns{{"pid", ""}, {"mount", ""}}, "", true},
		{"cgroupfs", []ns{{"mount", ""}}, "/docker/abc", true},
		{"systemd", []ns{{"mount", ""}}, "system.slice:docker:abc", true},
		{"a scope", []ns{{"mount", ""}}, "/kubepods.slice/cri-containerd-abc.scope", true},
		{"the id inside another name", []ns{{"mount", ""}}, "/docker/xabcx", false},
		{"systemd, another id", []ns{{"mount", ""}}, "system.slice:docker:abcd", false},
		{"the host's mounts", []ns{{"pid", ""}}, "", false},
		{"a mount namespace joined", []ns{{"mount", "/proc/1/ns/mnt"}}, "", false},
		{"a user namespace", []ns{{"mount", ""}, {"user", ""}}, "", false},
	} {
		var c container
		c.Linux = &struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
			CgroupsPath string `json:"cgroupsPath"`
		}{CgroupsPath: tc.cgroup}
		for _, n := range tc.ns {
			c.Linux.Namespaces = append(c.Linux.Namespaces, struct {
				Type string `json:"type"`
				Path string `json:"path"`
			}{n.Type, n.Path})
		}
		if got := c.stageable("abc"); got != tc.want {
			t.Errorf("%s: stageable %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	for _, tc := range []struct {
		name, file, wantErr string
	}{
		{"defaults", "", ""},
		{"guard", "mode = \"guard\"\nruntime = \"/usr/bin/runc\"\n", ""},
		{"unknown key", "moed = \"guard\"\n", "unknown key"},
		{"bad mode", "mode = \"inject-all\"\n", `mode "inject-all": valid: inject, guard`},
		{"relative root", "driver-root = \"run/nvidia\"\n", "not an absolute path"},
		{"steps by the hook", "stage = \"hook\"\n", ""},
		{"bad stage", "stage = \"plugin\"\n", `stage "plugin": valid: auto, hook`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "runtime.toml")
			if err := os.WriteFile(p, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv(EnvConfig, p)
			c, _, err := LoadConfig()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Mode == "" || c.DriverRoot != "/" || c.EnvRequests == nil || !*c.EnvRequests || c.Stage == "" {
				t.Fatalf("defaults not filled: %+v", c)
			}
		})
	}
}

// TestGuardName: run as nvbind-guard the wrapper guards, whatever the configuration says.
func TestGuardName(t *testing.T) {
	p := filepath.Join(t.TempDir(), "runtime.toml")
	if err := os.WriteFile(p, []byte("mode = \"inject\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvConfig, p)
	for name, want := range map[string]string{"/opt/nvbind/bin/nvbind-guard": ModeGuard, "nvbind-runtime": ModeInject,
		"/usr/bin/nvidia-container-runtime": ModeInject} {
		c, err := configFor(name)
		if err != nil || c.Mode != want {
			t.Errorf("%s: mode %q, %v; want %q", name, c.Mode, err, want)
		}
	}
}

// BenchmarkPrepare times the edit of one config.json in process (discovery, request,
// edits, the write), without the process start around it: a GPU container asking for
// every GPU and capability.
func BenchmarkPrepare(b *testing.B) {
	root := driverroot.Open(b, "debian-535")
	cfg := Config{Mode: ModeInject, DriverRoot: root.Path, DevRoot: root.Path, HookPath: "/usr/local/bin/nvbind-hook", NoNVML: true, Layout: "files"}
	_ = cfg.check()
	dir := b.TempDir()
	s := oci.Spec{Version: oci.Version, Root: &oci.Root{Path: "rootfs"}, Process: &oci.Process{Args: []string{"sh"}, Cwd: "/",
		Env: []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"}}, Linux: &oci.Linux{}}
	data, _ := json.Marshal(&s)
	p := filepath.Join(dir, "config.json")
	for b.Loop() {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			b.Fatal(err)
		}
		if err := Prepare(context.Background(), Call{Command: "create", Bundle: dir}, cfg, root.Options()...); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLockBundle: one edit of a bundle at a time; a second waits, and gives up when its
// context ends; the lock does not survive exec.
func TestLockBundle(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := lockBundle(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if flags, err := unix.FcntlInt(first.Fd(), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("the lock's fd flags %#x, %v", flags, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := lockBundle(ctx, dir); err == nil || !strings.Contains(err.Error(), "held its lock") {
		t.Fatalf("a second lock: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		second, err := lockBundle(context.Background(), dir)
		if err == nil {
			_ = second.Close()
		}
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	_ = first.Close()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if _, err := lockBundle(context.Background(), filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a missing bundle: %v", err)
	}
}
