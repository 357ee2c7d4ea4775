package client

import (
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzParseRetryAfter parses arbitrary Retry-After and Date values of a
// gateway's answer: the wait is never negative nor over MaxRetryAfter, a
// malformed value asks for none, delta-seconds of any length match an
// exact computation, and any other accepted value is an HTTP-date.
//
//	go test -fuzz=FuzzParseRetryAfter ./mimicore/client
func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC).Unix()
	for _, seed := range []struct{ v, date string }{
		{"", ""}, {"12", ""}, {"0", ""}, {"0000000005", ""}, {"86400", ""}, {"86401", ""},
		{"999999", ""}, {"1000000", ""}, {"0000000000000000000000086399", ""},
		{"99999999999999999999999", ""}, {"-5", ""}, {"+5", ""}, {"1.5", ""}, {"5s", ""}, {"1 2", ""},
		{"Wed, 02 Dec 2026 03:01:30 GMT", ""},
		{"Wednesday, 02-Dec-26 03:00:30 GMT", ""},
		{"Wed Dec  2 03:00:10 2026", ""},
		{"Wed, 02 Dec 2026 04:00:20 GMT", "Wed, 02 Dec 2026 04:00:00 GMT"},
		{"Wed, 02 Dec 2026 03:00:07 GMT", "yesterday"},
		{"Mon, 01 Jan 0001 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT"},
		{"Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT"},
	} {
		f.Add(seed.v, seed.date, now)
	}
	maxSeconds := big.NewInt(int64(MaxRetryAfter / time.Second))
	f.Fuzz(func(t *testing.T, v, date string, unix int64) {
		got, ok := parseRetryAfter(v, date, time.Unix(unix, 0))
		if got < 0 || got > MaxRetryAfter {
			t.Fatalf("parseRetryAfter(%q, %q) = %v: out of 0..%v", v, date, got, MaxRetryAfter)
		}
		if !ok && got != 0 {
			t.Fatalf("parseRetryAfter(%q, %q) = %v for a malformed value", v, date, got)
		}
		if v != "" && strings.Trim(v, "0123456789") == "" {
			n, _ := new(big.Int).SetString(v, 10)
			if n.Cmp(maxSeconds) > 0 {
				n = maxSeconds
			}
			if want := time.Duration(n.Int64()) * time.Second; !ok || got != want {
				t.Fatalf("parseRetryAfter(%q) = %v, %v; want %v, true", v, got, ok, want)
			}
			return
		}
		if _, err := http.ParseTime(v); ok != (err == nil) {
			t.Fatalf("parseRetryAfter(%q) ok %v, but http.ParseTime says %v", v, ok, err)
		}
	})
}
