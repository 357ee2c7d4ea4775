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
	rc := &ratelimit.RedisConfig{Addr: srv.Addr(), Timeout: 200 * time.Millisecond, Retry: 20 * time.Millisecond,
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
