package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// TestClaimRetryAfterSeconds checks the Retry-After of the claim limit:
// the zone's refill interval, rounded up to whole seconds, at least 1.
func TestClaimRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		rate float64
		want int
	}{
		{keyPackageRate, 2},
		{0.4, 3}, // 2.5 s rounds up
		{1.0 / 30, 30},
		{1, 1},
		{10, 1}, // at least 1
	} {
		t.Run(fmt.Sprint(tc.rate), func(t *testing.T) {
			z, err := ratelimit.NewZone("test", ratelimit.Config{Rate: tc.rate, Burst: 1})
			if err != nil {
				t.Fatal(err)
			}
			if got := claimRetryAfterSeconds(z); got != tc.want {
				t.Fatalf("claimRetryAfterSeconds at %v/s = %d, want %d", tc.rate, got, tc.want)
			}
		})
	}
}

// postProviderHeader posts a provider request to site's path and returns
// the status, the answer's DSError code (0 for a success) and its
// Retry-After header.
func postProviderHeader(t *testing.T, site *peerSite, path string, raw []byte) (int, moh.Code, string) {
	t.Helper()
	status, body, h := postProviderFull(t, site, path, raw)
	return status, moh.AnswerCode(body), h.Get("Retry-After")
}

// claimClock times the peer claim limit of a test gateway: its zone
// counts at the time the test sets, not the machine's, so that a burst
// spent over many requests stays spent however slowly a loaded machine
// serves them, and the test moves time rather than sleeping.
type claimClock struct {
	zone *ratelimit.Zone
	now  atomic.Int64 // Unix nanoseconds
}

// AllowAll implements ds.KeyPackageLimiter on the clock's time.
func (c *claimClock) AllowAll(keys []string, _ time.Time) (bool, time.Duration) {
	return c.zone.AllowAll(keys, time.Unix(0, c.now.Load()))
}

// advance moves the clock d on.
func (c *claimClock) advance(d time.Duration) { c.now.Add(int64(d)) }

// frozenClaims puts the peer claim limit of the gateway of s on a
// claimClock at the present, before s serves, and returns the clock.
func frozenClaims(s *peerSite) *claimClock {
	c := &claimClock{zone: s.g.ds.KeyPackageLimits.(*ratelimit.Zone)}
	c.now.Store(time.Now().UnixNano())
	s.g.ds.KeyPackageLimits = c
	return c
}

// frozenClaimsOf is a setup of twoProvidersWith that puts the claim limit
// of provider's gateway on a claimClock, stored in *c.
func frozenClaimsOf(provider string, c **claimClock) func(*peerSite) {
	return func(s *peerSite) {
		if s.g.Providers[0] == provider {
			*c = frozenClaims(s)
		}
	}
}

// TestClaimLimitRetryAfter has a claim b's KeyPackages of one user over
// the per-(sender, user) claim limit (a burst of keyPackageBurst): the
// claims within the burst are answered without Retry-After; the first
// claim over it gets 429 rate_limited with the Retry-After of the limit's
// refill interval; and a byte-identical retry of that claim after that
// interval, answered from the replay record, gets it too.
func TestClaimLimitRetryAfter(t *testing.T) {
	var clock *claimClock
	a, b := twoProvidersWith(t, frozenClaimsOf("b.localhost", &clock))
	pc := &provider.Client{Sender: "a.localhost", Keys: a.g.svc.Keys(), Fetcher: a.g.svc.Fetcher()}
	payload, err := wire.Marshal(&moh.ConnectionKeyPackagesRequest{Requester: []byte(moh.UserURI("a.localhost", "alice")),
		UserID: []byte(moh.UserURI("b.localhost", "carol"))})
	if err != nil {
		t.Fatal(err)
	}
	sign := func() []byte {
		raw, err := pc.Sign("b.localhost", moh.ConnectionKeyPackages, payload)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	for i := range keyPackageBurst {
		if st, code, ra := postProviderHeader(t, b, "/connection_key_packages", sign()); st != http.StatusOK || ra != "" {
			t.Fatalf("claim %d within the burst: %d %s, Retry-After %q; want 200 without Retry-After", i+1, st, code, ra)
		}
	}
	over := sign()
	interval := claimRetryAfterSeconds(clock.zone)
	want := fmt.Sprint(interval)
	for _, tc := range []struct {
		name  string
		after time.Duration // the claim limit's clock moved on before posting
	}{
		{"the claim over the burst", 0},
		// After the refill interval a new claim would pass: a 429 now is
		// the replay record's.
		{"its byte-identical retry", time.Duration(interval) * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock.advance(tc.after)
			st, code, ra := postProviderHeader(t, b, "/connection_key_packages", over)
			if st != http.StatusTooManyRequests || code != moh.CodeRateLimited || ra != want {
				t.Fatalf("%d %s, Retry-After %q; want 429 rate_limited, Retry-After %q", st, code, ra, want)
			}
		})
	}
	// The refill interval has passed on the limit's clock: a new claim
	// passes, so the retry's 429 above was the replay record's.
	if st, code, ra := postProviderHeader(t, b, "/connection_key_packages", sign()); st != http.StatusOK {
		t.Fatalf("a new claim after the refill interval: %d %s, Retry-After %q; want 200", st, code, ra)
	}
}

