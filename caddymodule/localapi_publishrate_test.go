package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestLocalAPIPublishRate requires POST /key_packages to count a user's
// published KeyPackages against publish_rate after publish_burst, across
// the user's clients: a publish past it is refused whole, 429
// rate_limited with Retry-After, stores nothing and spends nothing, while
// another user still publishes. A publish larger than a client's bound is
// 413 quota_exceeded, as before, not a 429 that no wait would lift.
func TestLocalAPIPublishRate(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{MaxKeyPackagesPerClient: 3, MaxKeyPackagesPerUser: 10,
		PublishRate: 4, PublishWindow: caddy.Duration(time.Hour), PublishBurst: 4})
	const laptopURI = "mimi://example.com/d/alice/laptop"
	phone, laptop, bob := newTestClient(t, aliceURI), newTestClient(t, laptopURI), newTestClient(t, bobURI)
	bindings := map[*testClient]*binding.ClientBinding{
		phone: s.bind(t, "alice", phone), laptop: s.bind(t, "alice", laptop), bob: s.bind(t, "bob", bob),
	}
	available := func(user, uri string) int {
		var l localapi.KeyPackageList
		st, body := s.do(t, user, http.MethodGet, "/key_packages?client="+url.QueryEscape(uri), nil)
		expectOK(t, st, body, &l)
		return len(l.KeyPackages)
	}
	for _, tc := range []struct {
		name   string
		user   string
		client *testClient
		n      int
		code   moh.Code // 0: published
		after  int      // the client's available KeyPackages after it
	}{
		{"within the burst", "alice", phone, 3, 0, 3},
		{"past the rate on another client", "alice", laptop, 2, moh.CodeRateLimited, 0},
		{"the refusal spent nothing", "alice", laptop, 1, 0, 1},
		{"past the rate", "alice", laptop, 1, moh.CodeRateLimited, 1},
		{"more than a client's bound", "alice", laptop, 4, moh.CodeQuotaExceeded, 1},
		{"another user", "bob", bob, 3, 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bindings[tc.client]
			entries := make([]localapi.KeyPackageEntry, tc.n)
			for i := range entries {
				entries[i] = localapi.KeyPackageEntry{KeyPackage: tc.client.keyPackage(t, tc.client.uri, b)}
			}
			body, err := wire.Marshal(&localapi.PublishRequest{ClientURI: []byte(tc.client.uri), KeyPackages: entries})
			if err != nil {
				t.Fatal(err)
			}
			st, out, h := s.send(t, tc.user, http.MethodPost, "/key_packages", body)
			if tc.code == 0 {
				expectOK(t, st, out, new(localapi.KeyPackageList))
			} else {
				expectRefusal(t, st, out, tc.code)
			}
			if tc.code == moh.CodeRateLimited {
				// One KeyPackage missing at 4 per hour: at most 900 s.
				if ra, err := strconv.Atoi(h.Get("Retry-After")); err != nil || ra < 1 || ra > 900 {
					t.Fatalf("Retry-After %q, want 1 to 900 seconds", h.Get("Retry-After"))
				}
			}
			if n := available(tc.user, tc.client.uri); n != tc.after {
				t.Fatalf("%d KeyPackages available, want %d", n, tc.after)
			}
		})
	}
}

// TestLocalAPIPublishRefusedByStore requires a publish that the store
// refuses after the publish rate admitted it (409 replay of a claimed
// KeyPackage, 413 quota_exceeded past a client's bound) to cost nothing
// of the user's publish rate: the user's next, valid, publish within the
// burst is stored, not refused 429.
func TestLocalAPIPublishRefusedByStore(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{MaxKeyPackagesPerClient: 3, MaxKeyPackagesPerUser: 10,
		PublishRate: 4, PublishWindow: caddy.Duration(time.Hour), PublishBurst: 4})
	alice, bob := newTestClient(t, aliceURI), newTestClient(t, bobURI)
	aliceBinding, bobBinding := s.bind(t, "alice", alice), s.bind(t, "bob", bob)
	claimed := alice.keyPackage(t, alice.uri, aliceBinding)
	fresh := func(c *testClient, b *binding.ClientBinding, n int) [][]byte {
		kps := make([][]byte, n)
		for i := range kps {
			kps[i] = c.keyPackage(t, c.uri, b)
		}
		return kps
	}
	for _, tc := range []struct {
		name   string
		user   string
		client *testClient
		kps    [][]byte
		code   moh.Code // 0: published
		claim  bool     // claim the client's KeyPackage after the step
	}{
		{"a KeyPackage, then claimed", "alice", alice, [][]byte{claimed}, 0, true},
		{"the claimed KeyPackage again", "alice", alice, [][]byte{claimed}, moh.CodeReplay, false},
		{"the rest of the burst after a replay", "alice", alice, fresh(alice, aliceBinding, 3), 0, false},
		{"past the burst", "alice", alice, fresh(alice, aliceBinding, 1), moh.CodeRateLimited, false},
		{"half the burst", "bob", bob, fresh(bob, bobBinding, 2), 0, false},
		{"past the client's bound", "bob", bob, fresh(bob, bobBinding, 2), moh.CodeQuotaExceeded, false},
		{"the client's bound after a quota refusal, then claimed", "bob", bob, fresh(bob, bobBinding, 1), 0, true},
		{"the last of the burst", "bob", bob, fresh(bob, bobBinding, 1), 0, false},
		{"past the burst after a quota refusal", "bob", bob, fresh(bob, bobBinding, 1), moh.CodeRateLimited, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			entries := make([]localapi.KeyPackageEntry, len(tc.kps))
			for i, kp := range tc.kps {
				entries[i] = localapi.KeyPackageEntry{KeyPackage: kp}
			}
			st, out := s.post(t, tc.user, "/key_packages", &localapi.PublishRequest{ClientURI: []byte(tc.client.uri), KeyPackages: entries})
			if tc.code == 0 {
				expectOK(t, st, out, new(localapi.KeyPackageList))
			} else {
				expectRefusal(t, st, out, tc.code)
			}
			if tc.claim {
				if _, err := s.h.svc.Store().ClaimKeyPackage(t.Context(), tc.client.uri, uint16(testSuite)); err != nil {
					t.Fatalf("claiming a KeyPackage: %v", err)
				}
			}
		})
	}
}

