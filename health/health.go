// Package health takes GPUs out of service on the faults the driver reports (NVML's XID
// events) and puts them back by a stated policy:
//
//   - an XID event marks its GPU unhealthy, unless the XID is one an application causes
//     (NVIDIA's list, DefaultIgnoredXIDs, and any the operator adds); an event NVML
//     cannot tie to a GPU, or "GPU is lost", marks every GPU;
//   - every unit of that GPU follows it: its MIG devices and its replicas;
//   - a GPU returns when it has had no critical XID for the recovery time and NVML (or,
//     without NVML, discovery) still answers for it; a recovery time of 0 keeps it out
//     until the process restarts.
//
// The Tracker holds that state; Sources (NVML's event set, or a file of events for tests
// and external monitors) feed it.
package health

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultIgnoredXIDs are the XIDs an application causes rather than the GPU (NVIDIA's
// list, as its device plugin skips them): 13 graphics engine exception, 31 GPU memory page
// fault, 43 GPU stopped processing, 45 preemptive cleanup, 68 video processor exception,
// 109 context switch timeout.
var DefaultIgnoredXIDs = []uint64{13, 31, 43, 45, 68, 109}

// Event is one fault the driver reported.
type Event struct {
	// GPU is the UUID of the GPU (a MIG device's parent); empty for an event NVML could
	// not tie to one GPU, which marks them all.
	GPU string
	// XID is the XID code; 0 with Lost.
	XID uint64
	// Lost is NVML's "GPU is lost": the GPU fell off the bus.
	Lost bool
}

func (e Event) String() string {
	if e.Lost {
		return "GPU lost"
	}
	return "XID " + strconv.FormatUint(e.XID, 10)
}

// Policy says which events count and when a GPU returns.
type Policy struct {
	// Ignored are the XIDs that leave a GPU in service (DefaultIgnoredXIDs and more).
	Ignored []uint64
	// RecoverAfter is how long a GPU must go without a critical XID before it returns
	// (if it still answers); 0 keeps it out until the process restarts.
	RecoverAfter time.Duration
}

// ParseXIDs parses a comma-separated list of XIDs (a flag's value).
func ParseXIDs(v string) ([]uint64, error) {
	var out []uint64
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("XID %q is not a positive number (valid: a comma-separated list such as 13,31,43)", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// Fault is why a GPU is out of service.
type Fault struct {
	Event Event
	// Since is the first critical event, Last the latest.
	Since, Last time.Time
	Count       int
}

// Reason is the fault in words, for logs and the kubelet's refusals.
func (f Fault) Reason() string {
	return fmt.Sprintf("%s at %s (%d critical events since %s)", f.Event, f.Last.UTC().Format(time.RFC3339), f.Count, f.Since.UTC().Format(time.RFC3339))
}

// Tracker holds which GPUs are out of service. It is safe for concurrent use.
type Tracker struct {
	policy  Policy
	ignored map[uint64]bool
	metrics *Metrics

	mu     sync.Mutex
	gpus   []string // every GPU known, for "all" events and the health gauge
	faults map[string]*Fault
	notify chan struct{}
}

// NewTracker makes a tracker; m may be nil.
func NewTracker(p Policy, m *Metrics) *Tracker {
	if m == nil {
		m = NewMetrics()
	}
	t := &Tracker{policy: p, ignored: map[uint64]bool{}, metrics: m, faults: map[string]*Fault{}, notify: make(chan struct{}, 1)}
	for _, x := range p.Ignored {
		t.ignored[x] = true
	}
	return t
}

// Changed signals (coalesced) that the set of GPUs out of service changed.
func (t *Tracker) Changed() <-chan struct{} { return t.notify }

func (t *Tracker) changed() {
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// SetGPUs sets the GPUs discovery knows (UUIDs). A GPU that left keeps its fault: should
// it come back (a reset, the driver reloaded) it returns only by the policy, after the
// recovery time while the driver answers for it. Its metric series go.
func (t *Tracker) SetGPUs(uuids []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.gpus
	t.gpus = slices.Clone(uuids)
	sort.Strings(t.gpus)
	for _, u := range old {
		if !slices.Contains(t.gpus, u) {
			t.metrics.health.DeleteLabelValues(u)
			t.metrics.xids.DeletePartialMatch(prometheus.Labels{"uuid": u})
		}
	}
	t.gaugesLocked()
}

// Observe takes one event at now and reports whether a GPU left service because of it,
// and whether the event was critical (not an ignored XID, for a GPU of this node).
func (t *Tracker) Observe(e Event, now time.Time) (out, critical bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	targets := []string{e.GPU}
	if e.GPU == "" {
		targets = t.gpus
	}
	// only this node's GPUs: an event of another GPU neither counts nor makes a series
	targets = slices.DeleteFunc(slices.Clone(targets), func(g string) bool { return !slices.Contains(t.gpus, g) })
	for _, g := range targets {
		if !e.Lost {
			t.metrics.xids.WithLabelValues(g, strconv.FormatUint(e.XID, 10)).Inc()
		}
	}
	if (!e.Lost && t.ignored[e.XID]) || len(targets) == 0 {
		return false, false
	}
	for _, g := range targets {
		f := t.faults[g]
		if f == nil {
			f = &Fault{Since: now}
			t.faults[g] = f
			out = true
		}
		f.Event, f.Last = e, now
		f.Count++
	}
	if out {
		t.gaugesLocked()
		t.changed()
	}
	return out, true
}

// Recover returns to service the GPUs whose last critical event is RecoverAfter old and
// for which answers says the driver still answers; it returns their UUIDs.
func (t *Tracker) Recover(now time.Time, answers func(uuid string) bool) []string {
	if t.policy.RecoverAfter <= 0 {
		return nil
	}
	t.mu.Lock()
	var due []string
	for g, f := range t.faults {
		if now.Sub(f.Last) >= t.policy.RecoverAfter {
			due = append(due, g)
		}
	}
	t.mu.Unlock()
	sort.Strings(due)
	var back []string
	for _, g := range due {
		if answers != nil && !answers(g) {
			continue
		}
		t.mu.Lock()
		// a new event may have come while the driver was asked
		if f := t.faults[g]; f != nil && now.Sub(f.Last) >= t.policy.RecoverAfter {
			delete(t.faults, g)
			back = append(back, g)
		}
		t.mu.Unlock()
	}
	if len(back) > 0 {
		t.mu.Lock()
		t.gaugesLocked()
		t.mu.Unlock()
		t.changed()
	}
	return back
}

// Faults returns the GPUs out of service, by UUID.
func (t *Tracker) Faults() map[string]Fault {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]Fault, len(t.faults))
	for g, f := range t.faults {
		out[g] = *f
	}
	return out
}

func (t *Tracker) gaugesLocked() {
	for _, g := range t.gpus {
		v := 1.0
		if t.faults[g] != nil {
			v = 0
		}
		t.metrics.health.WithLabelValues(g).Set(v)
	}
}

// Metrics are the health metrics: nvbind_gpu_health (1 in service, 0 out) and
// nvbind_gpu_xid_errors_total, by GPU and XID (the ignored ones included).
type Metrics struct {
	health *prometheus.GaugeVec
	xids   *prometheus.CounterVec
}

// NewMetrics creates the metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		health: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nvbind_gpu_health",
			Help: "1 while the GPU is in service, 0 while a critical XID keeps it out, by GPU UUID."}, []string{"uuid"}),
		xids: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nvbind_gpu_xid_errors_total",
			Help: "XID events the driver reported, by GPU UUID and XID (the ones an application causes included)."}, []string{"uuid", "xid"}),
	}
}

// Collectors returns the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.health, m.xids}
}
