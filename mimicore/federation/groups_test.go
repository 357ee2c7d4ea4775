package federation

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// openOutbox opens a real store in a temporary directory.
func openOutbox(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// addOutbox writes n messages of group for dest.example, "<group>-<i>"
// from i = from on, one write each.
func addOutbox(t *testing.T, st store.Store, group string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := st.OutboxAdd(t.Context(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example",
			Destination: "dest.example", GroupID: []byte(group), Recipients: []string{"mimi://dest.example/d/u/d"},
			Message: fmt.Appendf(nil, "%s-%d", group, i)}}}); err != nil {
			t.Fatal(err)
		}
	}
}

// peer is a destination that records what it accepted, per group, and
// answers each message as its fail function says (nil: accepted).
type peer struct {
	mu       sync.Mutex
	got      map[string][]string
	attempts map[string]int
	fail     func(msg string, attempt int) (*provider.Answer, error)
}

func newPeer(fail func(msg string, attempt int) (*provider.Answer, error)) *peer {
	return &peer{got: map[string][]string{}, attempts: map[string]int{}, fail: fail}
}

// Send implements Transport. The message is the payload's tail, after the
// group id and the client ids.
func (p *peer) Send(ctx context.Context, _, _ string, _ moh.ProviderRequestType, payload []byte) (*provider.Answer, error) {
	i := strings.LastIndexByte(string(payload), 'd') + 1 // the client id ends in "/d"
	msg := string(payload[i:])
	group, _, _ := strings.Cut(msg, "-")
	p.mu.Lock()
	p.attempts[msg]++
	n := p.attempts[msg]
	p.mu.Unlock()
	if p.fail != nil {
		if a, err := p.fail(msg, n); a != nil || err != nil {
			return a, err
		}
	}
	p.mu.Lock()
	p.got[group] = append(p.got[group], msg)
	p.mu.Unlock()
	return accepted(ctx, "", "", 0, nil)
}

// received returns what the peer accepted of group.
func (p *peer) received(group string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.got[group])
}

// tries returns the attempts of msg.
func (p *peer) tries(msg string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.attempts[msg]
}

// names lists "<group>-<i>" for i in [from, from+n).
func names(group string, from, n int) []string {
	var out []string
	for i := from; i < from+n; i++ {
		out = append(out, fmt.Sprintf("%s-%d", group, i))
	}
	return out
}

func errorAnswer(status int, code moh.Code) *provider.Answer {
	return &provider.Answer{Status: status, Response: moh.DSResponse{Type: moh.ResponseError, Error: moh.DSError{Code: code}}}
}

// TestSenderGroupWaitsAlone has the head of one group fail for now (as
// one group's answer, or one large message's timeout) while that group
// holds more than a batch at the head of the destination's outbox: the
// other group's messages, behind it, are sent at once and in order, not
// after the failing group's backoff; and once the failing group is
// answered, its messages arrive once each, in order.
func TestSenderGroupWaitsAlone(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func() (*provider.Answer, error)
	}{
		{"503", func() (*provider.Answer, error) {
			return errorAnswer(http.StatusServiceUnavailable, moh.CodeBackendUnavailable), nil
		}},
		{"409 in_progress", func() (*provider.Answer, error) { return errorAnswer(http.StatusConflict, moh.CodeInProgress), nil }},
		{"timeout", func() (*provider.Answer, error) { return nil, fmt.Errorf("sending: %w", context.DeadlineExceeded) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutbox(t)
			const headA = DefaultBatch + 10
			addOutbox(t, st, "A", 0, headA)
			var failA atomic.Bool
			failA.Store(true)
			p := newPeer(func(msg string, _ int) (*provider.Answer, error) {
				if strings.HasPrefix(msg, "A-") && failA.Load() {
					return tc.answer()
				}
				return nil, nil
			})
			// A backoff far longer than the test: B must not wait for
			// it.
			s := &Sender{Outbox: st, Transport: p, MinBackoff: time.Hour, MaxBackoff: time.Hour}
			runSender(t, s)
			// New messages, not the admin's retry (Wake): a retry still
			// pending when the first pass fails would end A's backoff.
			s.Outbound("dest.example")
			waitFor(t, "a failure of group A", func() bool { return p.tries("A-0") > 0 })
			addOutbox(t, st, "B", 0, 5)
			s.Outbound("dest.example") // the write's wake-up
			deadline := time.Now().Add(30 * time.Second)
			for len(p.received("B")) < 5 {
				if time.Now().After(deadline) {
					t.Fatalf("group B got %q in 30 s while group A's head failed, want its 5 messages", p.received("B"))
				}
				time.Sleep(10 * time.Millisecond)
			}
			if got := p.received("B"); !slices.Equal(got, names("B", 0, 5)) {
				t.Fatalf("group B got %q, want its messages in order, once each", got)
			}
			if got := p.received("A"); len(got) != 0 {
				t.Fatalf("group A got %q while its head failed, want nothing after it", got)
			}
			if n := p.tries("A-0"); n != 1 {
				t.Fatalf("group A's head was tried %d times, want once: B's new messages do not end A's backoff", n)
			}
			failA.Store(false)
			s.Wake("dest.example") // as the admin's retry
			waitFor(t, "group A's messages", func() bool { return len(p.received("A")) >= headA })
			if got := p.received("A"); !slices.Equal(got, names("A", 0, headA)) {
				t.Fatalf("group A got %d messages, want its %d in order, once each", len(got), headA)
			}
		})
	}
}

