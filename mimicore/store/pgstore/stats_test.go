package pgstore

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestRoundTrips checks Stats.RoundTrips against what each operation
// sends on a connection that prepared its statements already: with a pool
// of one connection, an operation run twice costs the round trips of its
// statements the second time, and the prepares on top the first time.
func TestRoundTrips(t *testing.T) {
	s := openTemp(t, Options{MaxConns: 1})
	ctx := context.Background()
	expires := time.Now().Add(time.Hour)
	n := 0
	delivery := func(recipients ...string) func() error {
		return func() error {
			n++
			_, err := s.Append(ctx, store.Delivery{
				Recipients: recipients, Sender: "b.example", Message: []byte("message"),
				Dedup: key32("dedup", n), DedupExpires: expires,
				Replay: &store.ReplayRecord{Sender: "b.example", RequestID: fmt.Appendf(nil, "request %d", n),
					Answer: store.Answer{Body: []byte("answer")}, Expires: expires},
			})
			return err
		}
	}
	tests := []struct {
		name string
		op   func() error
		// want is the round trips of a run on a warm connection.
		want uint64
	}{
		// One INSERT ... ON CONFLICT ... RETURNING, outside a transaction.
		{"MarkSpent", func() error {
			n++
			_, err := s.MarkSpent(ctx, fmt.Appendf(nil, "token %d", n), expires)
			return err
		}, 1},
		// BEGIN; a batch of the dedup record, the replay record and the
		// body; the numbered queue entries; pg_notify; COMMIT.
		{"Append to one queue", delivery("mimi://a.example/d/alice/1"), 5},
		{"Append to three queues", delivery("mimi://a.example/d/alice/1", "mimi://a.example/d/bob/1",
			"mimi://a.example/d/carol/1"), 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Stats().RoundTrips
			if err := tc.op(); err != nil {
				t.Fatalf("first run: %v", err)
			}
			first := s.Stats().RoundTrips - before
			if first < tc.want {
				t.Errorf("first run: %d round trips, want at least %d", first, tc.want)
			}
			before = s.Stats().RoundTrips
			if err := tc.op(); err != nil {
				t.Fatalf("second run: %v", err)
			}
			if got := s.Stats().RoundTrips - before; got != tc.want {
				t.Errorf("second run: %d round trips, want %d (first run: %d)", got, tc.want, first)
			}
		})
	}
}

// key32 is a distinct 32-byte key of kind and n.
func key32(kind string, n int) []byte {
	k := sha256.Sum256(fmt.Appendf(nil, "%s %d", kind, n))
	return k[:]
}
