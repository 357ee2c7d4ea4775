package caddymodule

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-mimi/caddy-mimi/internal/metricstest"
	"github.com/caddy-mimi/caddy-mimi/internal/redistest"
)

func TestRateLimitRedisCaddyfile(t *testing.T) {
	g := new(Gateway)
	err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`mimi {
		provider example.com
		ds_domain ds.example.com
		rate_limit per_ip {
			key remote_ip
			rate 10/1s
			redis 10.0.0.5:6379 {
				password {env.REDIS_PASSWORD}
				db 2
				timeout 3ms
				prefix a.example:rl:
				retry 500ms
			}
		}
		rate_limit plain {
			key remote_ip
			rate 10/1s
			redis {env.REDIS_ADDR}
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []*RateLimitZone{
		{Name: "per_ip", Key: "remote_ip", Events: 10, Window: caddy.Duration(time.Second),
			Redis: &RateLimitRedis{Address: "10.0.0.5:6379", Password: "{env.REDIS_PASSWORD}", DB: 2,
				Timeout: caddy.Duration(3 * time.Millisecond), Prefix: "a.example:rl:", Retry: caddy.Duration(500 * time.Millisecond)}},
		{Name: "plain", Key: "remote_ip", Events: 10, Window: caddy.Duration(time.Second),
			Redis: &RateLimitRedis{Address: "{env.REDIS_ADDR}"}},
	}
	if !reflect.DeepEqual(g.RateLimits, want) {
		t.Fatalf("got  %+v\nwant %+v", g.RateLimits, want)
	}
	js, err := json.Marshal(g.RateLimits[0])
	if err != nil {
		t.Fatal(err)
	}
	const field = `"redis":{"address":"10.0.0.5:6379","password":"{env.REDIS_PASSWORD}","db":2,"timeout":3000000,"prefix":"a.example:rl:","retry":500000000}`
	if !strings.Contains(string(js), field) {
		t.Fatalf("JSON %s\nlacks %s", js, field)
	}
	if err := g.Validate(); err != nil {
		t.Fatalf("the parsed config does not validate: %v", err)
	}
}

func TestRateLimitRedisCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"no_address", "redis", "wrong argument count"},
		{"two_addresses", "redis a:1 b:1", "wrong argument count"},
		{"duplicate", "redis a:1\nredis b:1", "duplicate rate_limit z option 'redis'"},
		{"duplicate_inner", "redis a:1 {\ndb 1\ndb 2\n}", "duplicate rate_limit z redis option 'db'"},
		{"bad_db", "redis a:1 {\ndb -1\n}", "invalid redis db '-1'"},
		{"bad_timeout", "redis a:1 {\ntimeout soon\n}", "invalid redis timeout 'soon'"},
		{"zero_retry", "redis a:1 {\nretry 0s\n}", "invalid redis retry '0s'"},
		{"unknown", "redis a:1 {\nuser bob\n}", "unrecognized rate_limit z redis option 'user'"},
		{"no_value", "redis a:1 {\npassword\n}", "password takes one argument"},
		{"rate_too_high", "rate 2000000/1s\nredis a:1", "rate 2e+06 per second is above 1e+06, the most a redis zone resolves"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := "mimi {\nrate_limit z {\nkey remote_ip\n" + tc.in + "\n}\n}"
			if !strings.Contains(tc.in, "rate ") {
				in = strings.Replace(in, "key remote_ip\n", "key remote_ip\nrate 1/1s\n", 1)
			}
			err := new(Gateway).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// TestRateLimitRedisGateway provisions a gateway whose zone lives in a
// real Redis that needs a password given as a placeholder, and checks the
// decisions, the keys in Redis and the metrics, then the fallback when
// Redis stops.
func TestRateLimitRedisGateway(t *testing.T) {
	srv := redistest.New(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), Protocol: 2, DisableIdentity: true})
	defer admin.Close()
	bg := context.Background()
	if err := admin.ConfigSet(bg, "requirepass", "s3cret").Err(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MIMI_TEST_REDIS_PASSWORD", "s3cret")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: t.TempDir(),
		RateLimits: []*RateLimitZone{{Name: "redis_gw_zone", Key: "remote_ip", Events: 2, Window: caddy.Duration(time.Hour),
			Endpoints: []string{"ds_domain"}, Redis: &RateLimitRedis{Address: srv.Addr(), Password: "{env.MIMI_TEST_REDIS_PASSWORD}",
				Timeout: caddy.Duration(10 * time.Second), Prefix: "gw:", Retry: caddy.Duration(time.Hour)}}}}
	// The Redis timeout is generous: a call to the running server cut
	// short on a loaded machine would fall back to a local bucket for an
	// hour (Retry), which the fallback count below does not expect. The
	// fallbacks after Redis stops come from refused connections.
	if err := g.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer g.Cleanup()
	statuses := func(n int) []int {
		var got []int
		for i := 0; i < n; i++ {
			r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
			r.RemoteAddr = "192.0.2.1:1"
			w, _ := serve(g, r)
			got = append(got, w.Code)
		}
		return got
	}
	if got := statuses(3); !reflect.DeepEqual(got, []int{200, 200, 429}) {
		t.Fatalf("statuses %v, want 200 200 429", got)
	}
	admin = redis.NewClient(&redis.Options{Addr: srv.Addr(), Password: "s3cret", Protocol: 2, DisableIdentity: true})
	defer admin.Close()
	if n, err := admin.Exists(bg, "gw:redis_gw_zone:192.0.2.1/32").Result(); err != nil || n != 1 {
		t.Fatalf("key in Redis: %d, %v", n, err)
	}
	gather := func() map[string]float64 { return metricstest.Values(t, ctx.GetMetricsRegistry()) }
	const healthy = "caddy_mimi_rate_limit_redis_healthy{zone=redis_gw_zone,}"
	const fallbacks = "caddy_mimi_rate_limit_redis_fallbacks_total{zone=redis_gw_zone,}"
	if m := gather(); m[healthy] != 1 || m[fallbacks] != 0 {
		t.Fatalf("healthy %v, fallbacks %v; want 1, 0", m[healthy], m[fallbacks])
	}
	srv.Stop(t)
	// Per-process buckets: a fresh budget of 2, still limited.
	if got := statuses(3); !reflect.DeepEqual(got, []int{200, 200, 429}) {
		t.Fatalf("statuses without Redis %v, want 200 200 429", got)
	}
	if m := gather(); m[healthy] != 0 || m[fallbacks] != 3 {
		t.Fatalf("healthy %v, fallbacks %v; want 0, 3", m[healthy], m[fallbacks])
	}
}

func TestRateLimitRedisPlaceholderErrors(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: t.TempDir(),
		RateLimits: []*RateLimitZone{{Name: "z", Key: "remote_ip", Events: 2, Window: caddy.Duration(time.Hour),
			Redis: &RateLimitRedis{Address: "127.0.0.1:1", Password: "{file./nonexistent/mimi-redis-password}"}}}}
	err := g.Provision(ctx)
	// Caddy cleans up a module whose Provision failed; so does the test.
	if cerr := g.Cleanup(); cerr != nil {
		t.Errorf("cleanup: %v", cerr)
	}
	if err == nil {
		t.Fatal("provisioned with an unreadable password file")
	}
	if !strings.Contains(err.Error(), "redis password") {
		t.Fatalf("error %v does not name the redis password", err)
	}
}

// TestRateLimitRedisReadme decodes the README's JSON example strictly and
// parses its Caddyfile example of a Redis zone: both must mean what they
// show.
func TestRateLimitRedisReadme(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("json", func(t *testing.T) {
		_, rest, ok := strings.Cut(string(readme), "\n## JSON\n")
		if !ok {
			t.Fatal("README has no JSON section")
		}
		_, rest, _ = strings.Cut(rest, "```json\n")
		block, _, ok := strings.Cut(rest, "```")
		if !ok {
			t.Fatal("README's JSON section has no json block")
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal([]byte(block), &fields); err != nil {
			t.Fatal(err)
		}
		var zones []*RateLimitZone
		if err := caddy.StrictUnmarshalJSON(fields["rate_limits"], &zones); err != nil {
			t.Fatalf("the README's rate_limits do not decode: %v", err)
		}
		want := &RateLimitRedis{Address: "10.0.0.5:6379", Password: "{env.REDIS_PASSWORD}",
			Timeout: caddy.Duration(5 * time.Millisecond), Prefix: "a.example:rl:", Retry: caddy.Duration(time.Second)}
		var got *RateLimitRedis
		for _, z := range zones {
			if z.Redis != nil {
				got = z.Redis
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("README redis decodes to %+v, want %+v", got, want)
		}
	})
	t.Run("caddyfile", func(t *testing.T) {
		_, rest, ok := strings.Cut(string(readme), "```caddyfile\nrate_limit per_ip {\n")
		if !ok {
			t.Fatal("README has no Caddyfile example of a Redis zone")
		}
		block, _, _ := strings.Cut(rest, "```")
		in := "mimi {\nprovider example.com\nds_domain ds.example.com\nrate_limit per_ip {\n" + block + "}"
		g := new(Gateway)
		if err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
			t.Fatal(err)
		}
		if err := g.Validate(); err != nil {
			t.Fatal(err)
		}
		want := &RateLimitRedis{Address: "10.0.0.5:6379", Password: "{env.REDIS_PASSWORD}", Prefix: "a.example:rl:"}
		if len(g.RateLimits) != 1 || !reflect.DeepEqual(g.RateLimits[0].Redis, want) {
			t.Fatalf("README example parses to %+v", g.RateLimits)
		}
	})
}

