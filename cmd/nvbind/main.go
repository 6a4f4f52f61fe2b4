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

// oneShotCommands end at once on SIGINT or SIGTERM, as any short command does: they write
// nothing but through an atomic rename, and hold nothing to release.
var oneShotCommands = map[string]bool{
	"nvbind version": true, "nvbind info": true,
	"nvbind cdi generate": true, "nvbind cdi list": true, "nvbind cdi validate": true,
}

// oneShot reports whether cmd is one of oneShotCommands, not kept running by --watch.
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
// a VM. The function it returns stops the handler.
func withSignals(root *cobra.Command) func() {
	stop := func() {}
	pre := root.PersistentPreRunE
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if !oneShot(cmd) {
			ctx, cancel := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			cmd.SetContext(ctx)
			stop = cancel
		}
		return pre(cmd, args)
	}
	return func() { stop() }
}

// exitError carries an exit code for errors already reported.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }
