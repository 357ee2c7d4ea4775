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

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// BenchmarkRateLimitAdmit is the limiter check as the handler runs it
// (admitRequest: plan lookup, client IP, key, bucket), for an admitted
// request. It must not allocate.
func BenchmarkRateLimitAdmit(b *testing.B) {
	g := provisioned(b, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com",
		RateLimits: []*RateLimitZone{{Name: "per_ip", Key: "remote_ip", Events: 1e9, Window: caddy.Duration(time.Second),
			Endpoints: []string{"ds_domain"}}}})
	r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
	r.RemoteAddr = "[2001:db8:1:2::7]:4000"
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "2001:db8:1:2::7"}))
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		if !g.admitRequest(w, r) {
			b.Fatal("refused")
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
	// Refusals log at debug level; measure the answer, not the test logger.
	g.logger, g.policy.logger = zap.NewNop(), zap.NewNop()
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

// BenchmarkRedeem is one token redemption as the handler runs it: parse the
// Authorization field, verify, and record the token in the SQLite store
// (a durable, committed insert).
func BenchmarkRedeem(b *testing.B) {
	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		b.Run(typ.String(), func(b *testing.B) {
			f := newPPFixture(b)
			g := provisioned(b, f.gateway(""))
			iss, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: f.keys[typ]})
			if err != nil {
				b.Fatal(err)
			}
			challenge := challengeOf(b, g, typ)
			auths := make([]string, b.N)
			for i := range auths {
				p, err := privacypass.NewTokenRequest(challenge, f.keys[typ].Public())
				if err != nil {
					b.Fatal(err)
				}
				resp, err := iss.Issue(p.Request)
				if err != nil {
					b.Fatal(err)
				}
				tok, err := p.Finalize(resp)
				if err != nil {
					b.Fatal(err)
				}
				auths[i] = privacypass.FormatAuthorization(tok)
			}
			ep := g.policy.plans["/welcome_information"]
			r := tls13(httptest.NewRequest(http.MethodPost, "/welcome_information", nil))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Header.Set("Authorization", auths[i])
				if err := g.policy.redeem(r, ep); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
