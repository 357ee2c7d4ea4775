package federation

import (
	"bytes"
	"context"

	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// loopbackPeer is a destination on a loopback port: an HTTP server that
// counts the requests it gets and answers each with down's status while
// it is down (429 or 503), else 200. Its Send posts the payload to it.
type loopbackPeer struct {
	url      string
	down     int
	up       atomic.Bool
	requests atomic.Int32
}

// newLoopbackPeer serves a loopbackPeer on a loopback port the kernel
// picks, until t ends.
func newLoopbackPeer(t *testing.T, down int) *loopbackPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &loopbackPeer{url: "http://" + ln.Addr().String() + "/deliver_message", down: down}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		p.requests.Add(1)
		if !p.up.Load() {
			w.WriteHeader(p.down)
			return
		}
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// Send implements Transport: a POST of the payload, its status as the
// answer (a queueing answer for 200, else an error answer of the status'
// usual code).
func (p *loopbackPeer) Send(ctx context.Context, _, _ string, _ moh.ProviderRequestType, payload []byte) (*provider.Answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(payload))
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return accepted(ctx, "", "", 0, nil)
	case http.StatusTooManyRequests:
		return errorAnswer(resp.StatusCode, moh.CodeRateLimited), nil
	default:
		return errorAnswer(resp.StatusCode, moh.CodeBackendUnavailable), nil
	}
}

