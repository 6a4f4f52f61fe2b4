//go:build !nvbind_lean

package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/health"
	"github.com/nvbind/nvbind/spec"
)

// health makes the XID monitor that takes GPUs out of service and back (onFaults: the
// device plugin's and the DRA driver's SetFaults); feed it every inventory (Update) and
// run it beside them. Its metrics go to register.
func (d *dpFlags) health(log *slog.Logger, register func(...prometheus.Collector), onFaults ...func(map[string]string)) (*health.Monitor, error) {
	extra, err := health.ParseXIDs(d.xidIgnore)
	if err != nil {
		return nil, fmt.Errorf("--xid-ignore: %w", err)
	}
	if d.xidRecover < 0 {
		return nil, fmt.Errorf("--xid-recover-after %s: negative (valid: a duration such as 10m, or 0 for never)", d.xidRecover)
	}
	m := health.NewMetrics()
	if register != nil {
		register(m.Collectors()...)
	}
	t := health.NewTracker(health.Policy{Ignored: append(slices.Clone(health.DefaultIgnoredXIDs), extra...), RecoverAfter: d.xidRecover}, m)
	return &health.Monitor{Tracker: t, Log: log.With("component", "health"), File: d.xidEvents, OnChange: func(f map[string]health.Fault) {
		why := make(map[string]string, len(f))
		for g, fault := range f {
			why[g] = fault.Reason()
		}
		for _, f := range onFaults {
			f(why)
		}
	}}, nil
}

// plugin makes the device plugin of these flags; serve (nil: all) are the GPUs it
// advertises.
func (d *dpFlags) plugin(so spec.Options, log *slog.Logger, m *deviceplugin.Metrics, serve func(gpu.Device) bool) (*deviceplugin.Plugin, error) {
	forget := d.forgetAfter
	if forget == 0 {
		forget = -1 // the package's zero is its default; the flag's 0 means at once
	}
	return deviceplugin.New(deviceplugin.Config{Resource: d.resource, MIGStrategy: d.migStrategy, Replicas: d.replicas,
		ListStrategy: d.listStrategy, Kind: so.Vendor + "/" + so.Class, ForgetAfter: forget, Serve: serve}, d.kubeletDir, log, m)
}

func (f *devicePluginFlags) run(ctx context.Context, log *slog.Logger) error {
	so, err := f.options()
	if err != nil {
		return err
	}
	so.Writer = "nvbind device-plugin (cdi-cri)"
	draServe, err := f.draGPUs.serve()
	if err != nil {
		return err
	}
	if draServe == nil && f.draGPUs.gpus != "" {
		return fmt.Errorf("--dra-gpus %q: the DRA driver serves every GPU, so this plugin would advertise none; list the DRA driver's GPUs (such as 1, or GPU-<uuid>)", f.draGPUs.gpus)
	}
	var serve func(gpu.Device) bool
	if draServe != nil {
		serve = func(g gpu.Device) bool { return !draServe(g) }
	}
	p, err := f.plugin(so, log, nil, serve)
	if err != nil {
		return err
	}
	mon, err := f.health(log, nil, p.SetFaults)
	if err != nil {
		return err
	}
	d, err := f.discoverer()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go mon.Run(ctx)
	events := d.Watch(ctx, f.rescan)
	go func() {
		for ev := range events {
			if ev.Err != nil {
				log.Error("discovery failed; keeping the last devices", slog.Any("error", ev.Err))
				continue
			}
			feedDevicePlugin(p, f.listStrategy, ev.Inventory, so, f.cdiSpecDir, log)
			mon.Update(ev.Inventory)
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
