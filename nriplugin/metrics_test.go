package nriplugin

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

// TestMetricsNames: Prometheus conventions (_total, _duration_seconds, build_info, the
// Go and process collectors) and the refusal reason from sentinel errors, not text.
func TestMetricsNames(t *testing.T) {
	t.Parallel()
	m := NewMetrics("v1.2.3", "abc")
	p := NewPlugin(newTestAdjuster(t, Config{EnvRequests: true, AllowedNamespaces: []string{"default"}}), nil, m)
	for _, c := range []struct {
		ns  string
		ann map[string]string
		env []string
	}{
		{"default", map[string]string{"gpus.nvbind.io": "0"}, nil},
		{"default", map[string]string{"gpus.nvbind.io": "7"}, nil},
		{"default", nil, []string{"NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=99"}},
		{"other", map[string]string{"gpus.nvbind.io": "0"}, nil},
	} {
		_, _, _ = p.CreateContainer(t.Context(), &api.PodSandbox{Namespace: c.ns, Annotations: c.ann}, &api.Container{Name: "c", Env: c.env})
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	text := string(body)
	for _, want := range []string{
		`nvbind_requests_total{outcome="injected",reason="",source="annotation"} 1`,
		`nvbind_requests_total{outcome="refused",reason="unknown_device",source="annotation"} 1`,
		`nvbind_requests_total{outcome="refused",reason="unmet_requirement",source="env"} 1`,
		`nvbind_requests_total{outcome="refused",reason="denied",source="annotation"} 1`,
		`nvbind_create_container_duration_seconds_count 4`,
		`nvbind_build_info{commit="abc",goversion="go`,
		`go_goroutines `, `process_start_time_seconds `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(text, "nvbind_failures_total") {
		t.Error("the separate failures counter is back")
	}
}
