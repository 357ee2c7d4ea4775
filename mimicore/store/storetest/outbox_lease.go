package storetest

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// RunOutboxLeaseTests checks the drain leases of the outbox
// (store.OutboxLeases), which let several gateways on one database drain
// one outbox: one holder at a time per destination, what it removed never
// read again by the next, each message removed once and in order per
// (destination, group) by drainers racing through several stores, and a
// lease its holder stopped renewing taken over at its expiry with the
// messages it had not removed. open is as in RunSharedKeyTests: stores on
// one fresh database, or one store for a backend that allows one process
// per database (the drainers then race through it).
func RunOutboxLeaseTests(t *testing.T, open func(t *testing.T) []store.Store) {
	t.Run("Claim", func(t *testing.T) { testOutboxClaim(t, open(t)) })
	t.Run("Drainers", func(t *testing.T) { testOutboxDrainers(t, open(t)) })
	t.Run("Takeover", func(t *testing.T) { testOutboxTakeover(t, open(t)) })
}

// Destinations of the lease tests.
const (
	leaseDest  = "c.example"
	leaseOther = "e.example"
)

// addOutbox writes one message per body to destination's outbox, for the
// group, in order, one write each.
func addOutbox(t *testing.T, s store.Store, destination string, group []byte, bodies ...string) {
	t.Helper()
	for _, b := range bodies {
		_, err := s.OutboxAdd(ctx(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example",
			Destination: destination, GroupID: group, Recipients: []string{fanCarol}, Message: []byte(b)}}})
		noErr(t, "OutboxAdd", err)
	}
}

// bodiesOf lists the messages of entries.
func bodiesOf(entries []store.OutboxEntry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = string(e.Message)
	}
	return out
}

// idsOf lists the ids of entries.
func idsOf(entries []store.OutboxEntry) []uint64 {
	out := make([]uint64, len(entries))
	for i, e := range entries {
		out[i] = e.ID
	}
	return out
}

func testOutboxClaim(t *testing.T, stores []store.Store) {
	a, b := stores[0], stores[len(stores)-1]
	now := time.Now()
	gid := []byte("claimed group")
	addOutbox(t, a, leaseDest, gid, "one", "two", "three")
	addOutbox(t, a, leaseOther, gid, "other")
	claim := func(s store.Store, dest, holder string, at time.Time, limit int) ([]store.OutboxEntry, bool) {
		t.Helper()
		got, ok, err := s.OutboxClaim(ctx(), dest, holder, at, time.Minute, limit)
		noErr(t, "OutboxClaim by "+holder, err)
		if !ok && len(got) != 0 {
			t.Fatalf("OutboxClaim by %s was refused but read %d messages", holder, len(got))
		}
		return got, ok
	}

	got, ok := claim(a, leaseDest, "gw-a", now, 2)
	if !ok || !slices.Equal(bodiesOf(got), []string{"one", "two"}) {
		t.Fatalf("first claim: ok %t, read %q, want the two oldest", ok, bodiesOf(got))
	}
	if _, ok := claim(b, leaseDest, "gw-b", now, 10); ok {
		t.Fatal("a second holder claimed a held destination")
	}
	if got, ok := claim(b, leaseOther, "gw-b", now, 10); !ok || !slices.Equal(bodiesOf(got), []string{"other"}) {
		t.Fatalf("claim of another destination: ok %t, read %q", ok, bodiesOf(got))
	}
	if again, ok := claim(a, leaseDest, "gw-a", now.Add(time.Second), 10); !ok || len(again) != 3 {
		t.Fatalf("renewal by the holder: ok %t, read %d messages, want 3", ok, len(again))
	}
	n, err := b.OutboxRelease(ctx(), leaseDest, "gw-b", idsOf(got))
	noErr(t, "OutboxRelease by a non-holder", err)
	if _, ok := claim(b, leaseDest, "gw-b", now, 10); ok || n != 2 {
		// A non-holder's release removes the ids it names (they were
		// delivered) but leaves the lease to its holder.
		t.Fatalf("a non-holder's release removed %d (want 2) and freed the lease: %t", n, ok)
	}
	n, err = a.OutboxRelease(ctx(), leaseDest, "gw-a", nil)
	noErr(t, "OutboxRelease by the holder", err)
	if n != 0 {
		t.Fatalf("release without ids removed %d", n)
	}
	got, ok = claim(b, leaseDest, "gw-b", now.Add(time.Second), 10)
	if !ok || !slices.Equal(bodiesOf(got), []string{"three"}) {
		t.Fatalf("claim after the release: ok %t, read %q, want the one left", ok, bodiesOf(got))
	}
	wantLeaseBacklog(t, b, leaseDest, 1)
	n, err = b.OutboxRelease(ctx(), leaseDest, "gw-b", []uint64{got[0].ID, got[0].ID, 1 << 62})
	noErr(t, "OutboxRelease of the last", err)
	if n != 1 {
		t.Fatalf("release removed %d, want 1", n)
	}
	wantLeaseBacklog(t, b, leaseDest, 0)
	if got, ok := claim(a, leaseDest, "gw-a", now, 10); !ok || len(got) != 0 {
		t.Fatalf("claim of a drained destination: ok %t, read %d", ok, len(got))
	}

	for _, tc := range []struct {
		name   string
		dest   string
		holder string
		ttl    time.Duration
		limit  int
	}{
		{"no holder", leaseDest, "", time.Minute, 1},
		{"long holder", leaseDest, string(make([]byte, store.MaxLeaseNameSize+1)), time.Minute, 1},
		{"zero ttl", leaseDest, "gw-a", 0, 1},
		{"zero limit", leaseDest, "gw-a", time.Minute, 0},
		{"limit over the bound", leaseDest, "gw-a", time.Minute, store.MaxOutboxList + 1},
		{"no destination", "", "gw-a", time.Minute, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := a.OutboxClaim(ctx(), tc.dest, tc.holder, now, tc.ttl, tc.limit)
			wantErr(t, "OutboxClaim", err, store.ErrInvalid)
		})
	}
}

