package wrapper

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/hook"
	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/driverroot"
	"github.com/nvbind/nvbind/test/testutil"
)

// startService runs the edit service in process on a socket of its own, reading the
// synthetic driver root; it stops with the test.
func startService(t *testing.T, root driverroot.Root) (string, *Service) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s", "edit.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v, %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(sock)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket folder mode: %v, %v", fi.Mode(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{extra: root.Options()}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the socket outlived the service: %v", err)
		}
	})
	return sock, s
}

// serviceConfig writes a runtime.toml for the front and the service.
func serviceConfig(t *testing.T, root driverroot.Root, runtime, socket string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "runtime.toml")
	data := "runtime = \"" + runtime + "\"\ndriver-root = \"" + root.Path + "\"\ndev-root = \"" + root.Path +
		"\"\nno-nvml = true\nlayout = \"files\"\nhook-path = \"/usr/local/bin/nvbind-hook\"\nsocket = \"" + socket + "\"\n"
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFrontWithService: the C front asks the edit service, which edits config.json as
// nvbind-runtime-edit does (byte for byte), and then runs the real runtime itself; a
// relative bundle, errors, guard mode, and no service to ask.
func TestFrontWithService(t *testing.T) {
	t.Parallel()
	root := driverroot.Open(t, "debian-535")
	dir, runtime := buildFront(t)
	front := filepath.Join(dir, "nvbind-runtime")
	sock, _ := startService(t, root)
	config := serviceConfig(t, root, runtime, sock)
	env := []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"}

	t.Run("edits as the editor does", func(t *testing.T) {
		t.Parallel()
		viaService, direct := bundle(t, env, nil), bundle(t, env, nil)
		out, err := runFront(t, front, config, "--root", "/r", "create", "--bundle", viaService, "id")
		if err != nil || !strings.HasPrefix(out, "RUNTIME "+runtime+" --root /r create --bundle "+viaService+" id") {
			t.Fatalf("got %q, %v", out, err)
		}
		cfg, err := loadConfigFile(config, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := Prepare(context.Background(), Call{Command: "create", Bundle: direct}, cfg, root.Options()...); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(filepath.Join(viaService, "config.json"))
		want, _ := os.ReadFile(filepath.Join(direct, "config.json"))
		if string(got) != string(want) {
			t.Fatalf("the service's config.json differs from the editor's:\n%s\n---\n%s", got, want)
		}
		if s := readSpec(t, viaService); len(devicePaths(s)) != 10 {
			t.Fatalf("devices %v", devicePaths(s))
		}
	})
	t.Run("a bundle relative to the caller's folder", func(t *testing.T) {
		t.Parallel()
		b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=1"}, nil)
		cmd := exec.Command(front, "create", "id")
		cmd.Dir = b
		cmd.Env = []string{"PATH=/usr/bin:/bin", EnvConfig + "=" + config}
		if out, err := cmd.CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "RUNTIME ") {
			t.Fatalf("got %q, %v", out, err)
		}
		if got := devicePaths(readSpec(t, b)); !strings.Contains(strings.Join(got, " "), "/dev/nvidia1") {
			t.Fatalf("devices %v", got)
		}
	})
	t.Run("an error names the bundle as given, reaches --log, and leaves config.json", func(t *testing.T) {
		t.Parallel()
		b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=7"}, nil)
		before, _ := os.ReadFile(filepath.Join(b, "config.json"))
		log := filepath.Join(t.TempDir(), "log.json")
		out, err := runFront(t, front, config, "--log", log, "--log-format", "json", "create", "--bundle", b, "id")
		if err == nil || strings.Contains(out, "RUNTIME") || !strings.Contains(out, `GPU "7" is not on this node`) || strings.Contains(out, "/proc/self/fd") {
			t.Fatalf("got %q, %v", out, err)
		}
		if after, _ := os.ReadFile(filepath.Join(b, "config.json")); string(after) != string(before) {
			t.Fatal("config.json changed")
		}
		data, _ := os.ReadFile(log)
		var line struct{ Level, Msg string }
		if err := json.Unmarshal(data, &line); err != nil || line.Level != "error" || !strings.Contains(line.Msg, "valid: all, none, 0, 1") {
			t.Fatalf("log %q: %+v %v", data, line, err)
		}
	})
	t.Run("an error about config.json names the bundle", func(t *testing.T) {
		t.Parallel()
		b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
		p := filepath.Join(b, "config.json")
		data, _ := os.ReadFile(p)
		_ = os.WriteFile(p, append(data, []byte("}")...), 0o600)
		out, err := runFront(t, front, config, "create", "--bundle", b, "id")
		if err == nil || !strings.Contains(out, p+":") || strings.Contains(out, "/proc/self/fd") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("guard mode by name", func(t *testing.T) {
		t.Parallel()
		guard := filepath.Join(dir, GuardName)
		_ = os.Symlink("nvbind-runtime", guard)
		b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
		out, err := runFront(t, guard, config, "create", "--bundle", b, "id")
		if err == nil || !strings.Contains(out, "did not handle") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("a bad configuration is the service's error too", func(t *testing.T) {
		t.Parallel()
		bad := filepath.Join(t.TempDir(), "runtime.toml")
		_ = os.WriteFile(bad, []byte("runtime = \""+runtime+"\"\nsocket = \""+sock+"\"\nmode = \"sideways\"\n"), 0o600)
		out, err := runFront(t, front, bad, "create", "--bundle", bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil), "id")
		if err == nil || !strings.Contains(out, `mode "sideways": valid: inject, guard`) {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("a front in another mount namespace: the editor does it", func(t *testing.T) {
		t.Parallel()
		unshare, err := exec.LookPath("unshare")
		if err != nil || os.Geteuid() != 0 {
			t.Skip("needs root and unshare")
		}
		b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
		cmd := exec.Command(unshare, "-m", front, "create", "--bundle", b, "id")
		cmd.Env = []string{"PATH=/usr/bin:/bin", EnvConfig + "=" + config}
		if out, err := cmd.CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "EDIT ") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	for name, socket := range map[string]string{"nothing listens": filepath.Join(t.TempDir(), "none.sock"), "no socket configured": ""} {
		t.Run(name+": the editor does it", func(t *testing.T) {
			t.Parallel()
			b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
			out, err := runFront(t, front, serviceConfig(t, root, runtime, socket), "create", "--bundle", b, "id")
			if err != nil || !strings.HasPrefix(out, "EDIT ") {
				t.Fatalf("got %q, %v", out, err)
			}
		})
	}
}

// askService sends one raw packet (with the descriptors) to the service and returns its
// answer.
func askService(t *testing.T, sock string, data []byte, fds ...int) string {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(data, oob, nil); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 8192)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

// TestServiceRefuses: requests that are not the front's get a short error and change
// nothing; the service goes on answering.
func TestServiceRefuses(t *testing.T) {
	t.Parallel()
	root := driverroot.Open(t, "debian-535")
	sock, _ := startService(t, root)
	b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
	before, _ := os.ReadFile(filepath.Join(b, "config.json"))
	dirFD, err := unix.Open(b, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Close(dirFD) }()
	fileFD, err := unix.Open(filepath.Join(b, "config.json"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Close(fileFD) }()
	config := serviceConfig(t, root, "/bin/true", sock)
	good := func(fields ...string) []byte { return []byte(strings.Join(fields, "\x00") + "\x00") }
	for _, tc := range []struct {
		name string
		data []byte
		fds  []int
		want string
	}{
		{"no descriptor", good(serviceMagic, "nvbind-runtime", config, "1", b, "create", "id"), nil, "carries 0 descriptors"},
		{"two descriptors", good(serviceMagic, "nvbind-runtime", config, "1", b, "create", "id"), []int{dirFD, dirFD}, "carries 2 descriptors"},
		{"a file, not a folder", good(serviceMagic, "nvbind-runtime", config, "1", b, "create", "id"), []int{fileFD}, "not a folder"},
		{"no NUL at the end", []byte(serviceMagic + "\x00nvbind-runtime"), []int{dirFD}, "does not end in a NUL"},
		{"no command", good(serviceMagic, "nvbind-runtime", config, "1", b), []int{dirFD}, "with a runtime command"},
		{"a relative configuration", good(serviceMagic, "nvbind-runtime", "runtime.toml", "1", b, "create", "id"), []int{dirFD}, "not an absolute path"},
		{"a bad explicit field", good(serviceMagic, "nvbind-runtime", config, "yes", b, "create", "id"), []int{dirFD}, `"yes": valid: 0, 1`},
		{"not create", good(serviceMagic, "nvbind-runtime", config, "1", b, "delete", "id"), []int{dirFD}, `command "delete"`},
		{"too large", append(make([]byte, maxRequest+10), 0), []int{dirFD}, "larger than 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := askService(t, sock, tc.data, tc.fds...)
			if !strings.HasPrefix(got, "error\x00") || !strings.Contains(got, tc.want) || len(got) > 600 {
				t.Fatalf("answer %q, want an error with %q", got, tc.want)
			}
		})
	}
	if after, _ := os.ReadFile(filepath.Join(b, "config.json")); string(after) != string(before) {
		t.Fatal("config.json changed")
	}
	// another protocol version is left to nvbind-runtime-edit
	if got := askService(t, sock, good("nvbind-edit/9", "nvbind-runtime", config, "1", b, "create", "id"), dirFD); got != "fallback" {
		t.Fatalf("another protocol: answer %q", got)
	}
	// and a good request still gets its edit
	if got := askService(t, sock, good(serviceMagic, "nvbind-runtime", config, "1", b, "create", "id"), dirFD); got != "ok" {
		t.Fatalf("answer %q", got)
	}
	if got := devicePaths(readSpec(t, b)); len(got) == 0 {
		t.Fatal("no edit")
	}
}

// TestServiceExitsWhenIdle: with Idle set, Serve returns once no request came for that
// long, and removes the socket it made.
func TestServiceExitsWhenIdle(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "edit.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "another edit service") {
		t.Fatalf("a second service on the same socket: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- (&Service{Idle: time.Second}).Serve(context.Background(), ln) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not exit when idle")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left: %v", err)
	}
	// a stale socket file (a service that was killed) is replaced
	stale, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	_ = stale.Close()
	ln, err = Listen(sock)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	_ = ln.Close()
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a file in the way: %v", err)
	}
}

// FuzzParseRequest: whatever packet the socket delivers, the parser answers within the
// request budgets with a short error or a request whose fields it holds.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(serviceMagic + "\x00nvbind-runtime\x00/etc/nvbind/runtime.toml\x000\x00\x00create\x00id\x00"))
	f.Add([]byte(serviceMagic + "\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte("\x00"))
	f.Add([]byte(strings.Repeat("\x00", 1000)))
	f.Add([]byte(serviceMagic + "\x00n\x00/c\x000\x00b" + strings.Repeat("\x00a", maxArgs+1) + "\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var req serviceRequest
		var err error
		withinBudget(t, len(data), func() { req, err = parseRequest(data) })
		if err != nil {
			if len(err.Error()) > 600 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if len(data) > maxRequest || !filepath.IsAbs(req.config) || len(req.args) == 0 || req.dir != -1 {
			t.Fatalf("accepted %q as %+v", data, req)
		}
	})
}

// withinBudget runs f within the service request parser's budget: 8 bytes of allocation
// per byte of input plus 64 KiB, 100 ms plus a microsecond per byte.
func withinBudget(t *testing.T, inputLen int, f func()) {
	t.Helper()
	testutil.WithinBudget(t, testutil.Budget{PerByte: 8, Fixed: 64 << 10, Base: 100 * time.Millisecond}, inputLen, f)
}

// TestServiceDiscoversPerContainer: the service discovers for every edit, as the runtime
// is asked: a GPU that goes away is gone from the very next answer.
func TestServiceDiscoversPerContainer(t *testing.T) {
	t.Parallel()
	root := driverroot.Synthetic(t, "debian-535")
	sock, _ := startService(t, root)
	config := serviceConfig(t, root, "/bin/true", sock)
	ask := func() string {
		b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=1"}, nil)
		dirFD, err := unix.Open(b, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = unix.Close(dirFD) }()
		return askService(t, sock, []byte(strings.Join([]string{serviceMagic, "nvbind-runtime", config, "1", b, "create", "id"}, "\x00")+"\x00"), dirFD)
	}
	if got := ask(); got != "ok" {
		t.Fatalf("answer %q", got)
	}
	gpus := filepath.Join(root.Path, "proc/driver/nvidia/gpus")
	ents, err := os.ReadDir(gpus)
	if err != nil || len(ents) != 2 {
		t.Fatalf("%s: %v %v", gpus, ents, err)
	}
	if err := os.RemoveAll(filepath.Join(gpus, ents[1].Name())); err != nil {
		t.Fatal(err)
	}
	if got := ask(); !strings.Contains(got, `GPU "1" is not on this node`) {
		t.Fatalf("GPU 1 is still edited after it went: %q", got)
	}
}

// TestFrontFallsBack: a listener that closes without an answer (a service that stopped
// or failed), or answers fallback, leaves the edit to nvbind-runtime-edit.
func TestFrontFallsBack(t *testing.T) {
	t.Parallel()
	dir, runtime := buildFront(t)
	front := filepath.Join(dir, "nvbind-runtime")
	for name, reply := range map[string]string{"closed without an answer": "", "fallback": "fallback"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sock := filepath.Join(t.TempDir(), "edit.sock")
			ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = ln.Close() }()
			asked := make(chan int, 1)
			go func() {
				c, err := ln.AcceptUnix()
				if err != nil {
					asked <- -1
					return
				}
				buf, oob := make([]byte, maxRequest), make([]byte, 64)
				_, oobn, _, _, _ := c.ReadMsgUnix(buf, oob)
				fds, _ := receivedFDs(oob[:oobn])
				for _, fd := range fds {
					_ = unix.Close(fd)
				}
				if reply != "" {
					_, _ = c.Write([]byte(reply))
				}
				_ = c.Close()
				asked <- len(fds)
			}()
			config := filepath.Join(t.TempDir(), "runtime.toml")
			_ = os.WriteFile(config, []byte("runtime = \""+runtime+"\"\nsocket = \""+sock+"\"\n"), 0o600)
			b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
			out, err := runFront(t, front, config, "create", "--bundle", b, "id")
			if err != nil || !strings.Contains(out, "EDIT "+front+"-edit create --bundle "+b+" id") {
				t.Fatalf("got %q, %v", out, err)
			}
			if n := <-asked; n != 1 {
				t.Fatalf("the listener got %d descriptors, want the bundle's", n)
			}
		})
	}
}

// TestFrontRunsSteps: under runc, a create with --pid-file gets the driver without its
// hook, and the front runs the runtime's create as its child and then has the service
// run the steps on the created container's process. A process that is no container's
// (here: one outside any cgroup of the container's id) is refused: the front deletes the
// container with the runtime's global flags and fails the create with the service's
// message. A create that fails ends as the runtime's did, with nothing asked of the
// service after it; a create without --pid-file keeps the hook.
func TestFrontRunsSteps(t *testing.T) {
	t.Parallel()
	testutil.RequiresRoot(t)
	if err := hook.InContainerSupported(); err != nil {
		t.Skipf("the steps cannot run from this process: %v", err)
	}
	root := driverroot.Open(t, "debian-535")
	dir, _ := buildFront(t)
	front := filepath.Join(dir, "nvbind-runtime")
	sock, _ := startService(t, root)
	notContainer := exec.Command("sleep", "60")
	if err := notContainer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = notContainer.Process.Kill(); _ = notContainer.Wait() })
	// a runtime named runc: create writes the process ID to --pid-file (or fails when
	// the bundle holds a file named fail), every command says what it was run with
	runc := filepath.Join(t.TempDir(), "runc")
	script := `#!/bin/sh
echo RUNTIME "$0" "$@"
prev=; pidfile=; for a in "$@"; do [ "$prev" = --pid-file ] && pidfile=$a; prev=$a; done
case " $* " in *" create "*)
	[ -e "$NVBIND_TEST_BUNDLE/fail" ] && { echo "create failed" >&2; exit 3; }
	[ -n "$pidfile" ] && echo ` + strconv.Itoa(notContainer.Process.Pid) + ` > "$pidfile";;
esac
exit 0
`
	if err := os.WriteFile(runc, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	config := serviceConfig(t, root, runc, sock)
	env := []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"}
	run := func(b string, args ...string) (string, error) {
		cmd := exec.Command(front, args...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", EnvConfig + "=" + config, "NVBIND_TEST_BUNDLE=" + b}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	t.Run("a process outside the container's cgroup: deleted, and the create fails", func(t *testing.T) {
		t.Parallel()
		b := bundle(t, env, nil)
		pidFile := filepath.Join(b, "init.pid")
		log := filepath.Join(t.TempDir(), "log.json")
		out, err := run(b, "--root", "/r", "--log", log, "--log-format", "json", "create", "--bundle", b, "--pid-file", pidFile, "ctr1")
		if err == nil {
			t.Fatalf("created:\n%s", out)
		}
		for _, want := range []string{
			"RUNTIME " + runc + " --root /r --log " + log + " --log-format json create --bundle " + b + " --pid-file " + pidFile + " ctr1\n",
			"RUNTIME " + runc + " --root /r --log " + log + " --log-format json delete --force ctr1\n",
			"nvbind-runtime: the driver's steps (links, ld cache) for container ctr1: process " + strconv.Itoa(notContainer.Process.Pid) + " is in no cgroup of container ctr1",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if data, _ := os.ReadFile(log); !strings.Contains(string(data), "no cgroup of container ctr1") {
			t.Errorf("--log lacks the error: %q", data)
		}
		s := readSpec(t, b)
		if s.Hooks != nil && len(s.Hooks.CreateRuntime) > 0 {
			t.Errorf("config.json names a hook: %+v", s.Hooks.CreateRuntime)
		}
		if s.Annotations[request.AnnotationRuntimeSteps] != "all" || len(devicePaths(s)) != 10 {
			t.Errorf("config.json: annotations %v, devices %v", s.Annotations, devicePaths(s))
		}
	})
	t.Run("a create that fails ends as the runtime's did", func(t *testing.T) {
		t.Parallel()
		b := bundle(t, env, nil)
		if err := os.WriteFile(filepath.Join(b, "fail"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := run(b, "create", "--bundle", b, "--pid-file", filepath.Join(b, "init.pid"), "ctr2")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 3 || !strings.Contains(out, "create failed") || strings.Contains(out, "delete") ||
			strings.Contains(out, "nvbind-runtime:") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("no process ID in --pid-file: deleted, and the create fails", func(t *testing.T) {
		t.Parallel()
		b := bundle(t, env, nil)
		out, err := run(b, "create", "--bundle", b, "--pid-file", filepath.Join(t.TempDir(), "elsewhere", "init.pid"), "ctr3")
		if err == nil || !strings.Contains(out, "RUNTIME "+runc+" delete --force ctr3\n") || !strings.Contains(out, "no container process ID in --pid-file") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("without --pid-file the hook stays", func(t *testing.T) {
		t.Parallel()
		b := bundle(t, env, nil)
		out, err := run(b, "create", "--bundle", b, "ctr4")
		if err != nil || strings.Contains(out, "delete") {
			t.Fatalf("got %q, %v", out, err)
		}
		s := readSpec(t, b)
		if s.Hooks == nil || len(s.Hooks.CreateRuntime) != 1 || s.Annotations[request.AnnotationRuntimeSteps] != "" {
			t.Fatalf("config.json: hooks %+v, annotations %v", s.Hooks, s.Annotations)
		}
	})
	t.Run("stage = hook keeps the hook", func(t *testing.T) {
		t.Parallel()
		b := bundle(t, env, nil)
		hookConfig := filepath.Join(t.TempDir(), "runtime.toml")
		data, _ := os.ReadFile(config)
		_ = os.WriteFile(hookConfig, append(data, []byte("stage = \"hook\"\n")...), 0o600)
		cmd := exec.Command(front, "create", "--bundle", b, "--pid-file", filepath.Join(b, "init.pid"), "ctr5")
		cmd.Env = []string{"PATH=/usr/bin:/bin", EnvConfig + "=" + hookConfig, "NVBIND_TEST_BUNDLE=" + b}
		if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "delete") {
			t.Fatalf("got %q, %v", out, err)
		}
		if s := readSpec(t, b); s.Hooks == nil || len(s.Hooks.CreateRuntime) != 1 {
			t.Fatalf("config.json: hooks %+v", s.Hooks)
		}
	})
}

// TestStagedEditAgainRefused: config.json the service gave the driver without its hook
// (the service then failed before it answered) is refused when nvbind-runtime-edit is
// asked to edit it again, instead of being found edited and started without its steps,
// whatever asked for the GPUs (env, nvbind's annotation, a CDI annotation); so is one
// whose mark a container's author set. A container edited with its hook, asked again,
// is found edited.
func TestStagedEditAgainRefused(t *testing.T) {
	t.Parallel()
	root := driverroot.Open(t, "debian-535")
	cfg, err := loadConfigFile(serviceConfig(t, root, "/usr/bin/runc", ""), true)
	if err != nil {
		t.Fatal(err)
	}
	for name, asks := range map[string]struct {
		env []string
		ann map[string]string
	}{
		"env":                 {env: []string{"NVIDIA_VISIBLE_DEVICES=0"}},
		"nvbind's annotation": {ann: map[string]string{request.AnnotationGPUs: "0"}},
		"a CDI annotation":    {ann: map[string]string{request.AnnotationCDIPrefix + "gpu": spec.DefaultVendor + "/" + spec.DefaultClass + "=0"}},
	} {
		b := bundle(t, asks.env, asks.ann)
		call := Call{Command: "create", Bundle: b, ID: "ctr", PidFile: filepath.Join(b, "init.pid")}
		steps, err := prepare(context.Background(), call, cfg, true, discovery{extra: root.Options()})
		if err != nil || steps == nil || steps.ID != "ctr" || len(steps.Options.Links) == 0 {
			t.Fatalf("%s: steps %+v, %v", name, steps, err)
		}
		if s := readSpec(t, b); s.Hooks != nil && len(s.Hooks.CreateRuntime) > 0 || s.Annotations[request.AnnotationRuntimeSteps] != "compute,utility" {
			t.Fatalf("%s: staged config.json: hooks %+v, annotations %v", name, s.Hooks, s.Annotations)
		}
		before, _ := os.ReadFile(filepath.Join(b, "config.json"))
		err = Prepare(context.Background(), call, cfg, root.Options()...)
		if err == nil || !strings.Contains(err.Error(), "the service edited it and did not answer") {
			t.Fatalf("%s: edited again: %v", name, err)
		}
		if after, _ := os.ReadFile(filepath.Join(b, "config.json")); string(after) != string(before) {
			t.Fatalf("%s: config.json changed", name)
		}
	}
	// a mark set by hand: refused, by the service too
	b := bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, map[string]string{request.AnnotationRuntimeSteps: "forged"})
	call := Call{Command: "create", Bundle: b, ID: "ctr", PidFile: filepath.Join(b, "init.pid")}
	if _, err := prepare(context.Background(), call, cfg, true, discovery{extra: root.Options()}); err == nil || !strings.Contains(err.Error(), "set by hand") {
		t.Fatalf("a forged mark: %v", err)
	}
	// a container edited with its hook, asked again, is found edited
	b = bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=0"}, nil)
	call.Bundle = b
	if err := Prepare(context.Background(), call, cfg, root.Options()...); err != nil {
		t.Fatal(err)
	}
	s := readSpec(t, b)
	if s.Hooks == nil || len(s.Hooks.CreateRuntime) != 1 || s.Annotations[request.AnnotationRuntimeSteps] != "" {
		t.Fatalf("edited with the hook: hooks %+v, annotations %v", s.Hooks, s.Annotations)
	}
	before, _ := os.ReadFile(filepath.Join(b, "config.json"))
	if err := Prepare(context.Background(), call, cfg, root.Options()...); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(filepath.Join(b, "config.json")); string(after) != string(before) {
		t.Fatal("an edited config.json was edited again")
	}
	// a container nvbind's NRI plugin staged (its annotations, the request void) is the
	// plugin's: neither refused nor edited, in either mode
	b = bundle(t, []string{"NVIDIA_VISIBLE_DEVICES=void"}, map[string]string{request.AnnotationHandled: "injected", request.AnnotationStage: "all@0123456789abcdef"})
	call.Bundle = b
	for _, mode := range []string{ModeInject, ModeGuard} {
		c := cfg
		c.Mode = mode
		if steps, err := prepare(context.Background(), call, c, true, discovery{extra: root.Options()}); steps != nil || err != nil {
			t.Fatalf("%s: an NRI-staged container: steps %+v, %v", mode, steps, err)
		}
	}
}
