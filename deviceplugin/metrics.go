package deviceplugin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the device plugin's Prometheus metrics; Collectors registers them
// wherever the process serves /metrics.
type Metrics struct {
	registrations *prometheus.CounterVec
	allocate      *prometheus.HistogramVec
	updates       *prometheus.CounterVec
}

// NewMetrics creates the metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nvbind_device_plugin_registrations_total",
			Help: "Registrations with the kubelet, by resource (more than one: the kubelet restarted)."}, []string{"resource"}),
		allocate: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "nvbind_device_plugin_allocate_duration_seconds",
			Help:    "Time spent answering the kubelet's Allocate, by resource.",
			Buckets: []float64{1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2}}, []string{"resource"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nvbind_device_plugin_list_and_watch_updates_total",
			Help: "Device lists sent to the kubelet, by resource."}, []string{"resource"}),
	}
}

// Collectors returns the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.registrations, m.allocate, m.updates}
}

func (m *Metrics) allocateTimer(resource string) func() {
	start := time.Now()
	return func() { m.allocate.WithLabelValues(resource).Observe(time.Since(start).Seconds()) }
}

func (m *Metrics) listAndWatchSent(resource string) { m.updates.WithLabelValues(resource).Inc() }
