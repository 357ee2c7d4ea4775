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
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/sync/semaphore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Defaults of a Sender.
const (
	// DefaultMinBackoff and DefaultMaxBackoff bound the wait before a
	// group whose head failed, or a destination that failed as a whole
	// (failureScope), is tried again: it doubles from the first to the
	// second, with jitter, and never grows past it, so a destination
	// down for a day is still tried every few minutes.
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 5 * time.Minute
	// DefaultGiveUpAfter is the age at which a message that could not be
	// delivered is dropped (counted and logged). It is below the
	// receivers' duplicate window (ds.DeliverDedupWindow, 7 days), so a
	// message is never delivered twice.
	DefaultGiveUpAfter = 3 * 24 * time.Hour
	// DefaultBatch is how many messages of a destination are read from
	// the outbox at once, and the most one pass over it sends.
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
	// DefaultWorkerIdle is how long a destination's worker lives with
	// nothing to send: destinations come and go with groups' members,
	// and a sender keeps a worker and a status only for those it sent to
	// lately.
	DefaultWorkerIdle = time.Minute
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
	// Latency is the end-to-end latency of the messages delivered, per
	// destination: a peer provider's domain, or store.BackendDestination
	// for the legacy backend. A destination's histogram is forgotten with
	// the destination, after WorkerIdle with nothing to send.
	Latency map[string]Latency
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
	// NextAttempt is the soonest time the worker tries again the
	// destination, or one of its groups, after a failure (zero when
	// nothing backs off).
	NextAttempt time.Time
	// GivenUp counts the messages for it dropped at GiveUpAfter since
	// its worker started (a destination with nothing to send is forgotten
	// after Sender.WorkerIdle).
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
	// WorkerIdle is how long a destination's worker waits with nothing
	// to send before it ends and the destination is forgotten (Status
	// no longer lists it); default DefaultWorkerIdle.
	WorkerIdle time.Duration

	policy  atomic.Pointer[Policy]  // set by SetPolicy; nil means the fields above
	backend atomic.Pointer[Backend] // set by SetBackend; nil means none
	mu      sync.Mutex
	wakes   map[string]*workerWakes // one per destination with a worker
	status  map[string]*DestinationStatus
	spawn   func(destination string) // set by Run
	running bool
	holder  string // Holder or a random id, set by Run
	// restored has the retry states read at Run (persist.go) of the
	// destinations whose worker has not started yet; retriesLoaded is
	// false when they could not be read.
	restored      map[string]*restoredState
	retriesLoaded bool
	stats         struct{ attempts, delivered, retried, rejected, givenUp atomic.Uint64 }
	latency       sync.Map // destination -> *latencyHistogram
	// clock times the drain leases (keepLease): nil means the real,
	// monotonic one; tests set one they move by hand.
	clock leaseClock
}

// leaseClock is the clock keepLease renews and expires a drain lease by.
type leaseClock interface {
	Now() time.Time
	// After sends the time on the channel once d has passed.
	After(d time.Duration) <-chan time.Time
	// WithTimeout is context.WithTimeout on this clock.
	WithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc)
}

// realClock is the leaseClock of time and context.
type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (realClock) WithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}

func (s *Sender) leaseClock() leaseClock {
	if s.clock == nil {
		return realClock{}
	}
	return s.clock
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
	st := Stats{Attempts: s.stats.attempts.Load(), Delivered: s.stats.delivered.Load(), Retried: s.stats.retried.Load(),
		Rejected: s.stats.rejected.Load(), GivenUp: s.stats.givenUp.Load(), Latency: map[string]Latency{}}
	s.latency.Range(func(k, v any) bool {
		st.Latency[k.(string)] = v.(*latencyHistogram).snapshot()
		return true
	})
	return st
}

// observeLatency counts the end-to-end latency of a message that
// destination accepted: from its acceptance (the outbox write, enqueued)
// to now.
func (s *Sender) observeLatency(destination string, enqueued time.Time) {
	h, ok := s.latency.Load(destination)
	if !ok {
		h, _ = s.latency.LoadOrStore(destination, new(latencyHistogram))
	}
	h.(*latencyHistogram).observe(s.now().Sub(enqueued))
}

// Status lists what the sender knows of each destination it works for
// (those with a worker: a destination with nothing to send for WorkerIdle
// is no longer listed; and those whose stored backoffs Run resumed), in
// byte order of the domain.
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

// emptied reports whether the pass left nothing waiting for its
// destination: it read the whole backlog, and every group it found there
// was sent and done with (none waits, none failed, none was cut short).
// A message written since comes with a wake-up (Outbound).
func (r passResult) emptied() bool {
	if r.scanned == nil || r.more {
		return false
	}
	if r.left > 0 {
		return false
	}
	for g := range r.scanned {
		if o, ok := r.tried[g]; !ok || o != outcomeDone {
			return false
		}
	}
	return true
}

// PeerUp tells the sender that a request from destination just arrived,
// so it is reachable again: a worker backing off after failures (the
// destination's or its groups') tries it at once, unless the destination
// backs off after a 429 (it limits this provider, and was up all along:
// its Retry-After holds); and without Leases, a
// destination without a worker gets one, which reads its outbox (a
// backlog that nothing else woke, such as one the listing at Run missed,
// is sent) and ends after WorkerIdle if it is empty (with Leases, the
// listing every LeaseTTL finds backlogs, and a pass would claim a lease).
// It costs a map lookup when the destination has a worker that is not
// backing off (the common case: it is called for every provider request),
// and never blocks.
func (s *Sender) PeerUp(destination string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.wakes[destination]
	if w == nil {
		s.endRestored(destination, false)
		if s.spawn != nil && s.Leases == nil {
			s.spawn(destination)
		}
		return
	}
	if st := s.status[destination]; st != nil && !st.NextAttempt.IsZero() {
		signal(w.up)
	}
}

