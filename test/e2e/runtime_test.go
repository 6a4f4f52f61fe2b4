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
// unit does) on socket, and returns a count of the edits it answered so far, and one of
// the containers it ran the driver's steps on without an error.
func editService(t testing.TB, front, socket string) (edits, steps func() int) {
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
	return func() int { return strings.Count(log.String(), "msg=edit ") },
		func() int {
			n := 0
			for line := range strings.Lines(log.String()) {
				if strings.Contains(line, " msg=steps ") && strings.HasSuffix(line, " error=<nil>\n") {
					n++
				}
			}
			return n
		}
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
	edits, steps := editService(t, filepath.Join(prefix, "bin", "nvbind-runtime"), socket)
	defer func() {
		if n := edits(); n < 9 && !t.Failed() {
			t.Errorf("the edit service answered %d edits, want one per container that asks (9)", n)
		}
		// the six containers that get the driver get its steps from the service, with no
		// hook process: Docker's shim creates with --pid-file
		if n := steps(); n != 6 && !t.Failed() {
			t.Errorf("the edit service ran the driver's steps on %d containers, want 6", n)
		}
	}()
	uuids := fixtureUUIDs(t, driverRoot)
	libcuda := libcudaIn("compute+utility") // NVIDIA_DRIVER_CAPABILITIES' default
	for _, tc := range []struct {
		name, runtime string
		env           []string
		reqs          []deviceRequest
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
		// a CDI device Docker injects from nvbind's spec: the spec's hook runs, the service
		// leaves it as it is
		{name: "CDI device through the runtime: the spec's hook", runtime: "nvbind",
			reqs:  []deviceRequest{{Driver: "cdi", DeviceIDs: []string{"nvidia.com/gpu=1"}}},
			nodes: []string{"/dev/nvidiactl", "/dev/nvidia1"}, wants: []string{libcudaIn("all"), "HAS-SMI", "cuda-probe: loaded libcuda.so.1"}},
		{name: "unmet NVIDIA_REQUIRE_CUDA", runtime: "nvidia", env: []string{"NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=99.0"},
			fails: []string{"nvbind-runtime", "NVIDIA_REQUIRE_CUDA", "cuda>=99.0", "12.2"}},
		{name: "a GPU the node lacks", runtime: "nvbind", env: []string{"NVIDIA_VISIBLE_DEVICES=7"},
			fails: []string{"env NVIDIA_VISIBLE_DEVICES", `GPU \"7\" is not on this node`, "valid: all, none, 0, 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := d.runContainer(container{script: probe, runtime: tc.runtime, env: tc.env, reqs: tc.reqs, privileged: tc.privileged})
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
	edits, steps := editService(t, front, socket)
	for _, tc := range []struct {
		env, socket string
		nodes       []string
		// createStart: runc create with --pid-file, then runc start, as containerd's shim
		// and Docker's run a runtime: the service runs the driver's steps, no hook
		createStart bool
	}{
		{"NVIDIA_VISIBLE_DEVICES=1", "", []string{"/dev/nvidiactl", "/dev/nvidia1"}, false},
		{"", "", nil, false},
		{"NVIDIA_VISIBLE_DEVICES=0", socket, []string{"/dev/nvidiactl", "/dev/nvidia0"}, false},
		{"", socket, nil, false},
		{"NVIDIA_VISIBLE_DEVICES=1", socket, []string{"/dev/nvidiactl", "/dev/nvidia1"}, true},
		{"NVIDIA_VISIBLE_DEVICES=1", "", []string{"/dev/nvidiactl", "/dev/nvidia1"}, true},
	} {
		t.Setenv("NVBIND_RUNTIME_CONFIG", runtimeConfig(t, driverRoot, runc, tc.socket))
		served, stepped := edits(), steps()
		bundle := runcBundle(t, runc, "", "", probe)
		if tc.env != "" {
			setEnv(t, bundle, tc.env)
		}
		before, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
		var out string
		if tc.createStart {
			out = runcCreateStart(t, front, runc, bundle)
		} else {
			out = runcRun(t, front, bundle)
		}
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
		// the service's create of a GPU container gets the driver's steps from the service,
		// and config.json names no hook; nvbind-runtime-edit's, and runc run, the hook
		staged := tc.createStart && tc.socket != "" && tc.env != ""
		if got := steps() - stepped; got != btoi(staged) {
			t.Errorf("%q, socket %q: the service ran the steps %d times, want %d", tc.env, tc.socket, got, btoi(staged))
		}
		if tc.env != "" {
			var s struct {
				Hooks struct {
					CreateRuntime []json.RawMessage `json:"createRuntime"`
				} `json:"hooks"`
			}
			_ = json.Unmarshal(after, &s)
			if hooks := len(s.Hooks.CreateRuntime); hooks != 1-btoi(staged) {
				t.Errorf("%q, socket %q: config.json names %d hooks, want %d", tc.env, tc.socket, hooks, 1-btoi(staged))
			}
		}
	}
}

// runcCreateStart runs a bundle with the runtime's create (--pid-file) and start, as
// containerd's shim does, and returns the container's output once it has ended.
func runcCreateStart(t *testing.T, runtime, runc, bundle string) string {
	t.Helper()
	id := "nvbind-e2e-cs-" + filepath.Base(filepath.Dir(bundle)) + filepath.Base(bundle)
	outFile, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = outFile.Close() }()
	t.Cleanup(func() { _ = exec.Command(runc, "delete", "-f", id).Run() })
	create := exec.Command(runtime, "create", "--bundle", bundle, "--pid-file", filepath.Join(bundle, "init.pid"), id)
	create.Stdout, create.Stderr = outFile, outFile
	if err := create.Run(); err != nil {
		data, _ := os.ReadFile(outFile.Name())
		t.Fatalf("create: %v\n%s", err, data)
	}
	if out, err := exec.Command(runtime, "start", id).CombinedOutput(); err != nil {
		t.Fatalf("start: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, err := exec.Command(runc, "state", id).Output()
		var st struct{ Status string }
		if err != nil || json.Unmarshal(out, &st) != nil {
			t.Fatalf("state: %v\n%s", err, out)
		}
		if st.Status == "stopped" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container did not end: %s", st.Status)
		}
	}
	data, err := os.ReadFile(outFile.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
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
