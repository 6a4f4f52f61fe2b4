package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/testutil"
)

// runtimeConfig writes nvbind-runtime's configuration for a test driver root; socket is
// the edit service's ("" for none: nvbind-runtime-edit does every edit).
func runtimeConfig(t testing.TB, driverRoot, runtime, socket string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "runtime.toml")
	conf := "runtime = \"" + runtime + "\"\ndriver-root = \"" + driverRoot + "\"\ndev-root = \"" + driverRoot + "\"\nno-nvml = true\n" +
		"layout-dir = \"" + testLayouts(t) + "\"\nsocket = \"" + socket + "\"\n"
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// editService runs nvbind-runtime-edit serve (the one beside the front, as systemd's
// unit does) on socket, and returns a count of the edits it answered so far.
func editService(t testing.TB, front, socket string) (edits func() int) {
	t.Helper()
	var log lockedBuffer
	cmd := exec.Command(filepath.Join(filepath.Dir(front), "nvbind-runtime-edit"), "serve", "--socket", socket, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("edit service: %v\n%s", err, log.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edit service did not listen:\n%s", log.String())
		}
	}
	return func() int { return strings.Count(log.String(), "msg=edit ") }
}

// lockedBuffer is a bytes.Buffer a process writes to while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fixtureUUIDs are the GPU UUIDs of a driver root.
func fixtureUUIDs(t testing.TB, driverRoot string) []string {
	t.Helper()
	d, err := gpu.New(gpu.WithDriverRoot(driverRoot), gpu.WithDevRoot(driverRoot), gpu.WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, g := range inv.Devices {
		out = append(out, g.UUID)
	}
	return out
}

// probe prints what a GPU container has; it never fails, so containers without GPUs
// report too.
const probe = `for d in /dev/nvidiactl /dev/nvidia0 /dev/nvidia1; do test -c $d && echo NODE=$d; done;
ldconfig -p | grep 'libcuda.so.1 ' || echo NO-LIBCUDA; test -x /usr/bin/nvidia-smi && echo HAS-SMI; cuda-probe 2>&1 | head -1; true`

func nodesIn(out string) []string {
	var nodes []string
	for _, l := range strings.Split(out, "\n") {
		if n, ok := strings.CutPrefix(strings.TrimSpace(l), "NODE="); ok {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

// TestDockerRuntime runs Docker Engine 29 with nvbind-runtime installed by `nvbind install
// --enable docker-runtime --as-nvidia` into its daemon.json, and NVIDIA's env contract
// through the Engine API: `docker run --runtime=nvidia -e NVIDIA_VISIBLE_DEVICES=0` (and
// Compose's runtime:, the same field), --runtime=nvbind, GPUs by index, UUID, all, none
// and void, capabilities, an unmet requirement, a privileged container and a plain one.
func TestDockerRuntime(t *testing.T) {
	testutil.RequiresRoot(t)
	driverRoot := testutil.DriverRoot(t, "debian-535")
	bin := testutil.BuildNVBind(t, t.TempDir())
	prefix := filepath.Join(t.TempDir(), "nvbind")
	// GPU containers are edited by the edit service, as where nvbind install enables its
	// socket; TestRuncWithRuntimeWrapper covers nvbind-runtime-edit doing it itself
	socket := filepath.Join(t.TempDir(), "run", "runtime.sock")
	config := runtimeConfig(t, driverRoot, filepath.Join(dockerTools(t), "runc"), socket)
	d := startDockerd(t, bin, driverRoot, func(conf string, env *[]string) {
		out, err := exec.Command(bin, "install", "--components", "runtime", "--prefix", prefix, "--enable", "docker-runtime",
			"--as-nvidia", "--docker-config", conf).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "runtimes nvbind, nvidia") {
			t.Fatalf("nvbind install: %v\n%s", err, out)
		}
		*env = append(*env, "NVBIND_RUNTIME_CONFIG="+config)
	})
	d.loadBusybox()
	edits := editService(t, filepath.Join(prefix, "bin", "nvbind-runtime"), socket)
	defer func() {
		if n := edits(); n < 9 && !t.Failed() {
			t.Errorf("the edit service answered %d edits, want one per container that asks (9)", n)
		}
	}()
	uuids := fixtureUUIDs(t, driverRoot)
	libcuda := libcudaIn("compute+utility") // NVIDIA_DRIVER_CAPABILITIES' default
	for _, tc := range []struct {
		name, runtime string
		env           []string
		privileged    bool
		nodes         []string
		wants, not    []string
		fails         []string
	}{
		{name: "the seed's command: --runtime=nvidia -e NVIDIA_VISIBLE_DEVICES=0", runtime: "nvidia", env: []string{"NVIDIA_VISIBLE_DEVICES=0"},
			nodes: []string{"/dev/nvidiactl", "/dev/nvidia0"}, wants: []string{libcuda, "HAS-SMI", "cuda-probe: loaded libcuda.so.1"}},
		{name: "--runtime=nvbind, GPU by UUID", runtime: "nvbind", env: []string{"NVIDIA_VISIBLE_DEVICES=" + uuids[1]},
			nodes: []string{"/dev/nvidiactl", "/dev/nvidia1"}, wants: []string{libcuda, "HAS-SMI"}},
		{name: "all", runtime: "nvbind", env: []string{"NVIDIA_VISIBLE_DEVICES=all"},
			nodes: []string{"/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"}, wants: []string{libcuda}},
		{name: "none: the driver without GPUs", runtime: "nvidia", env: []string{"NVIDIA_VISIBLE_DEVICES=none"},
			nodes: []string{"/dev/nvidiactl"}, wants: []string{libcuda}},
		{name: "void: nothing", runtime: "nvidia", env: []string{"NVIDIA_VISIBLE_DEVICES=void"}, wants: []string{"NO-LIBCUDA"}, not: []string{"HAS-SMI"}},
		{name: "utility only", runtime: "nvbind", env: []string{"NVIDIA_VISIBLE_DEVICES=1", "NVIDIA_DRIVER_CAPABILITIES=utility"},
			nodes: []string{"/dev/nvidiactl", "/dev/nvidia1"}, wants: []string{"HAS-SMI", "NO-LIBCUDA"}},
		{name: "privileged", runtime: "nvidia", env: []string{"NVIDIA_VISIBLE_DEVICES=0"}, privileged: true,
			wants: []string{libcuda, "HAS-SMI", "cuda-probe: loaded libcuda.so.1"}},
		{name: "plain container, same runtime", runtime: "nvbind", wants: []string{"NO-LIBCUDA"}, not: []string{"HAS-SMI"}},
		{name: "unmet NVIDIA_REQUIRE_CUDA", runtime: "nvidia", env: []string{"NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=99.0"},
			fails: []string{"nvbind-runtime", "NVIDIA_REQUIRE_CUDA", "cuda>=99.0", "12.2"}},
		{name: "a GPU the node lacks", runtime: "nvbind", env: []string{"NVIDIA_VISIBLE_DEVICES=7"},
			fails: []string{"env NVIDIA_VISIBLE_DEVICES", `GPU \"7\" is not on this node`, "valid: all, none, 0, 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := d.runContainer(container{script: probe, runtime: tc.runtime, env: tc.env, privileged: tc.privileged})
			if len(tc.fails) > 0 {
				if err == nil {
					t.Fatalf("created:\n%s", out)
				}
				for _, w := range tc.fails {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q: %v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if nodes := nodesIn(out); tc.nodes != nil && !slices.Equal(nodes, tc.nodes) || tc.nodes == nil && !tc.privileged && len(nodes) > 0 {
				t.Errorf("nodes %v, want %v\n%s", nodes, tc.nodes, out)
			}
			for _, w := range tc.wants {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestRuncWithRuntimeWrapper runs nvbind-runtime in place of runc on a bundle whose
// config.json asks with NVIDIA's env contract, as any caller of an OCI runtime does.
func TestRuncWithRuntimeWrapper(t *testing.T) {
	testutil.RequiresRoot(t)
	runc := testutil.RequiresCommand(t, "runc")
	driverRoot := testutil.DriverRoot(t, "debian-535")
	bin := testutil.BuildNVBind(t, t.TempDir())
	front := testutil.RuntimeBinary(bin)
	socket := filepath.Join(t.TempDir(), "run", "runtime.sock")
	edits := editService(t, front, socket)
	for _, tc := range []struct {
		env, socket string
		nodes       []string
	}{
		{"NVIDIA_VISIBLE_DEVICES=1", "", []string{"/dev/nvidiactl", "/dev/nvidia1"}},
		{"", "", nil},
		{"NVIDIA_VISIBLE_DEVICES=0", socket, []string{"/dev/nvidiactl", "/dev/nvidia0"}},
		{"", socket, nil},
	} {
		t.Setenv("NVBIND_RUNTIME_CONFIG", runtimeConfig(t, driverRoot, runc, tc.socket))
		served := edits()
		bundle := runcBundle(t, runc, "", "", probe)
		if tc.env != "" {
			setEnv(t, bundle, tc.env)
		}
		before, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
		out := runcRun(t, front, bundle)
		if nodes := nodesIn(out); !slices.Equal(nodes, tc.nodes) {
			t.Errorf("%q: nodes %v, want %v\n%s", tc.env, nodes, tc.nodes, out)
		}
		after, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
		if tc.env == "" && string(after) != string(before) {
			t.Error("a plain container's config.json was rewritten")
		}
		if tc.env != "" && !strings.Contains(out, "cuda-probe: loaded libcuda.so.1") {
			t.Errorf("no libcuda:\n%s", out)
		}
		if want := btoi(tc.socket != "" && tc.env != ""); edits()-served != want {
			t.Errorf("%q, socket %q: the edit service answered %d edits, want %d", tc.env, tc.socket, edits()-served, want)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// setEnv adds an env entry to a bundle's config.json.
func setEnv(t testing.TB, bundle, kv string) {
	t.Helper()
	p := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	proc := s["process"].(map[string]any)
	proc["env"] = append(proc["env"].([]any), kv)
	data, _ = json.MarshalIndent(s, "", "  ")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// patchDaemonJSON merges keys into a daemon.json: objects key by key, other values
// replaced.
func patchDaemonJSON(t testing.TB, p string, patch map[string]any) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range patch {
		if sub, ok := v.(map[string]any); ok {
			old, _ := m[k].(map[string]any)
			if old == nil {
				old = map[string]any{}
			}
			for sk, sv := range sub {
				old[sk] = sv
			}
			v = old
		}
		m[k] = v
	}
	data, _ = json.Marshal(m)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