// Wake tells the sender to try destination at once, ending any backoff:
// the operator's retry (the admin API), or a legacy backend configured
// anew. It starts the destination's worker if there is none, and never
// blocks.
func (s *Sender) Wake(destination string) { s.signal(destination, true) }

// Outbound tells the sender that destination has new messages in the
// outbox (ds.Service.Outbound): its worker reads the outbox at once,
// unless the destination is backing off after failures of its own, and
// sends the new messages unless their group is backing off. A new message
// never ends a backoff, so a destination that is down is tried at the
// backoff's pace whatever its traffic. It starts the destination's worker
// if there is none, and never blocks.
func (s *Sender) Outbound(destination string) { s.signal(destination, false) }

// signal wakes destination's worker, which ends its backoffs when retry
// is set, or starts one.
func (s *Sender) signal(destination string, retry bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.wakes[destination]; w != nil {
		if retry {
			signal(w.retry)
		} else {
			signal(w.wake)
		}
		return
	}
	if retry {
		s.endRestored(destination, true)
	}
	if s.spawn != nil {
		s.spawn(destination)
	}
}

// signal sends on a wake-up channel of capacity 1 without blocking: a
// wake-up already pending stands for this one.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// workerWakes are the wake-up channels of one destination's worker: wake
// for new messages, retry to end its backoffs, up for a request from the
// destination (PeerUp), which ends them unless it limits this provider.
type workerWakes struct {
	wake, retry, up chan struct{}
}

