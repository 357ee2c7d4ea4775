// Package spenttest checks that a privacypass.SpentStore keeps the contract
// documented on that interface. Store implementations (SQLite, PostgreSQL,
// in-memory) call RunSpentStoreTests from their own tests.
package spenttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, privacypass.SpentKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatalf("generating key: %v", err)
	}
	return k
}

func mark(t *testing.T, s privacypass.SpentStore, key []byte, expires time.Time) bool {
	t.Helper()
	first, err := s.MarkSpent(context.Background(), key, expires)
	if err != nil {
		t.Fatalf("MarkSpent: %v", err)
	}
	return first
}

// RunSpentStoreTests runs the SpentStore contract tests as subtests of t.
// newStore must return a fresh, empty store for each subtest, and arrange
// its cleanup with t.Cleanup.
func RunSpentStoreTests(t *testing.T, newStore func(t *testing.T) privacypass.SpentStore) {
	t.Run("FirstUseThenReplay", func(t *testing.T) {
		s := newStore(t)
		k := newKey(t)
		exp := time.Now().Add(time.Hour)
		if !mark(t, s, k, exp) {
			t.Fatal("first MarkSpent of a new key reported a replay")
		}
		for i := 0; i < 3; i++ {
			if mark(t, s, k, exp) {
				t.Fatalf("MarkSpent #%d of a spent key reported first use", i+2)
			}
		}
	})

	t.Run("ReplayWithOtherExpiry", func(t *testing.T) {
		s := newStore(t)
		k := newKey(t)
		if !mark(t, s, k, time.Now().Add(time.Hour)) {
			t.Fatal("first MarkSpent reported a replay")
		}
		// A replay must be refused whatever expiry the caller passes.
		if mark(t, s, k, time.Now().Add(2*time.Hour)) {
			t.Fatal("replay with a later expiry reported first use")
		}
		if mark(t, s, k, time.Now().Add(time.Minute)) {
			t.Fatal("replay with an earlier expiry reported first use")
		}
	})

	t.Run("DistinctKeys", func(t *testing.T) {
		s := newStore(t)
		exp := time.Now().Add(time.Hour)
		keys := make([][]byte, 200)
		for i := range keys {
			keys[i] = newKey(t)
			if !mark(t, s, keys[i], exp) {
				t.Fatalf("key %d: first use reported as replay", i)
			}
		}
		// Keys that differ in one bit only are distinct.
		near := bytes.Clone(keys[0])
		near[len(near)-1] ^= 1
		if !mark(t, s, near, exp) {
			t.Fatal("key differing in the last bit reported as replay")
		}
		for i := range keys {
			if mark(t, s, keys[i], exp) {
				t.Fatalf("key %d: replay reported as first use", i)
			}
		}
	})

	t.Run("KeyNotRetained", func(t *testing.T) {
		s := newStore(t)
		k := newKey(t)
		orig := bytes.Clone(k)
		exp := time.Now().Add(time.Hour)
		if !mark(t, s, k, exp) {
			t.Fatal("first use reported as replay")
		}
		// The caller may reuse its buffer: the store must have copied it.
		for i := range k {
			k[i] ^= 0xff
		}
		if mark(t, s, orig, exp) {
			t.Fatal("store lost the key after the caller changed its buffer")
		}
		if !mark(t, s, k, exp) {
			t.Fatal("store still sees the caller's changed buffer as spent")
		}
	})

	t.Run("ConcurrentSameKey", func(t *testing.T) {
		s := newStore(t)
		const keys, workers = 20, 8
		ks := make([][]byte, keys)
		for i := range ks {
			ks[i] = newKey(t)
		}
		exp := time.Now().Add(time.Hour)
		var firsts [keys]atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, keys*workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range ks {
					first, err := s.MarkSpent(context.Background(), bytes.Clone(ks[i]), exp)
					if err != nil {
						errs <- err
						return
					}
					if first {
						firsts[i].Add(1)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("MarkSpent: %v", err)
		}
		for i := range firsts {
			if n := firsts[i].Load(); n != 1 {
				t.Errorf("key %d: %d concurrent callers got first use, want exactly 1", i, n)
			}
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		s := newStore(t)
		k := newKey(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		first, err := s.MarkSpent(ctx, k, time.Now().Add(time.Hour))
		// Either the store refuses (error) or it answers correctly; it must
		// never report first use and then forget the key.
		if err == nil && first {
			if mark(t, s, k, time.Now().Add(time.Hour)) {
				t.Fatal("key reported first use under a canceled context and again after")
			}
		}
	})
}
