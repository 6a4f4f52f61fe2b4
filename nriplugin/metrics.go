package nriplugin

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the plugin's Prometheus metrics, in a registry of their own.
type Metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	devices    prometheus.Counter
	failures   *prometheus.CounterVec
	latency    prometheus.Histogram
	reconnects prometheus.Counter
}

// NewMetrics creates the metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nvbind_requests_total",
			Help: "GPU requests seen in CreateContainer, by source (annotation, cdi, env) and outcome."}, []string{"source", "outcome"}),
		devices: prometheus.NewCounter(prometheus.CounterOpts{Name: "nvbind_injected_devices_total",
			Help: "GPUs and MIG devices injected into containers."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nvbind_failures_total",
			Help: "Refused CreateContainer requests, by reason."}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nvbind_create_container_seconds",
			Help:    "Time spent handling CreateContainer.",
			Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2}}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "nvbind_runtime_reconnects_total",
			Help: "Times the plugin lost the runtime and dialled again."}),
	}
	m.reg.MustRegister(m.requests, m.devices, m.failures, m.latency, m.reconnects)
	return m
}

// Register adds collectors of other parts of the process (the device plugin) to the
// registry /metrics serves.
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }

func sourceLabel(s string) string {
	switch {
	case strings.Contains(s, "gpus.nvbind.io"):
		return "annotation"
	case strings.HasPrefix(s, "env "):
		return "env"
	case s == "":
		return "none"
	}
	return "cdi"
}

func (m *Metrics) observe(d time.Duration, dec *Decision, err error) {
	m.latency.Observe(d.Seconds())
	if dec == nil && err == nil {
		return
	}
	src := ""
	if dec != nil {
		src = dec.Source
	}
	switch {
	case err != nil:
		m.requests.WithLabelValues(sourceLabel(src), "refused").Inc()
		m.failures.WithLabelValues(failureReason(err)).Inc()
	case dec.Skipped != "":
		m.requests.WithLabelValues(sourceLabel(src), "ignored").Inc()
	default:
		m.requests.WithLabelValues(sourceLabel(src), "injected").Inc()
		m.devices.Add(float64(len(dec.Devices)))
	}
}

func failureReason(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, ErrDenied):
		return "denied"
	case errors.Is(err, ErrNoInventory):
		return "no_inventory"
	case strings.Contains(msg, "is not on this node"):
		return "unknown_device"
	case strings.Contains(msg, "unmet requirement"):
		return "unmet_requirement"
	}
	return "bad_request"
}
