package client

import (
	"testing"
	"time"
)

// TestParseRetryAfter checks both forms of Retry-After (RFC 9110
// §10.2.3), the bound, and that a malformed value is ignored.
func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, value, date string
		want              time.Duration
		ok                bool
	}{
		{"absent", "", "", 0, false},
		{"seconds", "12", "", 12 * time.Second, true},
		{"zero", "0", "", 0, true},
		{"leading zeros", "0000000005", "", 5 * time.Second, true},
		{"a day", "86400", "", 24 * time.Hour, true},
		{"over the bound", "86401", "", MaxRetryAfter, true},
		{"far over the bound", "99999999999999999999999", "", MaxRetryAfter, true},
		{"negative", "-5", "", 0, false},
		{"plus sign", "+5", "", 0, false},
		{"fraction", "1.5", "", 0, false},
		{"unit", "5s", "", 0, false},
		{"inner space", "1 2", "", 0, false},
		{"garbage", "soon", "", 0, false},
		{"IMF-fixdate", "Wed, 02 Dec 2026 03:01:30 GMT", "", 90 * time.Second, true},
		{"RFC 850 date", "Wednesday, 02-Dec-26 03:00:30 GMT", "", 30 * time.Second, true},
		{"asctime date", "Wed Dec  2 03:00:10 2026", "", 10 * time.Second, true},
		{"date against the answer's Date", "Wed, 02 Dec 2026 04:00:20 GMT", "Wed, 02 Dec 2026 04:00:00 GMT", 20 * time.Second, true},
		{"malformed Date: the clock", "Wed, 02 Dec 2026 03:00:07 GMT", "yesterday", 7 * time.Second, true},
		{"date in the past", "Wed, 02 Dec 2026 02:00:00 GMT", "", 0, true},
		{"date far ahead", "Wed, 02 Dec 2027 03:00:00 GMT", "", MaxRetryAfter, true},
		{"date with a numeric zone", "Wed, 02 Dec 2026 03:01:30 +0000", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseRetryAfter(tc.value, tc.date, now)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("parseRetryAfter(%q, %q) = %v, %v; want %v, %v", tc.value, tc.date, got, ok, tc.want, tc.ok)
			}
		})
	}
}
