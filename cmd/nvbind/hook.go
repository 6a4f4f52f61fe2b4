package main

import "github.com/spf13/cobra"

func newHookCommand() *cobra.Command {
	return &cobra.Command{Use: "hook", Short: "Run the OCI hooks that nvbind's specs and adjustments name"}
}
