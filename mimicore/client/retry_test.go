package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
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

// TestRetryWait checks which refusals the client waits out before it
// sends a request that is safe to repeat again: a 429 or 503 with a
// Retry-After within Config.MaxRetryWait and within the context's
// deadline.
func TestRetryWait(t *testing.T) {
	rateLimited := func(d time.Duration) error {
		return fmt.Errorf("receiving: %w", &Error{Op: "local /messages", Status: http.StatusTooManyRequests, Code: moh.CodeRateLimited, RetryAfter: d})
	}
	for _, tc := range []struct {
		name     string
		err      error
		maxWait  time.Duration
		deadline time.Duration // from now; 0: none
		want     time.Duration
		ok       bool
	}{
		{"429 with Retry-After", rateLimited(12 * time.Second), 0, 0, 12 * time.Second, true},
		{"503 with Retry-After", &Error{Status: http.StatusServiceUnavailable, Code: moh.CodeBackendUnavailable, RetryAfter: time.Second}, 0, 0, time.Second, true},
		{"503 of a proxy with Retry-After", &Error{Status: http.StatusServiceUnavailable, RetryAfter: time.Second}, 0, 0, time.Second, true},
		{"429 without Retry-After", rateLimited(0), 0, 0, 0, false},
		{"another status with Retry-After", &Error{Status: http.StatusConflict, Code: moh.CodeReplay, RetryAfter: time.Second}, 0, 0, 0, false},
		{"not a refusal", errors.New("connection reset"), 0, 0, 0, false},
		{"at the default bound", rateLimited(DefaultMaxRetryWait), 0, 0, DefaultMaxRetryWait, true},
		{"over the default bound", rateLimited(DefaultMaxRetryWait + time.Second), 0, 0, 0, false},
		{"over a configured bound", rateLimited(12 * time.Second), 10 * time.Second, 0, 0, false},
		{"waits switched off", rateLimited(time.Second), -1, 0, 0, false},
		{"past the context's deadline", rateLimited(12 * time.Second), 0, 5 * time.Second, 0, false},
		{"within the context's deadline", rateLimited(time.Second), 0, time.Hour, time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			c := &Client{cfg: Config{MaxRetryWait: tc.maxWait}}
			got, ok := c.retryWait(ctx, tc.err)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("retryWait(%v) = %v, %v; want %v, %v", tc.err, got, ok, tc.want, tc.ok)
			}
		})
	}
}
