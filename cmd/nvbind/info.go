package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

func newInfoCommand(_ *globalFlags) *cobra.Command {
	var rf rootFlags
	var format string
	cmd := &cobra.Command{
		Use:   "info",
		Short: "Show the GPUs, driver, device nodes and driver files nvbind finds",
		Example: `  nvbind info
  nvbind info --format json | jq .devices
  nvbind info --driver-root /run/nvidia/driver`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			d, err := rf.discoverer()
			if err != nil {
				return err
			}
			inv, err := d.Discover(cmd.Context())
			if err != nil && !errors.Is(err, gpu.ErrNoDevices) {
				return err
			}
			if format == "json" {
				if jerr := writeJSON(cmd.OutOrStdout(), inv); jerr != nil {
					return jerr
				}
				return err
			}
			printInfo(cmd.OutOrStdout(), inv)
			return err
		},
	}
	rf.register(cmd)
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, json")
	return cmd
}

func printInfo(w io.Writer, inv *gpu.Inventory) {
	fmt.Fprintf(w, "Driver:      %s (%s kernel module; version from %s)\n", inv.Driver.Version, inv.Driver.Flavour, inv.Driver.VersionSource)
	if inv.Driver.CUDAVersion != "" {
		fmt.Fprintf(w, "CUDA:        %s\n", inv.Driver.CUDAVersion)
	}
	fmt.Fprintf(w, "Driver root: %s\nDev root:    %s\n", inv.DriverRoot, inv.DevRoot)
	src := string(inv.Source)
	if inv.NVMLError != "" {
		src += " (NVML unavailable: " + inv.NVMLError + ")"
	}
	fmt.Fprintf(w, "GPU source:  %s\n", src)
	fmt.Fprintf(w, "GPUs:        %d\n", len(inv.Devices))
	for _, d := range inv.Devices {
		fmt.Fprintf(w, "  %d  %s  %s  %s  %s\n", d.Index, d.UUID, d.PCIBusID, d.Model, d.Node.Path)
		for _, m := range d.MIG {
			fmt.Fprintf(w, "     MIG %d:%d  %s  gi %d ci %d\n", m.Parent, m.Index, m.UUID, m.GI, m.CI)
		}
	}
	if wsl := inv.WSL; wsl != nil {
		fmt.Fprintf(w, "WSL2:        %s (%d:%d), driver store %s, %d files, %d links\n", wsl.Node.Path, wsl.Node.Major, wsl.Node.Minor,
			strings.Join(wsl.DriverStores, ", "), len(wsl.Files), len(wsl.Links))
		for _, f := range wsl.Files {
			fmt.Fprintf(w, "  %-9s %s\n", f.Kind, f.Path)
		}
	}
	if ig := inv.IGPU; ig != nil {
		var nodes []string
		for _, n := range ig.Nodes {
			nodes = append(nodes, n.Path)
		}
		fmt.Fprintf(w, "iGPU:        %s (L4T %s; %d nodes, %d files, %d links from %s)\n", spec.IGPUName, orUnknown(ig.Release),
			len(ig.Nodes), len(ig.Files), len(ig.Links), strings.Join(ig.CSVFiles, ", "))
		fmt.Fprintf(w, "  nodes: %s\n", strings.Join(nodes, ", "))
		for _, f := range ig.Files {
			fmt.Fprintf(w, "  %-9s %s\n", f.Kind, f.Path)
		}
	}
	var nodes []string
	for _, n := range inv.ControlNodes {
		nodes = append(nodes, fmt.Sprintf("%s (%d:%d)", n.Path, n.Major, n.Minor))
	}
	fmt.Fprintf(w, "Control nodes: %s\n", strings.Join(nodes, ", "))
	counts := map[gpu.FileKind]int{}
	for _, f := range inv.Files {
		counts[f.Kind]++
	}
	fmt.Fprintf(w, "Driver files: %d libraries, %d binaries, %d firmware, %d configs, %d sockets\n",
		counts[gpu.KindLibrary], counts[gpu.KindBinary], counts[gpu.KindFirmware], counts[gpu.KindConfig], counts[gpu.KindSocket])
	for _, f := range inv.Files {
		caps := make([]string, 0, len(f.Caps))
		for _, c := range f.Caps {
			caps = append(caps, string(c))
		}
		fmt.Fprintf(w, "  %-9s %-22s %s\n", f.Kind, strings.Join(caps, ","), f.Path)
	}
	for _, warn := range inv.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "release unknown"
	}
	return s
}
