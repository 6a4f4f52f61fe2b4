package wrapper

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/test/testutil"
)

// buildFront compiles nvbind-runtime, the C front, into dir, with fake programs beside
// it: nvbind-runtime-edit and a runtime, each printing its name and arguments.
func buildFront(t *testing.T) (dir, runtime string) {
	t.Helper()
	cc := testutil.RequiresCommand(t, "cc")
	dir = t.TempDir()
	out, err := exec.Command(cc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", filepath.Join(dir, "nvbind-runtime"),
		filepath.Join(testutil.RepoRoot(t), "cmd/nvbind-runtime/nvbind-runtime.c")).CombinedOutput()
	if err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	script := func(p, name string) {
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho "+name+" \"$0\" \"$@\"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script(filepath.Join(dir, "nvbind-runtime-edit"), "EDIT")
	runtime = filepath.Join(t.TempDir(), "fake-runc")
	script(runtime, "RUNTIME")
	return dir, runtime
}

func runFront(t *testing.T, front, config string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(front, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", EnvConfig + "=" + config}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestFront: the C front passes every command straight to the real runtime, and runs
// nvbind-runtime-edit only for a create whose config.json names a request key.
func TestFront(t *testing.T) {
	t.Parallel()
	dir, runtime := buildFront(t)
	front := filepath.Join(dir, "nvbind-runtime")
	config := filepath.Join(t.TempDir(), "runtime.toml")
	if err := os.WriteFile(config, []byte("# nvbind-runtime\nmode = \"inject\"\nruntime = \""+runtime+"\"\n[future]\nruntime = \"/x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	plain := bundle(t, nil, nil)
	asks := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"state", []string{"--root", "/r", "state", "id"}, "RUNTIME " + runtime + " --root /r state id"},
		{"delete with a bundle flag", []string{"delete", "-b", asks, "id"}, "RUNTIME " + runtime + " delete -b " + asks + " id"},
		{"create of a plain container", []string{"--log", "/l", "--log-format", "json", "create", "--bundle", plain, "--pid-file", "/p", "id"},
			"RUNTIME " + runtime + " --log /l --log-format json create --bundle " + plain + " --pid-file /p id"},
		{"create of a GPU container", []string{"create", "--bundle=" + asks, "id"}, "EDIT " + front + "-edit create --bundle=" + asks + " id"},
		{"run of a GPU container", []string{"run", "-d", "-b", asks, "id"}, "EDIT " + front + "-edit run -d -b " + asks + " id"},
		{"create without config.json is left to the editor", []string{"create", "--bundle", t.TempDir(), "id"}, "EDIT "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := runFront(t, front, config, tc.args...)
			if err != nil || !strings.HasPrefix(out, tc.want) {
				t.Fatalf("got %q, %v; want %q", out, err, tc.want)
			}
		})
	}
}

// TestFrontErrors: a bad configuration or a missing runtime fails every command with a
// short message on stderr and in the caller's --log, as runc writes it.
func TestFrontErrors(t *testing.T) {
	t.Parallel()
	dir, _ := buildFront(t)
	front := filepath.Join(dir, "nvbind-runtime")
	for _, tc := range []struct {
		name, config, want string
	}{
		{"unquoted runtime", "runtime = /usr/bin/runc\n", "runtime must be a quoted path"},
		{"missing runtime", "runtime = \"/nonexistent/runc\"\n", `runtime "/nonexistent/runc": not found`},
		{"the wrapper itself", "runtime = \"" + front + "\"\n", "or it is nvbind-runtime itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			config := filepath.Join(t.TempDir(), "runtime.toml")
			if err := os.WriteFile(config, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			log := filepath.Join(t.TempDir(), "log.json")
			out, err := runFront(t, front, config, "--log", log, "--log-format", "json", "start", "id")
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("got %q, %v", out, err)
			}
			data, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			var line struct{ Level, Msg string }
			if err := json.Unmarshal(data, &line); err != nil || line.Level != "error" || !strings.Contains(line.Msg, tc.want) {
				t.Fatalf("log %q: %+v %v", data, line, err)
			}
		})
	}
	t.Run("missing configuration named explicitly", func(t *testing.T) {
		t.Parallel()
		out, err := runFront(t, front, "/nonexistent/runtime.toml", "state", "id")
		if err == nil || !strings.Contains(out, "configuration /nonexistent/runtime.toml") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
}
