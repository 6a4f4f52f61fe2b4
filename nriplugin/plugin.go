package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/nvbind/nvbind/hook"
	"github.com/nvbind/nvbind/internal/hookargs"
	"github.com/nvbind/nvbind/request"
)

// Plugin is the NRI plugin: it implements only the stub interfaces it needs.
type Plugin struct {
	adj     *Adjuster
	log     *slog.Logger
	metrics *Metrics
	// registered is true while the runtime has the plugin configured.
	registered atomic.Bool
	// alsoReady are further conditions of readiness (the device plugin's registration).
	alsoReady []func() bool
	// inflight counts CreateContainer and StartContainer calls being answered; draining is set once the
	// plugin is told to stop, from when it refuses new GPU requests.
	inflight atomic.Int64
	draining atomic.Bool
	// drainTimeout bounds how long a stop waits for calls in flight.
	drainTimeout time.Duration
	// staged holds the containers whose steps the plugin runs at their start, by id, with
	// the steps' arguments and when they were created: a container is given only the steps
	// recorded for it, never what its annotations say; a stop waits for their starts
	// (within drainTimeout), since a container started once the plugin is gone gets none
	stagedMu sync.Mutex
	staged   map[string]stagedContainer
}

type stagedContainer struct {
	at   time.Time
	args hookargs.Args
}

// stagedWait is how long after its creation a container's StartContainer holds a stop
// (the kubelet starts a container right after creating it); stagedKeep, how long a
// container's steps are kept for its start.
const (
	stagedWait = 30 * time.Second
	stagedKeep = 10 * time.Minute
)

// stageTimeout bounds the steps of one container: well within NRI's request timeout (2 s),
// after which the runtime would drop the plugin and start the container without them.
const stageTimeout = time.Second

// markStaged records the steps of a container created now.
func (p *Plugin) markStaged(id string, args hookargs.Args) {
	p.stagedMu.Lock()
	defer p.stagedMu.Unlock()
	if p.staged == nil {
		p.staged = map[string]stagedContainer{}
	}
	now := time.Now()
	for k, c := range p.staged {
		if now.Sub(c.at) > stagedKeep {
			delete(p.staged, k)
		}
	}
	p.staged[id] = stagedContainer{at: now, args: args}
}

// takeStaged returns and forgets the steps recorded for container id.
func (p *Plugin) takeStaged(id string) (hookargs.Args, bool) {
	p.stagedMu.Lock()
	defer p.stagedMu.Unlock()
	c, ok := p.staged[id]
	delete(p.staged, id)
	return c.args, ok
}

// pendingStarts counts the containers created in the last stagedWait whose steps have not
// run.
func (p *Plugin) pendingStarts() int {
	p.stagedMu.Lock()
	defer p.stagedMu.Unlock()
	n := 0
	for _, c := range p.staged {
		if time.Since(c.at) <= stagedWait {
			n++
		}
	}
	return n
}

// NewPlugin wires an adjuster, a logger and metrics.
func NewPlugin(adj *Adjuster, log *slog.Logger, m *Metrics) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics("", "")
	}
	return &Plugin{adj: adj, log: log, metrics: m, drainTimeout: 5 * time.Second}
}

// Registered reports whether the runtime has the plugin registered and configured.
func (p *Plugin) Registered() bool { return p.registered.Load() }

// AlsoReady adds a condition to Ready; call it before serving.
func (p *Plugin) AlsoReady(f func() bool) { p.alsoReady = append(p.alsoReady, f) }

// Ready reports whether the plugin is registered and every further condition holds.
func (p *Plugin) Ready() bool {
	if !p.Registered() {
		return false
	}
	for _, f := range p.alsoReady {
		if !f() {
			return false
		}
	}
	return true
}

// Configure subscribes to CreateContainer, and to StartContainer where the plugin runs
// the driver's steps itself (Config.StageInPlugin, on this runtime).
func (p *Plugin) Configure(_ context.Context, _, runtime, version string) (stub.EventMask, error) {
	staging := p.adj.stageFor(runtime)
	p.log.Info("configured by the runtime", "runtime", runtime, "version", version, "steps_in_plugin", staging)
	if staging {
		return api.MustParseEventMask("CreateContainer", "StartContainer"), nil
	}
	return api.MustParseEventMask("CreateContainer"), nil
}