// wantLeaseBacklog checks the count of destination's backlog.
func wantLeaseBacklog(t *testing.T, s store.Store, destination string, messages int) {
	t.Helper()
	b, err := s.OutboxDestinationBacklog(ctx(), destination)
	noErr(t, "OutboxDestinationBacklog", err)
	if b.Messages != messages {
		t.Fatalf("backlog of %s: %d messages, want %d", destination, b.Messages, messages)
	}
}

// testOutboxDrainers runs drainers through every store, two per store, as
// the federation sender does (claim, deliver, release), while writers add
// messages of several groups through every store: each message is
// delivered once, each group's in the order written.
func testOutboxDrainers(t *testing.T, stores []store.Store) {
	const (
		groups   = 4
		perGroup = 60
		limit    = 7
	)
	var (
		mu        sync.Mutex
		delivered = map[string][]int{} // group -> message numbers, in delivery order
		seen      = map[uint64]bool{}
		removed   atomic.Int64
		written   sync.WaitGroup
		stop      = make(chan struct{})
		drainers  sync.WaitGroup
		holding   atomic.Int32
	)
	for g := range groups {
		written.Go(func() {
			s := stores[g%len(stores)]
			for i := range perGroup {
				addOutbox(t, s, leaseDest, fmt.Appendf(nil, "group %d", g), fmt.Sprintf("%d/%d", g, i))
			}
		})
	}
	drain := func(s store.Store, holder string) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			entries, ok, err := s.OutboxClaim(ctx(), leaseDest, holder, time.Now(), time.Minute, limit)
			if err != nil {
				t.Errorf("OutboxClaim by %s: %v", holder, err)
				return
			}
			if !ok || len(entries) == 0 {
				if ok {
					if _, err := s.OutboxRelease(ctx(), leaseDest, holder, nil); err != nil {
						t.Errorf("OutboxRelease by %s: %v", holder, err)
						return
					}
				}
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				continue
			}
			if holding.Add(1) != 1 {
				t.Errorf("%s holds the lease with another holder", holder)
			}
			mu.Lock()
			for _, e := range entries {
				if seen[e.ID] {
					t.Errorf("%s read message %d again after it was released", holder, e.ID)
				}
				seen[e.ID] = true
				var g, i int
				if _, err := fmt.Sscanf(string(e.Message), "%d/%d", &g, &i); err != nil {
					t.Errorf("message %q: %v", e.Message, err)
				}
				delivered[string(e.GroupID)] = append(delivered[string(e.GroupID)], i)
			}
			mu.Unlock()
			holding.Add(-1)
			n, err := s.OutboxRelease(ctx(), leaseDest, holder, idsOf(entries))
			if err != nil {
				t.Errorf("OutboxRelease by %s: %v", holder, err)
				return
			}
			removed.Add(int64(n))
		}
	}
	for i, s := range stores {
		for j := range 2 {
			drainers.Go(func() { drain(s, fmt.Sprintf("gw-%d-%d", i, j)) })
		}
	}
	written.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for removed.Load() < groups*perGroup && time.Now().Before(deadline) && !t.Failed() {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	drainers.Wait()
	if got := removed.Load(); got != groups*perGroup {
		t.Fatalf("drainers removed %d messages, want %d", got, groups*perGroup)
	}
	want := make([]int, perGroup)
	for i := range want {
		want[i] = i
	}
	for g := range groups {
		if got := delivered[fmt.Sprintf("group %d", g)]; !slices.Equal(got, want) {
			t.Fatalf("group %d delivered %v, want each of 0..%d once, in order", g, got, perGroup-1)
		}
	}
	wantLeaseBacklog(t, stores[0], leaseDest, 0)
}