// TestSenderOrderPerGroup sends three interleaved groups through small
// batches while the peer refuses some of their messages for now, with a
// restart of the sender on the same outbox in the middle: each group's
// messages arrive once each, in order.
func TestSenderOrderPerGroup(t *testing.T) {
	st := openOutbox(t)
	const n = 40
	for i := range n {
		addOutbox(t, st, "A", i, 1)
		addOutbox(t, st, "B", i, 1)
		if i%2 == 0 {
			addOutbox(t, st, "C", i/2, 1)
		}
	}
	p := newPeer(func(msg string, attempt int) (*provider.Answer, error) {
		switch {
		case strings.HasPrefix(msg, "A-") && attempt <= 2:
			return errorAnswer(http.StatusServiceUnavailable, moh.CodeBackendUnavailable), nil
		case strings.HasPrefix(msg, "C-") && attempt == 1 && len(msg)%2 == 0:
			return errorAnswer(http.StatusConflict, moh.CodeInProgress), nil
		case strings.HasPrefix(msg, "B-1") && attempt == 1:
			return nil, errors.New("connection reset")
		}
		return nil, nil
	})
	run := func(until func() bool) {
		s := &Sender{Outbox: st, Transport: p, Batch: 4, Parallel: 2, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := s.Run(ctx); err != nil {
				t.Error(err)
			}
		}()
		waitFor(t, "the sender's progress", until)
		cancel()
		<-done
	}
	run(func() bool { return len(p.received("A"))+len(p.received("B")) >= n/2 })
	run(func() bool {
		pending, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
		return err == nil && len(pending) == 0
	})
	for _, g := range []struct {
		group string
		n     int
	}{{"A", n}, {"B", n}, {"C", n / 2}} {
		if got := p.received(g.group); !slices.Equal(got, names(g.group, 0, g.n)) {
			t.Errorf("group %s got %q, want its %d messages in order, once each", g.group, got, g.n)
		}
	}
}

// TestFailureScope checks which failures of a pass back off the
// destination as a whole rather than the groups that failed.
func TestFailureScope(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tried []outcome
		dest  bool
	}{
		{"one group's answer", []outcome{retryAnswered}, false},
		{"one group fails, another is answered", []outcome{retryAnswered, outcomeDone}, false},
		{"a rate limit", []outcome{retryRateLimited, outcomeDone}, true},
		{"unreachable", []outcome{retryUnreachable}, true},
		{"unreachable once, another answered", []outcome{retryUnreachable, outcomeDone}, false},
		{"one group's timeout", []outcome{retryTimeout}, false},
		{"one group's timeout, another answered", []outcome{retryTimeout, retryAnswered}, false},
		{"two groups' timeouts", []outcome{retryTimeout, retryTimeout}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tried := map[string]outcome{}
			for i, o := range tc.tried {
				tried[fmt.Sprint(i)] = o
			}
			if got := failureScope(tried); got != tc.dest {
				t.Fatalf("failureScope(%v) = %t, want %t", tc.tried, got, tc.dest)
			}
		})
	}
}

