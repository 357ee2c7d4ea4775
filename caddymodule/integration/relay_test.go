package integration

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestRelayRetryAfter checks that a follower relaying a client's request
// passes on the Retry-After of the hub's 429 (PROFILE §3: 429 carries
// Retry-After). The hub, a.localhost, limits /external_commit_information
// and /attachment_download per client address to one an hour each; the
// follower, b.localhost, relays bob's requests, all from b's address: the
// second of each is refused by the hub, and bob must learn when to try
// again.
func TestRelayRetryAfter(t *testing.T) {
	startCaddy(t)
	base := baseConfig()
	limited := strings.Replace(base, "\t\tds_domain a.localhost:9443\n", `		ds_domain a.localhost:9443
		rate_limit relay_test {
			key remote_ip
			rate 1/1h
			endpoints external_commit_information
		}
		rate_limit relay_test_download {
			key remote_ip
			rate 1/1h
			endpoints attachment_download
		}
`, 1)
	if limited == base {
		t.Fatal("a.localhost's ds_domain line not found in the configuration")
	}
	env.tester.InitServer(limited, "caddyfile")
	t.Cleanup(func() { env.tester.InitServer(base, "caddyfile") })
	if t.Failed() {
		t.FailNow()
	}
	waitTLS(t, "a.localhost")
	waitTLS(t, "b.localhost")

	alice := newMIMIClient(t, issuerOf(t, "a.localhost"), "alice", "relay-limit", false)
	bob := newMIMIClientAt(t, issuerOf(t, "b.localhost"), "b.localhost", "bob", "relay-limit", false)
	gid := random32(t)[:16]
	m := alice.newGroup(t, gid)
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "create_group", alice.sign(t, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: gid,
		LeafNode: alice.kp.LeafNode, GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}}, 0))
	alice.m = m
	res := alice.commit(t, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: bob.kp})
	mustOK(t, "add_users of a client of b", alice.sign(t, groupUpdate(moh.AddUsers, res), 0))
	alice.m = res.Next
	// b records a as the group's hub when the Welcome arrives.
	welcome := fetchQueue(t, bob, "bob", 0, 10)
	for deadline := time.Now().Add(30 * time.Second); len(welcome) == 0 && time.Now().Before(deadline); {
		welcome = fetchQueue(t, bob, "bob", 0, 10)
	}
	if len(welcome) != 1 {
		t.Fatalf("bob's queue at b holds %d messages, want the Welcome", len(welcome))
	}
	w, err := mls.DecodeMLSMessage(welcome[0].Message)
	if err != nil || w.WireFormat != mls.WireFormatWelcome {
		t.Fatalf("bob's message is not the Welcome: %v", err)
	}
	if bob.m, err = mls.JoinFromWelcome(w.Welcome, mls.WelcomeOptions{KeyPackage: bob.kp, InitKey: bob.initKey,
		LeafKey: bob.leafKey, Signer: bob.signer}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		path string
		body moh.RequestBody
	}{
		{"/external_commit_information", moh.RequestBody{Type: moh.ExternalCommitInfo,
			ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}},
		// Streamed (relayStream); an unknown token is not_found at the
		// hub until the limit is reached.
		{"/attachment_download", moh.RequestBody{Type: moh.AttachmentDownload,
			Attachment: moh.AttachmentRef{GroupID: gid, Token: random32(t)}}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			var resp *http.Response
			var raw []byte
			for range 3 {
				resp, raw = get(t, client(tls.VersionTLS13), http.MethodPost, "https://b.localhost:9443"+tc.path,
					"application/octet-stream", bob.sign(t, tc.body, 0))
				if resp.StatusCode == http.StatusTooManyRequests {
					break
				}
			}
			var r moh.DSResponse
			if resp.StatusCode != http.StatusTooManyRequests || wire.Unmarshal(raw, &r, "DSResponse") != nil || r.Error.Code != moh.CodeRateLimited {
				t.Fatalf("relayed request over the hub's limit: %d %x, want 429 rate_limited", resp.StatusCode, raw)
			}
			if ra := resp.Header.Get("Retry-After"); ra == "" || strings.Trim(ra, "0123456789") != "" {
				t.Fatalf("relayed 429 with Retry-After %q, want the hub's delay in seconds", ra)
			}
		})
	}
}
