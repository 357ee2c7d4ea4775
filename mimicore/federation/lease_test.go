package federation

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// leaseStore opens a store with n messages of one group waiting for
// dest.example.
func leaseStore(t *testing.T, n int) store.Store {
	t.Helper()
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	g := storetest.NewGroup(t, []byte("leased"), 1)
	if err := st.CreateGroup(t.Context(), store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	for range n {
		m := store.OutboxMessage{Sender: "a.example", Destination: "dest.example", GroupID: g.State.GroupID(),
			Recipients: []string{"mimi://dest.example/d/u/d"}, Message: []byte("m")}
		if _, err := st.Deliver(t.Context(), g.State.GroupID(), g.State.Epoch(), store.Fanout{Remote: []store.OutboxMessage{m}}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// TestSenderLease checks a sender with drain leases: it renews its lease
// through a pass longer than the lease's ttl, so a rival never gets the
// destination meanwhile; and it stops sending when another holder takes
// the lease, leaving the rest to that holder.
func TestSenderLease(t *testing.T) {
	const ttl = 300 * time.Millisecond
	for _, tc := range []struct {
		name  string
		steal bool
	}{
		{"renewed through a long pass", false},
		{"lost to another holder", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 8 // a pass of n*ttl/2: four times the ttl
			st := leaseStore(t, n)
			var sent atomic.Int32
			stolen := make(chan struct{})
			var once sync.Once
			s := &Sender{Outbox: st, Leases: st, Holder: "sender", LeaseTTL: ttl, LeasePoll: time.Hour,
				Transport: transportFunc(func(ctx context.Context, _, _ string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
					if tc.steal && sent.Load() == 2 {
						once.Do(func() {
							// Another gateway takes the lease, as if this
							// one had stopped renewing it long ago.
							ok, err := st.AcquireLease(context.Background(), store.OutboxLeaseName("dest.example"), "thief",
								time.Now().Add(time.Hour), time.Hour)
							if err != nil || !ok {
								t.Errorf("stealing the lease: %t, %v", ok, err)
							}
							close(stolen)
						})
					}
					select {
					case <-time.After(ttl / 2):
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					sent.Add(1)
					return accepted(ctx, "", "", 0, nil)
				})}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() {
				defer close(done)
				if err := s.Run(ctx); err != nil {
					t.Error(err)
				}
			}()
			defer func() { cancel(); <-done }()
			s.Wake("dest.example")
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				if tc.steal {
					select {
					case <-stolen:
						time.Sleep(2 * ttl) // a renewal finds the lease gone and stops the pass
						before := sent.Load()
						time.Sleep(2 * ttl)
						if got := sent.Load(); got != before || got >= n {
							t.Fatalf("the sender sent %d, then %d messages after losing its lease, want it stopped", before, got)
						}
						// What was answered is removed (it was delivered);
						// the rest is the new holder's.
						pending, err := st.OutboxPending(t.Context(), "dest.example", 0, store.MaxOutboxList)
						if err != nil || len(pending) != n-int(before) {
							t.Fatalf("%d messages left for the new holder (%v), want the %d not sent", len(pending), err, n-int(before))
						}
						return
					default:
					}
				} else if sent.Load() > 0 { // the sender holds the lease
					if _, ok, err := st.OutboxClaim(t.Context(), "dest.example", "rival", time.Now(), ttl, 10); err != nil || ok && sent.Load() < n {
						t.Fatalf("a rival claimed the destination after %d of %d messages (%v): the lease was not renewed", sent.Load(), n, err)
					} else if ok {
						if _, err := st.OutboxRelease(t.Context(), "dest.example", "rival", nil); err != nil {
							t.Fatal(err)
						}
					}
					pending, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
					if err != nil {
						t.Fatal(err)
					}
					if len(pending) == 0 {
						if got := sent.Load(); got != n {
							t.Fatalf("sent %d messages, want %d", got, n)
						}
						return
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Fatalf("not done in time: %d of %d sent", sent.Load(), n)
		})
	}
}

// stuckLeases is a store whose lease renewals never succeed after the
// claim: they hang until their context ends (a database that stopped
// answering), or fail at once.
type stuckLeases struct {
	store.Store
	hang bool
}

func (l *stuckLeases) AcquireLease(ctx context.Context, _, _ string, _ time.Time, _ time.Duration) (bool, error) {
	if l.hang {
		<-ctx.Done()
		return false, ctx.Err()
	}
	return false, errors.New("database unreachable")
}

// TestSenderLeaseRenewalFails checks that a holder whose renewals hang or
// fail stops sending when its lease expires, counted from the time of its
// claim: past that, another gateway may take the destination.
//
// The stop is measured on the wall clock, so the ttl is long enough for a
// slack the scheduler of a loaded machine never needs (a sixth of it), and
// still shorter than what a holder counting the expiry from its first
// renewal (a third of the ttl after the claim) would take.
func TestSenderLeaseRenewalFails(t *testing.T) {
	const ttl = 2 * time.Second
	const slack = ttl / 6
	for _, tc := range []struct {
		name string
		hang bool
	}{
		{"renewal hangs", true},
		{"renewal fails", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := leaseStore(t, 1)
			started, cancelled := make(chan time.Time, 1), make(chan time.Time, 1)
			s := &Sender{Outbox: st, Leases: &stuckLeases{Store: st, hang: tc.hang}, LeaseTTL: ttl, LeasePoll: time.Hour,
				Transport: transportFunc(func(ctx context.Context, _, _ string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
					select {
					case started <- time.Now():
					default:
					}
					select {
					case <-ctx.Done():
						select {
						case cancelled <- time.Now():
						default:
						}
						return nil, ctx.Err()
					case <-time.After(time.Minute):
						return accepted(ctx, "", "", 0, nil)
					}
				})}
			runSender(t, s)
			start := <-started // the claim came just before
			select {
			case c := <-cancelled:
				if d := c.Sub(start); d > ttl+slack {
					t.Fatalf("the send was stopped %v after it started, past the lease's ttl %v", d, ttl)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("still sending 30 s after a claim of ttl %v that was never renewed", ttl)
			}
		})
	}
}
