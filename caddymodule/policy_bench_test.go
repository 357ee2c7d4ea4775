package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
