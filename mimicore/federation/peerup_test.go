package federation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// unlisted is an outbox whose listing of destinations fails its first
// fails calls (all of them when negative).
type unlisted struct {
	store.Store
	fails int
	calls atomic.Int32
}

func (u *unlisted) OutboxDestinations(ctx context.Context) ([]string, error) {
	if n := int(u.calls.Add(1)); u.fails < 0 || n <= u.fails {
		return nil, errors.New("database unreachable")
	}
	return u.Store.OutboxDestinations(ctx)
}

// TestSenderBacklogFoundAfterListingFails checks the destinations with a
// backlog that the sender could not list when it started: a request from
// the destination (PeerUp) starts its worker, and the listing is tried
// again until it succeeds.
func TestSenderBacklogFoundAfterListingFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fails  int
		peerUp bool
	}{
		{"a request from the destination", -1, true},
		{"the listing tried again", 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutbox(t)
			addOutbox(t, st, "g", 0, 3)
			p := newPeer(nil)
			s := &Sender{Outbox: &unlisted{Store: st, fails: tc.fails}, Transport: p,
				MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
			runSender(t, s)
			if tc.peerUp {
				time.Sleep(100 * time.Millisecond)
				if got := p.received("g"); len(got) != 0 {
					t.Fatalf("got %q before any wake-up", got)
				}
				s.PeerUp("dest.example")
			}
			deadline := time.Now().Add(30 * time.Second)
			for len(p.received("g")) < 3 {
				if time.Now().After(deadline) {
					t.Fatalf("got %q in 30 s, want the backlog's 3 messages", p.received("g"))
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestSenderNextAttemptCleared has a destination refuse a message once:
// once it is delivered, the destination's status shows no next attempt.
func TestSenderNextAttemptCleared(t *testing.T) {
	st := openOutbox(t)
	addOutbox(t, st, "g", 0, 1)
	p := newPeer(func(_ string, attempt int) (*provider.Answer, error) {
		if attempt == 1 {
			return errorAnswer(http.StatusServiceUnavailable, moh.CodeBackendUnavailable), nil
		}
		return nil, nil
	})
	s := &Sender{Outbox: st, Transport: p, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	runSender(t, s)
	waitFor(t, "the message", func() bool { return len(p.received("g")) == 1 })
	waitFor(t, "the pass's end", func() bool {
		st := s.Status()
		return len(st) == 1 && st[0].Failures == 0
	})
	time.Sleep(20 * time.Millisecond)
	if st := s.Status(); len(st) != 1 || !st[0].NextAttempt.IsZero() {
		t.Fatalf("status after the delivery %+v, want no next attempt", st)
	}
}

// TestPeerUpKeepsRateLimit has a destination refuse a message: a request
// from it (PeerUp) ends the backoff of a destination that could not be
// reached, which is up again, but not that of a 429 with a Retry-After
// of an hour: the peer limits this provider, and it talking to this one
// (a peer that federates both ways) is no news. The operator's retry
// (Wake) ends either.
func TestPeerUpKeepsRateLimit(t *testing.T) {
	refused := refusedDial(t)
	limited := func() (*provider.Answer, error) {
		a := errorAnswer(http.StatusTooManyRequests, moh.CodeRateLimited)
		a.RetryAfter = time.Hour
		return a, nil
	}
	for _, tc := range []struct {
		name  string
		fail  func() (*provider.Answer, error)
		wake  func(s *Sender, dest string)
		tries int
	}{
		{"rate limited, a request from it", limited, (*Sender).PeerUp, 1},
		{"rate limited, the operator's retry", limited, (*Sender).Wake, 2},
		{"unreachable, a request from it", func() (*provider.Answer, error) { return nil, fmt.Errorf("posting: %w", refused) }, (*Sender).PeerUp, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOutbox(t)
			addOutbox(t, st, "g", 0, 1)
			p := newPeer(func(string, int) (*provider.Answer, error) { return tc.fail() })
			s := &Sender{Outbox: st, Transport: p, MinBackoff: time.Hour, MaxBackoff: 2 * time.Hour}
			runSender(t, s)
			waitFor(t, "the destination's backoff", func() bool {
				st := s.Status()
				return len(st) == 1 && !st[0].NextAttempt.IsZero()
			})
			s.mu.Lock()
			w := s.wakes["dest.example"]
			s.mu.Unlock()
			taken := func(ch chan struct{}) func() bool {
				return func() bool {
					s.mu.Lock()
					defer s.mu.Unlock()
					return len(ch) == 0
				}
			}
			tc.wake(s, "dest.example")
			waitFor(t, "the wake-up taken", func() bool { return taken(w.up)() && taken(w.retry)() })
			// A wake-up for new messages, taken once the worker is done
			// with the first one (and the pass it may have made).
			s.Outbound("dest.example")
			waitFor(t, "the new messages' wake-up taken", taken(w.wake))
			if got := p.tries("g-0"); got != tc.tries {
				t.Fatalf("the message tried %d times, want %d", got, tc.tries)
			}
		})
	}
}