// TestSenderHaltsOnDestinationFailure has 20 groups wait for a
// destination, one at a time: when the first answer shows the failure
// is the destination's (it cannot be reached, or it limits this
// provider's rate), the pass starts no other group, which the next pass
// tries after the destination's backoff; a failure of a group's own (a
// 503) does not stop the others.
func TestSenderHaltsOnDestinationFailure(t *testing.T) {
	refused := refusedDial(t)
	for _, tc := range []struct {
		name string
		fail func() (*provider.Answer, error)
		want int64
	}{
		{"unreachable", func() (*provider.Answer, error) { return nil, fmt.Errorf("posting: %w", refused) }, 1},
		{"rate limited", func() (*provider.Answer, error) {
			return errorAnswer(http.StatusTooManyRequests, moh.CodeRateLimited), nil
		}, 1},
		{"a group's own failure", func() (*provider.Answer, error) {
			return errorAnswer(http.StatusServiceUnavailable, moh.CodeBackendUnavailable), nil
		}, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutbox(t)
			for g := range 20 {
				addOutbox(t, st, fmt.Sprintf("g%d", g), 0, 1)
			}
			var attempts atomic.Int64
			// Backoffs of an hour at least: the test sees one pass.
			s := &Sender{Outbox: st, Parallel: 1, MinBackoff: time.Hour, MaxBackoff: 2 * time.Hour,
				Transport: transportFunc(func(context.Context, string, string, moh.ProviderRequestType, []byte) (*provider.Answer, error) {
					attempts.Add(1)
					return tc.fail()
				})}
			runSender(t, s)
			waitFor(t, "the pass's backoffs noted", func() bool {
				st := s.Status()
				return len(st) == 1 && !st[0].NextAttempt.IsZero() && attempts.Load() >= tc.want
			})
			if n := attempts.Load(); n != tc.want {
				t.Fatalf("%d attempts in the pass, want %d", n, tc.want)
			}
		})
	}
}

// TestSenderHaltedPassGoesOn has a pass halt on a group whose
// destination could not be reached while another group, started before,
// is answered: the failure was not the destination's after all, so the
// groups the pass did not start are sent by the next pass at once, not
// after the failing group's backoff of an hour.
func TestSenderHaltedPassGoesOn(t *testing.T) {
	st := openOutbox(t)
	for _, g := range []string{"a", "b", "c", "e"} { // no "d": the peer's parse
		addOutbox(t, st, g, 0, 1)
	}
	refused := refusedDial(t)
	// a fails once b has started (else the pass could halt before it
	// starts b, and a's failure alone would be the destination's), and b
	// is answered once a has failed and halted the pass.
	bStarted, aFailed := make(chan struct{}), make(chan struct{})
	p := newPeer(func(msg string, attempt int) (*provider.Answer, error) {
		switch {
		case msg == "a-0":
			if attempt == 1 {
				<-bStarted
				defer close(aFailed)
			}
			return nil, fmt.Errorf("posting: %w", refused)
		case msg == "b-0" && attempt == 1:
			close(bStarted)
			<-aFailed
		}
		return nil, nil
	})
	s := &Sender{Outbox: st, Transport: p, Parallel: 2, MinBackoff: time.Hour, MaxBackoff: 2 * time.Hour}
	runSender(t, s)
	waitFor(t, "c and e sent", func() bool { return len(p.received("c")) == 1 && len(p.received("e")) == 1 })
	if got := p.tries("a-0"); got != 1 {
		t.Fatalf("a tried %d times, want once (its backoff is an hour)", got)
	}
}

// TestSenderHonoursRetryAfter has a destination answer 429 with a
// Retry-After: the destination's next attempt comes no sooner than that,
// however short its backoff, and no later than the policy's MaxBackoff
// when the peer asks for more.
func TestSenderHonoursRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		retryAfter              time.Duration
		wantAtLeast, wantAtMost time.Duration
	}{
		{"within the bound", 2 * time.Hour, 2*time.Hour - time.Minute, 2*time.Hour + time.Minute},
		{"past the bound", 10 * time.Hour, 3*time.Hour - time.Minute, 3*time.Hour + time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutbox(t)
			addOutbox(t, st, "g", 0, 1)
			s := &Sender{Outbox: st, MinBackoff: time.Millisecond, MaxBackoff: 3 * time.Hour,
				Transport: transportFunc(func(context.Context, string, string, moh.ProviderRequestType, []byte) (*provider.Answer, error) {
					a := errorAnswer(http.StatusTooManyRequests, moh.CodeRateLimited)
					a.RetryAfter = tc.retryAfter
					return a, nil
				})}
			start := time.Now()
			runSender(t, s)
			var next time.Time
			waitFor(t, "the destination's backoff", func() bool {
				st := s.Status()
				if len(st) == 1 {
					next = st[0].NextAttempt
				}
				return !next.IsZero()
			})
			if wait := next.Sub(start); wait < tc.wantAtLeast || wait > tc.wantAtMost+time.Since(start) {
				t.Fatalf("next attempt %v after the first, want %v to %v", wait, tc.wantAtLeast, tc.wantAtMost)
			}
		})
	}
}