// startSender runs s until the returned stop is called, which waits for
// Run to return.
func startSender(t *testing.T, s *Sender) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// storedRetry returns dest's stored retry state, ok false when it has
// none.
func storedRetry(t *testing.T, st store.Store, dest string) (store.OutboxRetry, bool) {
	t.Helper()
	list, err := st.OutboxRetries(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range list {
		if r.Destination == dest {
			return r, true
		}
	}
	return store.OutboxRetry{}, false
}

// TestSenderBackoffSurvivesRestart has a destination fail three times (a
// 429, the destination's own failure, or a 503, its group's), with a
// backoff of an hour, then stops the sender and starts another on the same
// store: the new sender resumes the stored backoff instead of trying the
// destination at once (on a new message too), shows it in its status, and
// a request from the destination ends it, but for the 429's (the
// destination limits this provider and was up all along: before the
// stored state said so, the restarted sender tried it at its first
// request), which the operator's retry ends; the success clears the
// stored state. On a real SQLite file, and on PostgreSQL with two
// gateways' drain leases.
func TestSenderBackoffSurvivesRestart(t *testing.T) {
	const failures = 3
	for _, tc := range []struct {
		name     string
		postgres bool
		down     int
	}{
		{"sqlite destination 429", false, http.StatusTooManyRequests},
		{"sqlite group 503", false, http.StatusServiceUnavailable},
		{"postgres destination 429", true, http.StatusTooManyRequests},
		{"postgres group 503", true, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutboxOn(t, tc.postgres)
			addOutbox(t, st, "g", 0, 1)
			p := newLoopbackPeer(t, tc.down)
			newSender := func(holder string) *Sender {
				s := &Sender{Outbox: st, Transport: p, Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: 4 * time.Hour}
				if tc.postgres {
					s.Leases, s.Holder = st, holder
				}
				return s
			}

			s1 := newSender("gateway-1")
			stop := startSender(t, s1)
			for n := 1; n <= failures; n++ {
				waitFor(t, fmt.Sprintf("failure %d", n), func() bool {
					sts := s1.Status()
					return len(sts) == 1 && sts[0].Failures == n && !sts[0].NextAttempt.IsZero()
				})
				if n < failures {
					s1.Wake("dest.example") // the operator's retry: an attempt at once
				}
			}
			stop()
			if got := p.requests.Load(); got != failures {
				t.Fatalf("the peer got %d requests from the first sender, want %d", got, failures)
			}
			r, ok := storedRetry(t, st, "dest.example")
			if !ok || r.Failures != failures {
				t.Fatalf("stored %+v (%t) after the sender stopped, want the destination's %d failures", r, ok, failures)
			}
			next := r.Backoff.Next
			if tc.down == http.StatusServiceUnavailable {
				if r.Backoff.Level != 0 || len(r.Groups) != 1 || string(r.Groups[0].GroupID) != "g" {
					t.Fatalf("stored %+v, want the backoff of group g alone", r)
				}
				next = r.Groups[0].Next
			} else if r.Backoff.Level != time.Hour || !r.RateLimited || len(r.Groups) != 0 {
				t.Fatalf("stored %+v, want the destination's backoff of an hour, a 429's", r)
			}
			if r.LastError == "" || !next.After(time.Now().Add(29*time.Minute)) {
				t.Fatalf("stored %+v, want the last error and a next attempt half an hour away or more", r)
			}

			s2 := newSender("gateway-2")
			startSender(t, s2)
			// Once the worker runs, two wake-ups (new messages) taken one
			// after the other mean it has gone through a whole turn after
			// the first: had it passed over the destination, it would
			// have sent.
			var w *workerWakes
			waitFor(t, "the destination's worker", func() bool {
				s2.mu.Lock()
				defer s2.mu.Unlock()
				w = s2.wakes["dest.example"]
				return w != nil
			})
			for range 2 {
				s2.Outbound("dest.example")
				waitFor(t, "the wake-up taken", func() bool { return len(w.wake) == 0 })
			}
			if got := p.requests.Load(); got != failures {
				t.Fatalf("the restarted sender sent %d requests to a destination backing off, want none", got-failures)
			}
			if sts := s2.Status(); len(sts) != 1 || sts[0].Failures != failures || sts[0].LastError == "" ||
				sts[0].NextAttempt.Sub(next).Abs() > time.Second {
				t.Fatalf("status after the restart %+v, want %d failures, the last error and the next attempt %v", sts, failures, next)
			}

			p.up.Store(true)
			s2.PeerUp("dest.example")
			if tc.down == http.StatusTooManyRequests {
				// The request's wake-up taken, then a whole turn: had
				// the worker ended the backoff, it would have sent.
				waitFor(t, "the request's wake-up taken", func() bool {
					s2.mu.Lock()
					defer s2.mu.Unlock()
					return len(w.up) == 0
				})
				for range 2 {
					s2.Outbound("dest.example")
					waitFor(t, "the wake-up taken", func() bool { return len(w.wake) == 0 })
				}
				if got := p.requests.Load(); got != failures {
					t.Fatalf("the restarted sender sent %d requests to a destination that limits it, after a request from it; want none", got-failures)
				}
				if r, ok := storedRetry(t, st, "dest.example"); !ok || !r.RateLimited {
					t.Fatalf("stored %+v (%t) after a request from the destination, want its 429's backoff kept", r, ok)
				}
				s2.Wake("dest.example") // the operator's retry
			}
			waitFor(t, "an empty outbox", func() bool {
				pending, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
				return err == nil && len(pending) == 0
			})
			waitFor(t, "the stored backoff cleared", func() bool {
				_, ok := storedRetry(t, st, "dest.example")
				return !ok
			})
			if got := p.requests.Load(); got != failures+1 {
				t.Fatalf("the peer got %d requests, want %d", got, failures+1)
			}
		})
	}
}

