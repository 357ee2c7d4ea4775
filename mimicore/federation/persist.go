package federation

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// A sender whose outbox implements store.OutboxRetries keeps there, per
// destination, what a restart needs to resume its backoffs: the
// destination's backoff (and whether it is a 429's) and those of its
// waiting groups, with the failures since the last success and the last
// error. A worker writes
// them after a pass that changed them (a failure grew one, or a backoff
// ended), one write per pass whatever the messages, and clears them when
// none is left (a success, the operator's retry or reset, a request from
// the destination); under drain leases, after every pass that delivered
// and left nothing backing off, since another gateway draining the
// destination may have stored its state meanwhile. Run reads them before
// it starts a worker.

// restoredState is a destination's retry state read at Run, until its
// worker takes it: its backoffs on the monotonic clock.
type restoredState struct {
	dest   backoff
	groups map[string]*backoff
	// limited is set when dest is a 429's (destState.limited): a request
	// from the destination does not end it.
	limited bool
	// ended is set when a request from the destination (PeerUp) or the
	// operator's retry (Wake) came before its worker started: the
	// backoffs are over, but the stored state is still to be cleared.
	ended bool
}

// retries is the outbox's store of retry states, nil when it keeps none.
func (s *Sender) retries() store.OutboxRetries {
	r, _ := s.Outbox.(store.OutboxRetries)
	return r
}

// loadRetries reads the stored retry states and turns each into backoffs
// on the monotonic clock, within the backoff's cap in force. A backoff whose next attempt is already due
// (the gateway was down past it) is tried after a random part of half its
// level instead of at once, so that a gateway restarted with many failing
// destinations does not try them all in the same instant. The state of a
// destination with nothing waiting is stale: it is neither resumed nor
// shown in the status, and cleared by the destination's first pass. It
// reports false when the states could not be read: the workers then
// clear the stored state of their destination at their first pass.
func (s *Sender) loadRetries(ctx context.Context) (map[string]*restoredState, bool) {
	rs := s.retries()
	if rs == nil {
		return nil, true
	}
	list, err := rs.OutboxRetries(ctx)
	if err != nil {
		s.logger().Error("reading the outbox backoffs; the failing destinations are tried from the minimum backoff", zap.Error(err))
		return nil, false
	}
	if len(list) == 0 {
		return nil, true
	}
	// A stored state is stale when nothing waits for its destination: a
	// success (this gateway's before a kill -9 between its two writes,
	// or another gateway's between our reads) removed the backlog, and
	// nothing backs off. Listed after the states, so that a backlog
	// delivered between the two reads counts as delivered.
	dests, err := s.Outbox.OutboxDestinations(ctx)
	if err != nil {
		s.logger().Error("listing the outbox destinations for their backoffs; the failing destinations are tried from the minimum backoff", zap.Error(err))
		return nil, false
	}
	mono, wall := time.Now(), s.now()
	// The cap in force bounds what was stored under another (the
	// operator lowered max_backoff before the restart), or under a clock
	// that was far ahead.
	_, maxB := s.backoffBounds()
	resume := func(b store.OutboxBackoff) backoff {
		if b.Level <= 0 {
			return backoff{}
		}
		level := min(b.Level, maxB)
		if wait := b.Next.Sub(wall); wait > 0 {
			return backoff{level: level, next: mono.Add(min(wait, maxB))}
		}
		return backoff{level: level, next: mono.Add(rand.N(level/2 + 1))}
	}
	waiting := make(map[string]bool, len(dests))
	for _, d := range dests {
		waiting[d] = true
	}
	out := make(map[string]*restoredState, len(list))
	resumed := 0
	for _, r := range list {
		if !waiting[r.Destination] {
			// Neither resumed nor shown: the worker a message starts
			// clears it at its first pass.
			out[r.Destination] = &restoredState{ended: true}
			continue
		}
		st := &restoredState{dest: resume(r.Backoff), groups: make(map[string]*backoff, len(r.Groups))}
		st.limited = r.RateLimited && st.dest.level > 0
		for _, g := range r.Groups {
			if b := resume(g.OutboxBackoff); b.level > 0 {
				st.groups[string(g.GroupID)] = &b
			}
		}
		out[r.Destination] = st
		resumed++
		next := destState{dest: st.dest, groups: st.groups}
		var nextAt time.Time
		if at := next.earliest(); !at.IsZero() {
			nextAt = wall.Add(at.Sub(mono))
		}
		s.note(r.Destination, func(d *DestinationStatus) {
			d.Failures, d.LastError, d.LastAttempt, d.NextAttempt = r.Failures, r.LastError, r.LastAttempt, nextAt
		})
	}
	if resumed > 0 {
		s.logger().Info("resumed the backoffs of failing outbox destinations", zap.Int("destinations", resumed))
	}
	return out, true
}

