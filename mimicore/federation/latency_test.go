package federation

import (
	"testing"
	"time"
)

func TestLatencyHistogram(t *testing.T) {
	var h latencyHistogram
	for _, d := range []time.Duration{-time.Second, 0, time.Millisecond, 3 * time.Millisecond, 2 * time.Second, 48 * time.Hour} {
		h.observe(d)
	}
	l := h.snapshot()
	for _, tc := range []struct {
		bound float64
		want  uint64
	}{
		{0.001, 3},     // the negative one counts as 0, then 0 and 1 ms
		{0.0025, 3},    // 3 ms is above
		{0.005, 4},     // 3 ms
		{2.5, 5},       // 2 s
		{24 * 3600, 5}, // 48 h is past the last bound
	} {
		t.Run(time.Duration(tc.bound*float64(time.Second)).String(), func(t *testing.T) {
			for i, b := range LatencyBounds {
				if b == tc.bound && l.Cumulative[i] != tc.want {
					t.Fatalf("at most %gs: %d, want %d", b, l.Cumulative[i], tc.want)
				}
			}
		})
	}
	if l.Count != 6 || l.Sum != 48*time.Hour+2*time.Second+4*time.Millisecond {
		t.Fatalf("count %d sum %s", l.Count, l.Sum)
	}
}
