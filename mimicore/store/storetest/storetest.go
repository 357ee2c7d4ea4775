// Package storetest checks that a store.Store backend keeps the contract
// documented in package store. Every backend (SQLite, PostgreSQL) calls
// RunContractTests and RunReopenTests from its own tests, with a real
// database, and runs them under -race.
//
// The tests use the wall clock: expiries are set well in the past or well in
// the future, never close to now, so they do not flake on a slow machine.
package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Expiries the tests use, relative to the wall clock.
const (
	future = time.Hour
	past   = -time.Hour
)

// RunContractTests runs the contract tests as subtests of t. open must
// return a fresh, empty store for each subtest and close it with t.Cleanup
// (closing a store the test already closed must be harmless).
func RunContractTests(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("Replay", func(t *testing.T) { testReplay(t, open) })
	t.Run("ReplayLog", func(t *testing.T) { testReplayLog(t, open) })
	t.Run("SeenSignature", func(t *testing.T) { testSeenSignature(t, open) })
	t.Run("MarkSpent", func(t *testing.T) { testMarkSpent(t, open) })
	t.Run("TokenChallenges", func(t *testing.T) { testTokenChallenges(t, open) })
	t.Run("SigningKeys", func(t *testing.T) { testSigningKeys(t, open) })
	t.Run("PeerKeys", func(t *testing.T) { testPeerKeys(t, open) })
	t.Run("Attachments", func(t *testing.T) { testAttachments(t, open) })
	t.Run("OutboxRetries", func(t *testing.T) { testOutboxRetries(t, open) })
	t.Run("DeleteExpired", func(t *testing.T) { testDeleteExpired(t, open) })
	t.Run("Close", func(t *testing.T) { testClose(t, open) })
	t.Run("ConcurrentWriters", func(t *testing.T) { testConcurrentWriters(t, open) })
}

// RunReopenTests checks that every kind of record survives closing and
// reopening the store. newDB must create a fresh, empty database and
// return a function that opens a store on it; the tests call that function
// again after closing the previous store, and close every store they open.
func RunReopenTests(t *testing.T, newDB func(t *testing.T) (open func() (store.Store, error))) {
	t.Run("Reopen", func(t *testing.T) { testReopen(t, newDB(t)) })
	t.Run("ReopenGroups", func(t *testing.T) { testReopenGroups(t, newDB(t)) })
	t.Run("ReopenQueues", func(t *testing.T) { testReopenQueues(t, newDB(t)) })
	t.Run("ReopenOutbox", func(t *testing.T) { testReopenOutbox(t, newDB(t)) })
	t.Run("ReopenOutboxRetries", func(t *testing.T) { testReopenOutboxRetries(t, newDB(t)) })
}

func ctx() context.Context { return context.Background() }

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("reading random bytes: %v", err)
	}
	return b
}

func digestOf(b []byte) [32]byte { return sha256.Sum256(b) }

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func reserve(t *testing.T, s store.Store, sender string, id []byte, d [32]byte, exp time.Time) store.Reservation {
	t.Helper()
	r, err := s.Reserve(ctx(), sender, id, d, exp)
	noErr(t, "Reserve", err)
	return r
}

func wantStatus(t *testing.T, what string, r store.Reservation, want store.ReplayStatus) {
	t.Helper()
	if r.Status != want {
		t.Fatalf("%s: Reserve answered %s, want %s", what, r.Status, want)
	}
	if want != store.ReplayDuplicate && r.Answer.Body != nil {
		t.Fatalf("%s: %s reservation carries an answer %+v", what, r.Status, r.Answer)
	}
}

