package ratelimit

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// tokensLeft spends key's bucket at now until it refuses, and returns how
// many events it admitted.
func tokensLeft(z *Zone, key string, now time.Time) int {
	n := 0
	for ; n < 1000; n++ {
		if ok, _ := z.Allow(key, now); !ok {
			break
		}
	}
	return n
}

// requireAccounted fails t unless the events kept by each worker and the
// tokens left on key add up to burst: no token was lost or made.
func requireAccounted(t *testing.T, z *Zone, key string, now time.Time, kept []int, burst int) {
	t.Helper()
	spent := 0
	for _, n := range kept {
		spent += n
	}
	if left := tokensLeft(z, key, now); spent+left != burst {
		t.Fatalf("%d events kept and %d tokens left, want %d in all", spent, left, burst)
	}
}

// TestAllowAll checks that AllowAll spends one token of every key or none:
// a refused call leaves each key's budget as it was, and says how long
// until every key has a token.
func TestAllowAll(t *testing.T) {
	long := strings.Repeat("u", MaxKeyLen+1)
	for _, tc := range []struct {
		name   string
		spent  map[string]int // events spent per key before the call
		keys   []string
		ok     bool
		retry  time.Duration
		remain map[string]int // tokens left per key after the call
	}{
		{"every key has a token", nil, []string{"a", "b"}, true, 0, map[string]int{"a": 2, "b": 2}},
		{"the last key is empty", map[string]int{"b": 3}, []string{"a", "b"}, false, 10 * time.Second,
			map[string]int{"a": 3, "b": 0}},
		{"the first key is empty", map[string]int{"b": 3}, []string{"b", "a", "c"}, false, 10 * time.Second,
			map[string]int{"a": 3, "b": 0, "c": 3}},
		{"the longest wait of the empty keys", map[string]int{"a": 3, "c": 3, "b": 1}, []string{"a", "b", "c"}, false, 10 * time.Second,
			map[string]int{"a": 0, "b": 2, "c": 0}},
		{"a key named twice counts once", map[string]int{"a": 2}, []string{"a", "a", "b"}, true, 0,
			map[string]int{"a": 0, "b": 2}},
		{"a long key is hashed as Allow does", map[string]int{long: 3}, []string{"a", long}, false, 10 * time.Second,
			map[string]int{"a": 3, long: 0}},
		{"no key", nil, nil, true, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := mustZone(t, Config{Rate: 0.1, Burst: 3})
			for k, n := range tc.spent {
				at := t0
				if k == "a" {
					at = t0.Add(-5 * time.Second) // a waits 5 s less
				}
				for range n {
					if ok, _ := z.Allow(k, at); !ok {
						t.Fatalf("spending %q: refused", k)
					}
				}
			}
			ok, retry := z.AllowAll(tc.keys, t0)
			if ok != tc.ok || retry != tc.retry {
				t.Fatalf("AllowAll(%q) = %v, %v; want %v, %v", tc.keys, ok, retry, tc.ok, tc.retry)
			}
			for k, want := range tc.remain {
				if got := tokensLeft(z, k, t0); got != want {
					t.Errorf("key %.10q: %d tokens left, want %d", k, got, want)
				}
			}
		})
	}
}

// TestAllowAllRetryMatchesAllow checks that the Retry-After of a refused
// AllowAll is the one Allow gives for the emptiest of its keys.
func TestAllowAllRetryMatchesAllow(t *testing.T) {
	z := mustZone(t, Config{Rate: 0.4, Burst: 1})
	z.Allow("a", t0)
	z.Allow("b", t0.Add(-time.Second))
	at := t0.Add(500 * time.Millisecond)
	_, want := z.Allow("a", at) // 2 s missing: rounds up to 2 s
	ok, got := z.AllowAll([]string{"b", "a"}, at)
	if ok || got != want {
		t.Fatalf("AllowAll = %v, %v; want refused with Allow's %v", ok, got, want)
	}
}

// TestAllowAllConcurrent runs refused AllowAll calls, which take a token
// of an own key and meet an empty one, beside Allow calls on the same own
// keys: every token the refused calls took is given back, so each own key
// admits exactly its burst in all, and the empty key refills on time.
func TestAllowAllConcurrent(t *testing.T) {
	const burst, workers, rounds = 200, 4, 100
	z := mustZone(t, Config{Rate: 1e-3, Burst: burst})
	for range burst {
		z.Allow("empty", t0)
	}
	admitted := make([]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		own := fmt.Sprint("own", w%2) // two workers per own key
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range rounds {
				keys := []string{own, "empty"}
				if i%2 == 1 {
					keys = []string{"empty", own}
				}
				if ok, _ := z.AllowAll(keys, t0); ok {
					t.Error("AllowAll admitted an event of the empty key")
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range rounds / 2 {
				if ok, _ := z.Allow(own, t0); ok {
					admitted[w]++
				}
			}
		}()
	}
	wg.Wait()
	// The refused calls gave back their waiting reservations of the empty
	// key too: it has one token after one refill interval.
	if left := tokensLeft(z, "empty", t0.Add(1000*time.Second)); left != 1 {
		t.Errorf("the empty key has %d tokens after one refill interval, want 1", left)
	}
	for k := range 2 {
		own := fmt.Sprint("own", k)
		spent := admitted[k] + admitted[k+2]
		if left := tokensLeft(z, own, t0); spent+left != burst {
			t.Errorf("key %s: %d events admitted by Allow and %d left, want %d in all", own, spent, left, burst)
		}
	}
}
