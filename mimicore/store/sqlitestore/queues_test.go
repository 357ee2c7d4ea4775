package sqlitestore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// queueRows reads what the queue tables hold: bodies, the sum of their
// refs, entries, and whether every head's counters match its entries.
func queueRows(t *testing.T, s *Store) (bodies, refs, entries int, headsOK bool) {
	t.Helper()
	if err := s.r.QueryRow("SELECT count(*), COALESCE(SUM(refs), 0) FROM queue_bodies").Scan(&bodies, &refs); err != nil {
		t.Fatal(err)
	}
	if err := s.r.QueryRow("SELECT count(*) FROM queue_messages").Scan(&entries); err != nil {
		t.Fatal(err)
	}
	var bad int
	if err := s.r.QueryRow(`SELECT count(*) FROM queue_heads h WHERE h.messages <> (SELECT count(*) FROM queue_messages m WHERE m.client = h.client)
		OR h.bytes <> (SELECT COALESCE(SUM(size), 0) FROM queue_messages m WHERE m.client = h.client)`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	return bodies, refs, entries, bad == 0
}

// TestAppendFanOut checks what a fan-out costs and leaves: one op in one
// commit for 100 recipients, its bytes stored once, and the body deleted
// with its last entry, whether acknowledged, reclaimed by a full queue or
// swept; the heads' counters always match their entries.
func TestAppendFanOut(t *testing.T) {
	clock := storetest.NewClock()
	s := openTemp(t, WithClock(clock.Now))
	ctx := context.Background()
	recipients := make([]string, 100)
	for i := range recipients {
		recipients[i] = fmt.Sprintf("mimi://a.example/d/u%d/d", i)
	}
	before := s.Stats()
	if _, err := s.Append(ctx, store.Delivery{Recipients: recipients, Message: make([]byte, 1000),
		Expires: clock.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	if after.Commits-before.Commits != 1 || after.Ops-before.Ops != 1 {
		t.Fatalf("a fan-out to 100 took %d ops in %d commits, want 1 in 1", after.Ops-before.Ops, after.Commits-before.Commits)
	}
	check := func(what string, wantBodies, wantRefs int) {
		t.Helper()
		bodies, refs, entries, ok := queueRows(t, s)
		if bodies != wantBodies || refs != wantRefs || entries != wantRefs || !ok {
			t.Fatalf("%s: %d bodies with %d refs, %d entries, heads consistent %t; want %d bodies, %d refs and entries",
				what, bodies, refs, entries, ok, wantBodies, wantRefs)
		}
	}
	check("after the fan-out", 1, 100)
	for _, r := range recipients[:60] {
		if _, err := s.Ack(ctx, r, 1); err != nil {
			t.Fatal(err)
		}
	}
	check("after 60 acks", 1, 40)
	if _, err := s.Append(ctx, store.Delivery{Recipients: recipients[:50], Message: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	check("after a second fan-out", 2, 90)
	// Recipient 99's queue is full but for its expired message, which the
	// append reclaims.
	clock.Advance(time.Hour)
	out, err := s.Append(ctx, store.Delivery{Recipients: recipients[99:], Message: []byte("third"),
		Limits: store.QueueLimits{MaxMessages: 1}})
	if err != nil || out[0].Err != nil || out[0].Seq != 3 {
		t.Fatalf("append to a queue full of expired messages: %+v, %v", out, err)
	}
	check("after the reclaim", 3, 90)
	if n, err := s.DeleteExpired(ctx, clock.Now()); err != nil || n != 39 {
		t.Fatalf("DeleteExpired = %d, %v; want 39", n, err)
	}
	check("after the sweep", 2, 51)
	for i, r := range recipients {
		last := uint64(1) // each queue's last sequence number
		switch {
		case i == 99:
			last = 3
		case i < 50:
			last = 2
		}
		if _, err := s.Ack(ctx, r, last); err != nil {
			t.Fatal(err)
		}
	}
	check("after acknowledging everything", 0, 0)
}

// TestWatchCleanup checks that waiters that give up, woken or not, leave
// no entry in the Store's notifier.
func TestWatchCleanup(t *testing.T) {
	s := openTemp(t)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready, stop := s.WatchQueue(fmt.Sprint("mimi://q/", i%10), 0)
			defer stop()
			select {
			case <-ready:
			case <-time.After(time.Duration(i%5) * time.Millisecond):
			}
		}()
	}
	for i := range 5 {
		if _, err := s.Append(context.Background(), store.Delivery{Recipients: []string{fmt.Sprint("mimi://q/", i)}, Message: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if n := s.notifier.Waiters(); n != 0 {
		t.Fatalf("%d waiters left in the notifier", n)
	}
}