func testReplay(t *testing.T, open func(t *testing.T) store.Store) {
	const sender = "a.example"

	t.Run("Lifecycle", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		exp := time.Now().Add(future)
		wantStatus(t, "first", reserve(t, s, sender, id, d, exp), store.ReplayNew)
		wantStatus(t, "retry while pending", reserve(t, s, sender, id, d, exp), store.ReplayInProgress)
		wantStatus(t, "other bytes while pending", reserve(t, s, sender, id, digestOf([]byte("other")), exp), store.ReplayConflict)

		body := []byte("first answer")
		noErr(t, "Complete", s.Complete(ctx(), sender, id, d, store.Answer{Body: body}))
		body[0] = 'X' // the store must have copied it
		for i := 0; i < 2; i++ {
			r := reserve(t, s, sender, id, d, exp)
			wantStatus(t, "retry after completion", r, store.ReplayDuplicate)
			if string(r.Answer.Body) != "first answer" {
				t.Fatalf("duplicate answer = %q, want %q", r.Answer.Body, "first answer")
			}
			r.Answer.Body[0] = 'Y' // nor may it hand out its own memory
		}
		wantStatus(t, "other bytes after completion", reserve(t, s, sender, id, digestOf([]byte("other")), exp), store.ReplayConflict)
		wantErr(t, "second Complete", s.Complete(ctx(), sender, id, d, store.Answer{Body: []byte("x")}), store.ErrConflict)
		wantErr(t, "Release after Complete", s.Release(ctx(), sender, id, d), store.ErrConflict)
		r := reserve(t, s, sender, id, d, exp)
		if string(r.Answer.Body) != "first answer" {
			t.Fatalf("answer changed to %q by a refused Complete", r.Answer.Body)
		}
	})

	t.Run("EmptyBody", func(t *testing.T) {
		s := open(t)
		for i, body := range [][]byte{nil, {}} {
			id, d := randBytes(t, 16), digestOf([]byte{byte(i)})
			reserve(t, s, sender, id, d, time.Now().Add(future))
			noErr(t, "Complete", s.Complete(ctx(), sender, id, d, store.Answer{Body: body}))
			r := reserve(t, s, sender, id, d, time.Now().Add(future))
			wantStatus(t, "retry", r, store.ReplayDuplicate)
			if r.Answer.Body == nil || len(r.Answer.Body) != 0 {
				t.Fatalf("answer = %v (nil %t), want an empty non-nil body", r.Answer.Body, r.Answer.Body == nil)
			}
		}
	})

	t.Run("MaxAnswer", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("big"))
		reserve(t, s, sender, id, d, time.Now().Add(future))
		err := s.Complete(ctx(), sender, id, d, store.Answer{Body: make([]byte, store.MaxAnswerSize+1)})
		wantErr(t, "Complete with an oversized body", err, store.ErrInvalid)
		wantStatus(t, "after a refused Complete", reserve(t, s, sender, id, d, time.Now().Add(future)), store.ReplayInProgress)
		body := randBytes(t, store.MaxAnswerSize)
		noErr(t, "Complete with the largest body", s.Complete(ctx(), sender, id, d, store.Answer{Body: body}))
		r := reserve(t, s, sender, id, d, time.Now().Add(future))
		if !bytes.Equal(r.Answer.Body, body) {
			t.Fatal("largest answer body did not read back intact")
		}
	})

	t.Run("Release", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		exp := time.Now().Add(future)
		wantErr(t, "Release of an unknown id", s.Release(ctx(), sender, id, d), store.ErrNotFound)
		reserve(t, s, sender, id, d, exp)
		wantErr(t, "Release with another digest", s.Release(ctx(), sender, id, digestOf([]byte("other"))), store.ErrNotFound)
		wantErr(t, "Complete with another digest", s.Complete(ctx(), sender, id, digestOf([]byte("other")), store.Answer{}), store.ErrNotFound)
		noErr(t, "Release", s.Release(ctx(), sender, id, d))
		wantErr(t, "second Release", s.Release(ctx(), sender, id, d), store.ErrNotFound)
		wantErr(t, "Complete after Release", s.Complete(ctx(), sender, id, d, store.Answer{}), store.ErrNotFound)
		wantStatus(t, "retry after Release", reserve(t, s, sender, id, d, exp), store.ReplayNew)
		// After a Release the id is free for other bytes too.
		noErr(t, "Release", s.Release(ctx(), sender, id, d))
		wantStatus(t, "other bytes after Release", reserve(t, s, sender, id, digestOf([]byte("other")), exp), store.ReplayNew)
	})

	t.Run("CompleteUnknown", func(t *testing.T) {
		s := open(t)
		wantErr(t, "Complete of an unknown id", s.Complete(ctx(), sender, randBytes(t, 16), digestOf(nil), store.Answer{}), store.ErrNotFound)
	})

	t.Run("KeyedOnSenderAndID", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		exp := time.Now().Add(future)
		wantStatus(t, "first", reserve(t, s, sender, id, d, exp), store.ReplayNew)
		wantStatus(t, "same id from another sender", reserve(t, s, "b.example", id, d, exp), store.ReplayNew)
		wantStatus(t, "prefix sender", reserve(t, s, "a.exampl", id, d, exp), store.ReplayNew)
		near := bytes.Clone(id)
		near[15] ^= 1
		wantStatus(t, "id differing in one bit", reserve(t, s, sender, near, d, exp), store.ReplayNew)
		wantStatus(t, "id prefix", reserve(t, s, sender, id[:15], d, exp), store.ReplayNew)
		wantStatus(t, "original again", reserve(t, s, sender, id, d, exp), store.ReplayInProgress)
	})

	t.Run("IDNotRetained", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		orig := bytes.Clone(id)
		reserve(t, s, sender, id, d, time.Now().Add(future))
		id[0] ^= 0xff
		wantStatus(t, "original id after the caller changed its buffer", reserve(t, s, sender, orig, d, time.Now().Add(future)), store.ReplayInProgress)
		wantStatus(t, "changed buffer", reserve(t, s, sender, id, d, time.Now().Add(future)), store.ReplayNew)
	})

	t.Run("Expiry", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		// An entry that is already expired behaves as absent.
		wantStatus(t, "expired reservation", reserve(t, s, sender, id, d, time.Now().Add(past)), store.ReplayNew)
		wantErr(t, "Complete of an expired entry", s.Complete(ctx(), sender, id, d, store.Answer{}), store.ErrNotFound)
		wantErr(t, "Release of an expired entry", s.Release(ctx(), sender, id, d), store.ErrNotFound)
		wantStatus(t, "after expiry, same bytes", reserve(t, s, sender, id, d, time.Now().Add(past)), store.ReplayNew)
		wantStatus(t, "after expiry, other bytes", reserve(t, s, sender, id, digestOf([]byte("other")), time.Now().Add(future)), store.ReplayNew)
		wantStatus(t, "alive again", reserve(t, s, sender, id, d, time.Now().Add(future)), store.ReplayConflict)
	})

	t.Run("InvalidArguments", func(t *testing.T) {
		s := open(t)
		d := digestOf(nil)
		exp := time.Now().Add(future)
		for _, c := range []struct {
			name   string
			sender string
			id     []byte
		}{
			{"empty sender", "", []byte{1}},
			{"long sender", string(make([]byte, store.MaxDomainSize+1)), []byte{1}},
			{"empty id", sender, nil},
			{"long id", sender, make([]byte, store.MaxIDSize+1)},
		} {
			_, err := s.Reserve(ctx(), c.sender, c.id, d, exp)
			wantErr(t, "Reserve with "+c.name, err, store.ErrInvalid)
			wantErr(t, "Complete with "+c.name, s.Complete(ctx(), c.sender, c.id, d, store.Answer{}), store.ErrInvalid)
			wantErr(t, "Release with "+c.name, s.Release(ctx(), c.sender, c.id, d), store.ErrInvalid)
		}
		wantStatus(t, "longest sender and id", reserve(t, s, string(bytes.Repeat([]byte("a"), store.MaxDomainSize)), make([]byte, store.MaxIDSize), d, exp), store.ReplayNew)
	})

	t.Run("ConcurrentSameKey", func(t *testing.T) {
		s := open(t)
		const keys, workers = 10, 8
		ids := make([][]byte, keys)
		for i := range ids {
			ids[i] = randBytes(t, 16)
		}
		exp := time.Now().Add(future)
		counts := make([]map[store.ReplayStatus]int, keys)
		for i := range counts {
			counts[i] = map[store.ReplayStatus]int{}
		}
		var mu sync.Mutex
		raceWorkers(t, workers, keys, func(w, i int) error {
			// Odd workers send other bytes under the same id.
			d := digestOf([]byte{byte(w % 2)})
			r, err := s.Reserve(ctx(), sender, bytes.Clone(ids[i]), d, exp)
			if err != nil {
				return fmt.Errorf("reserving: %w", err)
			}
			mu.Lock()
			counts[i][r.Status]++
			mu.Unlock()
			return nil
		})
		for i, c := range counts {
			if c[store.ReplayNew] != 1 {
				t.Errorf("key %d: %d callers got ReplayNew, want exactly 1 (%v)", i, c[store.ReplayNew], c)
			}
			// The winner's half of the workers sees in progress, the
			// other half conflict.
			if c[store.ReplayInProgress] != workers/2-1 || c[store.ReplayConflict] != workers/2 {
				t.Errorf("key %d: outcomes %v, want 1 new, %d in progress, %d conflicts", i, c, workers/2-1, workers/2)
			}
		}
	})

	t.Run("ConcurrentComplete", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		reserve(t, s, sender, id, d, time.Now().Add(future))
		const workers = 8
		var wg sync.WaitGroup
		results := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results <- s.Complete(ctx(), sender, id, d, store.Answer{Body: []byte{byte(w), byte(w)}})
			}()
		}
		wg.Wait()
		close(results)
		ok := 0
		for err := range results {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, store.ErrConflict):
				t.Fatalf("concurrent Complete: %v", err)
			}
		}
		if ok != 1 {
			t.Fatalf("%d concurrent Completes succeeded, want exactly 1", ok)
		}
		r := reserve(t, s, sender, id, d, time.Now().Add(future))
		if len(r.Answer.Body) != 2 || int(r.Answer.Body[0]) >= workers || r.Answer.Body[0] != r.Answer.Body[1] {
			t.Fatalf("stored answer %v mixes two Completes", r.Answer.Body)
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		c, cancel := context.WithCancel(ctx())
		cancel()
		r, err := s.Reserve(c, sender, id, d, time.Now().Add(future))
		// Either the store refuses, or it answered and then remembers.
		if err == nil && r.Status == store.ReplayNew {
			wantStatus(t, "after a reservation under a canceled context", reserve(t, s, sender, id, d, time.Now().Add(future)), store.ReplayInProgress)
		}
	})
}

