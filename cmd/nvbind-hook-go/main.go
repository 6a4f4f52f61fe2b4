// Command nvbind-hook-go is the full nvbind hook ("nvbind-hook hook all ...", the same
// command as "nvbind hook"): nvbind-hook, the small C program that specs and adjustments
// name, runs it with the same arguments and state for whatever it does not do itself. It
// is built static because it runs on the host, where it must not depend on the host's
// libc.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/internal/hookcli"
	// a hook's process is short: its heap is worth huge pages from the start
	_ "github.com/nvbind/nvbind/internal/hugeheap"
)

func main() {
	root := &cobra.Command{
		Use:           "nvbind-hook",
		Short:         "Run the OCI hooks that nvbind's specs and NRI adjustments name",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(hookcli.NewCommand())
	if err := root.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "nvbind-hook:", err)
		os.Exit(1)
	}
}
