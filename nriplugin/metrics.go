package nriplugin

import (
	"errors"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nvbind/nvbind/request"
)

// Metrics are the plugin's Prometheus metrics, in a registry of their own with the Go and
// process collectors.
type Metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	devices    prometheus.Counter
	latency    prometheus.Histogram
	reconnects prometheus.Counter
	stage      prometheus.Histogram
	stageFails prometheus.Counter
}

// NewMetrics creates the metrics; version and commit label nvbind_build_info.
func NewMetrics(version, commit string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nvbind_requests_total",
			Help: "GPU requests seen in CreateContainer, by source (annotation, cdi, env, allocation), outcome (injected, ignored, refused) and, when refused, reason."},
			[]string{"source", "outcome", "reason"}),
		devices: prometheus.NewCounter(prometheus.CounterOpts{Name: "nvbind_injected_devices_total",
			Help: "GPUs and MIG devices injected into containers."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nvbind_create_container_duration_seconds",
			Help:    "Time spent handling CreateContainer.",
			Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2}}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "nvbind_runtime_reconnects_total",
			Help: "Times the plugin lost the runtime and dialled again."}),
		stage: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nvbind_start_container_duration_seconds",
			Help:    "Time spent in StartContainer running the hook's actions on a container (links, ld cache, params), where the plugin runs them.",
			Buckets: []float64{5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2, 0.125, 0.25, 0.5, 1, 2}}),
		stageFails: prometheus.NewCounter(prometheus.CounterOpts{Name: "nvbind_start_container_failures_total",
			Help: "Containers whose start the plugin failed because the hook's actions on them failed."}),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "nvbind_build_info", Help: "nvbind's version, commit and Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "goversion": runtime.Version()}})
	info.Set(1)
	m.reg.MustRegister(m.requests, m.devices, m.latency, m.reconnects, m.stage, m.stageFails, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Collectors returns the plugin's own metrics (not the Go and process collectors).
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.devices, m.latency, m.reconnects, m.stage, m.stageFails}
}

// Register adds collectors of other parts of the process (the device plugin) to the
// registry /metrics serves.
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }

func (m *Metrics) observe(d time.Duration, dec *Decision, err error) {
	m.latency.Observe(d.Seconds())
	if dec == nil && err == nil {
		return
	}
	src := "none"
	if dec != nil && dec.Kind != "" {
		src = string(dec.Kind)
	}
	switch {
	case err != nil:
		m.requests.WithLabelValues(src, "refused", failureReason(err)).Inc()
	case dec.Skipped != "":
		m.requests.WithLabelValues(src, "ignored", "").Inc()
	default:
		m.requests.WithLabelValues(src, "injected", "").Inc()
		m.devices.Add(float64(len(dec.Devices)))
	}
}

// failureReason names a refusal by its sentinel error.
func failureReason(err error) string {
	switch {
	case errors.Is(err, ErrDenied):
		return "denied"
	case errors.Is(err, ErrNotAllocated):
		return "not_allocated"
	case errors.Is(err, ErrStopping):
		return "stopping"
	case errors.Is(err, ErrNoInventory):
		return "no_inventory"
	case errors.Is(err, request.ErrUnknownDevice):
		return "unknown_device"
	case errors.Is(err, request.ErrUnmetRequirement):
		return "unmet_requirement"
	case errors.Is(err, request.ErrUnsupportedHost):
		return "unsupported_host"
	}
	return "bad_request"
}

func (m *Metrics) observeStage(d time.Duration, err error) {
	m.stage.Observe(d.Seconds())
	if err != nil {
		m.stageFails.Inc()
	}
}
