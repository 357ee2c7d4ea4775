package redisrl

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-mimi/caddy-mimi/internal/redistest"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// The zones of these tests make their clients with NewCallerClock, so that
// their fake now drives the script (TestRedisClock checks New's clock).
func init() { ratelimit.RegisterRedis(NewCallerClock) }

// t0 is the tests' fake now, as in package ratelimit's tests.
var t0 = time.Unix(1_800_000_000, 0)

// mustZone is a local zone of cfg.
func mustZone(t testing.TB, cfg ratelimit.Config) *ratelimit.Zone {
	t.Helper()
	z, err := ratelimit.NewZone("test", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = z.Destruct() })
	return z
}

// redisZone is a zone named name in Redis at addr. The timeout is generous:
// two busy cores under -race must not make these tests fall back (a call
// cut short falls back to a local bucket, which the counts do not expect).
func redisZone(t testing.TB, name, addr string, cfg ratelimit.Config) *ratelimit.Zone {
	t.Helper()
	z, err := ratelimit.NewZone(name, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := z.SetRedis(&ratelimit.RedisConfig{Addr: addr, Timeout: 10 * time.Second, Retry: 20 * time.Millisecond}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = z.Destruct() })
	return z
}

func inspect(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRedisBurstThenRate(t *testing.T) {
	srv := redistest.New(t)
	z := redisZone(t, "gcra", srv.Addr(), ratelimit.Config{Rate: 1, Burst: 3})
	for i := 0; i < 3; i++ {
		if ok, ra := z.Allow("a", t0); !ok || ra != 0 {
			t.Fatalf("event %d refused (retry %v)", i, ra)
		}
	}
	if ok, ra := z.Allow("a", t0); ok || ra != time.Second {
		t.Fatalf("4th event: ok=%v retry=%v, want refused with 1s", ok, ra)
	}
	if ok, _ := z.Allow("b", t0); !ok {
		t.Fatal("key b limited by key a")
	}
	if ok, _ := z.Allow("a", t0.Add(time.Second)); !ok {
		t.Fatal("no event after 1 s")
	}
	if ok, _ := z.Allow("a", t0.Add(time.Second)); ok {
		t.Fatal("two events after 1 s")
	}
	// Steady rate: one event per second over a minute, whatever the
	// number of attempts.
	allowed := 0
	for ms := 1100; ms <= 61000; ms += 100 {
		if ok, _ := z.Allow("a", t0.Add(time.Duration(ms)*time.Millisecond)); ok {
			allowed++
		}
	}
	if allowed != 60 {
		t.Fatalf("%d events in 60 s at 1/s, want 60", allowed)
	}
	if st := z.Stats(); !st.Redis || !st.RedisHealthy || st.RedisFallbacks != 0 || st.Keys != 0 {
		t.Fatalf("stats %+v: want healthy Redis, no fallback, no local bucket", st)
	}
}

// TestRedisLowRates checks that a zone of a low rate, down to the least
// (ratelimit.MinRate: 10^15 µs between events), gives each event the same
// answer and Retry-After in Redis as locally.
func TestRedisLowRates(t *testing.T) {
	srv := redistest.New(t)
	for i, rate := range []float64{1e-3, 1e-6, ratelimit.MinRate} {
		t.Run(fmt.Sprint(rate), func(t *testing.T) {
			cfg := ratelimit.Config{Rate: rate, Burst: 1}
			local := mustZone(t, cfg)
			remote := redisZone(t, fmt.Sprint("low", i), srv.Addr(), cfg)
			for n := range 2 {
				okL, raL := local.Allow("a", t0)
				okR, raR := remote.Allow("a", t0)
				if okL != okR || raL != raR {
					t.Fatalf("event %d: local ok=%v retry=%v, Redis ok=%v retry=%v", n, okL, raL, okR, raR)
				}
				if n == 1 && (okR || raR < time.Second) {
					t.Fatalf("second event: ok=%v retry=%v, want refused", okR, raR)
				}
			}
			if st := remote.Stats(); !st.RedisHealthy || st.RedisFallbacks != 0 {
				t.Fatalf("stats %+v: want every decision made in Redis", st)
			}
		})
	}
}

// TestRedisMatchesLocal runs the same random arrivals through a local zone
// and a Redis zone: every decision and Retry-After must agree.
func TestRedisMatchesLocal(t *testing.T) {
	srv := redistest.New(t)
	for _, tc := range []struct {
		name  string
		rate  float64
		burst int
	}{
		{"rate_4_burst_5", 4, 5},
		{"rate_0.1_burst_1", 0.1, 1},
		{"rate_1000_burst_20", 1000, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			local := mustZone(t, ratelimit.Config{Rate: tc.rate, Burst: tc.burst})
			remote := redisZone(t, "match_"+tc.name, srv.Addr(), ratelimit.Config{Rate: tc.rate, Burst: tc.burst})
			rng := rand.New(rand.NewPCG(1, 2))
			mean := time.Duration(float64(time.Second) / tc.rate)
			now := t0
			for i := 0; i < 400; i++ {
				// Arrivals around the rate, at odd microseconds (no
				// arrival falls exactly on a refill boundary).
				now = now.Add(time.Duration(rng.Int64N(int64(mean)))/time.Microsecond*time.Microsecond + 7*time.Microsecond)
				lok, lra := local.Allow("k", now)
				rok, rra := remote.Allow("k", now)
				if lok != rok || lra != rra {
					t.Fatalf("arrival %d at +%v: local %v/%v, redis %v/%v (stats %+v)", i, now.Sub(t0), lok, lra, rok, rra, remote.Stats())
				}
			}
		})
	}
}

