package storetest

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// retryOf is a destination's retry state with a backoff of its own, a
// 429's, and two group backoffs, times on whole milliseconds.
func retryOf(dest string) store.OutboxRetry {
	at := time.UnixMilli(time.Now().Add(future).UnixMilli()).UTC()
	return store.OutboxRetry{
		Destination: dest, Failures: 7, LastError: "dial tcp: connection refused",
		LastAttempt: at.Add(-time.Minute),
		Backoff:     store.OutboxBackoff{Level: 64 * time.Second, Next: at},
		RateLimited: true,
		Groups: []store.OutboxGroupBackoff{
			{GroupID: []byte{1}, OutboxBackoff: store.OutboxBackoff{Level: time.Second, Next: at.Add(time.Second)}},
			{GroupID: bytes.Repeat([]byte{2}, store.MaxIDSize), OutboxBackoff: store.OutboxBackoff{Level: 5 * time.Minute, Next: at.Add(time.Hour)}},
		},
	}
}

// wantRetries checks that s holds exactly want, in order.
func wantRetries(t *testing.T, what string, s store.Store, want ...store.OutboxRetry) {
	t.Helper()
	got, err := s.OutboxRetries(ctx())
	noErr(t, what+": OutboxRetries", err)
	if len(got) != len(want) {
		t.Fatalf("%s: OutboxRetries holds %d destinations, want %d: %+v", what, len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		same := g.Destination == w.Destination && g.Failures == w.Failures && g.LastError == w.LastError &&
			g.LastAttempt.Equal(w.LastAttempt) && g.Backoff.Level == w.Backoff.Level && g.Backoff.Next.Equal(w.Backoff.Next) &&
			g.RateLimited == w.RateLimited && len(g.Groups) == len(w.Groups)
		for j := 0; same && j < len(w.Groups); j++ {
			same = bytes.Equal(g.Groups[j].GroupID, w.Groups[j].GroupID) && g.Groups[j].Level == w.Groups[j].Level &&
				g.Groups[j].Next.Equal(w.Groups[j].Next)
		}
		if !same {
			t.Fatalf("%s: OutboxRetries[%d] = %+v, want %+v", what, i, g, w)
		}
	}
}

// testOutboxRetries checks that a destination's retry state is kept,
// replaced (whether its backoff is a 429's too), listed in destination
// order and cleared, and that invalid states are refused.
func testOutboxRetries(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	wantRetries(t, "empty store", s)
	c, b := retryOf("c.example"), retryOf(store.BackendDestination)
	b.Groups, b.RateLimited = nil, false
	noErr(t, "SetOutboxRetry c", s.SetOutboxRetry(ctx(), c))
	noErr(t, "SetOutboxRetry @backend", s.SetOutboxRetry(ctx(), b))
	wantRetries(t, "two destinations", s, b, c)

	c.Failures, c.LastError, c.Backoff, c.RateLimited, c.Groups = 8, "status 503 unavailable", store.OutboxBackoff{}, false, c.Groups[1:]
	noErr(t, "SetOutboxRetry c again", s.SetOutboxRetry(ctx(), c))
	wantRetries(t, "replaced", s, b, c)
	b.RateLimited = true
	noErr(t, "SetOutboxRetry @backend rate limited", s.SetOutboxRetry(ctx(), b))
	wantRetries(t, "replaced by a 429's", s, b, c)

	noErr(t, "ClearOutboxRetry c", s.ClearOutboxRetry(ctx(), "c.example"))
	noErr(t, "ClearOutboxRetry of a destination without one", s.ClearOutboxRetry(ctx(), "never.example"))
	wantRetries(t, "cleared", s, b)

	full := retryOf("d.example")
	full.Groups = nil
	for i := range store.MaxOutboxRetryGroups {
		full.Groups = append(full.Groups, store.OutboxGroupBackoff{GroupID: []byte{byte(i), byte(i >> 8)},
			OutboxBackoff: store.OutboxBackoff{Level: time.Second, Next: full.Backoff.Next}})
	}
	full.LastError = strings.Repeat("x", store.MaxOutboxRetryError)
	noErr(t, "SetOutboxRetry at the bounds", s.SetOutboxRetry(ctx(), full))
	wantRetries(t, "at the bounds", s, b, full)

	for _, tc := range []struct {
		name   string
		change func(r *store.OutboxRetry)
	}{
		{"EmptyDestination", func(r *store.OutboxRetry) { r.Destination = "" }},
		{"NegativeFailures", func(r *store.OutboxRetry) { r.Failures = -1 }},
		{"NegativeLevel", func(r *store.OutboxRetry) { r.Backoff.Level = -time.Second }},
		{"RateLimitedWithoutBackoff", func(r *store.OutboxRetry) { r.Backoff = store.OutboxBackoff{} }},
		{"LongError", func(r *store.OutboxRetry) { r.LastError = strings.Repeat("x", store.MaxOutboxRetryError+1) }},
		// PostgreSQL's text holds no NUL: both stores refuse it alike.
		{"NULInError", func(r *store.OutboxRetry) { r.LastError = "x509: certificate is valid for a\x00b.example" }},
		{"EmptyGroupID", func(r *store.OutboxRetry) { r.Groups[0].GroupID = nil }},
		{"LongGroupID", func(r *store.OutboxRetry) { r.Groups[0].GroupID = make([]byte, store.MaxIDSize+1) }},
		{"GroupTwice", func(r *store.OutboxRetry) { r.Groups[1].GroupID = r.Groups[0].GroupID }},
		{"TooManyGroups", func(r *store.OutboxRetry) {
			for i := range store.MaxOutboxRetryGroups {
				r.Groups = append(r.Groups, store.OutboxGroupBackoff{GroupID: []byte{3, byte(i), byte(i >> 8)}})
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := retryOf("e.example")
			tc.change(&r)
			wantErr(t, "SetOutboxRetry", s.SetOutboxRetry(ctx(), r), store.ErrInvalid)
		})
	}
	wantErr(t, "ClearOutboxRetry of an empty destination", s.ClearOutboxRetry(ctx(), ""), store.ErrInvalid)
	wantRetries(t, "after the refusals", s, b, full)
}

// testReopenOutboxRetries checks that a destination's retry state survives
// closing and reopening the store.
func testReopenOutboxRetries(t *testing.T, open func() (store.Store, error)) {
	s, err := open()
	noErr(t, "opening store", err)
	c := retryOf("c.example")
	noErr(t, "SetOutboxRetry", s.SetOutboxRetry(ctx(), c))
	noErr(t, "Close", s.Close())
	s, err = open()
	noErr(t, "reopening store", err)
	defer s.Close()
	wantRetries(t, "reopened", s, c)
}

// CheckOutboxRetryMigrated checks s, opened on a database migrated past
// the migration that records whether a destination's stored backoff is a
// 429's, which held old, a retry state without that (RateLimited false,
// times on whole milliseconds), from before it: old reads back as it was,
// not rate limited (its backoff ends at the destination's first request,
// as before), and a state stored now keeps the flag.
func CheckOutboxRetryMigrated(t *testing.T, s store.Store, old store.OutboxRetry) {
	t.Helper()
	wantRetries(t, "migrated", s, old)
	limited := old
	limited.RateLimited = true
	noErr(t, "SetOutboxRetry after the migration", s.SetOutboxRetry(ctx(), limited))
	wantRetries(t, "rate limited after the migration", s, limited)
}
