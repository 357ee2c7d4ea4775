package caddymodule

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
)

// postDS POSTs body to url with c and decodes the answer, which must be a
// DSResponse whatever its status.
func postDS(t *testing.T, c *http.Client, url string, body []byte) (*http.Response, *moh.DSResponse) {
	t.Helper()
	resp, err := c.Post(url, "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r moh.DSResponse
	if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil {
		t.Fatalf("answer %d %x is not a DSResponse: %v", resp.StatusCode, raw, err)
	}
	return resp, &r
}

// TestRelayPassesRetryAfter: a follower relays its client's request to
// the group's hub and the hub's member zone refuses it with 429
// rate_limited; the client gets the 429 with the hub's Retry-After
// (PROFILE §3, docs/protocol.md §7: every 429 carries one), on the
// endpoints relayed whole and on the streamed attachment endpoints.
// Without it the client of a follower had no wait to respect.
func TestRelayPassesRetryAfter(t *testing.T) {
	a, b := twoProviders(t)
	a.g.RateLimits = []*RateLimitZone{
		{Name: "info_per_member", Key: "member", Events: 1, Window: caddy.Duration(time.Hour),
			Endpoints: []string{"external_commit_information"}},
		{Name: "download_per_member", Key: "member", Events: 1, Window: caddy.Duration(time.Hour),
			Endpoints: []string{"attachment_download"}},
	}
	rebuildPolicy(t, a.g, func(*admission.Config) {})

	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid := make([]byte, 16)
	rand.Read(gid)
	// The Welcome reaches b, which records a as the group's hub.
	hostWithPeer(t, a, b, alice, bob, gid)

	token := make([]byte, 32)
	rand.Read(token)
	for _, tc := range []struct {
		path  string
		body  moh.RequestBody
		first int // the hub's answer within the limit
	}{
		{"/external_commit_information", moh.RequestBody{Type: moh.ExternalCommitInfo,
			ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}, http.StatusOK},
		{"/attachment_download", moh.RequestBody{Type: moh.AttachmentDownload,
			Attachment: moh.AttachmentRef{GroupID: gid, Token: token}}, http.StatusNotFound},
	} {
		t.Run(tc.path, func(t *testing.T) {
			post := func(i int) (*http.Response, moh.Code) {
				req, err := ds.SignRequest(peerSuite, bob.signer, tc.body, ds.ClientSignature(1, time.Now().Add(time.Duration(i)*time.Second)))
				if err != nil {
					t.Fatal(err)
				}
				_, port, _ := net.SplitHostPort(b.addr)
				resp, r := postDS(t, b.client(), "https://b.localhost:"+port+tc.path, req)
				return resp, r.Error.Code
			}
			if resp, code := post(0); resp.StatusCode != tc.first {
				t.Fatalf("first request, relayed: %d %s, want %d", resp.StatusCode, code, tc.first)
			}
			resp, code := post(1)
			if resp.StatusCode != http.StatusTooManyRequests || code != moh.CodeRateLimited {
				t.Fatalf("second request, relayed: %d %s, want 429 rate_limited", resp.StatusCode, code)
			}
			if ra := resp.Header.Get("Retry-After"); ra == "" {
				t.Fatal("the hub's 429 reached the client without Retry-After")
			}
		})
	}
}

// TestRelayLimit: with no rate_limit zone configured, a follower relays
// its clients' requests to the group's hub within the relay limit, per
// client address and per hub: past it the client gets 429 rate_limited
// with Retry-After from the follower and the hub sees nothing. Claiming
// another leaf, with another key, or using another relayed endpoint does
// not escape the client's bound; a second client address still has its
// own budget, until the hub's bound is spent. Without the limit anyone
// reaching the follower made it send the hub requests without bound.
func TestRelayLimit(t *testing.T) {
	a, b := twoProviders(t)
	if err := b.g.relay.release(); err != nil {
		t.Fatal(err)
	}
	b.g.RelayLimit = &RelayLimit{Events: 1, Window: caddy.Duration(time.Hour), Burst: 2,
		HubEvents: 2, HubWindow: caddy.Duration(time.Hour), HubBurst: 3}
	var err error
	if b.g.relay, err = acquireRelayLimiter(b.g.DataDir, b.g.RelayLimit); err != nil {
		t.Fatal(err)
	}
	var relayed atomic.Int64 // requests reaching the hub from b
	count := func(_ http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/external_commit_information" || r.URL.Path == "/attachment_download" {
			relayed.Add(1)
		}
		return false
	}
	a.intercept.Store(&count)

	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid := make([]byte, 16)
	rand.Read(gid)
	hostWithPeer(t, a, b, alice, bob, gid)

	// A client at another loopback address than the test's 127.0.0.1.
	other := &http.Client{Timeout: 20 * time.Second, Transport: b.client().Transport.(*http.Transport).Clone()}
	dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	other.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, b.addr)
	}
	_, stranger, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	info := moh.RequestBody{Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}
	token := make([]byte, 32)
	rand.Read(token)
	download := moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: gid, Token: token}}
	for i, tc := range []struct {
		name    string
		client  *http.Client
		signer  crypto.Signer
		leaf    uint32
		path    string
		body    moh.RequestBody
		status  int
		relayed int64 // requests the hub has seen after this one
	}{
		{"first request of the client", b.client(), bob.signer, 1, "/external_commit_information", info, http.StatusOK, 1},
		{"second request, within the burst", b.client(), bob.signer, 1, "/external_commit_information", info, http.StatusOK, 2},
		{"third request, over the client's bound", b.client(), bob.signer, 1, "/external_commit_information", info, http.StatusTooManyRequests, 2},
		{"another leaf and key, same address", b.client(), stranger, 7, "/external_commit_information", info, http.StatusTooManyRequests, 2},
		{"a streamed endpoint, same address", b.client(), bob.signer, 1, "/attachment_download", download, http.StatusTooManyRequests, 2},
		{"another address", other, bob.signer, 1, "/external_commit_information", info, http.StatusOK, 3},
		{"another address, over the hub's bound", other, bob.signer, 1, "/external_commit_information", info, http.StatusTooManyRequests, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ds.SignRequest(peerSuite, tc.signer, tc.body, ds.ClientSignature(tc.leaf, time.Now().Add(time.Duration(i)*time.Second)))
			if err != nil {
				t.Fatal(err)
			}
			_, port, _ := net.SplitHostPort(b.addr)
			resp, r := postDS(t, tc.client, "https://b.localhost:"+port+tc.path, req)
			if resp.StatusCode != tc.status {
				t.Fatalf("answer %d %s (%s), want %d", resp.StatusCode, r.Error.Code, r.Error.Message, tc.status)
			}
			if tc.status == http.StatusTooManyRequests {
				if r.Error.Code != moh.CodeRateLimited || resp.Header.Get("Retry-After") == "" {
					t.Fatalf("429 %s with Retry-After %q, want rate_limited with one", r.Error.Code, resp.Header.Get("Retry-After"))
				}
			}
			if got := relayed.Load(); got != tc.relayed {
				t.Fatalf("the hub has seen %d relayed requests, want %d", got, tc.relayed)
			}
		})
	}
}

