package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Sizes of the concurrent-writer tests: enough callers at once that a
// backend which groups writes really groups them.
const (
	concurrentWorkers = 64
	concurrentOps     = 200
	sharedKeys        = 8
)

// testConcurrentWriters checks the write path under many concurrent
// callers, as a backend that groups writes into shared transactions sees
// it: every acknowledged write is there afterwards, check-and-set stays
// exactly-once across callers, and a write that fails among others fails
// alone with its own error.
func testConcurrentWriters(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("Mixed", func(t *testing.T) { testMixedWriters(t, open(t)) })
	t.Run("FailuresAlone", func(t *testing.T) { testFailuresAlone(t, open(t)) })
}

// ackLog collects what concurrent workers had acknowledged.
type ackLog struct {
	mu      sync.Mutex
	spent   [][]byte
	sigs    [][32]byte
	replies [][]byte // completed request ids; the answer is the id
	firstOf map[string]int
	newOf   map[string]int
}

func (l *ackLog) add(f func(l *ackLog)) {
	l.mu.Lock()
	f(l)
	l.mu.Unlock()
}

func testMixedWriters(t *testing.T, s store.Store) {
	const sender = "a.example"
	exp := time.Now().Add(future)
	run := randBytes(t, 8) // keys of this run only
	key := func(kind string, w, i int) []byte { return fmt.Appendf(bytes.Clone(run), "/%s/%d/%d", kind, w, i) }
	shared := func(kind string, j int) []byte { return fmt.Appendf(bytes.Clone(run), "/%s/shared/%d", kind, j) }
	sharedDigest := digestOf([]byte("shared request"))

	log := &ackLog{firstOf: map[string]int{}, newOf: map[string]int{}}
	raceWorkers(t, concurrentWorkers, concurrentOps, func(w, i int) error {
		switch i % 5 {
		case 0: // a fresh spent token
			k := key("spent", w, i)
			first, err := s.MarkSpent(ctx(), k, exp)
			if err != nil || !first {
				return fmt.Errorf("MarkSpent of a fresh key: first use %t, %v", first, err)
			}
			log.add(func(l *ackLog) { l.spent = append(l.spent, k) })
		case 1: // a fresh request, reserved then completed
			id := key("req", w, i)
			d := digestOf(id)
			r, err := s.Reserve(ctx(), sender, id, d, exp)
			if err != nil || r.Status != store.ReplayNew {
				return fmt.Errorf("reserving a fresh id: %s, %v", r.Status, err)
			}
			if err := s.Complete(ctx(), sender, id, d, store.Answer{Body: id}); err != nil {
				return fmt.Errorf("completing: %w", err)
			}
			log.add(func(l *ackLog) { l.replies = append(l.replies, id) })
		case 2: // a fresh client signature
			d := digestOf(key("sig", w, i))
			first, err := s.SeenSignature(ctx(), d, exp)
			if err != nil || !first {
				return fmt.Errorf("SeenSignature of a fresh digest: first use %t, %v", first, err)
			}
			log.add(func(l *ackLog) { l.sigs = append(l.sigs, d) })
		case 3: // a spent token every worker tries
			k := shared("spent", (i/5)%sharedKeys)
			first, err := s.MarkSpent(ctx(), k, exp)
			if err != nil {
				return fmt.Errorf("MarkSpent of a shared key: %w", err)
			}
			if first {
				log.add(func(l *ackLog) { l.firstOf[string(k)]++ })
			}
		case 4: // a request id every worker reserves
			id := shared("req", (i/5)%sharedKeys)
			r, err := s.Reserve(ctx(), sender, id, sharedDigest, exp)
			if err != nil {
				return fmt.Errorf("reserving a shared id: %w", err)
			}
			switch r.Status {
			case store.ReplayNew:
				log.add(func(l *ackLog) { l.newOf[string(id)]++ })
			case store.ReplayInProgress:
			default:
				return fmt.Errorf("reserving a shared pending id answered %s", r.Status)
			}
		}
		return nil
	})

	for j := 0; j < sharedKeys; j++ {
		if n := log.firstOf[string(shared("spent", j))]; n != 1 {
			t.Errorf("shared spent token %d: %d of %d concurrent callers got first use, want exactly 1", j, n, concurrentWorkers*concurrentOps/5/sharedKeys)
		}
		if n := log.newOf[string(shared("req", j))]; n != 1 {
			t.Errorf("shared request id %d: %d callers got ReplayNew, want exactly 1", j, n)
		}
	}
	// Every acknowledged write is there. Checked concurrently too, so a
	// grouping backend answers from grouped reads.
	want := concurrentWorkers * concurrentOps / 5
	if len(log.spent) != want || len(log.replies) != want || len(log.sigs) != want {
		t.Fatalf("acknowledged %d spent tokens, %d answers, %d signatures; want %d each", len(log.spent), len(log.replies), len(log.sigs), want)
	}
	raceWorkers(t, concurrentWorkers, want/concurrentWorkers, func(w, i int) error {
		n := w*(want/concurrentWorkers) + i
		if first, err := s.MarkSpent(ctx(), log.spent[n], exp); err != nil || first {
			return fmt.Errorf("acknowledged spent token %q: first use %t, %v after the run", log.spent[n], first, err)
		}
		if first, err := s.SeenSignature(ctx(), log.sigs[n], exp); err != nil || first {
			return fmt.Errorf("acknowledged signature %d: first use %t, %v after the run", n, first, err)
		}
		id := log.replies[n]
		r, err := s.Reserve(ctx(), sender, id, digestOf(id), exp)
		if err != nil || r.Status != store.ReplayDuplicate || !bytes.Equal(r.Answer.Body, id) {
			return fmt.Errorf("acknowledged answer for %q reads back as %s %q, %v", id, r.Status, r.Answer.Body, err)
		}
		return nil
	})
}

