//go:build !nvbind_lean

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nvbind/nvbind/dra"
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/layout"
	"github.com/nvbind/nvbind/spec"
)

// driver makes the DRA driver of these flags: claims get the edits of so, from a
// discovery run at each prepare, with the driver layouts of layouts where complete.
func (d *draFlags) driver(so spec.Options, cdiDir string, disc *gpu.Discoverer, serve func(gpu.Device) bool, layouts *layout.Provider, log *slog.Logger) (*dra.Driver, error) {
	if d.nodeName == "" {
		return nil, errors.New("--node-name is empty: set it, or NODE_NAME from the downward API (fieldRef spec.nodeName)")
	}
	kube, err := d.kubeClient()
	if err != nil {
		return nil, err
	}
	so.Writer = dra.Writer
	return dra.New(dra.Config{NodeName: d.nodeName, CDIDir: cdiDir, DataDir: d.pluginDir, Spec: so, Discover: disc.Discover,
		Serve: serve, Kube: kube, RegistrarDir: d.registrarDir, Layouts: layouts, Log: log})
}

// kubeClient is the API client: --kubeconfig, else the pod's service account.
func (d *draFlags) kubeClient() (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if d.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", d.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("the DRA driver's API client (--kubeconfig %q): %w", d.kubeconfig, err)
	}
	cfg.UserAgent = "nvbind-dra/" + version
	return kubernetes.NewForConfig(cfg)
}

func (f *draCommandFlags) run(ctx context.Context, log *slog.Logger) error {
	so, err := f.options()
	if err != nil {
		return err
	}
	serve, err := f.serve()
	if err != nil {
		return err
	}
	disc, err := f.discoverer()
	if err != nil {
		return err
	}
	drv, err := f.driver(so, f.cdiSpecDir, disc, serve, nil, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for ev := range disc.Watch(ctx, f.rescan) {
			if ev.Err != nil {
				log.Error("discovery failed; keeping the last devices", slog.Any("error", ev.Err))
				continue
			}
			drv.Update(ev.Inventory)
		}
	}()
	log.Info("starting the DRA driver", "driver", dra.DriverName, "node", f.nodeName, "cdi_spec_dir", f.cdiSpecDir)
	return drv.Run(ctx)
}

// serve parses --dra-gpus: nil serves every GPU.
func (d *draFlags) serve() (func(gpu.Device) bool, error) {
	v := strings.TrimSpace(d.gpus)
	if v == "" || v == "all" {
		return nil, nil
	}
	set := map[string]bool{}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if _, err := strconv.Atoi(item); err != nil && !strings.HasPrefix(item, "GPU-") {
			return nil, fmt.Errorf("--dra-gpus: %q is neither a GPU index nor a GPU UUID (valid: all, or a list such as 0,1 or GPU-<uuid>)", item)
		}
		set[item] = true
	}
	return func(g gpu.Device) bool { return set[strconv.Itoa(g.Index)] || set[g.UUID] }, nil
}