// TestLoadRetriesJitter checks the backoffs read at start of destinations
// with messages waiting: one whose next attempt is still ahead keeps it,
// one already due is tried within half its level, and one stored under a
// higher cap than the one in force (4 h here) is brought within it.
func TestLoadRetriesJitter(t *testing.T) {
	st := openOutbox(t)
	now := time.Now()
	ahead := now.Add(time.Hour).Truncate(time.Millisecond)
	for _, dest := range []string{"ahead.example", "capped.example", "due.example"} {
		addOutboxFor(t, st, dest)
	}
	for _, r := range []store.OutboxRetry{
		{Destination: "ahead.example", Failures: 1, Backoff: store.OutboxBackoff{Level: 2 * time.Hour, Next: ahead}},
		{Destination: "capped.example", Failures: 2, Backoff: store.OutboxBackoff{Level: 16 * time.Hour, Next: now.Add(12 * time.Hour)}},
		{Destination: "due.example", Failures: 9, Backoff: store.OutboxBackoff{Level: 5 * time.Minute, Next: now.Add(-time.Hour)},
			Groups: []store.OutboxGroupBackoff{{GroupID: []byte("g"), OutboxBackoff: store.OutboxBackoff{Level: time.Minute, Next: now.Add(-time.Hour)}}}},
	} {
		if err := st.SetOutboxRetry(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	s := &Sender{Outbox: st, Transport: newPeer(nil), MaxBackoff: 4 * time.Hour}
	before := time.Now()
	got, ok := s.loadRetries(t.Context())
	after := time.Now()
	if !ok || len(got) != 3 {
		t.Fatalf("loadRetries = %v, %t; want three destinations", got, ok)
	}
	for _, tc := range []struct {
		name     string
		b        *backoff
		level    time.Duration
		from, to time.Time
	}{
		{"ahead", &got["ahead.example"].dest, 2 * time.Hour, ahead.Add(-time.Second), ahead.Add(time.Second)},
		{"capped", &got["capped.example"].dest, 4 * time.Hour, before, after.Add(4 * time.Hour)},
		{"due destination", &got["due.example"].dest, 5 * time.Minute, before, after.Add(150 * time.Second)},
		{"due group", got["due.example"].groups["g"], time.Minute, before, after.Add(30 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.b == nil || tc.b.level != tc.level || tc.b.next.Before(tc.from) || tc.b.next.After(tc.to) {
				t.Fatalf("backoff %+v, want level %v and the next attempt in [%v, %v]", tc.b, tc.level, tc.from, tc.to)
			}
		})
	}
	if sts := s.Status(); len(sts) != 3 || sts[2].Failures != 9 || sts[2].NextAttempt.IsZero() {
		t.Fatalf("status %+v, want the three destinations with their failures and next attempts", sts)
	}
}

// TestSenderResetEndsBackoff has a destination fail (a 429, with a backoff
// of an hour) and the operator reset it: its stored backoff is cleared,
// and a message written for it afterwards is sent at once, not after the
// backoff.
func TestSenderResetEndsBackoff(t *testing.T) {
	st := openOutbox(t)
	addOutbox(t, st, "g", 0, 1)
	p := newLoopbackPeer(t, http.StatusTooManyRequests)
	s := &Sender{Outbox: st, Transport: p, Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
	runSender(t, s)
	waitFor(t, "the failure stored", func() bool {
		r, ok := storedRetry(t, st, "dest.example")
		return ok && r.Failures == 1
	})
	if n, err := s.Reset(t.Context(), "dest.example"); err != nil || n != 1 {
		t.Fatalf("Reset = %d, %v; want 1 dropped", n, err)
	}
	if r, ok := storedRetry(t, st, "dest.example"); ok {
		t.Fatalf("stored %+v after the reset, want none", r)
	}
	p.up.Store(true)
	addOutbox(t, st, "g", 1, 1)
	s.Outbound("dest.example")
	waitFor(t, "the message written after the reset", func() bool {
		pending, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
		return err == nil && len(pending) == 0
	})
	if got := p.requests.Load(); got != 2 {
		t.Fatalf("the peer got %d requests, want 2", got)
	}
}

// TestSenderPeerUpEndsResumedBackoff stores a backoff of an hour for a
// destination with a message waiting, then starts a sender: it shows the
// resumed backoff, and a request from the destination ends the backoff:
// the message is sent and the stored state cleared, and a message written
// for it afterwards is sent at once.
func TestSenderPeerUpEndsResumedBackoff(t *testing.T) {
	st := openOutbox(t)
	addOutbox(t, st, "g", 0, 1)
	r := store.OutboxRetry{Destination: "dest.example", Failures: 4, LastError: "status 503 backend_unavailable",
		Backoff: store.OutboxBackoff{Level: time.Hour, Next: time.Now().Add(time.Hour)}}
	if err := st.SetOutboxRetry(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	p := newLoopbackPeer(t, http.StatusServiceUnavailable)
	p.up.Store(true)
	s := &Sender{Outbox: st, Transport: p, Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
	runSender(t, s)
	waitFor(t, "the resumed backoff in the status", func() bool {
		sts := s.Status()
		return len(sts) == 1 && sts[0].Failures == 4 && !sts[0].NextAttempt.IsZero()
	})
	if got := p.requests.Load(); got != 0 {
		t.Fatalf("the peer got %d requests during the resumed backoff, want none", got)
	}
	s.PeerUp("dest.example")
	waitFor(t, "the stored backoff cleared", func() bool {
		_, ok := storedRetry(t, st, "dest.example")
		return !ok
	})
	waitFor(t, "the waiting message sent", func() bool { return p.requests.Load() == 1 })
	addOutbox(t, st, "g", 1, 1)
	s.Outbound("dest.example")
	waitFor(t, "the new message sent", func() bool { return p.requests.Load() == 2 })
}

// TestPeerUpBeforeWorkerRestored stores a backoff of an hour for a
// destination with a message waiting, a 429's or not (as a database
// migrated from before the flag holds), reads it as Run does, and has a
// request from the destination arrive before its worker starts: it ends
// the backoff that is not a 429's, as before, and the worker takes the
// 429's, still rate limited. The operator's retry ends either.
func TestPeerUpBeforeWorkerRestored(t *testing.T) {
	for _, tc := range []struct {
		name        string
		rateLimited bool
		wake        func(s *Sender, dest string)
		kept        bool
	}{
		{"429, a request from it", true, (*Sender).PeerUp, true},
		{"429, the operator's retry", true, (*Sender).Wake, false},
		{"not a 429, a request from it", false, (*Sender).PeerUp, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutbox(t)
			addOutbox(t, st, "g", 0, 1)
			if err := st.SetOutboxRetry(t.Context(), store.OutboxRetry{Destination: "dest.example", Failures: 2,
				LastError: "status 429 rate_limited", RateLimited: tc.rateLimited,
				Backoff: store.OutboxBackoff{Level: time.Hour, Next: time.Now().Add(time.Hour)}}); err != nil {
				t.Fatal(err)
			}
			s := &Sender{Outbox: st, Transport: newPeer(nil), Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
			restored, ok := s.loadRetries(t.Context())
			if !ok {
				t.Fatal("the stored backoffs could not be read")
			}
			s.restored, s.retriesLoaded = restored, true
			tc.wake(s, "dest.example")
			var state destState
			if !s.takeRestored("dest.example", &state) {
				t.Fatal("the worker may not store a retry state for the destination")
			}
			kept := state.dest.next.After(time.Now().Add(30 * time.Minute))
			if kept != tc.kept || kept && !state.limited {
				t.Fatalf("the worker took %+v, limited %t; want the backoff kept %t, rate limited", state.dest, state.limited, tc.kept)
			}
		})
	}
}

// clearFailsOnce is a real store whose first ClearOutboxRetry comes too
// late: the store's own refusal of a context that has ended.
type clearFailsOnce struct {
	store.Store
	failed atomic.Bool
}

func (c *clearFailsOnce) ClearOutboxRetry(ctx context.Context, destination string) error {
	if c.failed.CompareAndSwap(false, true) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		cancel()
	}
	return c.Store.ClearOutboxRetry(ctx, destination)
}

// TestSenderRetriesFailedClear has a destination's group fail (a 503, a
// backoff of an hour stored), then a request from the destination end the
// backoff and the message be delivered, and the clear of the stored state
// fail once. The clear is tried again: before the worker ends, with
// nothing more to send, or at the next pass. Before, the worker took the
// failed clear as done: the stored state stayed for good (no later worker
// clears what it did not store), and a restart with messages waiting
// would resume the backoff of a destination that had been delivered to.
func TestSenderRetriesFailedClear(t *testing.T) {
	for _, tc := range []struct {
		name string
		idle time.Duration
		next bool // a message written after the failed clear
	}{
		{"the worker ends", 50 * time.Millisecond, false},
		{"the next pass", time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutbox(t)
			addOutbox(t, st, "g", 0, 1)
			c := &clearFailsOnce{Store: st}
			p := newLoopbackPeer(t, http.StatusServiceUnavailable)
			s := &Sender{Outbox: c, Transport: p, Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour,
				WorkerIdle: tc.idle}
			runSender(t, s)
			waitFor(t, "the group's backoff stored", func() bool {
				r, ok := storedRetry(t, st, "dest.example")
				return ok && len(r.Groups) == 1
			})
			p.up.Store(true)
			s.PeerUp("dest.example")
			waitFor(t, "the failed clear", c.failed.Load)
			if tc.next {
				addOutbox(t, st, "g", 1, 1)
				s.Outbound("dest.example")
			}
			waitFor(t, "the stored state cleared", func() bool {
				_, ok := storedRetry(t, st, "dest.example")
				return !ok
			})
			if tc.next {
				waitFor(t, "the new message sent", func() bool { return p.requests.Load() == 3 })
			}
		})
	}
}

// addOutboxFor writes a message for dest.
func addOutboxFor(t *testing.T, st store.Store, dest string) {
	t.Helper()
	if _, err := st.OutboxAdd(t.Context(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example",
		Destination: dest, GroupID: []byte("g"), Recipients: []string{"mimi://" + dest + "/d/u/d"},
		Message: []byte("m")}}}); err != nil {
		t.Fatal(err)
	}
}

// TestSenderIgnoresStaleStoredBackoff stores a backoff of an hour, with
// its failures and error, for a destination with nothing waiting: the
// state a kill -9 leaves between a pass's removal of what the destination
// accepted and the clearing of its backoff, or that a gateway reads while
// another is between those two writes. A sender started then must not
// show the destination as failing (the admin API and the failures metric
// read its status), nor hold back a message written for it afterwards,
// which is sent at once and clears the stale state. On SQLite, and on
// PostgreSQL with drain leases.
func TestSenderIgnoresStaleStoredBackoff(t *testing.T) {
	for _, tc := range []struct {
		name     string
		postgres bool
	}{
		{"sqlite", false},
		{"postgres", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutboxOn(t, tc.postgres)
			r := store.OutboxRetry{Destination: "dest.example", Failures: 7, LastError: "status 503 backend_unavailable",
				Backoff: store.OutboxBackoff{Level: time.Hour, Next: time.Now().Add(time.Hour)}}
			if err := st.SetOutboxRetry(t.Context(), r); err != nil {
				t.Fatal(err)
			}
			p := newLoopbackPeer(t, http.StatusServiceUnavailable)
			p.up.Store(true)
			s := &Sender{Outbox: st, Transport: p, Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
			if tc.postgres {
				s.Leases, s.Holder = st.(store.OutboxLeases), "gateway-1"
			}
			// What Run reads before any worker starts.
			restored, ok := s.loadRetries(t.Context())
			if !ok {
				t.Fatal("the stored backoffs could not be read")
			}
			if sts := s.Status(); len(sts) != 0 {
				t.Fatalf("status %+v, want none: the destination is shown failing with nothing waiting", sts)
			}
			if rs := restored["dest.example"]; rs != nil && !rs.ended {
				t.Fatalf("the stale backoff %+v is resumed", rs.dest)
			}

			s = &Sender{Outbox: st, Transport: p, Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
			if tc.postgres {
				s.Leases, s.Holder = st.(store.OutboxLeases), "gateway-1"
			}
			runSender(t, s)
			waitFor(t, "the stored backoffs read", func() bool {
				s.mu.Lock()
				defer s.mu.Unlock()
				return s.wakes != nil
			})
			addOutbox(t, st, "g", 0, 1)
			s.Outbound("dest.example")
			waitFor(t, "the message sent", func() bool { return p.requests.Load() == 1 })
			waitFor(t, "the stale state cleared", func() bool {
				_, ok := storedRetry(t, st, "dest.example")
				return !ok
			})
			for _, d := range s.Status() {
				if d.Failures != 0 || d.LastError != "" || !d.NextAttempt.IsZero() {
					t.Fatalf("status %+v after the delivery, want no failure", d)
				}
			}
		})
	}
}

// TestSenderClearsRetryStoredByAnotherGateway has two gateways drain one
// destination under drain leases (pass by pass, whichever claims it): one
// fails and stores the destination's backoff, then the other, which had
// stored nothing, delivers the backlog. The success must clear the stored
// state, else it stays for good, and a restarted gateway would show the
// healthy destination as failing and hold its messages back for the
// stale backoff.
func TestSenderClearsRetryStoredByAnotherGateway(t *testing.T) {
	st := openOutbox(t)
	addOutbox(t, st, "g", 0, 1)
	p := newLoopbackPeer(t, http.StatusTooManyRequests)
	newSender := func(holder string) *Sender {
		return &Sender{Outbox: st, Leases: st, Holder: holder, LeaseTTL: time.Hour, Transport: p,
			Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
	}
	empty := func() bool {
		pending, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
		return err == nil && len(pending) == 0
	}

	// Gateway 1 fails; gateway 2 starts with its stored backoff, and its
	// operator's retry has it deliver and clear it (a request from the
	// destination would not: the backoff is a 429's).
	s1 := newSender("gateway-1")
	startSender(t, s1)
	waitFor(t, "gateway 1's failure stored", func() bool {
		r, ok := storedRetry(t, st, "dest.example")
		return ok && r.Failures == 1
	})
	p.up.Store(true)
	s2 := newSender("gateway-2")
	startSender(t, s2)
	waitFor(t, "gateway 2's worker with the resumed backoff", func() bool {
		s2.mu.Lock()
		defer s2.mu.Unlock()
		st := s2.status["dest.example"]
		return s2.wakes["dest.example"] != nil && st != nil && !st.NextAttempt.IsZero()
	})
	s2.Wake("dest.example")
	waitFor(t, "gateway 2's delivery", empty)
	waitFor(t, "the stored backoff cleared by gateway 2", func() bool {
		_, ok := storedRetry(t, st, "dest.example")
		return !ok
	})

	// Gateway 1, tried by its operator, fails again and stores its
	// backoff; gateway 2, woken by a new message, delivers.
	p.up.Store(false)
	addOutbox(t, st, "g", 1, 1)
	s1.Wake("dest.example")
	waitFor(t, "gateway 1's second failure stored", func() bool {
		r, ok := storedRetry(t, st, "dest.example")
		return ok && r.Failures == 2
	})
	p.up.Store(true)
	s2.Outbound("dest.example")
	waitFor(t, "gateway 2's second delivery", empty)
	waitFor(t, "the backoff gateway 1 stored cleared by gateway 2's success", func() bool {
		_, ok := storedRetry(t, st, "dest.example")
		return !ok
	})
}

// TestSenderStoresErrorWithNUL has a destination fail with an error whose
// text holds a NUL (a TLS error quoting a name of the peer's certificate):
// the backoff is still stored, on SQLite and on PostgreSQL, whose text
// holds no NUL, with the NUL replaced.
func TestSenderStoresErrorWithNUL(t *testing.T) {
	for _, tc := range []struct {
		name     string
		postgres bool
	}{
		{"sqlite", false},
		{"postgres", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutboxOn(t, tc.postgres)
			addOutbox(t, st, "g", 0, 1)
			tr := transportFunc(func(context.Context, string, string, moh.ProviderRequestType, []byte) (*provider.Answer, error) {
				return nil, fmt.Errorf("tls: x509: certificate is valid for evil\x00.example, not dest.example")
			})
			s := &Sender{Outbox: st, Transport: tr, Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
			runSender(t, s)
			waitFor(t, "the failure in the status", func() bool {
				sts := s.Status()
				return len(sts) == 1 && sts[0].Failures == 1 && !sts[0].NextAttempt.IsZero()
			})
			waitFor(t, "the backoff stored", func() bool {
				r, ok := storedRetry(t, st, "dest.example")
				return ok && r.Failures == 1 && r.LastError == "tls: x509: certificate is valid for evil\uFFFD.example, not dest.example"
			})
		})
	}
}

// crashAfterFirstReset is a real store that is closed right after the
// first of the two writes of Sender.Reset (the drop of the backlog, or
// the clearing of the stored backoff) returns: what kill -9 between the
// two leaves in the database.
type crashAfterFirstReset struct {
	store.Store
	crashed bool
}

func (c *crashAfterFirstReset) OutboxReset(ctx context.Context, destination string) (int, error) {
	n, err := c.Store.OutboxReset(ctx, destination)
	c.crash()
	return n, err
}

func (c *crashAfterFirstReset) ClearOutboxRetry(ctx context.Context, destination string) error {
	err := c.Store.ClearOutboxRetry(ctx, destination)
	c.crash()
	return err
}

func (c *crashAfterFirstReset) crash() {
	if !c.crashed {
		c.crashed = true
		c.Store.Close()
	}
}

// TestSenderResetSurvivesCrash has the operator reset a failing
// destination (a backoff of an hour stored, a message waiting) and the
// gateway die between the two writes of the reset. Whatever the reset
// answered, the backoff must not resume after the restart: a message
// accepted for the destination then is sent at once and the status shows
// no failure. Before, the backlog was dropped first and the answer was a
// success, while the stored backoff stayed and was resumed.
func TestSenderResetSurvivesCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mimi.db")
	st, err := sqlitestore.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	addOutbox(t, st, "g", 0, 1)
	if err := st.SetOutboxRetry(t.Context(), store.OutboxRetry{Destination: "dest.example", Failures: 3, LastError: "status 429 rate_limited",
		Backoff: store.OutboxBackoff{Level: time.Hour, Next: time.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	crashing := &crashAfterFirstReset{Store: st}
	s := &Sender{Outbox: crashing, Transport: newPeer(nil), Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
	n, resetErr := s.Reset(t.Context(), "dest.example")
	if !crashing.crashed {
		t.Fatal("the reset wrote nothing")
	}

	// The restart.
	st, err = sqlitestore.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if resetErr == nil {
		if _, ok := storedRetry(t, st, "dest.example"); ok {
			t.Errorf("the reset answered %d dropped and no error, but the destination's backoff is still stored", n)
		}
	}
	// A message accepted for the destination between the reset's first
	// write and the crash; the destination is up.
	addOutbox(t, st, "g", 1, 1)
	p := newLoopbackPeer(t, http.StatusTooManyRequests)
	p.up.Store(true)
	s = &Sender{Outbox: st, Transport: p, Logger: zaptest.NewLogger(t), MinBackoff: time.Hour, MaxBackoff: time.Hour}
	restored, ok := s.loadRetries(t.Context())
	if !ok {
		t.Fatal("the stored backoffs could not be read")
	}
	if r := restored["dest.example"]; r != nil && !r.ended {
		t.Fatalf("the backoff the operator reset is resumed after the restart: %+v", r.dest)
	}
	for _, d := range s.Status() {
		if d.Failures != 0 || !d.NextAttempt.IsZero() {
			t.Errorf("status %+v after the restart, want no failure", d)
		}
	}
}

// openOutboxOn opens a store for an outbox test: a new PostgreSQL
// database when postgres is set, a SQLite file otherwise.
func openOutboxOn(t *testing.T, postgres bool) store.Store {
	t.Helper()
	if !postgres {
		return openOutbox(t)
	}
	pg, err := pgstore.Open(t.Context(), pgtest.NewDB(t), pgstore.Options{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	return pg
}
