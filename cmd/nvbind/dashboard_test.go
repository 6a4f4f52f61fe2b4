//go:build !nvbind_lean

package main

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nvbind/nvbind/deviceplugin"
	"github.com/nvbind/nvbind/health"
	"github.com/nvbind/nvbind/nriplugin"
)

// TestDashboardMetrics: every series the chart's Grafana dashboard queries is one nvbind
// exports (a renamed metric would leave a panel empty), and every nvbind metric is on it.
func TestDashboardMetrics(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../manifests/helm/nvbind/dashboards/nvbind.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard: %v", err)
	}
	exported := map[string]bool{"nvbind_build_info": true} // a constant gauge, registered apart
	var cs []prometheus.Collector
	cs = append(cs, nriplugin.NewMetrics("v", "c").Collectors()...)
	cs = append(cs, deviceplugin.NewMetrics().Collectors()...)
	cs = append(cs, health.NewMetrics().Collectors()...)
	descs := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range cs {
			c.Describe(descs)
		}
		close(descs)
	}()
	name := regexp.MustCompile(`fqName: "([a-z_:]+)"`)
	for d := range descs {
		if m := name.FindStringSubmatch(d.String()); m != nil && strings.HasPrefix(m[1], "nvbind_") {
			exported[m[1]] = true
		}
	}
	if !exported["nvbind_requests_total"] || !exported["nvbind_gpu_health"] {
		t.Fatalf("metrics found: %v", exported)
	}
	queried := map[string]bool{}
	series := regexp.MustCompile(`nvbind_[a-z_]+`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			for _, s := range series.FindAllString(tg.Expr, -1) {
				s = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(s, "_bucket"), "_sum"), "_count")
				if !exported[s] {
					t.Errorf("panel %q queries %s, which nvbind does not export", p.Title, s)
				}
				queried[s] = true
			}
		}
	}
	for m := range exported {
		if !queried[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
	if t.Failed() {
		var ks []string
		for k := range exported {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		t.Logf("exported: %v", ks)
	}
}
