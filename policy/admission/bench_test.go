package admission

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// rateLimitOnly is a plan with one per-IP zone and no token, as the
// handler runs it on every request of a limited endpoint.
func rateLimitOnly(tb testing.TB, events int, window time.Duration) *Plan {
	tb.Helper()
	p := newPolicy(tb, Config{Logger: zap.NewNop(),
		Zones: []ZoneConfig{zoneCfg("per_ip", KeyRemoteIP, events, window, "ds_domain")}})
	return p.Plan("ds_domain")
}

// TestBeforeDoesNotAllocate guards the hot path: an admitted request on a
// rate-limit-only plan, whose bucket exists, allocates nothing. It runs
// with the race detector too, which adds no allocation here: CI runs
// every test with -race only.
func TestBeforeDoesNotAllocate(t *testing.T) {
	pl := rateLimitOnly(t, 1e9, time.Second)
	ctx := context.Background()
	r := &Request{ClientIP: ip("2001:db8:1:2::7")}
	if err := pl.Before(ctx, r); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if err := pl.Before(ctx, r); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Before allocates %v times per admitted request", n)
	}
}

// BenchmarkBefore is the limiter check of stage 1 for an admitted request:
// client IP, key, bucket, counter. It must not allocate.
func BenchmarkBefore(b *testing.B) {
	pl := rateLimitOnly(b, 1e9, time.Second)
	ctx := context.Background()
	r := &Request{ClientIP: ip("2001:db8:1:2::7")}
	b.ReportAllocs()
	for b.Loop() {
		if err := pl.Before(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBeforeRefuse is a refused request: the check and the
// rate_limited Refusal (the HTTP layer's encoding is not included).
func BenchmarkBeforeRefuse(b *testing.B) {
	pl := rateLimitOnly(b, 1, time.Hour)
	ctx := context.Background()
	r := &Request{ClientIP: ip("192.0.2.1")}
	pl.Before(ctx, r) //nolint:errcheck // spends the only event
	b.ReportAllocs()
	for b.Loop() {
		if err := pl.Before(ctx, r); codeOf(err) != moh.CodeRateLimited {
			b.Fatal(err)
		}
	}
}

// BenchmarkRedeem is one token redemption through Before on an endpoint
// that requires a token: parse the Authorization field, verify, and record
// the token in the SQLite store (a durable, committed insert).
func BenchmarkRedeem(b *testing.B) {
	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		b.Run(typ.String(), func(b *testing.B) {
			f := newPPFixture(b)
			p := newPolicy(b, Config{Origin: f.origin(b), RequireToken: []string{"welcome_information"}, Logger: zap.NewNop()})
			pl := p.Plan("welcome_information")
			ctx := context.Background()
			challenge := challengeOf(b, pl.Before(ctx, &Request{}), typ)
			auths := make([]string, b.N)
			for i := range auths {
				auths[i] = f.mint(b, challenge, typ)
			}
			r := &Request{ClientIP: ip("192.0.2.1")}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Authorization = auths[i]
				if err := pl.Before(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
