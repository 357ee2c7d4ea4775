package federation

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
)

// TestSenderRoundTripsPerPass has a sender with drain leases on
// PostgreSQL deliver messages that arrive one at a time, one pass each,
// and counts its store's round trips: the claim with its read, and the
// removal with the release (README, "Several gateways on one database"),
// the clear of the destination's stored backoff after a pass that
// delivered, and no more (the drops at the backlog's bound are read at
// most once per DropLogInterval, not at every pass).
func TestSenderRoundTripsPerPass(t *testing.T) {
	const messages = 40
	dsn := pgtest.NewDB(t)
	open := func() *pgstore.Store {
		st, err := pgstore.Open(t.Context(), dsn, pgstore.Options{MaxConns: 2})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	// The messages are written through another store (another gateway),
	// so that only the sender's round trips are counted.
	writer, st := open(), open()
	p := newPeer(nil)
	s := &Sender{Outbox: st, Leases: st, Holder: "gateway", Transport: p, LeaseTTL: time.Hour}
	runSender(t, s)
	// Each pass is the one for its message: the next is written once
	// the one before was delivered.
	addOutbox(t, writer, "g", 0, 1)
	s.Outbound("dest.example")
	waitFor(t, "the first message", func() bool { return len(p.received("g")) == 1 })
	waitFor(t, "the first message removed", func() bool {
		pending, err := writer.OutboxPending(t.Context(), "dest.example", 0, 1)
		return err == nil && len(pending) == 0
	})
	before := st.RoundTrips()
	for i := 1; i <= messages; i++ {
		addOutbox(t, writer, "g", i, 1)
		s.Outbound("dest.example")
		waitFor(t, fmt.Sprintf("message %d", i), func() bool { return len(p.received("g")) == i+1 })
	}
	waitFor(t, "the last message removed", func() bool {
		pending, err := writer.OutboxPending(t.Context(), "dest.example", 0, 1)
		return err == nil && len(pending) == 0
	})
	trips := st.RoundTrips() - before
	t.Logf("%d round trips for %d passes", trips, messages)
	// The clears of the first pass and of the last may fall on either
	// side of the counts.
	if trips > 3*messages+2 {
		t.Fatalf("%d round trips for %d passes of one message, want at most 3 each (claim, release, clear)", trips, messages)
	}
}