// onceFunc is SeenSignature or MarkSpent on a key.
type onceFunc func(s store.Store, c context.Context, key []byte, exp time.Time) (bool, error)

func seenSignature(s store.Store, c context.Context, key []byte, exp time.Time) (bool, error) {
	return s.SeenSignature(c, [32]byte(key), exp)
}

func markSpent(s store.Store, c context.Context, key []byte, exp time.Time) (bool, error) {
	return s.MarkSpent(c, key, exp)
}

func testSeenSignature(t *testing.T, open func(t *testing.T) store.Store) {
	testOnce(t, open, seenSignature)
}

func testMarkSpent(t *testing.T, open func(t *testing.T) store.Store) {
	testOnce(t, open, markSpent)
	t.Run("KeySizes", func(t *testing.T) {
		s := open(t)
		_, err := s.MarkSpent(ctx(), nil, time.Now().Add(future))
		wantErr(t, "MarkSpent of an empty key", err, store.ErrInvalid)
		_, err = s.MarkSpent(ctx(), make([]byte, store.MaxIDSize+1), time.Now().Add(future))
		wantErr(t, "MarkSpent of an oversized key", err, store.ErrInvalid)
		for _, n := range []int{1, 32, store.MaxIDSize} {
			k := randBytes(t, n)
			first, err := s.MarkSpent(ctx(), k, time.Now().Add(future))
			noErr(t, "MarkSpent", err)
			if !first {
				t.Fatalf("%d-byte key: first use reported as replay", n)
			}
		}
		// A key and its prefix are distinct.
		k := randBytes(t, 32)
		for _, key := range [][]byte{k, k[:31]} {
			first, err := s.MarkSpent(ctx(), key, time.Now().Add(future))
			noErr(t, "MarkSpent", err)
			if !first {
				t.Fatalf("%d-byte key: first use reported as replay", len(key))
			}
		}
	})
}

func once(t *testing.T, f onceFunc, s store.Store, key []byte, exp time.Time) bool {
	t.Helper()
	first, err := f(s, ctx(), key, exp)
	noErr(t, "recording key", err)
	return first
}