// Synchronize is the last step of registration: from here on the runtime sends the
// plugin every CreateContainer, so this is when the plugin reports itself registered.
func (p *Plugin) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	p.registered.Store(true)
	p.log.Info("registered with the runtime", "pods", len(pods), "containers", len(ctrs))
	return nil, nil
}

// CreateContainer adjusts a container that asks for GPUs. While the plugin drains before
// it stops, a container that asks is refused, so that the runtime does not create it
// without its GPUs; the kubelet creates it again, once nvbind is back.
func (p *Plugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	p.inflight.Add(1)
	defer p.inflight.Add(-1)
	start := time.Now()
	var adj *api.ContainerAdjustment
	var dec *Decision
	var err error
	if p.draining.Load() && p.adj.Asks(pod, ctr) {
		err = fmt.Errorf("%w (a rollout or restart): the container is refused rather than created without its GPUs, and is created again once nvbind is back", ErrStopping)
	} else {
		adj, dec, err = p.adj.Adjust(pod, ctr)
	}
	p.metrics.observe(time.Since(start), dec, err)
	if err == nil && dec != nil && dec.Stage != nil {
		p.markStaged(ctr.GetId(), *dec.Stage)
	}
	attrs := []any{"namespace", pod.GetNamespace(), "pod", pod.GetName(), "container", ctr.GetName()}
	switch {
	case err != nil:
		p.log.Warn("GPU request refused", append(attrs, slog.Any("error", err))...)
		// the runtime shows this to users (kubectl describe pod): name who refused
		return nil, nil, fmt.Errorf("nvbind: %w", err)
	case dec != nil && dec.Skipped != "":
		p.log.Info("GPU request ignored", append(attrs, "reason", dec.Skipped)...)
	case dec != nil:
		p.log.Info("GPUs injected", append(attrs, "source", dec.Source, "devices", strings.Join(dec.Devices, ","),
			"capabilities", dec.Caps.String(), "cdi", p.adj.cfg.CDIMode)...)
	}
	return adj, nil, nil
}

// StartContainer runs the driver's steps on a container the plugin gave the driver
// without its hook (request.AnnotationStage), with the steps recorded at its creation:
// the runtime has created it, and starts it once this returns. An error fails the start
// (with containerd), which is better than a container without its libraries in the ld
// cache; the kubelet creates it again.
func (p *Plugin) StartContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	args, ok := p.takeStaged(ctr.GetId())
	if _, marked := ctr.GetAnnotations()[request.AnnotationStage]; !ok && !marked {
		return nil
	}
	p.inflight.Add(1)
	defer p.inflight.Add(-1)
	start := time.Now()
	var notes strings.Builder
	err := error(nil)
	if !ok {
		err = fmt.Errorf("none recorded (%s set by another nvbind process, or a stale or forged value): create the container again", request.AnnotationStage)
	} else {
		o := hook.OptionsOf(args)
		o.Log = &notes
		if o.AppProfile {
			for _, d := range ctr.GetLinux().GetDevices() {
				if hook.IsGPUNode(d.GetPath(), d.GetType()) && !slices.Contains(o.GPUMinors, int(d.GetMinor())) {
					o.GPUMinors = append(o.GPUMinors, int(d.GetMinor()))
				}
			}
			slices.Sort(o.GPUMinors)
		}
		sctx, cancel := context.WithTimeout(ctx, stageTimeout)
		err = hook.RunInContainer(sctx, int(ctr.GetPid()), ctr.GetId(), o)
		cancel()
	}
	p.metrics.observeStage(time.Since(start), err)
	attrs := []any{"namespace", pod.GetNamespace(), "pod", pod.GetName(), "container", ctr.GetName()}
	if err != nil {
		p.log.Warn("the driver's steps failed: the container does not start", append(attrs, slog.Any("error", err))...)
		return fmt.Errorf("nvbind: the driver's steps (links, ld cache) for container %.12s: %w", ctr.GetId(), err)
	}
	if notes.Len() > 0 {
		p.log.Debug("the driver's steps", append(attrs, "notes", strings.TrimSpace(notes.String()))...)
	}
	return nil
}