// TestRefusedClaimSpendsNoLimit has a exhaust its claim limit on dave, a
// user of b, and then post group_key_packages for a client of carol and
// one of dave, signed afresh each time: each is refused 429 rate_limited
// for dave's sake, and spends none of carol's limit, so a can still claim
// carol's KeyPackages a whole burst of times.
func TestRefusedClaimSpendsNoLimit(t *testing.T) {
	// b's claim limit does not refill while the test runs, however slowly.
	a, _ := twoProvidersWith(t, frozenClaimsOf("b.localhost", new(*claimClock)))
	pc := &provider.Client{Sender: "a.localhost", Keys: a.g.svc.Keys(), Fetcher: a.g.svc.Fetcher()}
	requester := []byte(moh.UserURI("a.localhost", "alice"))
	send := func(typ moh.ProviderRequestType, req wire.Marshaler) (int, moh.Code) {
		t.Helper()
		payload, err := wire.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		ans, err := pc.Send(t.Context(), "b.localhost", typ, payload)
		if err != nil {
			t.Fatal(err)
		}
		return ans.Status, ans.Response.Error.Code
	}
	claimUser := func(user string) (int, moh.Code) {
		return send(moh.ConnectionKeyPackages, &moh.ConnectionKeyPackagesRequest{Requester: requester,
			UserID: []byte(moh.UserURI("b.localhost", user))})
	}
	for i := range keyPackageBurst {
		if st, code := claimUser("dave"); st != http.StatusOK {
			t.Fatalf("claim %d of dave within the burst: %d %s", i+1, st, code)
		}
	}
	both := &moh.GroupKeyPackagesRequest{Requester: requester, ClientIDs: [][]byte{
		[]byte(moh.ClientURI("b.localhost", "carol", "phone")), []byte(moh.ClientURI("b.localhost", "dave", "phone"))}}
	const retries = 3
	for i := range retries {
		if st, code := send(moh.GroupKeyPackages, both); st != http.StatusTooManyRequests || code != moh.CodeRateLimited {
			t.Fatalf("claim %d of carol and dave, dave over his limit: %d %s, want 429 rate_limited", i+1, st, code)
		}
	}
	for i := range keyPackageBurst {
		if st, code := claimUser("carol"); st != http.StatusOK {
			t.Fatalf("claim %d of carol, within her burst: %d %s (the %d refused claims spent her limit)", i+1, st, code, retries)
		}
	}
}

// TestClaimLimitSurvivesReload spends a whole burst of claims of one user
// under a config, the gateway's peer claims and the local API's alike,
// and reloads it as Caddy does (the new config provisioned before the old
// one is cleaned up): the new config refuses the next claim, where a
// claim limit made anew with each config would have given a full burst
// again. The zone is released with the last config that uses it.
func TestClaimLimitSurvivesReload(t *testing.T) {
	target := moh.UserURI("example.com", "carol")
	// Every claim at one time: the zones do not refill while a config is
	// provisioned, however slowly.
	at := time.Now()
	for _, tc := range []struct {
		name string
		// load provisions a config on dir and returns a claim of target
		// under it, and its cleanup.
		load func(t *testing.T, ctx caddy.Context, dir string) (claim func() bool, cleanup func() error)
	}{
		{"peer claims", func(t *testing.T, ctx caddy.Context, dir string) (func() bool, func() error) {
			g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir}
			if err := g.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			claim := func() bool {
				ok, _ := g.ds.KeyPackageLimits.AllowAll([]string{"peer.example " + target}, at)
				return ok
			}
			return claim, g.Cleanup
		}},
		{"local claims", func(t *testing.T, ctx caddy.Context, dir string) (func() bool, func() error) {
			h := &LocalAPI{Providers: []string{"example.com"}, DataDir: dir}
			if err := h.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			// AllowClaim's key, at the test's time.
			return func() bool { ok, _ := h.claims.zone.Allow("alice "+target, at); return ok }, h.Cleanup
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			claim, cleanup := tc.load(t, ctx, dir)
			for i := range keyPackageBurst {
				if !claim() {
					t.Fatalf("claim %d within the burst refused", i+1)
				}
			}
			reloaded, cleanupReloaded := tc.load(t, ctx, dir)
			if err := cleanup(); err != nil {
				t.Fatal(err)
			}
			if reloaded() {
				t.Fatal("after a reload, a claim over the burst was admitted: the claim limit started over")
			}
			if err := cleanupReloaded(); err != nil {
				t.Fatal(err)
			}
			n := 0
			limitZonePool.Range(func(k, _ any) bool {
				if strings.HasPrefix(k.(string), dir+"\x00") {
					n++
				}
				return true
			})
			if n != 0 {
				t.Fatalf("%d limit zones of the data directory outlived every config using them", n)
			}
		})
	}
}