func testOnce(t *testing.T, open func(t *testing.T) store.Store, f onceFunc) {
	t.Run("FirstUseThenReplay", func(t *testing.T) {
		s := open(t)
		k := randBytes(t, 32)
		if !once(t, f, s, k, time.Now().Add(future)) {
			t.Fatal("first use reported as replay")
		}
		// A replay is refused whatever expiry it passes, and does not
		// shorten or extend the record.
		for _, exp := range []time.Duration{future, 2 * future, time.Minute, past} {
			if once(t, f, s, k, time.Now().Add(exp)) {
				t.Fatalf("replay with expiry %s reported first use", exp)
			}
		}
		if once(t, f, s, k, time.Now().Add(future)) {
			t.Fatal("replay after a replay with a past expiry reported first use")
		}
	})

	t.Run("DistinctKeys", func(t *testing.T) {
		s := open(t)
		keys := make([][]byte, 50)
		for i := range keys {
			keys[i] = randBytes(t, 32)
			if !once(t, f, s, keys[i], time.Now().Add(future)) {
				t.Fatalf("key %d: first use reported as replay", i)
			}
		}
		near := bytes.Clone(keys[0])
		near[31] ^= 1
		if !once(t, f, s, near, time.Now().Add(future)) {
			t.Fatal("key differing in one bit reported as replay")
		}
		for i := range keys {
			if once(t, f, s, keys[i], time.Now().Add(future)) {
				t.Fatalf("key %d: replay reported as first use", i)
			}
		}
	})

	t.Run("Expiry", func(t *testing.T) {
		s := open(t)
		k := randBytes(t, 32)
		if !once(t, f, s, k, time.Now().Add(past)) {
			t.Fatal("first use with a past expiry reported as replay")
		}
		// The record expired at once: the key is free again.
		if !once(t, f, s, k, time.Now().Add(future)) {
			t.Fatal("key with an expired record reported as replay")
		}
		if once(t, f, s, k, time.Now().Add(future)) {
			t.Fatal("key recorded again reported first use")
		}
	})

	t.Run("KeyNotRetained", func(t *testing.T) {
		s := open(t)
		k := randBytes(t, 32)
		orig := bytes.Clone(k)
		once(t, f, s, k, time.Now().Add(future))
		k[0] ^= 0xff
		if once(t, f, s, orig, time.Now().Add(future)) {
			t.Fatal("store lost the key after the caller changed its buffer")
		}
		if !once(t, f, s, k, time.Now().Add(future)) {
			t.Fatal("store sees the caller's changed buffer as recorded")
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		s := open(t)
		const keys, workers = 20, 8
		ks := make([][]byte, keys)
		for i := range ks {
			ks[i] = randBytes(t, 32)
		}
		exp := time.Now().Add(future)
		var firsts [keys]int
		var mu sync.Mutex
		raceWorkers(t, workers, keys, func(_, i int) error {
			first, err := f(s, ctx(), bytes.Clone(ks[i]), exp)
			if err != nil {
				return fmt.Errorf("recording key: %w", err)
			}
			if first {
				mu.Lock()
				firsts[i]++
				mu.Unlock()
			}
			return nil
		})
		for i, n := range firsts {
			if n != 1 {
				t.Errorf("key %d: %d concurrent callers got first use, want exactly 1", i, n)
			}
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		s := open(t)
		k := randBytes(t, 32)
		c, cancel := context.WithCancel(ctx())
		cancel()
		first, err := f(s, c, k, time.Now().Add(future))
		if err == nil && first && once(t, f, s, k, time.Now().Add(future)) {
			t.Fatal("key reported first use under a canceled context and again after")
		}
	})
}

func signingKey(t *testing.T, n int) store.SigningKey {
	nb := time.Unix(1_700_000_000+int64(n)*86400, 0).UTC()
	return store.SigningKey{
		KeyID:     randBytes(t, 16),
		Scheme:    0x0807,
		PublicKey: randBytes(t, 32),
		NotBefore: nb,
		NotAfter:  nb.Add(32 * 24 * time.Hour),
		File:      fmt.Sprintf("key-%d.key.pem", n),
	}
}

func sameSigningKey(a, b store.SigningKey) bool {
	return bytes.Equal(a.KeyID, b.KeyID) && a.Scheme == b.Scheme && bytes.Equal(a.PublicKey, b.PublicKey) &&
		a.NotBefore.Equal(b.NotBefore) && a.NotAfter.Equal(b.NotAfter) && a.RetiredAt.Equal(b.RetiredAt) && a.File == b.File &&
		bytes.Equal(a.Sealed, b.Sealed)
}

func wantSigningKeys(t *testing.T, s store.Store, want ...store.SigningKey) {
	t.Helper()
	got, err := s.ListSigningKeys(ctx())
	noErr(t, "ListSigningKeys", err)
	if len(got) != len(want) {
		t.Fatalf("ListSigningKeys returned %d keys, want %d", len(got), len(want))
	}
	for i := range want {
		if !sameSigningKey(got[i], want[i]) {
			t.Fatalf("ListSigningKeys[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func testSigningKeys(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("InsertListRetireDelete", func(t *testing.T) {
		s := open(t)
		wantSigningKeys(t, s)
		k1, k2, k3 := signingKey(t, 1), signingKey(t, 2), signingKey(t, 3)
		// Inserted out of order, listed by NotBefore.
		for _, k := range []store.SigningKey{k3, k1, k2} {
			noErr(t, "InsertSigningKey", s.InsertSigningKey(ctx(), k))
		}
		wantSigningKeys(t, s, k1, k2, k3)

		at := time.Unix(1_700_100_000, 0).UTC()
		noErr(t, "RetireSigningKey", s.RetireSigningKey(ctx(), k1.KeyID, at))
		noErr(t, "second RetireSigningKey", s.RetireSigningKey(ctx(), k1.KeyID, at.Add(time.Hour)))
		k1.RetiredAt = at // the first retirement time is kept
		wantSigningKeys(t, s, k1, k2, k3)
		wantErr(t, "RetireSigningKey of an unknown key", s.RetireSigningKey(ctx(), []byte("nope"), at), store.ErrNotFound)

		noErr(t, "DeleteSigningKey", s.DeleteSigningKey(ctx(), k2.KeyID))
		wantSigningKeys(t, s, k1, k3)
		wantErr(t, "second DeleteSigningKey", s.DeleteSigningKey(ctx(), k2.KeyID), store.ErrNotFound)
	})

	t.Run("InsertIdempotent", func(t *testing.T) {
		s := open(t)
		k := signingKey(t, 1)
		noErr(t, "InsertSigningKey", s.InsertSigningKey(ctx(), k))
		at := time.Unix(1_700_100_000, 0).UTC()
		noErr(t, "RetireSigningKey", s.RetireSigningKey(ctx(), k.KeyID, at))
		// The same key again, even with another RetiredAt, is a no-op.
		noErr(t, "InsertSigningKey of the same key", s.InsertSigningKey(ctx(), k))
		k.RetiredAt = at
		wantSigningKeys(t, s, k)
	})

	t.Run("InsertConflicts", func(t *testing.T) {
		s := open(t)
		k := signingKey(t, 1)
		noErr(t, "InsertSigningKey", s.InsertSigningKey(ctx(), k))
		otherPub := k
		otherPub.PublicKey = randBytes(t, 32)
		wantErr(t, "same id, other public key", s.InsertSigningKey(ctx(), otherPub), store.ErrConflict)
		otherTime := k
		otherTime.NotAfter = k.NotAfter.Add(time.Second)
		wantErr(t, "same id, other validity", s.InsertSigningKey(ctx(), otherTime), store.ErrConflict)
		otherFile := k
		otherFile.File = "other.key.pem"
		wantErr(t, "same id, other file", s.InsertSigningKey(ctx(), otherFile), store.ErrConflict)
		sameFile := signingKey(t, 2)
		sameFile.File = k.File
		wantErr(t, "other id, same file", s.InsertSigningKey(ctx(), sameFile), store.ErrConflict)
		wantSigningKeys(t, s, k)
	})

	t.Run("InsertInvalid", func(t *testing.T) {
		s := open(t)
		for _, c := range []struct {
			name string
			edit func(*store.SigningKey)
		}{
			{"empty key id", func(k *store.SigningKey) { k.KeyID = nil }},
			{"long key id", func(k *store.SigningKey) { k.KeyID = make([]byte, store.MaxIDSize+1) }},
			{"empty public key", func(k *store.SigningKey) { k.PublicKey = nil }},
			{"long public key", func(k *store.SigningKey) { k.PublicKey = make([]byte, store.MaxPublicKeySize+1) }},
			{"validity ends before it starts", func(k *store.SigningKey) { k.NotAfter = k.NotBefore.Add(-time.Second) }},
			{"empty file", func(k *store.SigningKey) { k.File = "" }},
			{"dot", func(k *store.SigningKey) { k.File = "." }},
			{"dot dot", func(k *store.SigningKey) { k.File = ".." }},
			{"parent path", func(k *store.SigningKey) { k.File = "../x.key.pem" }},
			{"sub path", func(k *store.SigningKey) { k.File = "a/x.key.pem" }},
			{"absolute path", func(k *store.SigningKey) { k.File = "/etc/passwd" }},
			{"backslash", func(k *store.SigningKey) { k.File = `..\x` }},
			{"NUL", func(k *store.SigningKey) { k.File = "x\x00y" }},
			{"newline", func(k *store.SigningKey) { k.File = "x\ny" }},
			{"long file", func(k *store.SigningKey) { k.File = string(bytes.Repeat([]byte("a"), store.MaxFileNameSize+1)) }},
		} {
			k := signingKey(t, 1)
			c.edit(&k)
			wantErr(t, "InsertSigningKey with "+c.name, s.InsertSigningKey(ctx(), k), store.ErrInvalid)
		}
		wantSigningKeys(t, s)
	})

	t.Run("NotRetained", func(t *testing.T) {
		s := open(t)
		k := signingKey(t, 1)
		want := k
		want.KeyID, want.PublicKey = bytes.Clone(k.KeyID), bytes.Clone(k.PublicKey)
		noErr(t, "InsertSigningKey", s.InsertSigningKey(ctx(), k))
		k.KeyID[0] ^= 0xff
		k.PublicKey[0] ^= 0xff
		wantSigningKeys(t, s, want)
	})
}

func peerKey(t *testing.T, domain string, n int, cacheFor time.Duration) store.PeerKey {
	nb := time.Unix(1_700_000_000+int64(n)*86400, 0).UTC()
	now := time.Now().Truncate(time.Millisecond).UTC()
	return store.PeerKey{
		Domain:     domain,
		KeyID:      randBytes(t, 8),
		Scheme:     0x0403,
		PublicKey:  randBytes(t, 65),
		NotBefore:  nb,
		NotAfter:   nb.Add(60 * 24 * time.Hour),
		FetchedAt:  now,
		CacheUntil: now.Add(cacheFor),
	}
}

func samePeerKey(a, b store.PeerKey) bool {
	return a.Domain == b.Domain && bytes.Equal(a.KeyID, b.KeyID) && a.Scheme == b.Scheme &&
		bytes.Equal(a.PublicKey, b.PublicKey) && a.NotBefore.Equal(b.NotBefore) && a.NotAfter.Equal(b.NotAfter) &&
		a.FetchedAt.Equal(b.FetchedAt) && a.CacheUntil.Equal(b.CacheUntil)
}

func wantPeerKeys(t *testing.T, s store.Store, domain string, want ...store.PeerKey) {
	t.Helper()
	got, err := s.ListPeerKeys(ctx(), domain)
	noErr(t, "ListPeerKeys", err)
	if len(got) != len(want) {
		t.Fatalf("ListPeerKeys(%s) returned %d keys, want %d", domain, len(got), len(want))
	}
	for i := range want {
		if !samePeerKey(got[i], want[i]) {
			t.Fatalf("ListPeerKeys(%s)[%d] = %+v, want %+v", domain, i, got[i], want[i])
		}
		k, err := s.LookupPeerKey(ctx(), domain, want[i].KeyID)
		noErr(t, "LookupPeerKey", err)
		if !samePeerKey(k, want[i]) {
			t.Fatalf("LookupPeerKey(%s, %x) = %+v, want %+v", domain, want[i].KeyID, k, want[i])
		}
	}
}

func testPeerKeys(t *testing.T, open func(t *testing.T) store.Store) {
	const a, b = "a.example", "b.example"

	t.Run("ReplaceAndLookup", func(t *testing.T) {
		s := open(t)
		wantPeerKeys(t, s, a)
		_, err := s.LookupPeerKey(ctx(), a, []byte("nope"))
		wantErr(t, "LookupPeerKey in an empty cache", err, store.ErrNotFound)

		a1, a2 := peerKey(t, a, 1, future), peerKey(t, a, 2, future)
		a2.Domain = "" // filled in from the domain argument
		noErr(t, "ReplacePeerKeys", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{a2, a1}))
		a2.Domain = a
		b1 := peerKey(t, b, 1, future)
		noErr(t, "ReplacePeerKeys", s.ReplacePeerKeys(ctx(), b, []store.PeerKey{b1}))
		wantPeerKeys(t, s, a, a1, a2)
		wantPeerKeys(t, s, b, b1)
		_, err = s.LookupPeerKey(ctx(), b, a1.KeyID)
		wantErr(t, "LookupPeerKey of another domain's key", err, store.ErrNotFound)

		// A new fetch replaces the whole set of that domain only.
		a3 := peerKey(t, a, 3, future)
		a3.KeyID = bytes.Clone(a2.KeyID) // a key id may come back with new content
		noErr(t, "ReplacePeerKeys", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{a3}))
		wantPeerKeys(t, s, a, a3)
		_, err = s.LookupPeerKey(ctx(), a, a1.KeyID)
		wantErr(t, "LookupPeerKey of a replaced key", err, store.ErrNotFound)
		wantPeerKeys(t, s, b, b1)

		noErr(t, "ReplacePeerKeys with no keys", s.ReplacePeerKeys(ctx(), a, nil))
		wantPeerKeys(t, s, a)
		wantPeerKeys(t, s, b, b1)
	})

	t.Run("Expiry", func(t *testing.T) {
		s := open(t)
		alive, expired := peerKey(t, a, 1, future), peerKey(t, a, 2, past)
		noErr(t, "ReplacePeerKeys", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{alive, expired}))
		wantPeerKeys(t, s, a, alive)
		_, err := s.LookupPeerKey(ctx(), a, expired.KeyID)
		wantErr(t, "LookupPeerKey of an expired key", err, store.ErrNotFound)
	})

	t.Run("Invalid", func(t *testing.T) {
		s := open(t)
		k := peerKey(t, a, 1, future)
		wantErr(t, "empty domain", s.ReplacePeerKeys(ctx(), "", nil), store.ErrInvalid)
		wantErr(t, "key of another domain", s.ReplacePeerKeys(ctx(), b, []store.PeerKey{k}), store.ErrInvalid)
		wantErr(t, "duplicate key ids", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{k, k}), store.ErrInvalid)
		bad := k
		bad.PublicKey = nil
		wantErr(t, "empty public key", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{bad}), store.ErrInvalid)
		bad = k
		bad.KeyID = nil
		wantErr(t, "empty key id", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{bad}), store.ErrInvalid)
		bad = k
		bad.NotAfter = bad.NotBefore.Add(-time.Second)
		wantErr(t, "inverted validity", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{bad}), store.ErrInvalid)
		_, err := s.LookupPeerKey(ctx(), a, nil)
		wantErr(t, "LookupPeerKey with an empty key id", err, store.ErrInvalid)
		_, err = s.LookupPeerKey(ctx(), "", k.KeyID)
		wantErr(t, "LookupPeerKey with an empty domain", err, store.ErrInvalid)
		// A refused set leaves the cache as it was.
		noErr(t, "ReplacePeerKeys", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{k}))
		wantErr(t, "duplicate key ids", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{peerKey(t, a, 2, future), k, k}), store.ErrInvalid)
		wantPeerKeys(t, s, a, k)
	})

	t.Run("Failures", func(t *testing.T) {
		s := open(t)
		_, err := s.LookupPeerFailure(ctx(), a)
		wantErr(t, "LookupPeerFailure with none recorded", err, store.ErrNotFound)

		now := time.Now().Truncate(time.Millisecond).UTC()
		f := store.PeerFailure{Domain: a, FailedAt: now, RetryAt: now.Add(future), Reason: "dial tcp: connection refused"}
		noErr(t, "RecordPeerFailure", s.RecordPeerFailure(ctx(), f))
		got, err := s.LookupPeerFailure(ctx(), a)
		noErr(t, "LookupPeerFailure", err)
		if got.Domain != f.Domain || !got.FailedAt.Equal(f.FailedAt) || !got.RetryAt.Equal(f.RetryAt) || got.Reason != f.Reason {
			t.Fatalf("LookupPeerFailure = %+v, want %+v", got, f)
		}
		_, err = s.LookupPeerFailure(ctx(), b)
		wantErr(t, "LookupPeerFailure of another domain", err, store.ErrNotFound)

		// A later failure replaces the earlier one.
		f2 := f
		f2.Reason = "timeout"
		f2.RetryAt = now.Add(2 * future)
		noErr(t, "RecordPeerFailure", s.RecordPeerFailure(ctx(), f2))
		got, err = s.LookupPeerFailure(ctx(), a)
		noErr(t, "LookupPeerFailure", err)
		if got.Reason != "timeout" || !got.RetryAt.Equal(f2.RetryAt) {
			t.Fatalf("LookupPeerFailure = %+v, want %+v", got, f2)
		}

		// A failure keeps the cached keys; a successful fetch clears it.
		k := peerKey(t, a, 1, future)
		noErr(t, "ReplacePeerKeys", s.ReplacePeerKeys(ctx(), a, []store.PeerKey{k}))
		_, err = s.LookupPeerFailure(ctx(), a)
		wantErr(t, "LookupPeerFailure after a successful fetch", err, store.ErrNotFound)
		noErr(t, "RecordPeerFailure", s.RecordPeerFailure(ctx(), f))
		wantPeerKeys(t, s, a, k)

		// A failure past its retry time is gone.
		expired := store.PeerFailure{Domain: b, FailedAt: now.Add(2 * past), RetryAt: now.Add(past), Reason: "x"}
		noErr(t, "RecordPeerFailure", s.RecordPeerFailure(ctx(), expired))
		_, err = s.LookupPeerFailure(ctx(), b)
		wantErr(t, "LookupPeerFailure of an expired failure", err, store.ErrNotFound)

		wantErr(t, "RecordPeerFailure without a domain", s.RecordPeerFailure(ctx(), store.PeerFailure{RetryAt: now}), store.ErrInvalid)
		long := f
		long.Reason = string(make([]byte, store.MaxReasonSize+1))
		wantErr(t, "RecordPeerFailure with a long reason", s.RecordPeerFailure(ctx(), long), store.ErrInvalid)
	})
}

