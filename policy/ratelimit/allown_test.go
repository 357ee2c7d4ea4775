package ratelimit

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAllowN requires AllowN to spend n tokens all or none, with the
// Retry-After of the n tokens it needs, and a refusal to spend nothing.
func TestAllowN(t *testing.T) {
	z := mustZone(t, Config{Rate: 2, Burst: 10})
	long := strings.Repeat("k", MaxKeyLen+1)
	for _, tc := range []struct {
		name  string
		key   string
		n     int
		at    time.Duration
		ok    bool
		retry time.Duration
	}{
		{"part of the burst", "a", 7, 0, true, 0},
		{"more than is left", "a", 4, 0, false, time.Second},   // 3 left, 1 missing at 2/s
		{"a refusal spent nothing", "a", 3, 0, true, 0},        // the 3 still there
		{"empty", "a", 5, 0, false, 3 * time.Second},           // 5 missing at 2/s: 2.5 s, rounded up
		{"refilled", "a", 5, 2500 * time.Millisecond, true, 0}, // 5 tokens after 2.5 s
		{"more than the burst never fits", "b", 11, 0, false, 1 << 31 * time.Second},
		{"another key is untouched", "b", 10, 0, true, 0},
		{"a long key", long, 10, 0, true, 0},
		{"a long key's bucket is kept", long, 1, 0, false, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, retry := z.AllowN(tc.key, tc.n, t0.Add(tc.at))
			if ok != tc.ok || retry != tc.retry {
				t.Fatalf("AllowN(%d) = %v, %v; want %v, %v", tc.n, ok, retry, tc.ok, tc.retry)
			}
		})
	}
}

// TestReturnN requires ReturnN to give back the tokens an AllowN took,
// capped at the burst, on the bucket AllowN spent (long keys hashed
// alike), and to give nothing back for n below 1.
func TestReturnN(t *testing.T) {
	long := strings.Repeat("k", MaxKeyLen+1)
	for _, tc := range []struct {
		name     string
		key      string
		spent    int // tokens AllowN took first
		returned int
		left     int // tokens left after the return
	}{
		{"all that was taken", "a", 7, 7, 10},
		{"part of it", "a", 7, 3, 6},
		{"more than is missing is a full bucket", "a", 2, 5, 10},
		{"a bucket never spent", "a", 0, 4, 10},
		{"nothing", "a", 7, 0, 3},
		{"a negative count", "a", 7, -2, 3},
		{"a long key", long, 10, 10, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := mustZone(t, Config{Rate: 1e-3, Burst: 10})
			if tc.spent > 0 {
				if ok, _ := z.AllowN(tc.key, tc.spent, t0); !ok {
					t.Fatal("spending the key: refused")
				}
			}
			z.ReturnN(tc.key, tc.returned, t0)
			if got := tokensLeft(z, tc.key, t0); got != tc.left {
				t.Fatalf("%d tokens left, want %d", got, tc.left)
			}
		})
	}
}

// TestReturnNConcurrent runs AllowN calls whose tokens are returned
// beside AllowN calls that keep theirs, on one key: every returned token
// is spendable again, so the kept events are exactly the burst, whatever
// the interleaving.
func TestReturnNConcurrent(t *testing.T) {
	const burst, workers, rounds = 300, 4, 200
	z := mustZone(t, Config{Rate: 1e-3, Burst: burst})
	kept := make([]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range rounds {
				if ok, _ := z.AllowN("key", 2, t0); ok {
					z.ReturnN("key", 2, t0)
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range rounds {
				if ok, _ := z.AllowN("key", 1, t0); ok {
					kept[w]++
				}
			}
		}()
	}
	wg.Wait()
	requireAccounted(t, z, "key", t0, kept, burst)
}
