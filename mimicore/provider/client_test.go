package provider

import (
	"testing"
	"time"
)

// TestRetryAfterHeader checks the parse of a peer's Retry-After:
// delta-seconds, capped at a day; anything else is none.
func TestRetryAfterHeader(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"7", 7 * time.Second},
		{"120", 2 * time.Minute},
		{"999999999", maxRetryAfter},
		{"99999999999", 0}, // not a delta-seconds this parser takes
		{"-1", 0},
		{"+5", 0},
		{"1.5", 0},
		{"Wed, 21 Oct 2015 07:28:00 GMT", 0},
	} {
		t.Run(tc.v, func(t *testing.T) {
			if got := retryAfter(tc.v); got != tc.want {
				t.Fatalf("retryAfter(%q) = %v, want %v", tc.v, got, tc.want)
			}
		})
	}
}