func testDeleteExpired(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	now := time.Now()
	// Three records of each expiring kind, two of them expired by `sweep`.
	sweep := now.Add(2 * future)
	exps := []time.Time{now.Add(future), now.Add(future + time.Minute), now.Add(3 * future)}
	var spent, sigs [][]byte
	var ids [][]byte
	d := digestOf([]byte("request"))
	for i, exp := range exps {
		spent = append(spent, randBytes(t, 32))
		if _, err := s.MarkSpent(ctx(), spent[i], exp); err != nil {
			t.Fatalf("MarkSpent: %v", err)
		}
		sigs = append(sigs, randBytes(t, 32))
		if _, err := s.SeenSignature(ctx(), [32]byte(sigs[i]), exp); err != nil {
			t.Fatalf("SeenSignature: %v", err)
		}
		ids = append(ids, randBytes(t, 16))
		reserve(t, s, "a.example", ids[i], d, exp)
		noErr(t, "Complete", s.Complete(ctx(), "a.example", ids[i], d, store.Answer{Body: []byte("ok")}))
		domain := fmt.Sprintf("p%d.example", i)
		k := peerKey(t, domain, i, exp.Sub(now))
		k.CacheUntil = exp
		noErr(t, "ReplacePeerKeys", s.ReplacePeerKeys(ctx(), domain, []store.PeerKey{k}))
		noErr(t, "RecordPeerFailure", s.RecordPeerFailure(ctx(), store.PeerFailure{Domain: domain, FailedAt: now, RetryAt: exp, Reason: "x"}))
	}
	key := signingKey(t, 1)
	key.NotAfter = now.Add(-24 * time.Hour).Truncate(time.Second).UTC() // expired: not swept all the same
	key.NotBefore = key.NotAfter.Add(-48 * time.Hour)
	noErr(t, "InsertSigningKey", s.InsertSigningKey(ctx(), key))

	n, err := s.DeleteExpired(ctx(), now)
	noErr(t, "DeleteExpired", err)
	if n != 0 {
		t.Fatalf("DeleteExpired(now) removed %d records, want 0", n)
	}
	n, err = s.DeleteExpired(ctx(), sweep)
	noErr(t, "DeleteExpired", err)
	if n != 2*5 {
		t.Fatalf("DeleteExpired removed %d records, want %d", n, 2*5)
	}
	n, err = s.DeleteExpired(ctx(), sweep)
	noErr(t, "second DeleteExpired", err)
	if n != 0 {
		t.Fatalf("second DeleteExpired removed %d records, want 0", n)
	}
	// The records were removed, not just hidden: those that are still
	// alive by the wall clock now read as absent. The third survives.
	for i := range exps {
		swept := i < 2
		first, err := s.MarkSpent(ctx(), spent[i], now.Add(future))
		noErr(t, "MarkSpent", err)
		if first != swept {
			t.Errorf("spent token %d: first use %t after the sweep, want %t", i, first, swept)
		}
		first, err = s.SeenSignature(ctx(), [32]byte(sigs[i]), now.Add(future))
		noErr(t, "SeenSignature", err)
		if first != swept {
			t.Errorf("signature %d: first use %t after the sweep, want %t", i, first, swept)
		}
		r := reserve(t, s, "a.example", ids[i], d, now.Add(future))
		if want := map[bool]store.ReplayStatus{true: store.ReplayNew, false: store.ReplayDuplicate}[swept]; r.Status != want {
			t.Errorf("replay entry %d: %s after the sweep, want %s", i, r.Status, want)
		}
		domain := fmt.Sprintf("p%d.example", i)
		keys, err := s.ListPeerKeys(ctx(), domain)
		noErr(t, "ListPeerKeys", err)
		if (len(keys) == 0) != swept {
			t.Errorf("peer %d: %d keys after the sweep, swept %t", i, len(keys), swept)
		}
		_, err = s.LookupPeerFailure(ctx(), domain)
		if errors.Is(err, store.ErrNotFound) != swept {
			t.Errorf("peer %d: failure lookup after the sweep: %v, swept %t", i, err, swept)
		}
	}
	wantSigningKeys(t, s, key)
}