// refusedDial returns the error of a real dial refused: of a loopback
// address nothing listens on.
func refusedDial(t *testing.T) error {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c, err := net.Dial("tcp", addr)
	if err == nil {
		c.Close()
		t.Fatal("dialling a closed port succeeded")
	}
	return err
}

// TestNoAnswer sorts failures without an answer as the HTTP client
// returns them: a connection that could not be opened is unreachable,
// also when its dial timed out; a timeout once connected is a timeout.
func TestNoAnswer(t *testing.T) {
	refused := refusedDial(t)
	wrap := func(err error) error {
		return fmt.Errorf("posting deliver_message to b.example: %w", &url.Error{Op: "Post", URL: "https://b.example/deliver_message", Err: err})
	}
	for _, tc := range []struct {
		name string
		err  error
		want outcome
	}{
		{"connection refused", wrap(refused), retryUnreachable},
		{"dial timed out", wrap(&net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}), retryUnreachable},
		{"read timed out", wrap(&net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}), retryTimeout},
		{"the request's deadline", wrap(context.DeadlineExceeded), retryTimeout},
		{"a TLS failure", wrap(errors.New("tls: failed to verify certificate")), retryUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := noAnswer(tc.err); got != tc.want {
				t.Fatalf("noAnswer(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

// TestSenderBackoffKeptByNewMessages has a destination that cannot be
// reached get a new message every 10 ms: new messages do not end its
// backoff, so it is tried at the backoff's pace, not the messages'; a
// request from it (PeerUp) and the admin's retry (Wake) end the backoff
// at once.
func TestSenderBackoffKeptByNewMessages(t *testing.T) {
	st := openOutbox(t)
	addOutbox(t, st, "g", 0, 1)
	var attempts atomic.Int64
	// A backoff of at least half an hour: no second attempt can come
	// from its end while the test runs, however slow the machine, so the
	// bound below on PeerUp's and Wake's attempt is no timing assert.
	s := &Sender{Outbox: st, MinBackoff: time.Hour, MaxBackoff: 2 * time.Hour,
		Transport: transportFunc(func(context.Context, string, string, moh.ProviderRequestType, []byte) (*provider.Answer, error) {
			attempts.Add(1)
			return nil, errors.New("connection refused")
		})}
	runSender(t, s)
	waitFor(t, "a first attempt", func() bool { return attempts.Load() > 0 })
	for range 100 { // 1 s of new messages
		s.Outbound("dest.example")
		time.Sleep(10 * time.Millisecond)
	}
	if n := attempts.Load(); n != 1 {
		t.Fatalf("%d attempts in 1 s to an unreachable destination with a backoff of at least 30 min, want 1", n)
	}
	for i, end := range []func(string){s.PeerUp, s.Wake} {
		waitFor(t, "the backoff noted", func() bool {
			st := s.Status()
			return len(st) == 1 && !st[0].NextAttempt.IsZero()
		})
		end("dest.example")
		deadline := time.Now().Add(30 * time.Second)
		for attempts.Load() < int64(i+2) {
			if time.Now().After(deadline) {
				t.Fatalf("no attempt within 30 s of the end of a 30 min backoff (%d)", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestSenderWorkersEnd wakes 2,000 destinations with nothing to send:
// their workers end after WorkerIdle, and the sender forgets them (no
// goroutine, wake-up channel or status is left).
func TestSenderWorkersEnd(t *testing.T) {
	st := openOutbox(t)
	s := &Sender{Outbox: st, Transport: transportFunc(accepted), WorkerIdle: 50 * time.Millisecond}
	runSender(t, s)
	time.Sleep(50 * time.Millisecond)
	before := runtime.NumGoroutine()
	for i := range 2000 {
		s.Outbound(fmt.Sprintf("d%d.example", i))
	}
	waitFor(t, "the idle workers' end", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.wakes) == 0
	})
	// A worker forgets its destination just before it returns: wait for
	// the goroutines to end, for as long as a loaded machine needs; a
	// leaked one never does.
	deadline := time.Now().Add(30 * time.Second)
	for n := runtime.NumGoroutine() - before; n > 20; n = runtime.NumGoroutine() - before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left 30 s after the workers of 2,000 destinations with nothing to send ended", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := s.Status(); len(st) != 0 {
		t.Fatalf("status lists %d idle destinations, want none", len(st))
	}
}

// TestSenderWorkerEndsAfterDelivering delivers a message to each of
// several destinations: once their backlogs are sent, their workers end
// after WorkerIdle like those of destinations that had nothing to send,
// and the sender forgets them, their latency histograms too. A worker whose last pass delivered used to
// wait for a wake-up forever: the sender kept a goroutine and a status
// for every destination it ever delivered to.
func TestSenderWorkerEndsAfterDelivering(t *testing.T) {
	st := openOutbox(t)
	s := &Sender{Outbox: st, Transport: transportFunc(accepted), WorkerIdle: 50 * time.Millisecond}
	runSender(t, s)
	const n = 3
	for i := range n {
		dest := fmt.Sprintf("d%d.example", i)
		if _, err := st.OutboxAdd(t.Context(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example",
			Destination: dest, GroupID: []byte("g"), Recipients: []string{"mimi://" + dest + "/d/u/d"},
			Message: []byte("g-0")}}}); err != nil {
			t.Fatal(err)
		}
		s.Outbound(dest)
	}
	waitFor(t, "the deliveries and the idle workers' end", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.stats.delivered.Load() == n && len(s.wakes) == 0
	})
	if st := s.Status(); len(st) != 0 {
		t.Fatalf("status lists %d idle destinations, want none", len(st))
	}
	if lat := s.Stats().Latency; len(lat) != 0 {
		t.Fatalf("latency histograms of %d forgotten destinations kept: %v", len(lat), slices.Collect(maps.Keys(lat)))
	}
}

// TestSenderWakeWhileWorkerEnds writes a message and wakes its
// destination, again and again, while its worker ends after every one (a
// WorkerIdle of 1 ms): no wake-up is lost, so each message is delivered
// without any other wake-up (there is no rescan without leases).
func TestSenderWakeWhileWorkerEnds(t *testing.T) {
	st := openOutbox(t)
	p := newPeer(nil)
	s := &Sender{Outbox: st, Transport: p, WorkerIdle: time.Millisecond}
	runSender(t, s)
	const n = 300
	for i := range n {
		// Around the worker's end, 1 ms after its last pass.
		time.Sleep(time.Duration(i%7) * 300 * time.Microsecond)
		addOutbox(t, st, "g", i, 1)
		if i%2 == 0 {
			s.Outbound("dest.example")
		} else {
			s.Wake("dest.example")
		}
		deadline := time.Now().Add(30 * time.Second)
		for len(p.received("g")) <= i {
			if time.Now().After(deadline) {
				t.Fatalf("message %d not delivered in 30 s: its wake-up was lost", i)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	if got := p.received("g"); !slices.Equal(got, names("g", 0, n)) {
		t.Fatalf("got %d messages, want %d in order, once each", len(got), n)
	}
}

// TestSenderRetireKeepsPendingWake checks the end of an idle worker
// against a wake-up sent just before: the worker stays for it; and a
// wake-up after the end starts a new worker.
func TestSenderRetireKeepsPendingWake(t *testing.T) {
	for _, tc := range []struct {
		name string
		wake func(s *Sender, dest string)
	}{
		{"new messages", (*Sender).Outbound},
		{"retry", (*Sender).Wake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var spawned []string
			s := &Sender{spawn: func(d string) { spawned = append(spawned, d) }}
			w := &workerWakes{wake: make(chan struct{}, 1), retry: make(chan struct{}, 1)}
			s.wakes = map[string]*workerWakes{"dest.example": w}
			tc.wake(s, "dest.example")
			if s.retire("dest.example", w) {
				t.Fatal("the worker ended with a wake-up pending")
			}
			select {
			case <-w.wake:
			case <-w.retry:
			}
			if !s.retire("dest.example", w) {
				t.Fatal("an idle worker without a wake-up pending did not end")
			}
			tc.wake(s, "dest.example")
			if !slices.Equal(spawned, []string{"dest.example"}) {
				t.Fatalf("a wake-up after the worker's end started %q, want a new worker", spawned)
			}
		})
	}
}

// TestDestStateEarliest checks the time a worker waits for: the soonest
// end of a backoff that was running when the last pass started, even if
// it has ended since. A group whose backoff had ended before the pass,
// which the pass did not reach (behind MaxScanBatches batches of waiting
// groups), sets no timer, which would have the worker read the outbox in
// a loop.
func TestDestStateEarliest(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name   string
		dest   time.Time
		groups []time.Time
		want   time.Time
	}{
		{"nothing", time.Time{}, nil, time.Time{}},
		{"a group", time.Time{}, []time.Time{now.Add(time.Hour)}, now.Add(time.Hour)},
		{"the soonest", now.Add(2 * time.Hour), []time.Time{now.Add(3 * time.Hour), now.Add(time.Hour)}, now.Add(time.Hour)},
		{"ended before the pass", now.Add(-time.Second), []time.Time{now.Add(-time.Hour)}, time.Time{}},
		{"ended before the pass and running", time.Time{}, []time.Time{now.Add(-time.Hour), now.Add(time.Hour)}, now.Add(time.Hour)},
		{"ended since the pass", time.Time{}, []time.Time{now.Add(-time.Millisecond), now.Add(time.Hour)}, now.Add(-time.Millisecond)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := destState{dest: backoff{next: tc.dest}, groups: map[string]*backoff{}, passed: now.Add(-time.Second / 2)}
			for i, g := range tc.groups {
				d.groups[fmt.Sprint(i)] = &backoff{level: time.Second, next: g}
			}
			if got := d.earliest(); !got.Equal(tc.want) {
				t.Fatalf("earliest() = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSenderGroupBehindManyWaiting has the heads of many groups fail for
// now, their messages filling far more than MaxScanBatches batches at the
// head of the destination's outbox, with a group that the peer accepts
// behind them all: it is sent at once, in order, not after the waiting
// groups' backoffs, and each waiting group's head is tried once. Then the
// sender stops, and a new one on the same outbox resumes the stored
// backoffs until a request from the destination ends them, and then sends
// every waiting group's messages once each, in order.
func TestSenderGroupBehindManyWaiting(t *testing.T) {
	st := openOutbox(t)
	const batch, waiting, each = 2, 3 * MaxScanBatches, 2 // 3*MaxScanBatches batches of waiting messages
	var groups []string
	for i := range waiting {
		groups = append(groups, fmt.Sprintf("W%02d", i))
	}
	for j := range each {
		for _, g := range groups {
			addOutbox(t, st, g, j, 1)
		}
	}
	addOutbox(t, st, "R", 0, 5)
	var failW atomic.Bool
	failW.Store(true)
	p := newPeer(func(msg string, _ int) (*provider.Answer, error) {
		if strings.HasPrefix(msg, "W") && failW.Load() {
			return errorAnswer(http.StatusServiceUnavailable, moh.CodeBackendUnavailable), nil
		}
		return nil, nil
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	// A backoff far longer than the test: R must not wait for it.
	s := &Sender{Outbox: st, Transport: p, Batch: batch, MinBackoff: time.Hour, MaxBackoff: time.Hour}
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	s.Outbound("dest.example")
	waitFor(t, "group R's messages behind the waiting groups", func() bool { return len(p.received("R")) >= 5 })
	if got := p.received("R"); !slices.Equal(got, names("R", 0, 5)) {
		t.Fatalf("group R got %q, want its messages in order, once each", got)
	}
	for _, g := range groups {
		if n := p.tries(g + "-0"); n != 1 {
			t.Errorf("group %s's head was tried %d times, want once", g, n)
		}
		if n := p.tries(g + "-1"); n != 0 {
			t.Errorf("group %s's second message was tried %d times behind its failed head, want never", g, n)
		}
	}
	cancel()
	<-done

	failW.Store(false)
	s = &Sender{Outbox: st, Transport: p, Batch: batch, MinBackoff: time.Hour, MaxBackoff: time.Hour}
	runSender(t, s)
	waitFor(t, "the destination's worker", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.wakes["dest.example"] != nil
	})
	if sts := s.Status(); len(sts) != 1 || sts[0].NextAttempt.IsZero() {
		t.Fatalf("status after the restart %+v, want the stored backoffs resumed", sts)
	}
	s.PeerUp("dest.example")
	waitFor(t, "the outbox to empty", func() bool {
		pending, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
		return err == nil && len(pending) == 0
	})
	for _, g := range groups {
		if got := p.received(g); !slices.Equal(got, names(g, 0, each)) {
			t.Errorf("group %s got %q, want its %d messages in order, once each", g, got, each)
		}
	}
	if got := p.received("R"); !slices.Equal(got, names("R", 0, 5)) {
		t.Errorf("group R got %q after the restart, want its messages once each", got)
	}
}
