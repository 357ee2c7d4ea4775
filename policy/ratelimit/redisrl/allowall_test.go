package redisrl

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/redistest"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// tokensLeft spends key's bucket at now until it refuses, and returns how
// many events it admitted.
func tokensLeft(z *ratelimit.Zone, key string, now time.Time) int {
	n := 0
	for ; n < 1000; n++ {
		if ok, _ := z.Allow(key, now); !ok {
			break
		}
	}
	return n
}

// TestRedisAllowAll checks that AllowAll in Redis spends one token of
// every key or none, with the decisions and Retry-After of a local zone:
// a refused call leaves every key's budget as it was.
func TestRedisAllowAll(t *testing.T) {
	srv := redistest.New(t)
	long := strings.Repeat("u", ratelimit.MaxKeyLen+1)
	for i, tc := range []struct {
		name   string
		spent  map[string]int // events spent per key before the call
		keys   []string
		ok     bool
		remain map[string]int // tokens left per key after the call
	}{
		{"every key has a token", nil, []string{"a", "b"}, true, map[string]int{"a": 2, "b": 2}},
		{"the last key is empty", map[string]int{"b": 3}, []string{"a", "b"}, false, map[string]int{"a": 3, "b": 0}},
		{"the first key is empty", map[string]int{"b": 3}, []string{"b", "a", "c"}, false, map[string]int{"a": 3, "b": 0, "c": 3}},
		{"the longest wait of the empty keys", map[string]int{"a": 3, "b": 1, "c": 3}, []string{"a", "b", "c"}, false,
			map[string]int{"a": 0, "b": 2, "c": 0}},
		{"a key named twice counts once", map[string]int{"a": 2}, []string{"a", "a", "b"}, true, map[string]int{"a": 0, "b": 2}},
		{"a long key is hashed as Allow does", map[string]int{long: 3}, []string{"a", long}, false, map[string]int{"a": 3, long: 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ratelimit.Config{Rate: 0.1, Burst: 3}
			local := mustZone(t, cfg)
			remote := redisZone(t, fmt.Sprint("all", i), srv.Addr(), cfg)
			for k, n := range tc.spent {
				at := t0
				if k == "a" {
					at = t0.Add(-5 * time.Second) // a waits 5 s less
				}
				for range n {
					local.Allow(k, at)
					remote.Allow(k, at)
				}
			}
			lok, lra := local.AllowAll(tc.keys, t0)
			rok, rra := remote.AllowAll(tc.keys, t0)
			if rok != tc.ok || lok != rok || lra != rra {
				t.Fatalf("AllowAll(%.20q): Redis %v/%v, local %v/%v; want ok %v and the same answers", tc.keys, rok, rra, lok, lra, tc.ok)
			}
			for k, want := range tc.remain {
				if got := tokensLeft(remote, k, t0); got != want {
					t.Errorf("key %.10q: %d tokens left in Redis, want %d", k, got, want)
				}
			}
			if st := remote.Stats(); !st.RedisHealthy || st.RedisFallbacks != 0 {
				t.Fatalf("stats %+v: want every decision made in Redis", st)
			}
		})
	}
}

// TestRedisAllowAllConcurrent runs refused AllowAll calls, which would
// take a token of an own key but meet an empty one, from two gateways
// beside Allow calls on the same own keys: the refused calls take
// nothing, so each own key admits exactly its burst in all.
func TestRedisAllowAllConcurrent(t *testing.T) {
	srv := redistest.New(t)
	const burst, workers, rounds = 100, 4, 50
	cfg := ratelimit.Config{Rate: 1e-3, Burst: burst}
	zones := []*ratelimit.Zone{redisZone(t, "concurrent", srv.Addr(), cfg), redisZone(t, "concurrent", srv.Addr(), cfg)}
	for range burst {
		zones[0].Allow("empty", t0)
	}
	admitted := make([]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		z, own := zones[w%2], fmt.Sprint("own", w/2)
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
	for k := range 2 {
		own := fmt.Sprint("own", k)
		spent := admitted[2*k] + admitted[2*k+1]
		if left := tokensLeft(zones[0], own, t0); spent+left != burst {
			t.Errorf("key %s: %d events admitted by Allow and %d left, want %d in all", own, spent, left, burst)
		}
	}
	for _, z := range zones {
		if st := z.Stats(); st.RedisFallbacks != 0 {
			t.Fatalf("stats %+v: want every decision made in Redis", st)
		}
	}
}
