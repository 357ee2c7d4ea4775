// Package metricstest reads Prometheus collectors in tests: every series
// of a registry as one map from "name{label=value,...}" (labels in
// Prometheus' order, each followed by a comma) to its counter or gauge
// value.
package metricstest

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Values gathers reg and returns every series' value by its key.
func Values(t testing.TB, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var key strings.Builder
			key.WriteString(f.GetName())
			key.WriteByte('{')
			for _, l := range m.GetLabel() {
				key.WriteString(l.GetName() + "=" + l.GetValue() + ",")
			}
			key.WriteByte('}')
			got[key.String()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return got
}

// Of registers collectors on a new registry and returns its values.
func Of(t testing.TB, collectors ...prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			t.Fatalf("registering a collector: %v", err)
		}
	}
	return Values(t, reg)
}
