package caddymodule

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
)

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
	createGroupAt(t, a, alice, gid)
	addAt(t, a, alice, false, bob)
	// The Welcome reaches b, which records a as the group's hub.
	if got := waitQueue(t, b, bob.uri, 1); len(got) != 1 {
		t.Fatalf("bob's queue at b holds %d messages, want the Welcome", len(got))
	}

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
				resp, err := b.client().Post("https://b.localhost:"+port+tc.path, "application/octet-stream", bytes.NewReader(req))
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				raw, _ := io.ReadAll(resp.Body)
				var r moh.DSResponse
				if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil {
					t.Fatalf("answer %d %x is not a DSResponse: %v", resp.StatusCode, raw, err)
				}
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
