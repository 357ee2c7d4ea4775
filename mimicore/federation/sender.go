// Package federation sends what the Delivery Service accepted for other
// providers' clients: it drains the durable outbox (store.Outbox) into
// signed deliver_message requests, one destination provider at a time,
// in order per (destination, group), with retries (docs/protocol.md §9).
// The messages for store.BackendDestination go to the legacy backend
// instead (Backend, docs/protocol.md §11): a signed JSON POST each, through
// the same workers, order, backoff and give-up age.
//
// Several gateways on one database (PostgreSQL) drain one outbox when
// their senders have Leases: a destination is drained by one sender at a
// time, the holder of its drain lease (store.OutboxLeases), and a lease of
// a gateway that died is taken over when it expires.
//
// Delivery is at least once on the wire and exactly once in the
// receiver's queues: a message is removed from the outbox only after the
// destination answered it, and every attempt is signed afresh (a new
// request_id), which the receiver's duplicate suppression of delivered
// messages (docs/protocol.md §4.2) turns into one delivery however often
// an answer was lost. A crash between the answer and the removal sends the
// message once more, to the same effect.
package federation

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Defaults of a Sender.
const (
	// DefaultMinBackoff and DefaultMaxBackoff bound the wait before a
	// destination that failed is tried again: it doubles from the first
	// to the second, with jitter, and never grows past it, so a
	// destination down for a day is still tried every few minutes.
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 5 * time.Minute
	// DefaultGiveUpAfter is the age at which a message that could not be
	// delivered is dropped (counted and logged). It is below the
	// receivers' duplicate window (ds.DeliverDedupWindow, 7 days), so a
	// message is never delivered twice.
	DefaultGiveUpAfter = 3 * 24 * time.Hour
	// DefaultBatch is how many messages of a destination are read from
	// the outbox at once.
	DefaultBatch = 256
	// DefaultParallel is how many of a destination's groups are sent to
	// at once: at most that many requests are in flight per destination.
	DefaultParallel = 4
	// DropLogInterval is the least time between two warnings about the
	// messages a destination lost at its backlog's bound
	// (store.OutboxLimits): a dead peer behind a busy group costs one log
	// line per interval, with the count since the last one.
	DropLogInterval = time.Minute
	// DefaultLeaseTTL is how long a drain lease lasts unless renewed
	// (Sender.Leases): the longest a destination waits after its
	// holder died. A holder renews it every third of it while it sends,
	// so a holder that cannot reach the database for that long (or
	// whose clock is that far off) loses it, and another gateway sends
	// on; the receiver drops what both sent. 10 s bounds the stall
	// after a gateway dies (examples/cluster's chaos run measured 33 s
	// with 30 s) at a renewal every 3.3 s per busy destination.
	DefaultLeaseTTL = 10 * time.Second
	// DefaultLeasePoll is how often a sender that has messages to send
	// tries again for a drain lease another gateway holds: the most a
	// message accepted here waits, beyond the other's pass, when the
	// other is draining its destination.
	DefaultLeasePoll = 250 * time.Millisecond
)

// Transport sends one provider-signed request and returns the peer's
// answer; Clients implements it over provider.Client.
type Transport interface {
	Send(ctx context.Context, sender, recipient string, typ moh.ProviderRequestType, payload []byte) (*provider.Answer, error)
}

// Clients is the Transport of a gateway: requests signed with its key
// ring as the sender domain, to peers discovered through its current key
// fetcher (which a configuration reload may replace).
type Clients struct {
	Keys    provider.Signer
	Fetcher func() *provider.KeyFetcher
}

// Send implements Transport.
func (c Clients) Send(ctx context.Context, sender, recipient string, typ moh.ProviderRequestType, payload []byte) (*provider.Answer, error) {
	pc := &provider.Client{Sender: sender, Keys: c.Keys, Fetcher: c.Fetcher()}
	return pc.Send(ctx, recipient, typ, payload)
}

// Stats counts a Sender's work since it started.
type Stats struct {
	// Attempts is the number of deliver_message requests sent.
	Attempts uint64
	// Delivered is the number of outbox messages a destination accepted.
	Delivered uint64
	// Retried is the number of attempts that failed and will be retried.
	Retried uint64
	// Rejected is the number of messages a destination refused for good
	// (a 4xx other than a rate limit or an authentication failure), which
	// were dropped.
	Rejected uint64
	// GivenUp is the number of messages dropped at GiveUpAfter.
	GivenUp uint64
	// Latency is the end-to-end latency of the messages delivered.
	Latency Latency
}