// testOutboxTakeover has a holder claim and stop renewing without
// releasing (a killed gateway): the lease stays its until it expires,
// then another holder takes it and reads what the first had not removed.
func testOutboxTakeover(t *testing.T, stores []store.Store) {
	a, b := stores[0], stores[len(stores)-1]
	now := time.Now()
	const ttl = 10 * time.Second
	addOutbox(t, a, leaseDest, []byte("group"), "one", "two", "three")
	got, ok, err := a.OutboxClaim(ctx(), leaseDest, "killed", now, ttl, 2)
	noErr(t, "OutboxClaim by the first holder", err)
	if !ok || len(got) != 2 {
		t.Fatalf("first claim: ok %t, read %d", ok, len(got))
	}
	// It delivered "one" and removed it, then died with "two" in flight.
	n, err := a.OutboxDelivered(ctx(), leaseDest, idsOf(got[:1]))
	noErr(t, "OutboxDelivered by the first holder", err)
	if n != 1 {
		t.Fatalf("OutboxDelivered removed %d, want 1", n)
	}
	for _, at := range []time.Duration{0, ttl / 2, ttl - time.Millisecond} {
		if _, ok, err := b.OutboxClaim(ctx(), leaseDest, "taker", now.Add(at), ttl, 10); err != nil || ok {
			t.Fatalf("claim %s into the dead holder's lease: ok %t, error %v", at, ok, err)
		}
	}
	got, ok, err = b.OutboxClaim(ctx(), leaseDest, "taker", now.Add(ttl), ttl, 10)
	noErr(t, "OutboxClaim at the expiry", err)
	if !ok || !slices.Equal(bodiesOf(got), []string{"two", "three"}) {
		t.Fatalf("takeover at the expiry: ok %t, read %q, want what the dead holder left", ok, bodiesOf(got))
	}
	// The dead holder, back (a paused process), neither frees nor takes
	// the lease.
	if _, err := a.OutboxRelease(ctx(), leaseDest, "killed", nil); err != nil {
		t.Fatalf("OutboxRelease by the former holder: %v", err)
	}
	if _, ok, err := a.OutboxClaim(ctx(), leaseDest, "killed", now.Add(ttl+time.Second), ttl, 10); err != nil || ok {
		t.Fatalf("the former holder claimed the taken-over lease: ok %t, error %v", ok, err)
	}
	n, err = b.OutboxRelease(ctx(), leaseDest, "taker", idsOf(got))
	noErr(t, "OutboxRelease by the new holder", err)
	if n != 2 {
		t.Fatalf("the new holder removed %d, want 2", n)
	}
	wantLeaseBacklog(t, a, leaseDest, 0)
}
