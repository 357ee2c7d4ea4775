package admission

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/metricstest"
	"github.com/caddy-mimi/caddy-mimi/internal/redistest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// TestRedisZoneAcrossGateways runs two gateways (two scopes) whose zone
// lives in one Redis: they share the budget, and when Redis stops each
// limits on its own, which the metrics show.
func TestRedisZoneAcrossGateways(t *testing.T) {
	srv := redistest.New(t)
	clk := newClock()
	// The fallbacks below come from the stopped server refusing
	// connections at once, never from the timeout, which is generous so
	// that a call to the running server is not cut short on a loaded
	// machine (a fallback the counts do not expect).
	rc := &ratelimit.RedisConfig{Addr: srv.Addr(), Timeout: 10 * time.Second, Retry: 20 * time.Millisecond,
		Prefix: "test:" + t.Name() + ":"}
	gw := func() *Policy {
		z := zoneCfg("redis_zone", KeyRemoteIP, 2, time.Hour, "ds_domain")
		z.Redis = rc
		return newPolicy(t, Config{Scope: t.TempDir(), Now: clk.Now, Zones: []ZoneConfig{z}})
	}
	a, b := gw(), gw()
	before := func(p *Policy) error {
		return p.Plan("ds_domain").Before(context.Background(), &Request{ClientIP: ip("192.0.2.9")})
	}
	for i, tc := range []struct {
		p       *Policy
		limited bool
	}{{a, false}, {b, false}, {a, true}, {b, true}} {
		err := before(tc.p)
		if got := codeOf(err) == moh.CodeRateLimited; got != tc.limited {
			t.Fatalf("request %d: %v, want limited %v", i, err, tc.limited)
		}
	}
	gather := func() map[string]float64 { return metricstest.Of(t, Collectors()...) }
	const healthy = "caddy_mimi_rate_limit_redis_healthy{zone=redis_zone,}"
	const fallbacks = "caddy_mimi_rate_limit_redis_fallbacks_total{zone=redis_zone,}"
	if m := gather(); m[healthy] != 1 || m[fallbacks] != 0 {
		t.Fatalf("healthy %v, fallbacks %v; want 1, 0", m[healthy], m[fallbacks])
	}
	srv.Stop(t)
	// Each gateway falls back to its own buckets: 2 events each, then
	// limited.
	for _, p := range []*Policy{a, b} {
		for i, limited := range []bool{false, false, true} {
			if got := codeOf(before(p)) == moh.CodeRateLimited; got != limited {
				t.Fatalf("request %d without Redis: limited %v, want %v", i, got, limited)
			}
		}
	}
	if m := gather(); m[healthy] != 0 || m[fallbacks] != 6 {
		t.Fatalf("healthy %v, fallbacks %v; want 0, 6", m[healthy], m[fallbacks])
	}
}

func TestRedisZoneRateBound(t *testing.T) {
	z := zoneCfg("fast", KeyRemoteIP, 2_000_000, time.Second, "ds_domain")
	z.Redis = &ratelimit.RedisConfig{Addr: "127.0.0.1:1"}
	err := (&Config{Endpoints: gatewayEndpoints(), Zones: []ZoneConfig{z}}).Validate()
	if err == nil || !strings.Contains(err.Error(), "the most a redis zone resolves") {
		t.Fatalf("error %v, want the Redis rate bound", err)
	}
}

// TestUncommittedPolicyLeavesZones builds the Policy of a reload that
// changes a running zone's rate, burst and Redis setting, and closes it
// without Commit, as a gateway does when Caddy rejects the reload after
// New: the running Policy's zone keeps its limits, stays local and loses
// no reference. A committed reload then puts the new settings in force.
func TestUncommittedPolicyLeavesZones(t *testing.T) {
	srv := redistest.New(t)
	scope := t.TempDir()
	old := zoneCfg("z", KeyRemoteIP, 2, time.Hour, "ds_domain")
	running := newPolicy(t, Config{Scope: scope, Zones: []ZoneConfig{old}})
	rl := running.Plan("ds_domain").pre[0].zone.rl
	key := registryKey(scope, &old)
	next := zoneCfg("z", KeyRemoteIP, 100, time.Second, "ds_domain")
	next.Redis = &ratelimit.RedisConfig{Addr: srv.Addr(), Prefix: "test:" + t.Name() + ":"}
	check := func(step string, rate float64, burst int, redis bool) {
		t.Helper()
		if r, b := rl.Limits(); r != rate || b != burst {
			t.Errorf("%s: the running zone has rate %g, burst %d; want %g, %d", step, r, b, rate, burst)
		}
		if got := rl.Stats().Redis; got != redis {
			t.Errorf("%s: the running zone in Redis %v, want %v", step, got, redis)
		}
	}
	rejected, err := New(Config{Scope: scope, Endpoints: gatewayEndpoints(), Zones: []ZoneConfig{next}})
	if err != nil {
		t.Fatal(err)
	}
	if rejected.Plan("ds_domain").pre[0].zone.rl != rl {
		t.Fatal("the reload did not reuse the running zone")
	}
	check("before the rejected reload's Close", old.Rate, old.Burst, false)
	if err := rejected.Close(); err != nil {
		t.Fatal(err)
	}
	check("after the rejected reload", old.Rate, old.Burst, false)
	if n := zones.refs(key); n != 1 {
		t.Fatalf("%d references after the rejected reload, want 1", n)
	}
	accepted := newPolicy(t, Config{Scope: scope, Zones: []ZoneConfig{next}})
	if accepted.Plan("ds_domain").pre[0].zone.rl != rl {
		t.Fatal("the reload did not reuse the running zone")
	}
	check("after the accepted reload", next.Rate, next.Burst, true)
}