func TestRedisTwoGatewaysShareTheBudget(t *testing.T) {
	srv := redistest.New(t)
	a := redisZone(t, "common", srv.Addr(), ratelimit.Config{Rate: 0.001, Burst: 10})
	b := redisZone(t, "common", srv.Addr(), ratelimit.Config{Rate: 0.001, Burst: 10})
	other := redisZone(t, "other", srv.Addr(), ratelimit.Config{Rate: 0.001, Burst: 10})
	allowed := 0
	for i := 0; i < 20; i++ {
		z := a
		if i%2 == 1 {
			z = b
		}
		if ok, _ := z.Allow("k", t0); ok {
			allowed++
		}
	}
	if allowed != 10 {
		t.Fatalf("two gateways admitted %d events, want the burst 10", allowed)
	}
	if ok, _ := other.Allow("k", t0); !ok {
		t.Fatal("a zone of another name shares the budget")
	}
}

func TestRedisKeysExpire(t *testing.T) {
	srv := redistest.New(t)
	z := redisZone(t, "ttl", srv.Addr(), ratelimit.Config{Rate: 2, Burst: 4})
	c := inspect(t, srv.Addr())
	ctx := context.Background()
	start := time.Now()
	for i := 0; i < 3; i++ {
		z.Allow("k", t0)
	}
	ttl, err := c.PTTL(ctx, ratelimit.DefaultRedisPrefix+"ttl:k").Result()
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	// Three events at 2/s: the bucket is full again 1.5 s later; the key
	// lives a second more. The TTL has run down since the third event set
	// it, by at most what elapsed here (and a millisecond of rounding),
	// however slow the machine.
	const want = 2500 * time.Millisecond
	if ttl > want || ttl < want-elapsed-time.Millisecond {
		t.Fatalf("TTL %v %v after the first event, want %v less at most that", ttl, elapsed, want)
	}
	// A long key is stored as its SHA-256, like a local one.
	long := string(make([]byte, ratelimit.MaxKeyLen+1))
	z.Allow(long, t0)
	if n, _ := c.DBSize(ctx).Result(); n != 2 {
		t.Fatalf("%d keys, want 2", n)
	}
}

func TestRedisScriptFlushed(t *testing.T) {
	srv := redistest.New(t)
	z := redisZone(t, "flush", srv.Addr(), ratelimit.Config{Rate: 1, Burst: 1})
	if ok, _ := z.Allow("k", t0); !ok {
		t.Fatal("first event refused")
	}
	if err := inspect(t, srv.Addr()).ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	// EVALSHA answers NOSCRIPT; EVAL loads the script again.
	if ok, _ := z.Allow("k", t0); ok {
		t.Fatal("second event admitted after SCRIPT FLUSH")
	}
	if st := z.Stats(); st.RedisFallbacks != 0 {
		t.Fatalf("%d fallbacks after SCRIPT FLUSH, want 0", st.RedisFallbacks)
	}
}