// DestinationStatus is what a Sender knows of one destination, for the
// operator.
type DestinationStatus struct {
	// Destination is the provider domain.
	Destination string
	// LastAttempt and LastSuccess are the times of the last request sent
	// and of the last message it accepted (zero for never).
	LastAttempt, LastSuccess time.Time
	// Failures counts the attempts that failed since the last success.
	Failures int
	// LastError describes the last failure ("" after a success).
	LastError string
	// NextAttempt is when the worker tries again after a failure (zero
	// when it is not backing off).
	NextAttempt time.Time
	// GivenUp counts the messages for it dropped at GiveUpAfter since the
	// sender started.
	GivenUp uint64
}

// Sender drains an outbox. Its fields are set before Run and not changed
// afterwards.
type Sender struct {
	// Outbox is the store's outbox. Required.
	Outbox store.Outbox
	// Transport sends the requests. Required.
	Transport Transport
	// Logger gets what the operator should see; nil discards.
	Logger *zap.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MinBackoff, MaxBackoff, GiveUpAfter, Batch and Parallel default to
	// the Default* constants. MaxBackoff and GiveUpAfter are the initial
	// values of the policy SetPolicy changes while the sender runs.
	MinBackoff, MaxBackoff time.Duration
	GiveUpAfter            time.Duration
	Batch, Parallel        int
	// Leases, when set, makes the sender one of several draining Outbox
	// (gateways on one database; it is then Outbox's store too): each
	// pass over a destination claims its drain lease, reads and sends
	// while it renews the lease, and removes what was answered as it
	// frees the lease (store.OutboxLeases). A destination whose lease
	// another sender holds is tried again every LeasePoll while this one
	// has a reason to (a wake, a backlog); and every LeaseTTL, the
	// destinations with a backlog are listed, so that one whose holder
	// died is taken over even when nothing wakes it here. Nil (one
	// gateway, SQLite) reads and removes without leases.
	Leases store.OutboxLeases
	// Holder names this sender in the drain leases, 1..255 bytes unique
	// among the gateways; empty means a random one chosen by Run.
	Holder string
	// LeaseTTL and LeasePoll default to DefaultLeaseTTL and
	// DefaultLeasePoll.
	LeaseTTL, LeasePoll time.Duration

	policy  atomic.Pointer[Policy]  // set by SetPolicy; nil means the fields above
	backend atomic.Pointer[Backend] // set by SetBackend; nil means none
	mu      sync.Mutex
	wakes   map[string]chan struct{} // one per destination with a worker
	status  map[string]*DestinationStatus
	spawn   func(destination string) // set by Run
	running bool
	holder  string // Holder or a random id, set by Run
	stats   struct{ attempts, delivered, retried, rejected, givenUp atomic.Uint64 }
	latency latencyHistogram
}

// Policy is what an operator may change while a sender runs (a
// configuration reload): the backoff cap and the give-up age. Zero fields
// mean the defaults.
type Policy struct {
	MaxBackoff  time.Duration
	GiveUpAfter time.Duration
}

// SetPolicy changes the backoff cap and the give-up age; workers use them
// from their next decision on.
func (s *Sender) SetPolicy(p Policy) { s.policy.Store(&p) }

// SetBackend makes b the legacy backend that the outbox's messages for
// store.BackendDestination are posted to, from their next attempt on; nil
// means none, and those messages wait (until GiveUpAfter) for one. It
// wakes the backend's worker, so that a backend configured anew is tried
// at once.
func (s *Sender) SetBackend(b *Backend) {
	s.backend.Store(b)
	if b != nil {
		s.Wake(store.BackendDestination)
	}
}

// currentPolicy is the policy in force, defaults filled in.
func (s *Sender) currentPolicy() Policy {
	p := Policy{MaxBackoff: s.MaxBackoff, GiveUpAfter: s.GiveUpAfter}
	if q := s.policy.Load(); q != nil {
		p = *q
	}
	return Policy{MaxBackoff: orDefault(p.MaxBackoff, DefaultMaxBackoff), GiveUpAfter: orDefault(p.GiveUpAfter, DefaultGiveUpAfter)}
}

