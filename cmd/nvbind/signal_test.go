package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/test/testutil"
)

// mainChildEnv runs main, in a child process of the test binary, with the arguments it
// holds (one a line).
const mainChildEnv = "NVBIND_MAIN_CHILD"

// TestSignalsEndTheCommand: SIGTERM and SIGINT sent to nvbind (its main, in a child
// process) cancel the running command, which ends as it would when done: exit 0, and
// its folder holds its spec alone. Without the handler the process would die of the
// signal.
func TestSignalsEndTheCommand(t *testing.T) {
	if args := os.Getenv(mainChildEnv); args != "" {
		os.Args = append([]string{"nvbind"}, strings.Split(args, "\n")...)
		main()
		os.Exit(0)
	}
	root := testutil.DriverRoot(t, "debian-535")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "nvidia.yaml")
			args := []string{"cdi", "generate", "--watch", "--interval", "1h", "--no-nvml", "--dev-char-links=false",
				"--driver-root", root, "--dev-root", root, "--hook-path", "/usr/bin/nvbind-hook", "--output", out, "--layout", "files"}
			cmd := exec.Command(os.Args[0], "-test.run=^TestSignalsEndTheCommand$")
			cmd.Env = append(os.Environ(), mainChildEnv+"="+strings.Join(args, "\n"))
			var logs syncBuffer
			cmd.Stdout, cmd.Stderr = &logs, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var waitErr error
			exited := make(chan struct{})
			go func() { waitErr = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				// whatever failed, the child goes before its folder does
				_ = cmd.Process.Kill()
				<-exited
			})
			if !waitUntil(func() bool { data, _ := os.ReadFile(out); return bytes.Contains(data, []byte("nvidia.com/gpu")) }) {
				t.Fatalf("no spec after 20 s\n%s", logs.String())
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
				if waitErr != nil {
					t.Fatalf("after %v: %v\n%s", sig, waitErr, logs.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("still running 20 s after %v\n%s", sig, logs.String())
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Errorf("spec folder holds %d entries: temp files left behind", len(ents))
			}
		})
	}
}

// TestOneShotCommands: the commands that end at once on a signal are the short ones, and
// cdi generate only without --watch.
func TestOneShotCommands(t *testing.T) {
	root := newRootCommand()
	for path := range oneShotCommands {
		c, rest, err := root.Find(strings.Fields(path)[1:])
		if err != nil || len(rest) != 0 || c.CommandPath() != path || !oneShot(c) {
			t.Errorf("%s: found %v (%v, %v)", path, c.CommandPath(), rest, err)
		}
	}
	for _, args := range [][]string{{"nri"}, {"hook", "update-ldcache"}, {"layout", "build"}, {"install"}, {"dra"}, {"device-plugin"}, {"doctor"}} {
		if c, _, err := root.Find(args); err != nil || oneShot(c) {
			t.Errorf("%v: one-shot (%v)", args, err)
		}
	}
	gen, _, err := newRootCommand().Find([]string{"cdi", "generate"})
	if err != nil {
		t.Fatal(err)
	}
	if err := gen.ParseFlags([]string{"--watch"}); err != nil || oneShot(gen) {
		t.Errorf("cdi generate --watch is one-shot (%v)", err)
	}
}

// TestWithSignals: a command that is not one-shot gets a context that SIGTERM cancels;
// a one-shot command gets the caller's context and no handler, and holds the signals off
// while it is finishing; --watch from the environment (or the config file) makes cdi
// generate a command that is not one-shot.
func TestWithSignals(t *testing.T) {
	keep := finishing
	t.Cleanup(func() { finishing = keep })
	probe := func(oneShot bool) context.Context {
		root := newRootCommand()
		var got context.Context
		root.AddCommand(&cobra.Command{Use: "probe", RunE: func(cmd *cobra.Command, _ []string) error {
			got = cmd.Context()
			return nil
		}})
		if oneShot {
			oneShotCommands["nvbind probe"] = true
			defer delete(oneShotCommands, "nvbind probe")
		}
		stop := withSignals(root)
		t.Cleanup(stop)
		root.SetArgs([]string{"probe"})
		if err := root.ExecuteContext(context.Background()); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if ctx := probe(true); ctx.Done() != nil {
		t.Fatal("a one-shot command's context can be cancelled")
	}
	if reflect.ValueOf(finishing).Pointer() != reflect.ValueOf(holdSignals).Pointer() {
		t.Fatal("a one-shot command does not hold the signals off while finishing")
	}
	finishing = keep

	t.Setenv("NVBIND_CDI_GENERATE_WATCH", "true")
	root := newRootCommandFor([]string{"cdi", "generate"})
	t.Cleanup(withSignals(root))
	gen, _, err := root.Find([]string{"cdi", "generate"})
	if err != nil {
		t.Fatal(err)
	}
	gen.SetContext(context.Background())
	if err := root.PersistentPreRunE(gen, nil); err != nil {
		t.Fatal(err)
	}
	if gen.Context().Done() == nil || oneShot(gen) {
		t.Fatal("cdi generate with $NVBIND_CDI_GENERATE_WATCH=true has no signal handler")
	}

	ctx := probe(false)
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("SIGTERM did not cancel the command's context")
	}
}

// holdChildEnv makes this test binary, as a child, hold the signals off and then send
// itself the one it names.
const holdChildEnv = "NVBIND_HOLD_CHILD"

// TestHoldSignals: a one-shot command that is finishing outlives SIGINT, SIGTERM and
// SIGHUP (in a child process: the test binary would die of them otherwise), and cdi
// generate holds them off before it mounts or writes, once.
func TestHoldSignals(t *testing.T) {
	if sig := os.Getenv(holdChildEnv); sig != "" {
		holdSignals()
		n, _ := strconv.Atoi(sig)
		if err := syscall.Kill(os.Getpid(), syscall.Signal(n)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		return
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHoldSignals$", "-test.v")
		cmd.Env = append(os.Environ(), holdChildEnv+"="+strconv.Itoa(int(sig)))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestHoldSignals") {
			t.Errorf("%v while held: %v\n%s", sig, err, out)
		}
	}
	keep := finishing
	t.Cleanup(func() { finishing = keep })
	held := 0
	finishing = func() { held++ }
	root := testutil.DriverRoot(t, "flat-535")
	if _, _, err := run(t, "cdi", "generate", "--no-nvml", "--driver-root", root, "--dev-root", root, "--output", filepath.Join(t.TempDir(), "s.yaml")); err != nil {
		t.Fatal(err)
	}
	if held != 1 {
		t.Errorf("cdi generate held the signals off %d times", held)
	}
}
