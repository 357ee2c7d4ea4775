package ratelimit

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeRedis is a RedisClient that answers what its fields say, and fails
// with ErrRedisClosed once closed. The tests against a real Redis are in
// package redisrl.
type fakeRedis struct {
	cfg    RedisConfig
	wait   time.Duration // refuse with this wait when not zero
	err    error         // fail with this error when set
	closed atomic.Bool
	calls  atomic.Int64
	key    atomic.Value // the last key asked for
}

func (f *fakeRedis) Allow(_ context.Context, key string, _ time.Time, _ float64, _ int) (bool, time.Duration, error) {
	f.calls.Add(1)
	f.key.Store(key)
	switch {
	case f.closed.Load():
		return false, 0, ErrRedisClosed
	case f.err != nil:
		return false, 0, f.err
	case f.wait != 0:
		return false, f.wait, nil
	}
	return true, 0, nil
}

func (f *fakeRedis) AllowAll(ctx context.Context, keys []string, now time.Time, rate float64, burst int) (bool, time.Duration, error) {
	return f.Allow(ctx, strings.Join(keys, " "), now, rate, burst)
}

func (f *fakeRedis) Close() error {
	f.closed.Store(true)
	return nil
}

// withRedis registers newClient (nil: none) for the test, in place of
// what RegisterRedis registered.
func withRedis(t *testing.T, newClient NewRedisClient) {
	t.Helper()
	redisNewMu.Lock()
	saved := redisNew
	redisNew = newClient
	redisNewMu.Unlock()
	t.Cleanup(func() {
		redisNewMu.Lock()
		redisNew = saved
		redisNewMu.Unlock()
	})
}

// fakeClients registers a constructor of fakeRedis clients that answer
// like proto, and returns the channel it sends each new client to.
func fakeClients(t *testing.T, proto *fakeRedis) <-chan *fakeRedis {
	made := make(chan *fakeRedis, 16)
	withRedis(t, func(cfg RedisConfig) (RedisClient, error) {
		f := &fakeRedis{cfg: cfg}
		if proto != nil {
			f.wait, f.err = proto.wait, proto.err
		}
		made <- f
		return f, nil
	})
	return made
}

func TestSetRedis(t *testing.T) {
	made := fakeClients(t, nil)
	z := mustZone(t, Config{Rate: 1, Burst: 1})
	if err := z.SetRedis(&RedisConfig{}, nil); err == nil {
		t.Fatal("no error without an address")
	}
	if err := z.SetRedis(&RedisConfig{Addr: "127.0.0.1:1", DB: -1}, nil); err == nil {
		t.Fatal("no error for db -1")
	}
	cfg := &RedisConfig{Addr: "127.0.0.1:1"}
	if err := z.SetRedis(cfg, nil); err != nil {
		t.Fatal(err)
	}
	if f := <-made; f.cfg != cfg.withDefaults() {
		t.Fatalf("client made with %+v, want the defaults filled in: %+v", f.cfg, cfg.withDefaults())
	}
	b := z.redis.Load()
	if err := z.SetRedis(&RedisConfig{Addr: "127.0.0.1:1", Timeout: DefaultRedisTimeout}, nil); err != nil {
		t.Fatal(err)
	}
	if z.redis.Load() != b {
		t.Fatal("an equal configuration replaced the connection")
	}
	if err := z.SetRedis(&RedisConfig{Addr: "127.0.0.1:1", DB: 1}, nil); err != nil {
		t.Fatal(err)
	}
	if z.redis.Load() == b {
		t.Fatal("a new configuration kept the connection")
	}
	if !b.client.(*fakeRedis).closed.Load() {
		t.Fatal("the replaced connection was not closed")
	}
	old := z.redis.Load()
	if err := z.SetRedis(nil, nil); err != nil || z.Stats().Redis {
		t.Fatalf("SetRedis(nil): %v, stats %+v", err, z.Stats())
	}
	// A call that raced with the reload, on the backend it closed, falls
	// back without marking the server unhealthy.
	if ok, _, done := z.allowRedis(old, nil, "k", t0); ok || done || !old.healthy.Load() {
		t.Fatalf("closed backend: ok %v, done %v, healthy %v; want false, false, true", ok, done, old.healthy.Load())
	}
}

// TestSetRedisUnregistered checks that a build without a Redis client
// refuses a Redis zone with an error naming the package that adds one,
// and keeps the zone local.
func TestSetRedisUnregistered(t *testing.T) {
	withRedis(t, nil)
	z := mustZone(t, Config{Rate: 1, Burst: 1})
	err := z.SetRedis(&RedisConfig{Addr: "127.0.0.1:1"}, nil)
	if err == nil {
		t.Fatal("SetRedis succeeded without a Redis client")
	}
	for _, want := range []string{"no Redis client", ClusterPackage} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if z.Stats().Redis {
		t.Fatal("the zone is in Redis")
	}
	if err := z.SetRedis(nil, nil); err != nil {
		t.Fatalf("SetRedis(nil): %v", err)
	}
}

func TestRegisterRedisPanics(t *testing.T) {
	for _, tc := range []struct {
		name       string
		registered NewRedisClient
		register   NewRedisClient
	}{
		{"nil", nil, nil},
		{"twice", func(RedisConfig) (RedisClient, error) { return &fakeRedis{}, nil },
			func(RedisConfig) (RedisClient, error) { return &fakeRedis{}, nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withRedis(t, tc.registered)
			defer func() {
				if recover() == nil {
					t.Fatal("RegisterRedis did not panic")
				}
			}()
			RegisterRedis(tc.register)
		})
	}
}

// TestRedisDecisions checks what a zone makes of its client's answers:
// the key it asks for, a refusal's wait rounded up to whole seconds (as a
// local bucket's Retry-After), and a failure decided locally and counted,
// with the backend unhealthy until a call succeeds.
func TestRedisDecisions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		answer    *fakeRedis
		ok        bool
		retry     time.Duration
		fallbacks uint64
	}{
		{"admitted", &fakeRedis{}, true, 0, 0},
		{"refused, 1 µs", &fakeRedis{wait: time.Microsecond}, false, time.Second, 0},
		{"refused, 1 s", &fakeRedis{wait: time.Second}, false, time.Second, 0},
		{"refused, 1 s and 1 µs", &fakeRedis{wait: time.Second + time.Microsecond}, false, 2 * time.Second, 0},
		// The local bucket of burst 1 is full: admitted locally.
		{"failed", &fakeRedis{err: errors.New("i/o timeout")}, true, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			made := fakeClients(t, tc.answer)
			z, err := NewZone("zone", Config{Rate: 1, Burst: 1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = z.Destruct() })
			if err := z.SetRedis(&RedisConfig{Addr: "127.0.0.1:1", Prefix: "p:"}, nil); err != nil {
				t.Fatal(err)
			}
			f := <-made
			ok, retry := z.Allow("k", t0)
			if ok != tc.ok || retry != tc.retry {
				t.Fatalf("Allow: %v, %v; want %v, %v", ok, retry, tc.ok, tc.retry)
			}
			if key, _ := f.key.Load().(string); key != "p:zone:k" {
				t.Fatalf("asked Redis for %q, want p:zone:k", key)
			}
			st := z.Stats()
			if st.RedisFallbacks != tc.fallbacks || st.RedisHealthy != (tc.fallbacks == 0) {
				t.Fatalf("stats %+v: want %d fallbacks, healthy %v", st, tc.fallbacks, tc.fallbacks == 0)
			}
		})
	}
}