func TestRedisFallbackAndRecovery(t *testing.T) {
	srv := redistest.New(t)
	z, err := ratelimit.NewZone("fallback", ratelimit.Config{Rate: 0.001, Burst: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer z.Destruct() //nolint:errcheck
	// A stopped server refuses connections at once: the fallbacks below
	// come from that, never from the timeout, which is generous so that
	// a call to the running server is not cut short on a loaded machine
	// (a fallback the counts below do not expect).
	if err := z.SetRedis(&ratelimit.RedisConfig{Addr: srv.Addr(), Timeout: 10 * time.Second, Retry: 50 * time.Millisecond}, nil); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, true, false} {
		if ok, _ := z.Allow("k", t0); ok != want {
			t.Fatalf("event %d in Redis: %v, want %v", i, ok, want)
		}
	}
	srv.Stop(t)
	// Local buckets take over at once: a fresh budget, still limited.
	for i, want := range []bool{true, true, false, false} {
		ok, ra := z.Allow("k", t0)
		if ok != want {
			t.Fatalf("event %d after Redis stopped: %v, want %v", i, ok, want)
		}
		if !ok && ra <= 0 {
			t.Fatalf("event %d: refused without Retry-After", i)
		}
	}
	st := z.Stats()
	if st.RedisHealthy || st.RedisFallbacks != 4 || st.Keys != 1 {
		t.Fatalf("stats %+v: want unhealthy, 4 fallbacks, 1 local bucket", st)
	}
	srv.Restart(t)
	// The zone tries Redis again at most every 50 ms; the restarted
	// server is empty, so key k has a fresh budget there.
	deadline := time.Now().Add(30 * time.Second)
	for !z.Stats().RedisHealthy {
		if time.Now().After(deadline) {
			t.Fatalf("still falling back 30 s after Redis restarted: %+v", z.Stats())
		}
		time.Sleep(10 * time.Millisecond)
		z.Allow("probe", t0)
	}
	before := z.Stats().RedisFallbacks
	for i, want := range []bool{true, true, false} {
		if ok, _ := z.Allow("fresh", t0); ok != want {
			t.Fatalf("event %d after recovery: %v, want %v", i, ok, want)
		}
	}
	if n, _ := inspect(t, srv.Addr()).Exists(context.Background(), ratelimit.DefaultRedisPrefix+"fallback:fresh").Result(); n != 1 {
		t.Fatal("the key is not in Redis after recovery")
	}
	if after := z.Stats().RedisFallbacks; after != before {
		t.Fatalf("fallbacks rose from %d to %d after recovery", before, after)
	}
}

func TestRedisConcurrentGateways(t *testing.T) {
	srv := redistest.New(t)
	const burst, workers, each = 100, 8, 50
	gws := []*ratelimit.Zone{
		redisZone(t, "race", srv.Addr(), ratelimit.Config{Rate: 0.001, Burst: burst}),
		redisZone(t, "race", srv.Addr(), ratelimit.Config{Rate: 0.001, Burst: burst}),
	}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(z *ratelimit.Zone) {
			defer wg.Done()
			key := []byte("k")
			for i := 0; i < each; i++ {
				if ok, _ := z.AllowBytes(key, t0); ok {
					allowed.Add(1)
				}
			}
		}(gws[w%2])
	}
	wg.Wait()
	for i, z := range gws {
		if st := z.Stats(); st.RedisFallbacks != 0 {
			t.Fatalf("gateway %d fell back %d times", i, st.RedisFallbacks)
		}
	}
	if n := allowed.Load(); n != burst {
		t.Fatalf("%d of %d racing events admitted, want %d", n, workers*each, burst)
	}
}

func BenchmarkRedisAllow(b *testing.B) {
	srv := redistest.New(b)
	z := redisZone(b, "bench", srv.Addr(), ratelimit.Config{Rate: 1e9, Burst: 1 << 30})
	key := []byte("192.0.2.0/32")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		z.AllowBytes(key, t0.Add(time.Duration(i)))
	}
	if st := z.Stats(); st.RedisFallbacks != 0 {
		b.Fatalf("%d fallbacks", st.RedisFallbacks)
	}
}

func BenchmarkRedisAllowParallel(b *testing.B) {
	srv := redistest.New(b)
	z := redisZone(b, "benchp", srv.Addr(), ratelimit.Config{Rate: 1e9, Burst: 1 << 30})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		key := []byte("192.0.2.0/32")
		for pb.Next() {
			z.AllowBytes(key, time.Now())
		}
	})
}

// BenchmarkRedisAllowFallback is the cost of a decision while Redis is
// down: local, after one timed-out probe per Retry interval.
func BenchmarkRedisAllowFallback(b *testing.B) {
	srv := redistest.New(b)
	z := redisZone(b, "benchf", srv.Addr(), ratelimit.Config{Rate: 1e9, Burst: 1 << 30})
	srv.Stop(b)
	key := []byte("192.0.2.0/32")
	z.AllowBytes(key, t0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		z.AllowBytes(key, t0.Add(time.Duration(i)))
	}
}

