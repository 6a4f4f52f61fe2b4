//go:build !nvbind_lean

package main

import (
	"context"
	"log/slog"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
)

func (d *dpFlags) plugin(so spec.Options, log *slog.Logger, m *deviceplugin.Metrics) (*deviceplugin.Plugin, error) {
	forget := d.forgetAfter
	if forget == 0 {
		forget = -1 // the package's zero is its default; the flag's 0 means at once
	}
	return deviceplugin.New(deviceplugin.Config{Resource: d.resource, MIGStrategy: d.migStrategy, Replicas: d.replicas,
		ListStrategy: d.listStrategy, Kind: so.Vendor + "/" + so.Class, ForgetAfter: forget}, d.kubeletDir, log, m)
}

func (f *devicePluginFlags) run(ctx context.Context, log *slog.Logger) error {
	so, err := f.options()
	if err != nil {
		return err
	}
	p, err := f.plugin(so, log, nil)
	if err != nil {
		return err
	}
	d, err := f.discoverer()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := d.Watch(ctx, f.rescan)
	go func() {
		for ev := range events {
			if ev.Err != nil {
				log.Error("discovery failed; keeping the last devices", slog.Any("error", ev.Err))
				continue
			}
			feedDevicePlugin(p, f.listStrategy, ev.Inventory, so, f.cdiSpecDir, log)
		}
	}()
	return p.Run(ctx)
}

// feedDevicePlugin hands an inventory to the device plugin and, for cdi-cri, keeps the
// spec its CDI names refer to.
func feedDevicePlugin(p *deviceplugin.Plugin, listStrategy string, inv *gpu.Inventory, so spec.Options, dir string, log *slog.Logger) {
	if err := p.Update(inv); err != nil {
		log.Error("device plugin: devices not updated", slog.Any("error", err))
	}
	if listStrategy == deviceplugin.ListCDICRI {
		written, err := spec.WriteDir(inv, so, dir, spec.FormatYAML)
		if err != nil {
			log.Error("CDI spec not refreshed; the old one stays", slog.Any("error", err))
		}
		for _, w := range written {
			w.Log(log)
		}
	}
}