// Stats returns the counters.
func (s *Sender) Stats() Stats {
	return Stats{Attempts: s.stats.attempts.Load(), Delivered: s.stats.delivered.Load(), Retried: s.stats.retried.Load(),
		Rejected: s.stats.rejected.Load(), GivenUp: s.stats.givenUp.Load(), Latency: s.latency.snapshot()}
}

// Status lists what the sender knows of each destination it has worked
// for, in byte order of the domain.
func (s *Sender) Status() []DestinationStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]DestinationStatus, 0, len(s.status))
	for _, st := range s.status {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b DestinationStatus) int { return strings.Compare(a.Destination, b.Destination) })
	return out
}

// note updates destination's status under the lock.
func (s *Sender) note(dest string, update func(*DestinationStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status == nil {
		s.status = map[string]*DestinationStatus{}
	}
	st := s.status[dest]
	if st == nil {
		st = &DestinationStatus{Destination: dest}
		s.status[dest] = st
	}
	update(st)
}

// PeerUp tells the sender that a request from destination just arrived,
// so it is reachable again: a worker backing off after failures tries it
// at once. It costs a map lookup when the destination is not backing off
// (the common case: it is called for every provider request), and never
// blocks.
func (s *Sender) PeerUp(destination string) {
	s.mu.Lock()
	st := s.status[destination]
	backingOff := st != nil && !st.NextAttempt.IsZero()
	ch := s.wakes[destination]
	s.mu.Unlock()
	if backingOff && ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Wake tells the sender that destination has new messages, or that it is
// reachable again (a request from it just arrived): its worker reads the
// outbox at once, ending any backoff. It never blocks.
func (s *Sender) Wake(destination string) {
	s.mu.Lock()
	ch, ok := s.wakes[destination]
	spawn := s.spawn
	s.mu.Unlock()
	if ok {
		select {
		case ch <- struct{}{}:
		default:
		}
		return
	}
	if spawn != nil {
		spawn(destination)
	}
}

// Run starts a worker for each destination with a backlog, and one for
// each destination woken later, and returns when ctx ends and every
// worker has stopped. It may be called once.
func (s *Sender) Run(ctx context.Context) error {
	if s.Outbox == nil || s.Transport == nil {
		return errors.New("federation: a sender needs an outbox and a transport")
	}
	var wg sync.WaitGroup
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("federation: sender already running")
	}
	s.running = true
	s.holder = s.Holder
	if s.holder == "" {
		s.holder = "sender-" + strconv.FormatUint(rand.Uint64(), 16)
	}
	s.wakes = map[string]chan struct{}{}
	s.spawn = func(dest string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.wakes[dest]; ok || ctx.Err() != nil {
			return
		}
		ch := make(chan struct{}, 1)
		s.wakes[dest] = ch
		wg.Go(func() { s.worker(ctx, dest, ch) })
	}
	spawn := s.spawn
	s.mu.Unlock()
	dests, err := s.Outbox.OutboxDestinations(ctx)
	if err != nil {
		s.logger().Error("listing outbox destinations; each is tried when woken", zap.Error(err))
	}
	for _, d := range dests {
		spawn(d)
	}
	if s.Leases != nil {
		s.rescan(ctx, spawn)
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// rescan lists, every LeaseTTL until ctx ends, the destinations with a
// backlog, and has each one's worker try it unless it is backing off:
// messages whose holder died, or that another gateway accepted while it
// held the lease, are delivered even when nothing wakes this sender.
func (s *Sender) rescan(ctx context.Context, spawn func(string)) {
	t := time.NewTicker(s.leaseTTL())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		dests, err := s.Outbox.OutboxDestinations(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.logger().Warn("listing outbox destinations", zap.Error(err))
			}
			continue
		}
		now := s.now()
		for _, d := range dests {
			s.mu.Lock()
			ch, ok := s.wakes[d]
			st := s.status[d]
			idle := st == nil || st.NextAttempt.IsZero() || !st.NextAttempt.After(now)
			s.mu.Unlock()
			switch {
			case !ok:
				spawn(d)
			case idle:
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}
}

// leaseTTL and leasePoll are LeaseTTL and LeasePoll, defaults filled in.
func (s *Sender) leaseTTL() time.Duration  { return orDefault(s.LeaseTTL, DefaultLeaseTTL) }
func (s *Sender) leasePoll() time.Duration { return orDefault(s.LeasePoll, DefaultLeasePoll) }

func (s *Sender) logger() *zap.Logger {
	if s.Logger == nil {
		return zap.NewNop()
	}
	return s.Logger
}

func (s *Sender) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// worker delivers destination's messages until ctx ends: a pass reads a
// batch, sends each group's messages in order, removes what was answered,
// and backs off while anything failed.
func (s *Sender) worker(ctx context.Context, dest string, wake <-chan struct{}) {
	log := s.logger().With(zap.String("destination", dest))
	minB := orDefault(s.MinBackoff, DefaultMinBackoff)
	backoff := time.Duration(0)
	var drops dropReport
	for ctx.Err() == nil {
		s.reportDrops(ctx, dest, log, &drops)
		failed, more, busy, err := s.pass(ctx, dest, log)
		var wait time.Duration
		switch {
		case err != nil:
			if ctx.Err() == nil {
				log.Error("reading or clearing the outbox", zap.Error(err))
			}
			failed = true
		case busy:
			// Another gateway drains it: try again shortly, for what
			// was accepted here meanwhile.
			wait = s.leasePoll()
		case !failed && more:
			backoff = 0
			continue
		}
		if failed {
			maxB := max(s.currentPolicy().MaxBackoff, minB)
			backoff = min(max(2*backoff, minB), maxB)
			// Full jitter on the upper half: spread retries of many
			// gateways without ever retrying at once.
			wait = backoff/2 + rand.N(backoff/2+1)
			next := s.now().Add(wait)
			s.note(dest, func(st *DestinationStatus) { st.NextAttempt = next })
		}
		var timer *time.Timer
		var fire <-chan time.Time
		if wait > 0 {
			timer = time.NewTimer(wait)
			fire = timer.C
		}
		select {
		case <-ctx.Done():
		case <-wake:
			backoff = 0 // new messages, or the peer is back
			s.note(dest, func(st *DestinationStatus) { st.NextAttempt = time.Time{} })
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// pass sends one batch of dest's outbox: at most Batch messages and
// about store.MaxOutboxListBytes, whatever the backlog. It reports whether
// any message failed and will be retried, whether the batch was full
// (more may wait), and, with Leases, whether another sender holds the
// destination's drain lease (busy: nothing was read).
func (s *Sender) pass(ctx context.Context, dest string, log *zap.Logger) (failed, more, busy bool, err error) {
	batch := min(orDefault(s.Batch, DefaultBatch), store.MaxOutboxList)
	if s.Leases == nil {
		entries, err := s.Outbox.OutboxPending(ctx, dest, 0, batch)
		if err != nil || len(entries) == 0 {
			return false, false, false, err
		}
		done, failed := s.send(ctx, entries, log)
		if len(done) > 0 {
			// A new context: what was answered is removed even while
			// the gateway stops, else it would be sent once more after
			// restart (harmless, see the package doc, but avoidable).
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if _, err := s.Outbox.OutboxDelivered(cctx, dest, done); err != nil {
				return true, false, false, err
			}
		}
		return failed, full(entries, batch), false, nil
	}
	// The lease expires ttl after the time the claim gives it, whenever
	// the database answers: claimed is that time, on the monotonic clock.
	claimed := time.Now()
	entries, ok, err := s.Leases.OutboxClaim(ctx, dest, s.holder, s.now(), s.leaseTTL(), batch)
	if err != nil || !ok {
		return false, false, !ok && err == nil, err
	}
	sendCtx, lost := s.keepLease(ctx, dest, claimed, log)
	done, failed := s.send(sendCtx, entries, log)
	wasLost := lost()
	// Remove what was answered and free the lease, in one write, even
	// while the gateway stops (a new context): the next holder reads
	// from the head, after these.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := s.Leases.OutboxRelease(cctx, dest, s.holder, done); err != nil {
		return true, false, false, err
	}
	if wasLost {
		return false, false, true, nil
	}
	return failed, full(entries, batch), false, nil
}

// full reports whether a batch read with limit batch was full, so that
// more may wait: limit messages, or cut short by its bytes
// (store.MaxOutboxListBytes).
func full(entries []store.OutboxEntry, batch int) bool {
	size := 0
	for _, e := range entries {
		size += len(e.Message)
	}
	return len(entries) == batch || size >= store.MaxOutboxListBytes
}

// keepLease renews dest's drain lease every third of LeaseTTL until the
// returned stop is called, and returns a context of ctx that ends when
// the lease is lost: another sender took it, or it was not renewed before
// it expired, LeaseTTL after claimed (the time the claim, or the last
// renewal that succeeded, was made) whatever the renewals are doing. Each
// renewal is bounded by a third of LeaseTTL, and by the expiry. stop waits
// for the renewals to end, so none comes after the lease is freed, and
// reports whether the lease was lost.
func (s *Sender) keepLease(ctx context.Context, dest string, claimed time.Time, log *zap.Logger) (context.Context, func() bool) {
	ctx, cancel := context.WithCancel(ctx)
	ttl := s.leaseTTL()
	name := store.OutboxLeaseName(dest)
	var lost atomic.Bool
	stopped, exited := make(chan struct{}), make(chan struct{})
	expire := func(why string, err error) {
		lost.Store(true)
		log.Error(why, zap.Error(err))
		cancel()
	}
	go func() {
		defer close(exited)
		t := time.NewTicker(max(ttl/3, time.Millisecond))
		defer t.Stop()
		renewed := claimed
		expiry := time.NewTimer(time.Until(renewed.Add(ttl)))
		defer expiry.Stop()
		for {
			select {
			case <-stopped:
				return
			case <-ctx.Done():
				return
			case <-expiry.C:
				expire("could not renew the outbox lease of the destination before it expired; stopping its delivery", nil)
				return
			case <-t.C:
			}
			at := time.Now()
			rctx, rcancel := context.WithTimeout(ctx, min(max(ttl/3, time.Millisecond), renewed.Add(ttl).Sub(at)))
			ok, err := s.Leases.AcquireLease(rctx, name, s.holder, s.now(), ttl)
			rcancel()
			switch {
			case ctx.Err() != nil:
				return
			case err == nil && ok:
				renewed = at
				expiry.Reset(time.Until(renewed.Add(ttl)))
			case err == nil:
				lost.Store(true)
				log.Warn("another gateway took the outbox lease of the destination; stopping its delivery")
				cancel()
				return
			case time.Since(renewed) >= ttl:
				expire("could not renew the outbox lease of the destination before it expired; stopping its delivery", err)
				return
			default:
				log.Warn("renewing the outbox lease of the destination; will try again", zap.Error(err))
			}
		}
	}()
	return ctx, func() bool {
		close(stopped)
		<-exited
		cancel()
		return lost.Load()
	}
}

// send delivers entries, each group's in order and groups in parallel
// (at most Parallel at once), and returns the ids of those done with
// (answered, refused for good or given up) and whether any failed and
// will be retried: a group's messages after a failed one wait for it.
func (s *Sender) send(ctx context.Context, entries []store.OutboxEntry, log *zap.Logger) ([]uint64, bool) {
	// Per group, in outbox order; groups in parallel.
	var groups [][]store.OutboxEntry
	for _, e := range entries {
		i := slices.IndexFunc(groups, func(g []store.OutboxEntry) bool { return string(g[0].GroupID) == string(e.GroupID) })
		if i < 0 {
			groups = append(groups, nil)
			i = len(groups) - 1
		}
		groups[i] = append(groups[i], e)
	}
	var mu sync.Mutex
	var done []uint64
	var anyFailed atomic.Bool
	sem := make(chan struct{}, orDefault(s.Parallel, DefaultParallel))
	var wg sync.WaitGroup
	for _, g := range groups {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			for _, e := range g {
				if ctx.Err() != nil {
					anyFailed.Store(true)
					return
				}
				if !s.deliver(ctx, e, log) {
					// The group's later messages wait for this one.
					anyFailed.Store(true)
					return
				}
				mu.Lock()
				done = append(done, e.ID)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return done, anyFailed.Load()
}

// deliver sends one outbox message and reports whether it is done with:
// answered, refused for good, or given up. A false answer leaves it in
// the outbox to retry.
func (s *Sender) deliver(ctx context.Context, e store.OutboxEntry, log *zap.Logger) bool {
	log = log.With(zap.Uint64("outbox_id", e.ID), zap.String("sender", e.Sender))
	if age := s.now().Sub(e.Enqueued); age > s.currentPolicy().GiveUpAfter {
		s.stats.givenUp.Add(1)
		s.note(e.Destination, func(st *DestinationStatus) { st.GivenUp++ })
		log.Error("gave up delivering a message", zap.Duration("age", age))
		return true
	}
	if e.Destination == store.BackendDestination {
		return s.deliverBackend(ctx, e, log)
	}
	payload, err := queueingPayload(e)
	if err != nil {
		s.stats.rejected.Add(1)
		log.Error("encoding an outbox message; dropped", zap.Error(err))
		return true
	}
	s.stats.attempts.Add(1)
	at := s.now()
	a, err := s.Transport.Send(ctx, e.Sender, e.Destination, moh.DeliverMessage, payload)
	failed := func(why string) {
		s.note(e.Destination, func(st *DestinationStatus) {
			st.LastAttempt, st.LastError = at, why
			st.Failures++
		})
	}
	switch {
	case err != nil && (a == nil || a.Status == 0):
		s.stats.retried.Add(1)
		failed(err.Error())
		log.Warn("delivering a message failed; will retry", zap.Error(err))
		return false
	case a.Status == http.StatusOK && a.Response.Type == moh.ResponseQueueing:
		s.stats.delivered.Add(1)
		s.latency.observe(s.now().Sub(e.Enqueued))
		s.note(e.Destination, func(st *DestinationStatus) {
			st.LastAttempt, st.LastSuccess, st.LastError, st.Failures = at, at, "", 0
		})
		if n := len(a.Response.Queueing.Unknown); n > 0 {
			log.Warn("the destination does not know some recipients", zap.Int("unknown", n))
		}
		return true
	case retryable(a.Status, a.Response.Error.Code):
		s.stats.retried.Add(1)
		failed(fmt.Sprintf("status %d %s", a.Status, a.Response.Error.Code))
		log.Warn("the destination refused a message for now; will retry", zap.Int("status", a.Status),
			zap.String("code", a.Response.Error.Code.String()))
		return false
	default:
		s.stats.rejected.Add(1)
		failed(fmt.Sprintf("status %d %s: message dropped", a.Status, a.Response.Error.Code))
		log.Error("the destination refused a message; dropped", zap.Int("status", a.Status),
			zap.String("code", a.Response.Error.Code.String()), zap.ByteString("message", a.Response.Error.Message))
		return true
	}
}

// deliverBackend posts one outbox message to the legacy backend, as
// deliver does for a peer: done when the backend answered 2xx or refused
// it for good (a 4xx but 401, 403, 408 and 429), else left to retry.
func (s *Sender) deliverBackend(ctx context.Context, e store.OutboxEntry, log *zap.Logger) bool {
	at := s.now()
	failed := func(why string) {
		s.note(e.Destination, func(st *DestinationStatus) {
			st.LastAttempt, st.LastError = at, why
			st.Failures++
		})
	}
	b := s.backend.Load()
	if b == nil {
		s.stats.retried.Add(1)
		failed(errNoBackend.Error())
		log.Warn("a message waits for the legacy backend; will retry", zap.Error(errNoBackend))
		return false
	}
	s.stats.attempts.Add(1)
	status, err := b.Post(ctx, e.OutboxMessage)
	done, retry := backendOutcome(status)
	switch {
	case err != nil:
		s.stats.retried.Add(1)
		failed(err.Error())
		log.Warn("delivering a message to the legacy backend failed; will retry", zap.Error(err))
		return false
	case done:
		s.stats.delivered.Add(1)
		s.note(e.Destination, func(st *DestinationStatus) {
			st.LastAttempt, st.LastSuccess, st.LastError, st.Failures = at, at, "", 0
		})
		return true
	case retry && (status == http.StatusUnauthorized || status == http.StatusForbidden):
		s.stats.retried.Add(1)
		failed(fmt.Sprintf("status %d: authentication failure", status))
		log.Error("the legacy backend refused the gateway's signature (authentication failure: the backend's key differs from the gateway's); will retry",
			zap.Int("status", status))
		return false
	case retry:
		s.stats.retried.Add(1)
		failed(fmt.Sprintf("status %d", status))
		log.Warn("the legacy backend refused a message for now; will retry", zap.Int("status", status))
		return false
	default:
		s.stats.rejected.Add(1)
		failed(fmt.Sprintf("status %d: message dropped", status))
		log.Error("the legacy backend refused a message; dropped", zap.Int("status", status))
		return true
	}
}

// retryable tells the answers worth another attempt, from their status
// and, for an error answer, its DSError code (zero otherwise): the peer's
// own trouble (5xx but 501), its rate limits (429), time (408, 425; and a
// 409 in_progress, the same request_id still being processed there,
// docs/protocol.md §3), authentication it may pass later (401: it could
// not fetch our key yet), and a 200 that is not a queueing answer
// (treated as the peer's fault). Any other 409, such as replay, is a
// refusal for good.
func retryable(status int, code moh.Code) bool {
	switch {
	case status >= 500 && status != http.StatusNotImplemented:
		return true
	case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout, status == http.StatusTooEarly,
		status == http.StatusUnauthorized, status == http.StatusOK:
		return true
	case status == http.StatusConflict:
		return code == moh.CodeInProgress
	}
	return false
}

// queueingPayload encodes the QueueingServiceRequest of an outbox message
// (docs/protocol.md §4.2): the group id, the client ids, then the
// MLSMessage as the outbox keeps it, already encoded.
func queueingPayload(e store.OutboxEntry) ([]byte, error) {
	var b cryptobyte.Builder
	wire.AddOpaque(&b, e.GroupID)
	wire.AddVector(&b, func(b *cryptobyte.Builder) {
		for _, r := range e.Recipients {
			wire.AddOpaque(b, []byte(r))
		}
	})
	b.AddBytes(e.Message)
	return b.Bytes()
}

// dropReport is what a worker logged of its destination's drops at the
// backlog's bound.
type dropReport struct {
	logged uint64    // the count of store.Dropped.BacklogFull last logged
	at     time.Time // when
}

// reportDrops warns, at most once per DropLogInterval, about the messages
// dest lost at its backlog's bound since the last warning: one read of
// the destination's counters (store.OutboxBound), whatever the backlog.
// Every such message woke the worker (it was a new message for dest), so
// a drop is seen at the latest with the next one after the interval.
func (s *Sender) reportDrops(ctx context.Context, dest string, log *zap.Logger, r *dropReport) {
	b, ok := s.Outbox.(store.OutboxBound)
	if !ok {
		return
	}
	bl, err := b.OutboxDestinationBacklog(ctx, dest)
	if err != nil || bl.Dropped.BacklogFull <= r.logged {
		return
	}
	now := s.now()
	if !r.at.IsZero() && now.Sub(r.at) < DropLogInterval {
		return
	}
	log.Warn("dropped messages for a destination whose outbox backlog is full",
		zap.Uint64("dropped", bl.Dropped.BacklogFull-r.logged), zap.Uint64("dropped_total", bl.Dropped.BacklogFull),
		zap.Int("backlog_messages", bl.Messages), zap.Int64("backlog_bytes", bl.Bytes))
	r.logged, r.at = bl.Dropped.BacklogFull, now
}

// ErrNoReset reports a sender whose outbox cannot drop a destination's
// backlog (it does not implement store.OutboxBound).
var ErrNoReset = errors.New("federation: the outbox cannot reset a destination")

// Reset drops destination's whole backlog from the outbox, for an
// operator who decided the peer is gone: the messages are counted as
// dropped by an admin reset (store.Dropped.AdminReset) and the count is
// logged. It reports how many it dropped; on error, those dropped so far
// stay dropped. A message being sent meanwhile may still reach the peer.
func (s *Sender) Reset(ctx context.Context, destination string) (int, error) {
	b, ok := s.Outbox.(store.OutboxBound)
	if !ok {
		return 0, ErrNoReset
	}
	n, err := b.OutboxReset(ctx, destination)
	log := s.logger().With(zap.String("destination", destination), zap.Int("dropped", n))
	if err != nil {
		log.Error("resetting a destination's outbox", zap.Error(err))
		return n, fmt.Errorf("resetting the outbox of %s: %w", destination, err)
	}
	log.Warn("reset a destination's outbox: its backlog was dropped")
	return n, nil
}