// TestRelayLimitRates checks the relay limit's defaults and its checks of
// a configuration.
func TestRelayLimitRates(t *testing.T) {
	hour := caddy.Duration(time.Hour)
	for _, tc := range []struct {
		name string
		l    *RelayLimit
		want relayRates
		err  string
	}{
		{"defaults", nil, relayRates{rate: 50, burst: 100, hubRate: 500, hubBurst: 1000}, ""},
		{"a rate without burst", &RelayLimit{Events: 5, Window: caddy.Duration(time.Second)},
			relayRates{rate: 5, burst: 5, hubRate: 500, hubBurst: 1000}, ""},
		{"both set", &RelayLimit{Events: 1, Window: hour, Burst: 2, HubEvents: 2, HubWindow: hour, HubBurst: 3},
			relayRates{rate: 1.0 / 3600, burst: 2, hubRate: 2.0 / 3600, hubBurst: 3}, ""},
		{"a hub rate at the client's", &RelayLimit{HubEvents: 50}, relayRates{}, "must be above the client bound"},
		{"a hub burst at the client's", &RelayLimit{HubBurst: 100}, relayRates{}, "must be above the client bound"},
		{"a negative rate", &RelayLimit{Events: -1}, relayRates{}, "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.l.rates()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("rates() = %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("rates() = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestRelayLimitBothOrNeither checks that a relayed request spends a
// token of its client's bucket and of its hub's, or of neither: a request
// refused for the hub's bound leaves its client's budget as it was, so
// the client's next request, to another hub, is still relayed. Before,
// the client's token was taken first and kept when the hub's bucket was
// empty, and a client's requests refused while a hub was busy used up its
// own budget for every hub.
func TestRelayLimitBothOrNeither(t *testing.T) {
	hour := caddy.Duration(time.Hour)
	rl, err := acquireRelayLimiter(t.TempDir(), &RelayLimit{Events: 1, Window: hour, Burst: 2,
		HubEvents: 2, HubWindow: hour, HubBurst: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rl.release(); err != nil {
			t.Error(err)
		}
	})
	now := time.Unix(1_800_000_000, 0)
	first, second := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	for _, tc := range []struct {
		name   string
		client netip.Addr
		hub    string
		refuse string // in the refusal's message; empty: relayed
	}{
		{"first client, within its burst", first, "hub.example", ""},
		{"first client, its burst's last token", first, "hub.example", ""},
		{"first client, over its bound", first, "hub.example", "for your address"},
		{"second client, the hub's last token", second, "hub.example", ""},
		{"second client, over the hub's bound", second, "hub.example", "group's hub hub.example"},
		{"second client, another hub", second, "other.example", ""},
		{"second client, over its bound", second, "other.example", "for your address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := rl.allow(tc.client, tc.hub, now)
			if tc.refuse == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.refuse) {
				t.Fatalf("allow = %v, want a refusal %q", err, tc.refuse)
			}
			var r *admission.Refusal
			if !errors.As(err, &r) || r.Err.Code != moh.CodeRateLimited || r.RetryAfter <= 0 {
				t.Fatalf("refusal %v, want rate_limited with a Retry-After", err)
			}
		})
	}
}
