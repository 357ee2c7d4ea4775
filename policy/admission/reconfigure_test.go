package admission

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/internal/redistest"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// TestOriginReconfigure checks that Reconfigure replaces an origin's fetch
// policy and logger in place: the refresh after it fetches the directory
// through the new policy (here, from another server) and logs to the new
// logger, and a token under the key it brings is accepted.
func TestOriginReconfigure(t *testing.T) {
	f := newPPFixture(t)
	ctx := context.Background()
	rotated, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
	if err != nil {
		t.Fatal(err)
	}
	rotatedIssuer, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: rotated})
	if err != nil {
		t.Fatal(err)
	}
	var firstDir, secondDir atomic.Pointer[[]byte]
	first, second := directoryOf(t, f.keys[privacypass.TypeBlindRSA]), directoryOf(t, rotated)
	firstDir.Store(&first)
	secondDir.Store(&second)
	url, firstPolicy := directoryServer(t, &firstDir)
	_, secondPolicy := directoryServer(t, &secondDir)
	// The second server is reached at the same URL, through its own
	// resolve entry.
	secondPolicy.AllowedPorts = append(secondPolicy.AllowedPorts, firstPolicy.AllowedPorts...)
	oldCore, oldLogs := observer.New(zapcore.InfoLevel)
	newCore, newLogs := observer.New(zapcore.InfoLevel)
	o, err := NewOrigin(ctx, OriginConfig{
		OriginConfig: privacypass.OriginConfig{IssuerName: "example.com", OriginInfo: []string{"ds.example.com"}, Spent: f.store},
		DirectoryURL: url, Fetch: firstPolicy, Logger: zap.New(oldCore),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	o.Reconfigure(secondPolicy, zap.New(newCore))
	oldLines := oldLogs.Len()
	if err := o.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	pl := newPolicy(t, Config{Origin: o, RequireToken: []string{"welcome_information"}}).Plan("welcome_information")
	challenge := challengeOf(t, pl.Before(ctx, &Request{}), privacypass.TypeBlindRSA)
	if err := pl.Before(ctx, &Request{Authorization: mintWith(t, rotatedIssuer.Issue, rotated, challenge)}); err != nil {
		t.Errorf("token under the key of the directory the new fetch policy reaches: %v", err)
	}
	if n := newLogs.FilterMessage("privacy pass origin ready").Len(); n != 1 {
		t.Errorf("the new logger has %d lines of the rebuilt origin, want 1", n)
	}
	if oldLogs.Len() != oldLines {
		t.Errorf("the old logger got %d lines after Reconfigure", oldLogs.Len()-oldLines)
	}
}

// TestCloseRestoresCommittedSettings checks the settings in force on a
// zone that several Policies hold (reloads): the newest committed
// Policy's, and after it closes (a configuration Caddy rejected after it
// committed, because another module failed) those of the newest
// committed Policy left, never those of a closed one.
func TestCloseRestoresCommittedSettings(t *testing.T) {
	burst := func(n int) ZoneConfig { return zoneCfg("z", KeyRemoteIP, n, time.Hour, "welcome_information") }
	for _, tc := range []struct {
		name        string
		bursts      []int // the Policies, oldest first, each committed unless in uncommitted
		close       []int // the Policies closed, in order
		uncommitted map[int]bool
		want        int // the burst in force after
	}{
		{"rejected after commit", []int{2, 100}, []int{1}, nil, 2},
		{"accepted reload", []int{2, 100}, []int{0}, nil, 100},
		{"rejected before commit", []int{2, 100}, []int{1}, map[int]bool{1: true}, 2},
		{"older of two rejected", []int{2, 5, 100}, []int{1}, nil, 100},
		{"two of a rejected config", []int{2, 5, 100}, []int{1, 2}, nil, 2},
		{"two of a rejected config, newest first", []int{2, 5, 100}, []int{2, 1}, nil, 2},
		{"reload, then back", []int{2, 100, 3}, []int{0, 1}, nil, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scope := t.TempDir()
			var ps []*Policy
			for i, b := range tc.bursts {
				p, err := New(Config{Scope: scope, Endpoints: gatewayEndpoints(), Zones: []ZoneConfig{burst(b)}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { p.Close() })
				if !tc.uncommitted[i] {
					if err := p.Commit(); err != nil {
						t.Fatal(err)
					}
				}
				ps = append(ps, p)
			}
			for _, i := range tc.close {
				if err := ps[i].Close(); err != nil {
					t.Fatal(err)
				}
			}
			var open *Policy
			for i, p := range ps {
				if !slices.Contains(tc.close, i) {
					open = p
				}
			}
			if _, got := open.Plan("welcome_information").pre[0].zone.rl.Limits(); got != tc.want {
				t.Errorf("burst %d in force, want %d", got, tc.want)
			}
		})
	}
}

// TestUncommitRestoresSettings checks Uncommit, what the mimi app's Stop
// does to a configuration Caddy rejects after starting it: the settings
// of the newest committed Policy left are in force again at once, while
// the uncommitted Policy still holds the zone (until Close); a Commit
// after it changes nothing, and uncommitting a Policy whose settings are
// not in force changes nothing either.
func TestUncommitRestoresSettings(t *testing.T) {
	for _, tc := range []struct {
		name      string
		bursts    []int // the Policies, oldest first, all committed
		uncommit  []int // the Policies uncommitted, in order
		recommit  bool  // Commit the uncommitted ones again
		wantBurst int
	}{
		{"newest uncommitted", []int{2, 100}, []int{1}, false, 2},
		{"newest uncommitted, then committed again", []int{2, 100}, []int{1}, true, 2},
		{"oldest uncommitted", []int{2, 100}, []int{0}, false, 100},
		{"two uncommitted, newest first", []int{2, 5, 100}, []int{2, 1}, false, 2},
		{"uncommitted twice", []int{2, 100}, []int{1, 1}, false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scope := t.TempDir()
			var ps []*Policy
			for _, b := range tc.bursts {
				p, err := New(Config{Scope: scope, Endpoints: gatewayEndpoints(),
					Zones: []ZoneConfig{zoneCfg("z", KeyRemoteIP, b, time.Hour, "welcome_information")}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { p.Close() })
				if err := p.Commit(); err != nil {
					t.Fatal(err)
				}
				ps = append(ps, p)
			}
			for _, i := range tc.uncommit {
				if err := ps[i].Uncommit(); err != nil {
					t.Fatal(err)
				}
				if tc.recommit {
					if err := ps[i].Commit(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, got := ps[0].Plan("welcome_information").pre[0].zone.rl.Limits(); got != tc.wantBurst {
				t.Errorf("burst %d in force, want %d", got, tc.wantBurst)
			}
			if n := zones.refs(ps[0].held[0]); n != len(ps) {
				t.Errorf("the zone has %d references, want %d: Uncommit released it", n, len(ps))
			}
		})
	}
}

// TestCloseRestoresLocalBuckets checks that closing a committed Policy
// that moved a zone to Redis puts the zone of the Policy left back on its
// local buckets: a budget spent in Redis by another gateway does not
// limit it.
func TestCloseRestoresLocalBuckets(t *testing.T) {
	srv := redistest.New(t)
	// Generous: a call to the running server cut short would fall back.
	rc := &ratelimit.RedisConfig{Addr: srv.Addr(), Timeout: 10 * time.Second, Prefix: "test:" + t.Name() + ":"}
	zone := func(redis bool) ZoneConfig {
		z := zoneCfg("z", KeyRemoteIP, 1, time.Hour, "ds_domain")
		if redis {
			z.Redis = rc
		}
		return z
	}
	scope := t.TempDir()
	running := newPolicy(t, Config{Scope: scope, Zones: []ZoneConfig{zone(false)}})
	rejected, err := New(Config{Scope: scope, Endpoints: gatewayEndpoints(), Zones: []ZoneConfig{zone(true)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := rejected.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := rejected.Close(); err != nil {
		t.Fatal(err)
	}
	// Another gateway spends the client's budget in Redis.
	other := newPolicy(t, Config{Scope: t.TempDir(), Zones: []ZoneConfig{zone(true)}})
	r := &Request{ClientIP: ip("192.0.2.9")}
	if err := other.Plan("ds_domain").Before(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if err := running.Plan("ds_domain").Before(context.Background(), r); err != nil {
		t.Errorf("the running Policy's local zone refused the client's first request: %v (the closed Policy's Redis setting is in force)", err)
	}
}