func testClose(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	noErr(t, "Close", s.Close())
	noErr(t, "second Close", s.Close())
	d := digestOf(nil)
	exp := time.Now().Add(future)
	_, err := s.Reserve(ctx(), "a.example", []byte{1}, d, exp)
	wantErr(t, "Reserve after Close", err, store.ErrClosed)
	wantErr(t, "Complete after Close", s.Complete(ctx(), "a.example", []byte{1}, d, store.Answer{}), store.ErrClosed)
	wantErr(t, "Release after Close", s.Release(ctx(), "a.example", []byte{1}, d), store.ErrClosed)
	_, err = s.SeenSignature(ctx(), d, exp)
	wantErr(t, "SeenSignature after Close", err, store.ErrClosed)
	_, err = s.MarkSpent(ctx(), []byte{1}, exp)
	wantErr(t, "MarkSpent after Close", err, store.ErrClosed)
	wantErr(t, "InsertSigningKey after Close", s.InsertSigningKey(ctx(), signingKey(t, 1)), store.ErrClosed)
	_, err = s.ListSigningKeys(ctx())
	wantErr(t, "ListSigningKeys after Close", err, store.ErrClosed)
	wantErr(t, "RetireSigningKey after Close", s.RetireSigningKey(ctx(), []byte{1}, exp), store.ErrClosed)
	wantErr(t, "DeleteSigningKey after Close", s.DeleteSigningKey(ctx(), []byte{1}), store.ErrClosed)
	wantErr(t, "ReplacePeerKeys after Close", s.ReplacePeerKeys(ctx(), "a.example", nil), store.ErrClosed)
	_, err = s.LookupPeerKey(ctx(), "a.example", []byte{1})
	wantErr(t, "LookupPeerKey after Close", err, store.ErrClosed)
	_, err = s.ListPeerKeys(ctx(), "a.example")
	wantErr(t, "ListPeerKeys after Close", err, store.ErrClosed)
	wantErr(t, "RecordPeerFailure after Close", s.RecordPeerFailure(ctx(), store.PeerFailure{Domain: "a.example"}), store.ErrClosed)
	_, err = s.LookupPeerFailure(ctx(), "a.example")
	wantErr(t, "LookupPeerFailure after Close", err, store.ErrClosed)
	_, err = s.DeleteExpired(ctx(), exp)
	wantErr(t, "DeleteExpired after Close", err, store.ErrClosed)
}

