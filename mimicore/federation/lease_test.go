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

// TestSenderLease checks a sender with drain leases renews its lease
// through a pass longer than the lease's ttl, so a rival never gets the
// destination meanwhile. The lease, in the store as in the renewals, is
// timed on a clock the test moves (each send lasts two renewal periods, so
// the pass lasts more than five ttls), so nothing depends on how fast the
// machine runs: after each renewal the rival tries to claim the
// destination at the clock's time, and is refused only if the renewal
// extended the lease.
func TestSenderLease(t *testing.T) {
	const ttl = 3 * time.Second
	const period = ttl / 3 // keepLease renews every third of the ttl
	const n = 8
	st := leaseStore(t, n)
	clock := newFakeClock()
	sends := make(chan context.Context)
	proceed := make(chan struct{})
	var sent atomic.Int32
	s := &Sender{Outbox: st, Leases: st, Holder: "sender", LeaseTTL: ttl, LeasePoll: time.Hour, Now: clock.Now, clock: clock,
		Transport: transportFunc(func(ctx context.Context, _, _ string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
			select {
			case sends <- ctx:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			select {
			case <-proceed:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			sent.Add(1)
			return accepted(ctx, "", "", 0, nil)
		})}
	guard, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	runSender(t, s)
	s.Wake("dest.example")
	waits := 1 // the lease loop's waits for a renewal so far, when it blocks
	for i := range n {
		var send context.Context
		select {
		case send = <-sends:
		case <-guard.Done():
			t.Fatalf("message %d never sent (%d sent)", i+1, sent.Load())
		}
		for range 2 {
			if !clock.waitCalls(guard, send.Done(), func(a, _ int) bool { return a >= waits }) || send.Err() != nil {
				t.Fatalf("sending message %d: the lease loop stopped before its renewal %d (%v)", i+1, waits, send.Err())
			}
			clock.Advance(clock.Now().Add(period))
			waits++
			// The loop renews, then waits for the next renewal.
			if !clock.waitCalls(guard, send.Done(), func(a, _ int) bool { return a >= waits }) || send.Err() != nil {
				t.Fatalf("sending message %d: the lease loop stopped at its renewal %d (%v)", i+1, waits-1, send.Err())
			}
			if _, ok, err := st.OutboxClaim(t.Context(), "dest.example", "rival", clock.Now(), ttl, 10); err != nil || ok {
				t.Fatalf("a rival claimed the destination %v after the sender's claim, sending message %d of %d (%t, %v): the lease was not renewed",
					time.Duration(waits-1)*period, i+1, n, ok, err)
			}
		}
		select {
		case proceed <- struct{}{}:
		case <-guard.Done():
			t.Fatalf("message %d: the send never ended", i+1)
		}
	}
	waitFor(t, "the pass to remove what it delivered", func() bool {
		pending, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
		return err == nil && len(pending) == 0
	})
	if got := sent.Load(); got != n {
		t.Fatalf("sent %d messages, want %d", got, n)
	}
}

// TestSenderLeaseLost checks that a sender stops sending when another
// holder takes its lease, at the first renewal after (on a clock the
// test moves, so that nothing depends on how fast the machine runs),
// and leaves the messages it did not send to that holder.
func TestSenderLeaseLost(t *testing.T) {
	const ttl = 3 * time.Second
	const n = 8
	st := leaseStore(t, n)
	clock := newFakeClock()
	var sent atomic.Int32
	var once sync.Once
	stolen := make(chan context.Context, 1)
	s := &Sender{Outbox: st, Leases: st, Holder: "sender", LeaseTTL: ttl, LeasePoll: time.Hour, clock: clock,
		Transport: transportFunc(func(ctx context.Context, _, _ string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if sent.Load() == 2 {
				once.Do(func() {
					// Another gateway takes the lease, as if this one had
					// stopped renewing it long ago.
					ok, err := st.AcquireLease(context.Background(), store.OutboxLeaseName("dest.example"), "thief",
						time.Now().Add(time.Hour), time.Hour)
					if err != nil || !ok {
						t.Errorf("stealing the lease: %t, %v", ok, err)
					}
					stolen <- ctx
				})
				<-ctx.Done() // the send under way when the lease goes
				return nil, ctx.Err()
			}
			sent.Add(1)
			return accepted(ctx, "", "", 0, nil)
		})}
	guard, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	runSender(t, s)
	s.Wake("dest.example")
	var send context.Context
	select {
	case send = <-stolen:
	case <-guard.Done():
		t.Fatalf("the sender never reached the third message (%d sent)", sent.Load())
	}
	if !clock.waitCalls(guard, nil, func(a, _ int) bool { return a > 0 }) {
		t.Fatal("the lease loop never waited for its first renewal")
	}
	if send.Err() != nil {
		t.Fatal("the send was stopped before a renewal found the lease taken")
	}
	clock.Advance(clock.Now().Add(ttl / 3)) // the first renewal
	select {
	case <-send.Done():
	case <-guard.Done():
		t.Fatal("still sending after a renewal found the lease taken")
	}
	// What was answered is removed (it was delivered); the rest is the
	// new holder's.
	waitFor(t, "the pass to remove what it delivered", func() bool {
		pending, err := st.OutboxPending(t.Context(), "dest.example", 0, store.MaxOutboxList)
		return err == nil && len(pending) == n-2
	})
	if got := sent.Load(); got != 2 {
		t.Fatalf("the sender sent %d messages, want 2: it went on after losing its lease", got)
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

// fakeClock is a leaseClock that moves only when the test advances it.
// It counts the waits of keepLease's loop (After) and of its renewals
// (WithTimeout), so that a test knows where the loop is blocked.
type fakeClock struct {
	mu       sync.Mutex
	now      time.Time
	waiters  []fakeWaiter
	afters   int // After calls so far
	timeouts int // WithTimeout calls so far
	changed  chan struct{}
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_790_000_000, 0), changed: make(chan struct{})}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// wait registers a waiter for d; the caller holds c.mu.
func (c *fakeClock) wait(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
	} else {
		c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	}
	close(c.changed)
	c.changed = make(chan struct{})
	return ch
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.afters++
	return c.wait(d)
}

func (c *fakeClock) WithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	c.mu.Lock()
	c.timeouts++
	ch := c.wait(d)
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// Advance moves the clock to at and fires the waiters due by then.
func (c *fakeClock) Advance(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = at
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(at) {
			kept = append(kept, w)
			continue
		}
		w.ch <- at
	}
	c.waiters = kept
}

// waitCalls blocks until cond, on the After and WithTimeout counts,
// holds, or guard ends first (a guard against a hang, not a time bound
// of what is tested), and reports whether it held. cond is checked
// again at each call and when wake is closed.
func (c *fakeClock) waitCalls(guard context.Context, wake <-chan struct{}, cond func(afters, timeouts int) bool) bool {
	for {
		c.mu.Lock()
		ok, changed := cond(c.afters, c.timeouts), c.changed
		c.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-wake:
			wake = nil
		case <-guard.Done():
			return false
		}
	}
}

