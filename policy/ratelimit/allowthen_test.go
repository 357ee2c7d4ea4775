package ratelimit

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAllowBytesThen checks that AllowBytesThen spends key's token only
// when its bucket has one and next allows: next's refusal gives the token
// back and is answered as is, and an empty bucket is refused with Allow's
// Retry-After without asking next.
func TestAllowBytesThen(t *testing.T) {
	long := strings.Repeat("k", MaxKeyLen+1)
	for _, tc := range []struct {
		name   string
		key    string
		spent  int // events of key spent before the call
		nextOK bool
		ok     bool
		retry  time.Duration
		asked  bool // next was called
		tokens int  // tokens of key left after the call
	}{
		{"a token, next allows", "a", 0, true, true, 0, true, 2},
		{"a token, next refuses", "a", 0, false, false, 7 * time.Second, true, 3},
		{"the last token, next refuses", "a", 2, false, false, 7 * time.Second, true, 1},
		{"no token", "a", 3, true, false, 10 * time.Second, false, 0},
		{"a long key is hashed as Allow does", long, 2, false, false, 7 * time.Second, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := mustZone(t, Config{Rate: 0.1, Burst: 3})
			for range tc.spent {
				if ok, _ := z.Allow(tc.key, t0); !ok {
					t.Fatal("spending the key: refused")
				}
			}
			asked := false
			ok, retry := z.AllowBytesThen([]byte(tc.key), t0, func() (bool, time.Duration) {
				asked = true
				if tc.nextOK {
					return true, 0
				}
				return false, 7 * time.Second
			})
			if ok != tc.ok || retry != tc.retry || asked != tc.asked {
				t.Fatalf("AllowBytesThen = %v, %v, next asked %v; want %v, %v, %v", ok, retry, asked, tc.ok, tc.retry, tc.asked)
			}
			if got := tokensLeft(z, tc.key, t0); got != tc.tokens {
				t.Fatalf("%d tokens left, want %d", got, tc.tokens)
			}
		})
	}
}

// TestAllowBytesThenConcurrent runs AllowBytesThen calls that next
// refuses beside Allow calls on the same key: every token the refused
// calls took is given back, so the key admits exactly its burst in all.
func TestAllowBytesThenConcurrent(t *testing.T) {
	const burst, workers, rounds = 200, 4, 100
	z := mustZone(t, Config{Rate: 1e-3, Burst: burst})
	refuse := func() (bool, time.Duration) { return false, time.Second }
	admitted := make([]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range rounds {
				if ok, _ := z.AllowBytesThen([]byte("key"), t0, refuse); ok {
					t.Error("AllowBytesThen admitted an event next refused")
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range rounds / 2 {
				if ok, _ := z.Allow("key", t0); ok {
					admitted[w]++
				}
			}
		}()
	}
	wg.Wait()
	requireAccounted(t, z, "key", t0, admitted, burst)
}