// takeRestored gives state the backoffs read at Run for dest, unless a
// request from it or the operator's retry ended them meanwhile, and
// reports whether a retry state may be stored for dest.
func (s *Sender) takeRestored(dest string, state *destState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.restored[dest]
	if r == nil {
		return !s.retriesLoaded
	}
	delete(s.restored, dest)
	if !r.ended {
		state.dest, state.groups, state.limited = r.dest, r.groups, r.limited
	}
	return true
}

// endRestored ends the backoffs read at Run for dest, whose worker has not
// started yet: for the operator's retry (retry set) whatever they are,
// for a request from dest unless dest backs off after a 429 that has not
// ended (it limits this provider, and was up all along); called with
// s.mu held.
func (s *Sender) endRestored(dest string, retry bool) {
	if r := s.restored[dest]; r != nil && !r.ended {
		if !retry && r.limited && r.dest.next.After(time.Now()) {
			return
		}
		r.ended = true
		if st := s.status[dest]; st != nil {
			st.NextAttempt = time.Time{}
		}
	}
}

// empty reports whether nothing of d backs off.
func (d *destState) empty() bool { return d.dest.level == 0 && len(d.groups) == 0 }

// persist stores dest's retry state from state, or clears it when nothing
// backs off and one may be stored (persisted), and reports whether one
// may be stored now, and whether the write failed. A failed write is
// logged: the backoffs go on in memory, and the worker writes them again
// at its next pass, or, for a clear, before it ends (a stored state its
// worker no longer knows of would outlive it: no later worker clears
// what it did not store, and a restart would resume the backoff of a
// destination that was delivered to).
func (s *Sender) persist(ctx context.Context, dest string, state *destState, persisted bool, log *zap.Logger) (mayStore, failed bool) {
	rs := s.retries()
	if rs == nil || !persisted && state.empty() {
		return false, false
	}
	// Written even while the gateway stops: it is what the restart reads.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if state.empty() {
		if err := rs.ClearOutboxRetry(ctx, dest); err != nil {
			log.Warn("clearing the stored backoff of the destination; will try again", zap.Error(err))
			return true, true
		}
		return false, false
	}
	mono, wall := time.Now(), s.now()
	stored := func(b *backoff) store.OutboxBackoff {
		return store.OutboxBackoff{Level: b.level, Next: wall.Add(b.next.Sub(mono))}
	}
	r := store.OutboxRetry{Destination: dest}
	if state.dest.level > 0 {
		r.Backoff, r.RateLimited = stored(&state.dest), state.limited
	}
	for g, b := range state.groups {
		r.Groups = append(r.Groups, store.OutboxGroupBackoff{GroupID: []byte(g), OutboxBackoff: stored(b)})
	}
	if len(r.Groups) > store.MaxOutboxRetryGroups {
		// Keep those that wait longest: the others end soon anyway.
		slices.SortFunc(r.Groups, func(a, b store.OutboxGroupBackoff) int { return b.Next.Compare(a.Next) })
		r.Groups = r.Groups[:store.MaxOutboxRetryGroups]
	}
	s.mu.Lock()
	if st := s.status[dest]; st != nil {
		r.Failures, r.LastError, r.LastAttempt = st.Failures, truncateUTF8(st.LastError, store.MaxOutboxRetryError), st.LastAttempt
	}
	s.mu.Unlock()
	if err := rs.SetOutboxRetry(ctx, r); err != nil {
		log.Warn("storing the backoff of the destination; will try again, and a restart meanwhile would not resume it as it is",
			zap.Error(err))
		return true, true
	}
	return true, false
}

// truncateUTF8 makes s valid UTF-8 without NUL (which a store refuses:
// an error's text may quote a peer's bytes, such as the names of its
// certificate) and cuts it to at most n bytes, on a character boundary.
func truncateUTF8(s string, n int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