// TestSenderLeaseRenewalFails checks that a holder whose renewals hang or
// fail keeps sending until its lease expires, counted from the time of its
// claim, and stops then: past that, another gateway may take the
// destination. The lease is timed on a clock the test moves (a third of
// the ttl per renewal), so nothing depends on how fast the machine runs:
// the send's context is still live at each step before the expiry and
// ends at it. (A holder counting the expiry from its first renewal would
// stop a third of the ttl too late.)
func TestSenderLeaseRenewalFails(t *testing.T) {
	const ttl = 3 * time.Second
	const third = ttl / 3
	for _, tc := range []struct {
		name string
		hang bool
	}{
		{"renewal hangs", true},
		{"renewal fails", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := leaseStore(t, 1)
			clock := newFakeClock()
			sends := make(chan context.Context, 1)
			s := &Sender{Outbox: st, Leases: &stuckLeases{Store: st, hang: tc.hang}, LeaseTTL: ttl, LeasePoll: time.Hour, clock: clock,
				Transport: transportFunc(func(ctx context.Context, _, _ string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
					select {
					case sends <- ctx:
					default:
					}
					<-ctx.Done()
					return nil, ctx.Err()
				})}
			guard, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			runSender(t, s)
			var send context.Context
			select {
			case send = <-sends:
			case <-guard.Done():
				t.Fatal("the sender never sent")
			}
			claimed := clock.Now() // the clock has not moved since the claim
			if !clock.waitCalls(guard, nil, func(a, _ int) bool { return a > 0 }) {
				t.Fatal("the lease loop never waited for its first renewal")
			}
			// Each step moves the clock to the next renewal, and waits
			// until the loop blocks again: on its next wait (a renewal
			// that fails), or, for one that hangs, on the renewal's
			// timeout, which the next step ends.
			for step := 1; step <= 3; step++ {
				if send.Err() != nil {
					t.Fatalf("the send was stopped %v after the claim, before the lease's ttl %v", clock.Now().Sub(claimed), ttl)
				}
				afters, timeouts := 0, 0
				clock.waitCalls(guard, nil, func(a, to int) bool { afters, timeouts = a, to; return true })
				clock.Advance(claimed.Add(time.Duration(step) * third))
				// At the expiry the loop stops the send and waits no more.
				if !clock.waitCalls(guard, send.Done(), func(a, to int) bool {
					return send.Err() != nil || (tc.hang && to > timeouts) || (!tc.hang && a > afters)
				}) {
					t.Fatalf("step %d: the lease loop did not go on", step)
				}
			}
			if send.Err() == nil {
				t.Fatalf("still sending at the lease's expiry, %v after a claim never renewed", ttl)
			}
		})
	}
}