func testReopen(t *testing.T, open func() (store.Store, error)) {
	s, err := open()
	noErr(t, "opening store", err)
	exp := time.Now().Add(future)
	const sender = "a.example"
	done, pending := randBytes(t, 16), randBytes(t, 16)
	d := digestOf([]byte("request"))
	reserve(t, s, sender, done, d, exp)
	noErr(t, "Complete", s.Complete(ctx(), sender, done, d, store.Answer{Body: []byte("answer")}))
	reserve(t, s, sender, pending, d, exp)
	logged := randBytes(t, 16)
	if _, err := s.RecordReplay(ctx(), sender, logged, d, store.Answer{Body: []byte("logged")}, exp); err != nil {
		t.Fatalf("RecordReplay: %v", err)
	}
	spent, sig := randBytes(t, 32), randBytes(t, 32)
	if _, err := s.MarkSpent(ctx(), spent, exp); err != nil {
		t.Fatalf("MarkSpent: %v", err)
	}
	if _, err := s.SeenSignature(ctx(), [32]byte(sig), exp); err != nil {
		t.Fatalf("SeenSignature: %v", err)
	}
	key := signingKey(t, 1)
	noErr(t, "InsertSigningKey", s.InsertSigningKey(ctx(), key))
	pk := peerKey(t, "b.example", 1, future)
	noErr(t, "ReplacePeerKeys", s.ReplacePeerKeys(ctx(), "b.example", []store.PeerKey{pk}))
	now := time.Now().Truncate(time.Millisecond).UTC()
	fail := store.PeerFailure{Domain: "c.example", FailedAt: now, RetryAt: now.Add(future), Reason: "refused"}
	noErr(t, "RecordPeerFailure", s.RecordPeerFailure(ctx(), fail))
	noErr(t, "Close", s.Close())

	for round := 0; round < 2; round++ {
		s, err := open()
		noErr(t, "reopening store", err)
		r := reserve(t, s, sender, done, d, exp)
		if r.Status != store.ReplayDuplicate || string(r.Answer.Body) != "answer" {
			t.Fatalf("round %d: completed entry reads back as %s %q", round, r.Status, r.Answer.Body)
		}
		// A request pending when the store closed stays in progress: it
		// may have had effects, so it must not run again.
		wantStatus(t, "pending entry after reopen", reserve(t, s, sender, pending, d, exp), store.ReplayInProgress)
		if e, err := s.FindReplay(ctx(), sender, logged); err != nil || string(e.Answer.Body) != "logged" {
			t.Fatalf("round %d: recorded answer after reopen: %+v, %v", round, e, err)
		}
		if first, err := s.MarkSpent(ctx(), spent, exp); err != nil || first {
			t.Fatalf("round %d: spent token after reopen: first use %t, error %v", round, first, err)
		}
		if first, err := s.SeenSignature(ctx(), [32]byte(sig), exp); err != nil || first {
			t.Fatalf("round %d: seen signature after reopen: first use %t, error %v", round, first, err)
		}
		wantSigningKeys(t, s, key)
		wantPeerKeys(t, s, "b.example", pk)
		got, err := s.LookupPeerFailure(ctx(), "c.example")
		noErr(t, "LookupPeerFailure", err)
		if got.Reason != fail.Reason || !got.RetryAt.Equal(fail.RetryAt) {
			t.Fatalf("round %d: failure after reopen = %+v, want %+v", round, got, fail)
		}
		noErr(t, "Close", s.Close())
	}
}

// raceWorkers runs workers goroutines at once, each calling call(w, i) for
// every key index i in turn, and fails the test with the first error once
// all have stopped. A worker stops at its first error.
func raceWorkers(t *testing.T, workers, keys int, call func(w, i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < keys; i++ {
				if err := call(w, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