// testFailuresAlone runs writes that fail inside the store (Complete and
// Release of entries that do not exist, Complete of an entry another
// caller completes) among writes that succeed, all at once: each failure
// comes back with its own error, unchanged, and every other write holds.
func testFailuresAlone(t *testing.T, s store.Store) {
	const sender = "a.example"
	exp := time.Now().Add(future)
	const workers, ops = 32, 60
	var (
		mu    sync.Mutex
		spent [][]byte
		won   = map[string]int{}
	)
	contested := randBytes(t, 16)
	cd := digestOf(contested)
	reserve(t, s, sender, contested, cd, exp)
	raceWorkers(t, workers, ops, func(w, i int) error {
		switch i % 4 {
		case 0:
			err := s.Complete(ctx(), sender, fmt.Appendf(nil, "missing/%d/%d", w, i), digestOf(nil), store.Answer{Body: []byte("x")})
			if !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("completing a missing entry among other writes: got %v, want ErrNotFound", err)
			}
		case 1:
			err := s.Release(ctx(), sender, fmt.Appendf(nil, "missing/%d/%d", w, i), digestOf(nil))
			if !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("releasing a missing entry among other writes: got %v, want ErrNotFound", err)
			}
		case 2:
			k := fmt.Appendf(nil, "spent/%d/%d", w, i)
			first, err := s.MarkSpent(ctx(), k, exp)
			if err != nil || !first {
				return fmt.Errorf("MarkSpent beside failing writes: first use %t, %v", first, err)
			}
			mu.Lock()
			spent = append(spent, k)
			mu.Unlock()
		case 3:
			err := s.Complete(ctx(), sender, contested, cd, store.Answer{Body: []byte{byte(w)}})
			switch {
			case err == nil:
				mu.Lock()
				won[string(contested)]++
				mu.Unlock()
			case !errors.Is(err, store.ErrConflict):
				return fmt.Errorf("completing an entry completed by another caller: got %v, want ErrConflict", err)
			}
		}
		return nil
	})
	if n := won[string(contested)]; n != 1 {
		t.Fatalf("%d concurrent Completes of one entry succeeded, want exactly 1", n)
	}
	for _, k := range spent {
		if first, err := s.MarkSpent(ctx(), k, exp); err != nil || first {
			t.Fatalf("spent token %q written beside failing writes: first use %t, %v afterwards", k, first, err)
		}
	}
	r := reserve(t, s, sender, contested, cd, exp)
	if r.Status != store.ReplayDuplicate || len(r.Answer.Body) != 1 || int(r.Answer.Body[0]) >= workers {
		t.Fatalf("contested entry reads back as %s %v", r.Status, r.Answer.Body)
	}
}
