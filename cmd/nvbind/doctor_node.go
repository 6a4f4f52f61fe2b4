//go:build !nvbind_lean

package main

import (
	"github.com/spf13/cobra"

	"github.com/nvbind/nvbind/doctor"
)

func (f *doctorFlags) run(cmd *cobra.Command) error {
	d, err := f.discoverer()
	if err != nil {
		return err
	}
	c := doctor.Config{Discoverer: d, SpecDirs: f.specDirs, Vendor: f.vendor, Class: f.class,
		ContainerdConfig: f.containerdConfig, ContainerdSocket: f.containerdSocket, ContainerdBinary: f.containerdBin,
		CRIOConfigs: f.crioConfigs, DockerConfig: f.dockerConfig, NRISocket: f.nriSocket, HealthURL: f.healthURL, DevRoot: f.readDevRoot()}
	rs := doctor.Run(cmd.Context(), c)
	if f.format == "json" {
		if err := writeJSON(cmd.OutOrStdout(), rs); err != nil {
			return err
		}
	} else {
		doctor.Print(cmd.OutOrStdout(), rs)
	}
	if doctor.Failed(rs) {
		return exitError{code: 1}
	}
	return nil
}
