// Command nvbind hands NVIDIA GPUs to containers: it writes CDI specs, runs as an NRI
// plugin, and implements the OCI hooks its specs name.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	root := newRootCommandFor(os.Args[1:])
	stop := withSignals(root)
	err := handOver(root.ExecuteContext(context.Background()))
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "nvbind:", err)
		os.Exit(1)
	}
}

// oneShotCommands end at once on SIGINT or SIGTERM, as any short command does, until they
// mount or write (finishing): they hold nothing to release before.
var oneShotCommands = map[string]bool{
	"nvbind version": true, "nvbind info": true,
	"nvbind cdi generate": true, "nvbind cdi list": true, "nvbind cdi validate": true,
}

// oneShot reports whether cmd is one of oneShotCommands, not kept running by --watch
// (from the command line, the config file or the environment).
func oneShot(cmd *cobra.Command) bool {
	if !oneShotCommands[cmd.CommandPath()] {
		return false
	}
	w := cmd.Flags().Lookup("watch")
	return w == nil || w.Value.String() != "true"
}

// withSignals makes SIGINT and SIGTERM cancel the context of the command that root runs,
// so that it stops gracefully, unless the command is one-shot: then no signal handler
// and its goroutine start, whose threads are about a millisecond of a one-shot start on
// a VM, and the command holds the signals off once it is finishing. The function it
// returns stops the handler.
func withSignals(root *cobra.Command) func() {
	stop := func() {}
	pre := root.PersistentPreRunE
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		// the settings first: --watch may come from the config file or $NVBIND_*
		err := pre(cmd, args)
		if oneShot(cmd) {
			finishing = holdSignals
			return err
		}
		ctx, cancel := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		cmd.SetContext(ctx)
		stop = cancel
		return err
	}
	return func() { stop() }
}

// finishing is called by a one-shot command before it mounts or writes. In nvbind's
// process (withSignals) SIGINT, SIGTERM and SIGHUP are ignored from then on, so that the
// command ends with its work done rather than half way (a layout half mounted, a temp file
// left beside the spec): it exits right after, and a signal that came meanwhile is lost.
// They stay ignored to the end, since Go cannot give an ignored signal its default back
// (signal.Reset leaves it ignored, golang/go#46321), and nothing is left to run. Elsewhere
// (tests) it does nothing.
var finishing = func() {}

func holdSignals() { signal.Ignore(os.Interrupt, syscall.SIGTERM, syscall.SIGHUP) }

// exitError carries an exit code for errors already reported.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }
