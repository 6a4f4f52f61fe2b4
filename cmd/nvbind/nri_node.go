//go:build !nvbind_lean

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/containerd/nri/pkg/api"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/hook"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/nriplugin"
	"github.com/nvbind/nvbind/spec"
)

func (f *nriFlags) run(ctx context.Context, log *slog.Logger) error {
	so, err := f.options()
	if err != nil {
		return err
	}
	layouts, err := f.layouts(so, log)
	if err != nil {
		return err
	}
	inPlugin, err := f.stageInPlugin(log)
	if err != nil {
		return err
	}
	adj, err := nriplugin.NewAdjuster(nriplugin.Config{
		StageInPlugin:     inPlugin,
		StageAnyRuntime:   f.stage == stagePlugin,
		Layouts:           layouts,
		Spec:              so,
		CDIMode:           f.cdiMode,
		EnvRequests:       f.envRequests,
		AllowedNamespaces: f.allowed,
		AllNamespaces:     f.allNS,
		RequireAllocation: f.requireAllocation,
	})
	if err != nil {
		return err
	}
	d, err := f.discoverer()
	if err != nil {
		return err
	}
	metrics := nriplugin.NewMetrics(version, commit)
	p := nriplugin.NewPlugin(adj, log, metrics)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	svc := &nriplugin.Service{Plugin: p, Metrics: metrics, MetricsAddr: f.metricsAddr, SpecOptions: so, Log: log, Layouts: layouts}
	if f.devChar {
		svc.DevCharRoot = f.readDevRoot()
	}
	if f.cdiMode {
		// the plugin names GPUs and capabilities separately, so the spec holds both
		svc.CDISpecDir, svc.SpecOptions.CapabilityDevices = f.cdiSpecDir, true
		svc.SpecOptions.Writer = "nvbind nri --cdi-mode"
	}
	// with the DRA driver and the device plugin both, each GPU is one's: --dra-gpus are
	// the driver's, the others the device plugin's
	draServe, dpServe, err := f.partition()
	if err != nil {
		return err
	}
	var onFaults []func(map[string]string)
	if f.dra {
		if svc.DRA, err = f.driver(so, f.cdiSpecDir, d, draServe, layouts, log); err != nil {
			return err
		}
		if !f.requireAllocation {
			log.Warn("--dra without --require-allocation: a pod may still take any GPU, claimed ones included, with an annotation or NVIDIA_VISIBLE_DEVICES")
		}
		p.AlsoReady(svc.DRA.Registered)
		onFaults = append(onFaults, svc.DRA.SetFaults)
	}
	if f.devicePlugin {
		dm := deviceplugin.NewMetrics()
		metrics.Register(dm.Collectors()...)
		if svc.DevicePlugin, err = f.plugin(so, log, dm, dpServe); err != nil {
			return err
		}
		p.AlsoReady(svc.DevicePlugin.Registered)
		onFaults = append(onFaults, svc.DevicePlugin.SetFaults)
		if f.listStrategy == deviceplugin.ListCDICRI {
			svc.CDISpecDir = f.cdiSpecDir // the names the kubelet passes refer to this spec
			if !f.cdiMode {
				svc.SpecOptions.Writer = "nvbind nri --device-plugin (cdi-cri)"
			}
		}
	}
	if onFaults != nil {
		if svc.Health, err = f.health(log, metrics.Register, onFaults...); err != nil {
			return err
		}
	}
	preRegistered := os.Getenv(api.PluginSocketEnvVar) != ""
	svc.Run = nriplugin.RunOptions{Socket: f.socket, Reconnect: !preRegistered}
	if os.Getenv(api.PluginNameEnvVar) == "" {
		svc.Run.Name, svc.Run.Index = f.name, f.index
	}
	log.Info("starting NRI plugin", "socket", f.socket, "pre_registered", preRegistered, "cdi_mode", f.cdiMode, "device_plugin", f.devicePlugin, "dra", f.dra)
	// discovery: once before registering, then on every change
	svc.Events = d.Watch(ctx, f.rescan)
	return svc.Serve(ctx)
}

// layouts are the driver layouts of the plugin's edits (nil: one mount per file): built
// here when this process may mount, else by nvbind layout build --watch beside it.
func (f *nriFlags) layouts(so spec.Options, log *slog.Logger) (*layout.Provider, error) {
	base, err := f.base(so, false, true)
	if err != nil || base == "" {
		return nil, err
	}
	return &layout.Provider{Base: base, Read: f.readPath, Build: layout.CanBuild(),
		Prebuilt: []gpu.Capabilities{gpu.CapsAll, gpu.CapsDefault}, Log: log}, nil
}

// partition splits the GPUs between the DRA driver and the device plugin (nil: all).
func (f *nriFlags) partition() (draServe, dpServe func(gpu.Device) bool, err error) {
	if !f.dra {
		if f.gpus != "" {
			return nil, nil, errors.New("--dra-gpus without --dra")
		}
		return nil, nil, nil
	}
	if draServe, err = f.serve(); err != nil {
		return nil, nil, err
	}
	if !f.devicePlugin {
		return draServe, nil, nil
	}
	if draServe == nil {
		return nil, nil, errors.New("--dra with --device-plugin: each GPU is served by one of them, never both; list the DRA driver's with --dra-gpus (such as --dra-gpus 1, or GPU-<uuid>), the device plugin serves the others")
	}
	return draServe, func(g gpu.Device) bool { return !draServe(g) }, nil
}

// stageInPlugin resolves --stage: whether the plugin runs the driver's steps itself.
func (f *nriFlags) stageInPlugin(log *slog.Logger) (bool, error) {
	switch f.stage {
	case stageHook:
		return false, nil
	case stagePlugin, stageAuto:
		err := hook.InContainerSupported()
		if err == nil {
			return true, nil
		}
		if f.stage == stagePlugin {
			return false, fmt.Errorf("--stage plugin: the plugin cannot run the driver's steps in containers: %w (run it as root in the host's namespaces, or use --stage hook)", err)
		}
		log.Info("the driver's steps run in the hook", "why", err.Error())
		return false, nil
	}
	return false, fmt.Errorf("--stage %q: valid: auto, hook, plugin", f.stage)
}
