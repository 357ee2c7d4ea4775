package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/policy/admission"
)

// BenchmarkRateLimitAdmit is an admitted request through ServeHTTP: route,
// transport and method checks, the limiter check (client IP, key, bucket)
// and the discovery answer. Policy-only benchmarks are in policy/admission.
func BenchmarkRateLimitAdmit(b *testing.B) {
	g := provisioned(b, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com",
		RateLimits: []*RateLimitZone{{Name: "per_ip", Key: "remote_ip", Events: 1e9, Window: caddy.Duration(time.Second),
			Endpoints: []string{"ds_domain"}}}})
	r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
	r.RemoteAddr = "[2001:db8:1:2::7]:4000"
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "2001:db8:1:2::7"}))
	caddyhttp.NewTestReplacer(r)
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	quiet(b, g)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		g.ServeHTTP(w, r, next) //nolint:errcheck // never fails
		if w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkRateLimitRefuse is a refused request through ServeHTTP: the
// check, the 429 DSError and Retry-After.
func BenchmarkRateLimitRefuse(b *testing.B) {
	g := provisioned(b, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com",
		RateLimits: []*RateLimitZone{{Name: "per_ip", Key: "remote_ip", Events: 1, Window: caddy.Duration(time.Hour),
			Endpoints: []string{"ds_domain"}}}})
	r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
	caddyhttp.NewTestReplacer(r)
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	quiet(b, g)
	g.ServeHTTP(httptest.NewRecorder(), r, next) //nolint:errcheck // spends the only event
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		g.ServeHTTP(w, r, next) //nolint:errcheck // never fails
		if w.Code != http.StatusTooManyRequests {
			b.Fatal(w.Code)
		}
	}
}

// quiet gives g and its admission policy a logger that drops everything:
// refusals log at debug level, and the benchmarks measure the answer, not
// the test logger.
func quiet(tb testing.TB, g *Gateway) {
	tb.Helper()
	g.logger, g.sampled = zap.NewNop(), zap.NewNop()
	rebuildPolicy(tb, g, func(cfg *admission.Config) { cfg.Logger = g.logger })
}