// TestFailedReloadKeepsZoneLimits provisions, on a running gateway's data
// directory, a config that raises its zone's rate and burst and moves the
// zone to Redis, then fails at its very end (its key secret changed,
// which the pooled service refuses to apply), and cleans it up, as Caddy
// does with a rejected config. The running gateway's zone must keep its
// own limits, in this process: two requests, then 429, and nothing
// written to Redis.
func TestFailedReloadKeepsZoneLimits(t *testing.T) {
	srv := redistest.New(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
	zone := func() *RateLimitZone {
		return &RateLimitZone{Name: "reload_zone", Key: "remote_ip", Events: 2, Window: caddy.Duration(time.Hour),
			Endpoints: []string{"ds_domain"}}
	}
	old := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir,
		RateLimits: []*RateLimitZone{zone()}})

	t.Setenv("MIMI_TEST_RELOAD_KEY_SECRET", strings.Repeat("ab", 32))
	changed := zone()
	changed.Events = 100
	changed.Redis = &RateLimitRedis{Address: srv.Addr(), Timeout: caddy.Duration(time.Second), Prefix: "reload:"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	bad := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir,
		KeySecret: "{env.MIMI_TEST_RELOAD_KEY_SECRET}", RateLimits: []*RateLimitZone{changed}}
	err := bad.Provision(ctx)
	if cerr := bad.Cleanup(); cerr != nil {
		t.Errorf("cleanup of the rejected config: %v", cerr)
	}
	if err == nil || !strings.Contains(err.Error(), "key secret") {
		t.Fatalf("provisioning the config with a changed key secret: %v, want the service's refusal", err)
	}

	var got []int
	for range 3 {
		r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
		r.RemoteAddr = "192.0.2.1:1"
		w, _ := serve(old, r)
		got = append(got, w.Code)
	}
	if !reflect.DeepEqual(got, []int{200, 200, 429}) {
		t.Errorf("statuses %v, want 200 200 429: the rejected config's rate and burst are in force", got)
	}
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), Protocol: 2, DisableIdentity: true})
	defer admin.Close()
	if n, err := admin.DBSize(context.Background()).Result(); err != nil || n != 0 {
		t.Errorf("%d keys in Redis (%v), want none: the rejected config's Redis setting is in force", n, err)
	}
}
