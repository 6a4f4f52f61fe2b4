// Command nvbind-hook runs nvbind's OCI hooks ("nvbind-hook hook all ..."), the same
// command as "nvbind hook". It is built static and small because runtimes start it on
// every GPU container start, on the host, where it must not depend on the host's libc.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/internal/hookcli"
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
