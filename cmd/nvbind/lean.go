//go:build nvbind_lean

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/gpu"
	// The lean commands are short: their heap is worth huge pages from the start.
	_ "github.com/nvbind/nvbind/internal/hugeheap"
)

// The lean nvbind (cdi, info, hook, install) links none of the NRI, gRPC, Prometheus
// and kubelet packages, so its commands start fast; the commands that need them run
// the full build, nvbind-node, with the same arguments.

func (f *nriFlags) run(context.Context, *slog.Logger) error { return execNode() }

func (f *devicePluginFlags) run(context.Context, *slog.Logger) error { return execNode() }

func (f *draCommandFlags) run(context.Context, *slog.Logger) error { return execNode() }

func (f *doctorFlags) run(*cobra.Command) error { return execNode() }

// nodeBinary finds nvbind-node beside this binary, else in PATH.
func nodeBinary() (string, error) {
	if self := selfPath(); self != "" {
		p := filepath.Join(filepath.Dir(self), nodeBinaryName)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(nodeBinaryName)
	if err != nil {
		where := "beside this nvbind"
		if self := selfPath(); self != "" {
			where = "in " + filepath.Dir(self)
		}
		return "", fmt.Errorf("this command runs %s, which is neither %s nor in PATH: install both binaries (make build puts them in bin/; nvbind install copies both)", nodeBinaryName, where)
	}
	return p, nil
}

// execNode replaces this process with nvbind-node and the same arguments and
// environment; it returns only on failure.
func execNode() error {
	if os.Getenv(handedOverEnv) != "" {
		// nvbind-node handed the command on again: it is a lean build, which would do so
		// for ever
		return fmt.Errorf("%s is a lean build of nvbind, not the full one (make build makes bin/%s)", nodeBinaryName, nodeBinaryName)
	}
	p, err := nodeBinary()
	if err != nil {
		return err
	}
	env := append(os.Environ(), handedOverEnv+"=1")
	err = syscall.Exec(p, append([]string{p}, os.Args[1:]...), env) //nolint:gosec // nvbind's own binary, found above
	return errors.Join(fmt.Errorf("run %s", p), err)
}

// handedOverEnv marks a process the lean build handed a command to.
const handedOverEnv = "NVBIND_HANDED_OVER"

// handOver runs the command again in nvbind-node when it stopped because it needed
// NVIDIA's libraries loaded, which the lean build, without cgo, cannot (MIG devices,
// which only NVML lists; libcuda's CUDA version for info). Discovery comes before
// anything a command writes (install discovers first too), so nothing is done twice.
// Any other error is returned.
func handOver(err error) error {
	if errors.Is(err, gpu.ErrNeedsCgo) {
		return errors.Join(err, execNode())
	}
	return err
}

// serveInNode hands a command that keeps running (--watch) to nvbind-node from its
// start when this build cannot load NVIDIA's libraries: a service must not stop the day
// a MIG instance appears. It returns only on failure, or at once in a build with cgo.
func serveInNode() error {
	if gpu.LoadsLibraries {
		return nil
	}
	return execNode()
}