// RunOptions configure a plugin run.
type RunOptions struct {
	Name, Index, Socket string
	// Reconnect makes an external plugin dial again, with backoff, after the runtime
	// drops the connection (runtime restart). Pre-registered plugins exit instead: the
	// runtime starts them again.
	Reconnect bool
}

// Run connects to the runtime and serves until ctx ends. With Reconnect it survives
// runtime restarts.
func (p *Plugin) Run(ctx context.Context, o RunOptions) error {
	backoff := 100 * time.Millisecond
	for {
		opts := []stub.Option{stub.WithLogger(nriLogger{p.log})}
		if p.adj.cfg.StageInPlugin {
			// a plugin that times out or is lost while it does a container's steps fails
			// the request rather than letting the container start without them (a runtime
			// with NRI 0.12.5 or later; older ones ignore it)
			opts = append(opts, stub.WithFailurePolicy(&api.FailurePolicy{FailRequest: true}))
		}
		if o.Name != "" { // pre-registered plugins get name and index from the runtime
			opts = append(opts, stub.WithPluginName(o.Name))
		}
		if o.Index != "" {
			opts = append(opts, stub.WithPluginIdx(o.Index))
		}
		if o.Socket != "" {
			opts = append(opts, stub.WithSocketPath(o.Socket))
		}
		s, err := stub.New(p, opts...)
		if err != nil {
			return fmt.Errorf("create NRI stub: %w", err)
		}
		started := time.Now()
		err = p.runStub(ctx, s)
		lost := p.registered.Swap(false) // a failed dial loses nothing

		if ctx.Err() != nil {
			s.Stop()
			return nil
		}
		if !o.Reconnect {
			if err == nil {
				err = errors.New("the runtime closed the connection")
			}
			return err
		}
		if time.Since(started) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		p.log.Warn("lost the runtime, reconnecting", slog.Any("error", err), "in", backoff.String())
		if lost {
			p.metrics.reconnects.Inc()
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// runStub serves one connection until the runtime closes it or ctx ends; then it drains:
// new GPU requests are refused while those in flight are answered (at most drainTimeout),
// and only then is the connection closed. Cancelling the stub's own context at once
// would drop requests in flight, which the runtime then completes without nvbind's edits.
func (p *Plugin) runStub(ctx context.Context, s stub.Stub) error {
	stubCtx, stopStub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopStub()
	served := make(chan struct{})
	defer close(served)
	go func() {
		select {
		case <-ctx.Done():
			p.drain()
			stopStub()
		case <-served:
		}
	}()
	return s.Run(stubCtx)
}

// drain refuses new GPU requests and waits for the calls in flight, and for the starts of
// containers whose steps the plugin runs.
func (p *Plugin) drain() {
	p.draining.Store(true)
	n := p.inflight.Load()
	p.log.Info("stopping: refusing new GPU requests, answering those in flight", "in_flight", n, "starts_pending", p.pendingStarts())
	deadline := time.Now().Add(p.drainTimeout)
	for (p.inflight.Load() > 0 || p.pendingStarts() > 0) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if left, starts := p.inflight.Load(), p.pendingStarts(); left > 0 || starts > 0 {
		p.log.Warn("stopping with requests still in flight", "in_flight", left, "starts_pending", starts)
	}
}

// nriLogger sends the stub's logs to slog.
type nriLogger struct{ l *slog.Logger }

func (n nriLogger) Debugf(_ context.Context, f string, a ...interface{}) {
	n.l.Debug(fmt.Sprintf(f, a...))
}
func (n nriLogger) Infof(_ context.Context, f string, a ...interface{}) {
	n.l.Debug(fmt.Sprintf(f, a...))
}
func (n nriLogger) Warnf(_ context.Context, f string, a ...interface{}) {
	n.l.Warn(fmt.Sprintf(f, a...))
}
func (n nriLogger) Errorf(_ context.Context, f string, a ...interface{}) {
	n.l.Error(fmt.Sprintf(f, a...))
}