// TestLocalAPIPublishRateOptions requires publish_rate and publish_burst
// to parse from the Caddyfile, to default so that a user fills
// max_key_packages_per_user at once, and a burst below
// max_key_packages_per_client, which no client's full publish could
// pass, to be refused.
func TestLocalAPIPublishRateOptions(t *testing.T) {
	t.Run("caddyfile", func(t *testing.T) {
		for _, tc := range []struct {
			name, input string
			rate, burst int
			window      time.Duration
			wantErr     string
		}{
			{"both", "publish_rate 100/1d\n\tpublish_burst 500", 100, 500, 24 * time.Hour, ""},
			{"rate only", "publish_rate 10/1m", 10, 0, time.Minute, ""},
			{"rate without a window", "publish_rate 10", 0, 0, 0, "invalid publish_rate '10'"},
			{"rate zero", "publish_rate 0/1h", 0, 0, 0, "invalid publish_rate '0/1h'"},
			{"burst zero", "publish_burst 0", 0, 0, 0, "invalid publish_burst '0'"},
			{"burst without value", "publish_burst", 0, 0, 0, "wrong argument count"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				h := new(LocalAPI)
				err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("mimi_local {\n\tprovider a.example\n\t" + tc.input + "\n}"))
				if !parsedAsWanted(t, err, tc.wantErr) {
					return
				}
				if h.PublishRate != tc.rate || time.Duration(h.PublishWindow) != tc.window || h.PublishBurst != tc.burst {
					t.Fatalf("parsed %d/%s burst %d, want %d/%s burst %d", h.PublishRate, time.Duration(h.PublishWindow),
						h.PublishBurst, tc.rate, tc.window, tc.burst)
				}
			})
		}
	})
	t.Run("json", func(t *testing.T) {
		const in = `{"providers":["example.com"],"publish_rate":100,"publish_window":86400000000000,"publish_burst":500}`
		var h LocalAPI
		dec := json.NewDecoder(strings.NewReader(in))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&h); err != nil {
			t.Fatal(err)
		}
		if err := h.Validate(); err != nil {
			t.Fatal(err)
		}
		if out, err := json.Marshal(&h); err != nil || string(out) != in {
			t.Fatalf("round trip: %s, %v; want %s", out, err, in)
		}
	})
	t.Run("validate", func(t *testing.T) {
		for _, tc := range []struct {
			name                          string
			rate, burst, perClient, perUs int
			window                        time.Duration
			wantErr                       string
		}{
			{"defaults", 0, 0, 0, 0, 0, ""},
			{"burst at the per-client bound", 10, 256, 0, 0, time.Hour, ""},
			{"burst below the default per-client bound", 10, 255, 0, 0, time.Hour, "publish_burst"},
			{"burst below the per-client bound", 10, 9, 10, 0, time.Hour, "publish_burst"},
			{"burst at a small per-user bound", 10, 20, 0, 20, time.Hour, ""},
			{"negative rate", -1, 0, 0, 0, time.Hour, "publish_rate"},
			{"negative burst", 0, -1, 0, 0, 0, "publish_burst"},
			{"below the least rate", 1, 0, 0, 0, 1 << 62, "publish_rate"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				h := &LocalAPI{Providers: []string{"example.com"}, PublishRate: tc.rate, PublishWindow: caddy.Duration(tc.window),
					PublishBurst: tc.burst, MaxKeyPackagesPerClient: tc.perClient, MaxKeyPackagesPerUser: tc.perUs}
				wantValidate(t, h, tc.wantErr)
			})
		}
	})
	t.Run("defaults", func(t *testing.T) {
		for _, tc := range []struct {
			name        string
			h           LocalAPI
			rate, burst int
			window      time.Duration
		}{
			{"none set", LocalAPI{}, defaultPublishes, localapi.DefaultMaxKeyPackagesPerUser, time.Hour},
			{"a larger per-user bound", LocalAPI{MaxKeyPackagesPerUser: 5000}, defaultPublishes, 5000, time.Hour},
			{"a larger rate", LocalAPI{PublishRate: 4000, PublishWindow: caddy.Duration(time.Minute)}, 4000, 4000, time.Minute},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s := newLocalServer(t, &tc.h)
				if s.h.PublishRate != tc.rate || time.Duration(s.h.PublishWindow) != tc.window || s.h.PublishBurst != tc.burst {
					t.Fatalf("%d/%s burst %d, want %d/%s burst %d", s.h.PublishRate, time.Duration(s.h.PublishWindow),
						s.h.PublishBurst, tc.rate, tc.window, tc.burst)
				}
			})
		}
	})
}