// TestClosedClient checks what the zone's health bookkeeping relies on: a
// call after Close fails with ratelimit.ErrRedisClosed, whether or not
// the server answers, and a call to a server that is down does not.
func TestClosedClient(t *testing.T) {
	srv := redistest.New(t)
	for _, tc := range []struct {
		name   string
		addr   string
		close  bool
		closed bool
	}{
		{"closed, server up", srv.Addr(), true, true},
		{"closed, no server", "127.0.0.1:1", true, true},
		{"open, no server", "127.0.0.1:1", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(ratelimit.RedisConfig{Addr: tc.addr, Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if tc.close {
				if err := c.Close(); err != nil {
					t.Fatal(err)
				}
			} else {
				defer c.Close() //nolint:errcheck
			}
			_, _, err = c.Allow(t.Context(), "k", t0, 1, 1)
			if err == nil {
				t.Fatal("the call succeeded")
			}
			if got := errors.Is(err, ratelimit.ErrRedisClosed); got != tc.closed {
				t.Fatalf("error %v: closed %v, want %v", err, got, tc.closed)
			}
		})
	}
}

// TestRedisClock checks whose clock the script counts on: New's clients on
// Redis's (TIME), so that gateways whose clocks differ still share a key's
// budget exactly, and NewCallerClock's on the now the caller passes.
// Gateway a spends the burst at the real time; gateway b, whose clock is
// an hour ahead (a whole refill), then asks for the same key.
func TestRedisClock(t *testing.T) {
	srv := redistest.New(t)
	for _, tc := range []struct {
		name   string
		newC   ratelimit.NewRedisClient
		wantOK bool
	}{
		{"New counts on Redis's clock", New, false},
		{"NewCallerClock counts on the caller's", NewCallerClock, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gateway := func() ratelimit.RedisClient {
				// Generous: a call cut short fails the test.
				c, err := tc.newC(ratelimit.RedisConfig{Addr: srv.Addr(), Timeout: 10 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.Close() })
				return c
			}
			a, b := gateway(), gateway()
			key := "clock:" + tc.name
			const rate, burst = 1.0 / 3600, 2
			now := time.Now()
			for i := range burst {
				if ok, wait, err := a.Allow(t.Context(), key, now, rate, burst); err != nil || !ok {
					t.Fatalf("event %d of the burst: ok=%v wait=%v err=%v", i, ok, wait, err)
				}
			}
			ok, wait, err := b.Allow(t.Context(), key, now.Add(time.Hour), rate, burst)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.wantOK {
				t.Fatalf("the gateway an hour ahead: ok=%v (wait %v), want %v", ok, wait, tc.wantOK)
			}
			if !ok && (wait < 59*time.Minute || wait > time.Hour) {
				t.Fatalf("wait %v, want about an hour (Redis's clock, not the caller's)", wait)
			}
		})
	}
}

// TestRedisAllowBytesThen checks AllowBytesThen on a zone in Redis, which
// cannot give a token back: next runs only when key's bucket has a token,
// its refusal is answered as is, and key's token stays spent.
func TestRedisAllowBytesThen(t *testing.T) {
	srv := redistest.New(t)
	z := redisZone(t, "then", srv.Addr(), ratelimit.Config{Rate: 0.1, Burst: 2})
	asked := 0
	refuse := func() (bool, time.Duration) { asked++; return false, 7 * time.Second }
	if ok, ra := z.AllowBytesThen([]byte("a"), t0, refuse); ok || ra != 7*time.Second || asked != 1 {
		t.Fatalf("next refusing: %v, %v, next asked %d times; want refused with next's 7s, asked once", ok, ra, asked)
	}
	if ok, _ := z.AllowBytesThen([]byte("a"), t0, func() (bool, time.Duration) { asked++; return true, 0 }); !ok || asked != 2 {
		t.Fatalf("next allowing: %v, next asked %d times in all; want admitted", ok, asked)
	}
	if ok, ra := z.AllowBytesThen([]byte("a"), t0, refuse); ok || ra != 10*time.Second || asked != 2 {
		t.Fatalf("empty bucket: %v, %v, next asked %d times in all; want refused with the bucket's 10s, next not asked", ok, ra, asked)
	}
	if st := z.Stats(); !st.RedisHealthy || st.RedisFallbacks != 0 {
		t.Fatalf("stats %+v: want healthy Redis, no fallback", st)
	}
}