// Run starts a worker for each destination with a backlog, and one for
// each destination woken later (Outbound, Wake), and returns when ctx ends and every
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
	s.mu.Unlock()
	// The stored backoffs are read before any worker starts, so each
	// one resumes its destination's (persist.go).
	restored, loaded := s.loadRetries(ctx)
	s.mu.Lock()
	s.restored, s.retriesLoaded = restored, loaded
	s.holder = s.Holder
	if s.holder == "" {
		s.holder = "sender-" + strconv.FormatUint(rand.Uint64(), 16)
	}
	s.wakes = map[string]*workerWakes{}
	// spawn starts dest's worker unless it has one; called with s.mu
	// held.
	s.spawn = func(dest string) {
		if _, ok := s.wakes[dest]; ok || ctx.Err() != nil {
			return
		}
		w := &workerWakes{wake: make(chan struct{}, 1), retry: make(chan struct{}, 1), up: make(chan struct{}, 1)}
		s.wakes[dest] = w
		wg.Go(func() { s.worker(ctx, dest, w) })
	}
	s.mu.Unlock()
	spawn := s.Outbound
	if s.Leases != nil {
		s.rescan(ctx, spawn)
	} else {
		s.listBacklog(ctx, spawn)
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// listBacklog has a worker started for each destination with a backlog,
// listing them until a listing succeeds or ctx ends: after a failure it
// tries again after a backoff, as for a destination, meanwhile a
// destination is tried when woken (Outbound, Wake, PeerUp).
func (s *Sender) listBacklog(ctx context.Context, spawn func(string)) {
	var b backoff
	for {
		dests, err := s.Outbox.OutboxDestinations(ctx)
		if err == nil {
			for _, d := range dests {
				spawn(d)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		s.grow(&b)
		s.logger().Error("listing outbox destinations; will try again, and each is tried when woken meanwhile",
			zap.Error(err), zap.Duration("retry_in", time.Until(b.next)))
		t := time.NewTimer(time.Until(b.next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// rescan lists, at once and every LeaseTTL until ctx ends, the
// destinations with a backlog, and has each one's worker read it as for
// new messages (Outbound, which keeps its backoffs), starting the worker
// if need be: messages whose holder died, or that another gateway accepted while it
// held the lease, are delivered even when nothing wakes this sender.
func (s *Sender) rescan(ctx context.Context, spawn func(string)) {
	t := time.NewTicker(s.leaseTTL())
	defer t.Stop()
	for {
		dests, err := s.Outbox.OutboxDestinations(ctx)
		if err != nil && ctx.Err() == nil {
			s.logger().Warn("listing outbox destinations; will try again", zap.Error(err))
		}
		for _, d := range dests {
			spawn(d)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// leaseTTL, leasePoll and workerIdle are LeaseTTL, LeasePoll and
// WorkerIdle, defaults filled in.
func (s *Sender) leaseTTL() time.Duration   { return orDefault(s.LeaseTTL, DefaultLeaseTTL) }
func (s *Sender) leasePoll() time.Duration  { return orDefault(s.LeasePoll, DefaultLeasePoll) }
func (s *Sender) workerIdle() time.Duration { return orDefault(s.WorkerIdle, DefaultWorkerIdle) }

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

// backoff is the wait of a destination, or of one of its groups, after
// failures: the base of the last wait (zero when not failing) and when it
// is tried again, on the monotonic clock.
type backoff struct {
	level time.Duration
	next  time.Time
}

// grow doubles b's base from MinBackoff up to the policy's MaxBackoff and
// sets its next attempt after a wait in the upper half of it (full jitter
// on the upper half: retries of many gateways spread without ever
// retrying at once).
func (s *Sender) grow(b *backoff) {
	minB, maxB := s.backoffBounds()
	b.level = min(max(2*b.level, minB), maxB)
	wait := b.level/2 + rand.N(b.level/2+1)
	b.next = time.Now().Add(wait)
}

// backoffBounds returns the shortest and longest backoff: MinBackoff,
// and the policy's MaxBackoff, never below MinBackoff.
func (s *Sender) backoffBounds() (minB, maxB time.Duration) {
	minB = orDefault(s.MinBackoff, DefaultMinBackoff)
	return minB, max(s.currentPolicy().MaxBackoff, minB)
}

// atLeast makes b's next attempt come no sooner than after, a peer's
// Retry-After, bounded by the policy's MaxBackoff (a peer cannot hold its
// deliveries longer than a backoff would).
func (s *Sender) atLeast(b *backoff, after time.Duration) {
	if after <= 0 {
		return
	}
	_, maxB := s.backoffBounds()
	if at := time.Now().Add(min(after, maxB)); b.next.Before(at) {
		b.next = at
	}
}

// destState is what a worker keeps of its destination between passes:
// the destination's backoff, after failures that were the destination's
// (passResult.destFailed), and the backoff of each group whose head
// failed on its own, whose messages wait while the others are sent.
type destState struct {
	dest   backoff
	groups map[string]*backoff
	// passed is when the last pass started: a backoff that had ended by
	// then and is still kept belongs to a group the pass did not reach.
	passed time.Time
	// skip is the head of the outbox that passes read past while it
	// holds (skipHead).
	skip skipHead
	// limited is set while dest backs off after a 429: the destination
	// limits this provider, so a request from it (PeerUp) says nothing
	// new and does not end the backoff.
	limited bool
}

// skipHead is a head of a destination's outbox that holds only messages
// of groups that wait: every message with an id up to after belongs to
// one of groups, each of which waits. A pass reads from after instead of
// the head while each of groups still waits, so that a group that can be
// sent is reached however many messages of waiting groups lie before
// it, without reading them on every pass. No message of another group
// can appear at or below after later: ids commit in order (store.Outbox).
type skipHead struct {
	after  uint64
	groups map[string]bool
}

// skipValid reports whether every group of d.skip still waits at t;
// a group that no longer waits must be read from the head, its oldest
// message first.
func (d *destState) skipValid(t time.Time) bool {
	if d.skip.after == 0 {
		return false
	}
	for g := range d.skip.groups {
		if !d.blocked(g, t) {
			return false
		}
	}
	return true
}

// blocked reports whether group's messages wait at t.
func (d *destState) blocked(group string, t time.Time) bool {
	b := d.groups[group]
	return b != nil && b.next.After(t)
}

// earliest is the soonest time a backoff ends, zero for none. A backoff
// that had ended when the last pass started is not counted: its group was
// not reached by that pass (behind MaxScanBatches batches of waiting
// groups), and a timer for it would have the worker read the outbox in a
// loop; it waits for the next pass.
func (d *destState) earliest() time.Time {
	var at time.Time
	consider := func(b *backoff) {
		if b.next.After(d.passed) && (at.IsZero() || b.next.Before(at)) {
			at = b.next
		}
	}
	consider(&d.dest)
	for _, b := range d.groups {
		consider(b)
	}
	return at
}

// reset ends every backoff.
func (d *destState) reset() {
	d.dest = backoff{}
	clear(d.groups)
	d.skip = skipHead{}
	d.limited = false
}

// worker delivers destination's messages until ctx ends: a pass reads the
// messages of the groups that do not wait, sends each group's in order,
// and removes what was answered; a group whose head failed waits on its
// own backoff, and the destination as a whole waits after failures that
// were its own (passResult.destFailed).
func (s *Sender) worker(ctx context.Context, dest string, wakes *workerWakes) {
	log := s.logger().With(zap.String("destination", dest))
	state := destState{groups: map[string]*backoff{}}
	// persisted: a retry state may be stored for dest; dirty: state
	// changed since it was last stored, or the write failed (a first
	// pass settles a restored one).
	persisted := s.takeRestored(dest, &state)
	dirty := persisted
	var drops dropReport
	empty := false // the last pass left nothing waiting for dest
	for ctx.Err() == nil {
		var wait time.Duration // 0: until a wake or a backoff's end
		if !state.dest.next.After(time.Now()) {
			s.reportDrops(ctx, dest, log, &drops)
			state.passed = time.Now()
			r, err := s.pass(ctx, dest, &state, log)
			empty = err == nil && r.emptied()
			switch {
			case err != nil:
				if ctx.Err() == nil {
					log.Error("reading or clearing the outbox", zap.Error(err))
				}
				s.grow(&state.dest)
			case r.busy:
				// Another gateway drains it: try again shortly, for what
				// was accepted here meanwhile.
				wait = s.leasePoll()
			case r.destFailed:
				s.grow(&state.dest)
				s.atLeast(&state.dest, r.retryAfter)
				state.limited = rateLimited(r.tried)
				dirty = true
			default:
				dirty = dirty || state.dest.level != 0
				state.dest, state.limited = backoff{}, false
				for g, o := range r.tried {
					if o == outcomeDone {
						if state.groups[g] != nil {
							delete(state.groups, g)
							dirty = true
						}
						continue
					}
					b := state.groups[g]
					if b == nil {
						b = &backoff{}
						state.groups[g] = b
					}
					s.grow(b)
					dirty = true
				}
				if r.scanned != nil {
					// The whole backlog was read: a group that has no
					// message left (given up, reset) is forgotten.
					for g := range state.groups {
						if !r.scanned[g] {
							delete(state.groups, g)
							dirty = true
						}
					}
				}
			}
			s.noteNext(dest, &state)
			if s.Leases != nil && err == nil && !r.busy && len(r.tried) > 0 && state.empty() {
				// Under drain leases the gateways drain dest pass by
				// pass, whichever claims it: another may have stored a
				// retry state since this worker last wrote (a pass of
				// its that failed), which this delivery ends.
				persisted, dirty = true, true
			}
			if dirty && err == nil && !r.busy {
				persisted, dirty = s.persist(ctx, dest, &state, persisted, log)
			}
			if err == nil && !r.busy && !r.destFailed && r.more {
				continue
			}
		}
		var fire <-chan time.Time
		if at := state.earliest(); !at.IsZero() && (wait == 0 || time.Until(at) < wait) {
			wait = max(time.Until(at), time.Millisecond)
		}
		idle := wait == 0 && empty && state.earliest().IsZero()
		if idle {
			wait = s.workerIdle()
		}
		var timer *time.Timer
		if wait > 0 {
			timer = time.NewTimer(wait)
			fire = timer.C
		}
		select {
		case <-ctx.Done():
		case <-fire:
			if idle && dirty {
				// A clear that failed: tried again before the worker
				// ends, which it does not while the clear fails.
				persisted, dirty = s.persist(ctx, dest, &state, persisted, log)
			}
			if idle && !dirty && s.retire(dest, wakes) {
				return
			}
		case <-wakes.wake:
			// New messages: a pass, unless the destination backs off.
		case <-wakes.retry:
			state.reset() // the operator's retry
			s.noteNext(dest, &state)
			dirty = true // stored by the pass that follows
		case <-wakes.up:
			// The peer is back, unless it was never away: after a 429
			// it limits this provider, and its Retry-After holds.
			if !state.limited || !state.dest.next.After(time.Now()) {
				state.reset()
				s.noteNext(dest, &state)
				dirty = true // stored by the pass that follows
			}
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// retire ends dest's worker, which has had nothing to send for
// WorkerIdle: it forgets the destination (its wake-ups, its status and
// its latency histogram)
// unless a wake-up is pending, and reports whether it did. Wake-ups are
// sent under the lock (signal), so each one either is pending here, and
// the worker goes on, or comes after, and starts a new worker.
func (s *Sender) retire(dest string, wakes *workerWakes) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(wakes.wake) > 0 || len(wakes.retry) > 0 || len(wakes.up) > 0 {
		return false
	}
	delete(s.wakes, dest)
	delete(s.status, dest)
	// Its latency histogram too: one is kept per destination, and a
	// sender that forgot none would hold one (and export a series) for
	// every peer it ever delivered to, however many come and go.
	s.latency.Delete(dest)
	return true
}

// noteNext sets dest's NextAttempt from state: the soonest end of a
// backoff, on the sender's clock, or zero when nothing backs off.
func (s *Sender) noteNext(dest string, state *destState) {
	var next time.Time
	if at := state.earliest(); !at.IsZero() {
		next = s.now().Add(time.Until(at))
	}
	s.mu.Lock()
	_, known := s.status[dest]
	s.mu.Unlock()
	if known || !next.IsZero() {
		s.note(dest, func(st *DestinationStatus) { st.NextAttempt = next })
	}
}

// passResult is what one pass over a destination did.
type passResult struct {
	// tried has each group the pass sent to, with the outcome of its
	// last attempt: outcomeDone when all it sent was done with, else how
	// its head failed, to be retried.
	tried map[string]outcome
	// destFailed is set when the failures were the destination's, not a
	// group's (failureScope): the destination waits as a whole.
	destFailed bool
	// more is set when the pass stopped at its bound on what it sends
	// (Batch messages, store.MaxOutboxListBytes), or stopped reading
	// after sending some: more may be sent at once.
	more bool
	// scanned has the groups of every message waiting for dest, when the
	// pass read them all; nil when it stopped before the end.
	scanned map[string]bool
	// busy is set when another sender holds the destination's drain
	// lease: nothing was read.
	busy bool
	// left counts the messages the pass selected but did not get done
	// with (failed, or not sent before ctx ended).
	left int
	// retryAfter is the longest Retry-After of the pass's 429 answers:
	// the destination's backoff lasts at least that long (up to the
	// policy's MaxBackoff).
	retryAfter time.Duration
}

// record sets what sending sel did, sent, in r. Groups that a halted
// send did not start, when the failures were not the destination's after
// all (another group was answered meanwhile), make r.more: they are sent
// by the next pass, at once, not after the failing group's backoff.
func (r *passResult) record(sel []store.OutboxEntry, sent sendResult) {
	r.tried, r.destFailed, r.left, r.retryAfter = sent.tried, failureScope(sent.tried), len(sel)-len(sent.done), sent.retryAfter
	if sent.halted && !r.destFailed {
		r.more = true
	}
}

// sendResult is what send did.
type sendResult struct {
	// done are the ids of the messages done with.
	done []uint64
	// tried has each group send started, with its last outcome.
	tried map[string]outcome
	// retryAfter is the longest Retry-After of the 429 answers.
	retryAfter time.Duration
	// halted is set when a failure of the destination's stopped send
	// before it started every group.
	halted bool
}

// MaxScanBatches bounds the batches of Batch messages one pass reads past
// the messages of the groups that wait (whose head failed): a pass that
// read that many without filling its selection ends, and the next one
// goes on from there (destState.skip) at once, so that a group behind
// any number of waiting groups' messages is reached, a bounded read at a
// time.
const MaxScanBatches = 16

// pass sends what dest's outbox holds for the groups that do not wait
// (state): at most Batch messages and about store.MaxOutboxListBytes,
// read from the head, or from past the messages of waiting groups that
// the passes before it read (destState.skip), in batches of Batch,
// skipping the messages of the groups that wait, for at most
// MaxScanBatches batches. A group's messages
// are sent in order from its oldest, and the ones after a failure wait for
// it. With Leases the pass holds the destination's drain lease; busy is
// set when another sender holds it.
func (s *Sender) pass(ctx context.Context, dest string, state *destState, log *zap.Logger) (passResult, error) {
	batch := min(orDefault(s.Batch, DefaultBatch), store.MaxOutboxList)
	res, err := reservePass(ctx)
	if err != nil {
		return passResult{}, err
	}
	defer res.release()
	if s.Leases == nil {
		sel, r, err := s.collect(ctx, dest, nil, false, state, batch)
		if err != nil || len(sel) == 0 {
			return r, err
		}
		res.shrink(sel)
		sent := s.send(ctx, sel, log)
		r.record(sel, sent)
		if done := sent.done; len(done) > 0 {
			// A new context: what was answered is removed even while
			// the gateway stops, else it would be sent once more after
			// restart (harmless, see the package doc, but avoidable).
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if _, err := s.Outbox.OutboxDelivered(cctx, dest, done); err != nil {
				return passResult{}, err
			}
		}
		return r, nil
	}
	// The lease expires ttl after the time the claim gives it, whenever
	// the database answers: claimed is that time, on the monotonic clock.
	claimed := s.leaseClock().Now()
	first, ok, err := s.Leases.OutboxClaim(ctx, dest, s.holder, s.now(), s.leaseTTL(), batch)
	if err != nil || !ok {
		return passResult{busy: !ok && err == nil}, err
	}
	sendCtx, lost := s.keepLease(ctx, dest, claimed, log)
	sel, r, err := s.collect(sendCtx, dest, first, true, state, batch)
	res.shrink(sel)
	var done []uint64
	if err == nil && len(sel) > 0 {
		sent := s.send(sendCtx, sel, log)
		r.record(sel, sent)
		done = sent.done
	}
	wasLost := lost()
	// Remove what was answered and free the lease, in one write, even
	// while the gateway stops (a new context): the next holder reads
	// from the head, after these.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, rerr := s.Leases.OutboxRelease(cctx, dest, s.holder, done); rerr != nil {
		return passResult{}, rerr
	}
	if wasLost {
		return passResult{busy: true}, nil
	}
	return r, err
}

// MaxPassBytes bounds the outbox messages that the passes of all the
// senders of the process hold at once, whatever the number of
// destinations: a pass reserves 2*store.MaxOutboxListBytes while it reads
// (a batch, and what it selected from the batches before), then keeps the
// bytes of what it sends until it is done. 256 MiB lets 8 passes read at
// once, and many more send small messages.
const MaxPassBytes = 256 << 20

// passReserve is what a pass reserves of passBytes while it reads.
const passReserve = 2 * store.MaxOutboxListBytes

// passBytes is the process's MaxPassBytes, taken by the passes of every
// Sender.
var passBytes = semaphore.NewWeighted(MaxPassBytes)

// passReservation is a pass's part of passBytes.
type passReservation struct {
	sem *semaphore.Weighted
	n   int64
}

// reservePass waits for passReserve bytes of passBytes, or for ctx's
// end.
func reservePass(ctx context.Context) (*passReservation, error) {
	sem := passBytes
	if err := sem.Acquire(ctx, passReserve); err != nil {
		return nil, fmt.Errorf("waiting for memory to read the outbox: %w", err)
	}
	return &passReservation{sem: sem, n: passReserve}, nil
}

// shrink gives back what r holds beyond the bytes of sel's messages.
func (r *passReservation) shrink(sel []store.OutboxEntry) {
	var size int64
	for _, e := range sel {
		size += int64(len(e.Message))
	}
	if size = min(size, r.n); size < r.n {
		r.sem.Release(r.n - size)
		r.n = size
	}
}

// release gives back what r holds.
func (r *passReservation) release() {
	if r.n > 0 {
		r.sem.Release(r.n)
		r.n = 0
	}
}

// collect reads dest's outbox from the head (first is its first batch
// when haveFirst), or from state.skip while it is valid, and selects what
// a pass sends: the messages of the groups that do not wait, in order, up
// to Batch messages and about store.MaxOutboxListBytes (at least one),
// reading at most MaxScanBatches batches. Every group's selection is the
// oldest of its messages, since the outbox is read in ID order (ids
// commit in order, store.Outbox) and what state.skip passes over belongs
// to groups that wait. The messages of waiting groups read before the
// first of a group that does not wait extend state.skip. The result has
// more and scanned set.
func (s *Sender) collect(ctx context.Context, dest string, first []store.OutboxEntry, haveFirst bool, state *destState, batch int) ([]store.OutboxEntry, passResult, error) {
	var sel []store.OutboxEntry
	var r passResult
	scanned := map[string]bool{}
	size := 0
	now := time.Now()
	page := first
	var after uint64
	if state.skipValid(now) {
		after, haveFirst = state.skip.after, false
		for g := range state.skip.groups {
			scanned[g] = true
		}
	} else {
		state.skip = skipHead{}
	}
	skipped := false // this pass extended state.skip
	head := true     // every message read so far waits
	for n := 0; n < MaxScanBatches; n++ {
		if n > 0 || !haveFirst {
			var err error
			if page, err = s.Outbox.OutboxPending(ctx, dest, after, batch); err != nil {
				return nil, passResult{}, err
			}
		}
		pageSize := 0
		for _, e := range page {
			pageSize += len(e.Message)
			scanned[string(e.GroupID)] = true
			if state.blocked(string(e.GroupID), now) {
				if head {
					if state.skip.groups == nil {
						state.skip.groups = map[string]bool{}
					}
					state.skip.after = e.ID
					state.skip.groups[string(e.GroupID)] = true
					skipped = true
				}
				continue
			}
			head = false
			if len(sel) == batch || len(sel) > 0 && size+len(e.Message) > store.MaxOutboxListBytes {
				r.more = true
				return sel, r, nil
			}
			sel = append(sel, e)
			size += len(e.Message)
		}
		if len(page) < batch && pageSize < store.MaxOutboxListBytes {
			r.scanned = scanned // the end of the backlog
			return sel, r, nil
		}
		after = page[len(page)-1].ID
	}
	// Stopped reading before the end: what lies behind is read by the
	// next pass, at once, past the waiting groups' messages it read
	// (state.skip) or after it sent what it selected.
	r.more = len(sel) > 0 || skipped
	return sel, r, nil
}

// failureScope reports whether the failures of a pass were the
// destination's rather than its groups': a rate limit (429: the peer
// limits this provider, not a group), or, when no request of the pass got
// an answer, a failure to reach it (no connection, DNS, TLS, the peer's
// key) or timeouts of two groups or more. A group's own answers (5xx,
// 408, 409 in_progress, ...) and the timeout of one group alone (such as
// a large Welcome) are the group's.
func failureScope(tried map[string]outcome) bool {
	answered, unreachable, timeouts := false, false, 0
	for _, o := range tried {
		switch o {
		case retryRateLimited:
			return true
		case retryUnreachable:
			unreachable = true
		case retryTimeout:
			timeouts++
		default:
			answered = true
		}
	}
	return !answered && (unreachable || timeouts >= 2)
}

// rateLimited reports whether a group of tried was answered 429.
func rateLimited(tried map[string]outcome) bool {
	for _, o := range tried {
		if o == retryRateLimited {
			return true
		}
	}
	return false
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
	clock := s.leaseClock()
	go func() {
		defer close(exited)
		period := max(ttl/3, time.Millisecond)
		renewed := claimed
		next := clock.Now().Add(period) // the next renewal
		for {
			// Wait for the next renewal or the expiry, whichever is first.
			expiry := renewed.Add(ttl)
			wake, expires := next, !expiry.After(next)
			if expires {
				wake = expiry
			}
			select {
			case <-stopped:
				return
			case <-ctx.Done():
				return
			case <-clock.After(wake.Sub(clock.Now())):
			}
			if expires {
				expire("could not renew the outbox lease of the destination before it expired; stopping its delivery", nil)
				return
			}
			at := clock.Now()
			if next = next.Add(period); next.Before(at) {
				next = at.Add(period) // renewals that came late are not made up
			}
			rctx, rcancel := clock.WithTimeout(ctx, min(period, renewed.Add(ttl).Sub(at)))
			ok, err := s.Leases.AcquireLease(rctx, name, s.holder, s.now(), ttl)
			rcancel()
			switch {
			case ctx.Err() != nil:
				return
			case err == nil && ok:
				renewed = at
			case err == nil:
				lost.Store(true)
				log.Warn("another gateway took the outbox lease of the destination; stopping its delivery")
				cancel()
				return
			case clock.Now().Sub(renewed) >= ttl:
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

// outcome is how the delivery of a message ended.
type outcome int

const (
	// outcomeDone is a message done with: answered, refused for good or
	// given up.
	outcomeDone outcome = iota
	// retryAnswered is an answer that leaves the message for a retry
	// (retryable, backendOutcome), but a rate limit.
	retryAnswered
	// retryTimeout is no answer in time.
	retryTimeout
	// retryUnreachable is no answer for another reason: no connection,
	// DNS, TLS, the peer's key, no legacy backend configured.
	retryUnreachable
	// retryRateLimited is a 429.
	retryRateLimited
)

// noAnswer sorts a failure without an answer: a timeout, or the
// destination not reached. A connection that could not be opened is the
// latter even when its dial timed out (a peer whose network drops the
// packets): no message would have fared better. A Client post that timed
// out before it had a connection ends with the client's deadline rather
// than the dial's error, and says so (provider.ErrNotConnected). So is a
// connection lost: a pooled HTTP/2 connection that died fails its
// requests so, not by their timeouts, once its PING goes unanswered
// (provider.FetchPolicy.HTTPClient), while a slow answer on a live
// connection is a timeout, the group's own.
func noAnswer(err error) outcome {
	if errors.Is(err, provider.ErrNotConnected) {
		return retryUnreachable
	}
	if op := (*net.OpError)(nil); errors.As(err, &op) && op.Op == "dial" {
		return retryUnreachable
	}
	var te interface{ Timeout() bool }
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &te) && te.Timeout() {
		return retryTimeout
	}
	return retryUnreachable
}

// send delivers entries, each group's in order and groups in parallel
// (at most Parallel at once), and returns what it did (sendResult): the
// ids of those done with (answered, refused for good or given up) and
// the outcome of each group's last attempt (a group's messages after a
// failed one wait for it); after a failure of the destination's (it
// cannot be reached, or limits this provider) it starts no more groups.
func (s *Sender) send(ctx context.Context, entries []store.OutboxEntry, log *zap.Logger) sendResult {
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
	var retryAfter time.Duration
	tried := make(map[string]outcome, len(groups))
	sem := make(chan struct{}, orDefault(s.Parallel, DefaultParallel))
	// halted is set by a failure that is the destination's whatever the
	// group (it cannot be reached, or it limits this provider's rate):
	// the groups not started yet are left for the next pass, after the
	// destination's backoff, rather than each tried in turn (each
	// waiting for its dial's timeout when the peer's network drops the
	// packets).
	var halted atomic.Bool
	var wg sync.WaitGroup
	stopped := false
	for _, g := range groups {
		sem <- struct{}{}
		if halted.Load() {
			<-sem
			stopped = true
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			for _, e := range g {
				if ctx.Err() != nil {
					return
				}
				var after time.Duration
				o := s.deliver(ctx, e, log, &after)
				mu.Lock()
				tried[string(e.GroupID)] = o
				retryAfter = max(retryAfter, after)
				if o == outcomeDone {
					done = append(done, e.ID)
				}
				mu.Unlock()
				if o == retryUnreachable || o == retryRateLimited {
					halted.Store(true)
				}
				if o != outcomeDone {
					// The group's later messages wait for this one.
					return
				}
			}
		})
	}
	wg.Wait()
	return sendResult{done: done, tried: tried, retryAfter: retryAfter, halted: stopped}
}

// deliver sends one outbox message and reports how it ended: done with
// (answered, refused for good, or given up), or left in the outbox to
// retry, and why; for a 429, retryAfter is set to the answer's
// Retry-After (0 without one).
func (s *Sender) deliver(ctx context.Context, e store.OutboxEntry, log *zap.Logger, retryAfter *time.Duration) outcome {
	log = log.With(zap.Uint64("outbox_id", e.ID), zap.String("sender", e.Sender))
	if age := s.now().Sub(e.Enqueued); age > s.currentPolicy().GiveUpAfter {
		s.stats.givenUp.Add(1)
		s.note(e.Destination, func(st *DestinationStatus) { st.GivenUp++ })
		log.Error("gave up delivering a message", zap.Duration("age", age))
		return outcomeDone
	}
	if e.Destination == store.BackendDestination {
		return s.deliverBackend(ctx, e, log)
	}
	payload, err := queueingPayload(e)
	if err != nil {
		s.stats.rejected.Add(1)
		log.Error("encoding an outbox message; dropped", zap.Error(err))
		return outcomeDone
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
		return noAnswer(err)
	case err != nil:
		// An answer that is not a DSResponse is not the MoH peer's
		// refusal: a proxy's or load balancer's page in front of it (a
		// 404 or 403 during a deploy, a redirect). Kept for a retry,
		// whatever its status, as no answer is; a destination that keeps
		// answering so has its entries dropped at give_up_after.
		s.stats.retried.Add(1)
		failed(fmt.Sprintf("status %d, not a DSResponse", a.Status))
		log.Warn("the destination answered with something other than a DSResponse; will retry", zap.Int("status", a.Status), zap.Error(err))
		if a.Status == http.StatusTooManyRequests {
			*retryAfter = a.RetryAfter
			return retryRateLimited
		}
		return retryAnswered
	case success(a.Status) && a.Response.Type == moh.ResponseQueueing:
		s.stats.delivered.Add(1)
		s.observeLatency(e.Destination, e.Enqueued)
		s.note(e.Destination, func(st *DestinationStatus) {
			st.LastAttempt, st.LastSuccess, st.LastError, st.Failures = at, at, "", 0
		})
		if n := len(a.Response.Queueing.Unknown); n > 0 {
			log.Warn("the destination does not know some recipients", zap.Int("unknown", n))
		}
		return outcomeDone
	case retryable(a.Status, a.Response.Error.Code):
		s.stats.retried.Add(1)
		failed(fmt.Sprintf("status %d %s", a.Status, a.Response.Error.Code))
		log.Warn("the destination refused a message for now; will retry", zap.Int("status", a.Status),
			zap.String("code", a.Response.Error.Code.String()))
		if a.Status == http.StatusTooManyRequests {
			*retryAfter = a.RetryAfter
			return retryRateLimited
		}
		return retryAnswered
	default:
		s.stats.rejected.Add(1)
		failed(fmt.Sprintf("status %d %s: message dropped", a.Status, a.Response.Error.Code))
		log.Error("the destination refused a message; dropped", zap.Int("status", a.Status),
			zap.String("code", a.Response.Error.Code.String()), zap.ByteString("message", a.Response.Error.Message))
		return outcomeDone
	}
}

// deliverBackend posts one outbox message to the legacy backend, as
// deliver does for a peer: done when the backend answered 2xx or refused
// it for good (a 4xx but 401, 403, 408 and 429), else left to retry.
func (s *Sender) deliverBackend(ctx context.Context, e store.OutboxEntry, log *zap.Logger) outcome {
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
		return retryUnreachable
	}
	s.stats.attempts.Add(1)
	status, err := b.Post(ctx, e.OutboxMessage)
	done, retry := backendOutcome(status)
	switch {
	case err != nil:
		s.stats.retried.Add(1)
		failed(err.Error())
		log.Warn("delivering a message to the legacy backend failed; will retry", zap.Error(err))
		return noAnswer(err)
	case done:
		s.stats.delivered.Add(1)
		s.observeLatency(e.Destination, e.Enqueued)
		s.note(e.Destination, func(st *DestinationStatus) {
			st.LastAttempt, st.LastSuccess, st.LastError, st.Failures = at, at, "", 0
		})
		return outcomeDone
	case retry && (status == http.StatusUnauthorized || status == http.StatusForbidden):
		s.stats.retried.Add(1)
		failed(fmt.Sprintf("status %d: authentication failure", status))
		log.Error("the legacy backend refused the gateway's request (authentication failure: its key differs from the gateway's, "+
			"or the two clocks are more than the backend's window apart, 300 s by docs/protocol.md §11); will retry",
			zap.Int("status", status))
		return retryAnswered
	case retry:
		s.stats.retried.Add(1)
		failed(fmt.Sprintf("status %d", status))
		log.Warn("the legacy backend refused a message for now; will retry", zap.Int("status", status))
		if status == http.StatusTooManyRequests {
			return retryRateLimited
		}
		return retryAnswered
	default:
		s.stats.rejected.Add(1)
		failed(fmt.Sprintf("status %d: message dropped", status))
		log.Error("the legacy backend refused a message; dropped", zap.Int("status", status))
		return outcomeDone
	}
}

// success reports whether status is a 2xx: the peer took the request.
// MoH answers 200; a peer that answers another 2xx with a queueing answer
// delivered the message all the same, and dropping or counting it as a
// refusal would be wrong.
func success(status int) bool { return status >= 200 && status <= 299 }

// retryable tells the answers worth another attempt, from their status
// and, for an error answer, its DSError code (zero otherwise): the peer's
// own trouble (5xx but 501), its rate limits (429), time (408, 425; and a
// 409 in_progress, the same request_id still being processed there,
// docs/protocol.md §3), authentication it may pass later (401: it could
// not fetch our key yet), and a 2xx that is not a queueing answer
// (treated as the peer's fault). Any other 409, such as replay, is a
// refusal for good.
func retryable(status int, code moh.Code) bool {
	switch {
	case status >= 500 && status != http.StatusNotImplemented:
		return true
	case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout, status == http.StatusTooEarly,
		status == http.StatusUnauthorized, success(status):
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

// dropReport is what a worker read and logged of its destination's drops
// at the backlog's bound.
type dropReport struct {
	logged uint64    // the count of store.Dropped.BacklogFull last logged
	read   time.Time // when the counters were last read
}

// reportDrops warns, at most once per DropLogInterval, about the messages
// dest lost at its backlog's bound since the last warning: one read of
// the destination's counters (store.OutboxBound), whatever the backlog,
// at the first pass of the worker and then at its first pass after each
// DropLogInterval, not at every pass (on PostgreSQL it would be a round
// trip more than the claim and the release). A drop is logged at the
// latest with the first pass DropLogInterval after the last read: the
// destination's worker passes at least every MaxBackoff while it has a
// backlog, which a drop implies. The counts themselves are the store's,
// shown at once by the metrics and the admin view.
func (s *Sender) reportDrops(ctx context.Context, dest string, log *zap.Logger, r *dropReport) {
	b, ok := s.Outbox.(store.OutboxBound)
	if !ok {
		return
	}
	now := s.now()
	if !r.read.IsZero() && now.Sub(r.read) < DropLogInterval {
		return
	}
	bl, err := b.OutboxDestinationBacklog(ctx, dest)
	if err != nil {
		return
	}
	r.read = now
	if bl.Dropped.BacklogFull <= r.logged {
		return
	}
	log.Warn("dropped messages for a destination whose outbox backlog is full",
		zap.Uint64("dropped", bl.Dropped.BacklogFull-r.logged), zap.Uint64("dropped_total", bl.Dropped.BacklogFull),
		zap.Int("backlog_messages", bl.Messages), zap.Int64("backlog_bytes", bl.Bytes))
	r.logged = bl.Dropped.BacklogFull
}

// ErrNoReset reports a sender whose outbox cannot drop a destination's
// backlog (it does not implement store.OutboxBound).
var ErrNoReset = errors.New("federation: the outbox cannot reset a destination")

// Reset drops destination's whole backlog from the outbox, for an
// operator who decided the peer is gone: the messages are counted as
// dropped by an admin reset (store.Dropped.AdminReset) and the count is
// logged, and the destination's backoffs end, stored and in memory. The
// stored backoff is cleared first: a crash between the two writes leaves
// the backlog (the reset failed, and is sent again), never a backoff a
// restart resumes after a reset that dropped the backlog; when it cannot
// be cleared, nothing is dropped. It reports how many it dropped; on
// error, those dropped so far stay dropped. A message being sent
// meanwhile may still reach the peer.
func (s *Sender) Reset(ctx context.Context, destination string) (int, error) {
	b, ok := s.Outbox.(store.OutboxBound)
	if !ok {
		return 0, ErrNoReset
	}
	log := s.logger().With(zap.String("destination", destination))
	// Its backoffs end, stored and in memory: new messages for it are
	// sent at once.
	if rs := s.retries(); rs != nil {
		if err := rs.ClearOutboxRetry(ctx, destination); err != nil {
			log.Error("clearing the stored backoff of a destination to reset; its outbox is kept", zap.Error(err))
			return 0, fmt.Errorf("resetting the outbox of %s: clearing its stored backoff: %w", destination, err)
		}
	}
	n, err := b.OutboxReset(ctx, destination)
	log = log.With(zap.Int("dropped", n))
	if err != nil {
		log.Error("resetting a destination's outbox", zap.Error(err))
		return n, fmt.Errorf("resetting the outbox of %s: %w", destination, err)
	}
	s.Wake(destination)
	log.Warn("reset a destination's outbox: its backlog was dropped")
	return n, nil
}
