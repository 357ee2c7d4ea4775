package ratelimit

import (
	"strings"
	"testing"
	"time"
)

// TestAllowN requires AllowN to spend n tokens all or none, with the
// Retry-After of the n tokens it needs, and a refusal to spend nothing.
func TestAllowN(t *testing.T) {
	z := mustZone(t, Config{Rate: 2, Burst: 10})
	long := strings.Repeat("k", MaxKeyLen+1)
	for _, tc := range []struct {
		name  string
		key   string
		n     int
		at    time.Duration
		ok    bool
		retry time.Duration
	}{
		{"part of the burst", "a", 7, 0, true, 0},
		{"more than is left", "a", 4, 0, false, time.Second},   // 3 left, 1 missing at 2/s
		{"a refusal spent nothing", "a", 3, 0, true, 0},        // the 3 still there
		{"empty", "a", 5, 0, false, 3 * time.Second},           // 5 missing at 2/s: 2.5 s, rounded up
		{"refilled", "a", 5, 2500 * time.Millisecond, true, 0}, // 5 tokens after 2.5 s
		{"more than the burst never fits", "b", 11, 0, false, 1 << 31 * time.Second},
		{"another key is untouched", "b", 10, 0, true, 0},
		{"a long key", long, 10, 0, true, 0},
		{"a long key's bucket is kept", long, 1, 0, false, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, retry := z.AllowN(tc.key, tc.n, t0.Add(tc.at))
			if ok != tc.ok || retry != tc.retry {
				t.Fatalf("AllowN(%d) = %v, %v; want %v, %v", tc.n, ok, retry, tc.ok, tc.retry)
			}
		})
	}
}
