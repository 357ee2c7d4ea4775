package integration

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestRelayLimitOverHTTPS runs the relay limit in Caddy: b.localhost,
// reloaded with a small relay_limit and no rate_limit zone, relays its
// client's requests for a group hosted on a.localhost (which limits
// nothing) until the client's address has spent its burst; then b answers
// 429 rate_limited with Retry-After itself, whichever leaf and key the
// request claims and whichever relayed endpoint it uses. A client at
// another address has its own budget, until the hub's bound is spent.
// Without the limit b relayed every request, so anyone reaching it could
// make it flood the hub.
func TestRelayLimitOverHTTPS(t *testing.T) {
	startCaddy(t)
	base := baseConfig()
	const limit = "\t\tmax_body 64KiB\n"
	if !strings.Contains(base, limit) {
		t.Fatal("b's max_body line is not in the configuration")
	}
	limited := strings.Replace(base, limit, limit+"\t\trelay_limit {\n\t\t\trate 1/1h\n\t\t\tburst 2\n\t\t\thub_rate 2/1h\n\t\t\thub_burst 3\n\t\t}\n", 1)
	loadConfig(t, limited, "a.localhost", "b.localhost")

	alice := newMIMIClient(t, issuerOf(t, "a.localhost"), "alice", "relaylimit", false)
	bob := newMIMIClientAt(t, issuerOf(t, "b.localhost"), "b.localhost", "bob", "relaylimit", false)
	gid := alice.hostGroupWith(t, bob)
	// The Welcome reaches b, which records a as the group's hub.
	deadline := time.Now().Add(30 * time.Second)
	for len(fetchQueue(t, bob, "bob", 0, 5)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the Welcome did not reach bob's queue at b")
		}
	}

	// A client at another loopback address than 127.0.0.1.
	other := client(tls.VersionTLS13)
	dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	other.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, httpsAddr)
	}
	_, stranger, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	info := moh.RequestBody{Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}
	token := random32(t)
	download := moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: gid, Token: token}}
	for i, tc := range []struct {
		name   string
		client *http.Client
		signer crypto.Signer
		leaf   uint32
		path   string
		body   moh.RequestBody
		status int // the hub's answer when relayed; 429 when b refuses
		reason string
	}{
		{"first request of the client", client(tls.VersionTLS13), bob.signer, 1, "/external_commit_information", info, http.StatusOK, ""},
		{"second request, within the burst", client(tls.VersionTLS13), bob.signer, 1, "/external_commit_information", info, http.StatusOK, ""},
		{"third request, over the client's bound", client(tls.VersionTLS13), bob.signer, 1, "/external_commit_information", info,
			http.StatusTooManyRequests, "for your address"},
		{"another leaf and key, same address", client(tls.VersionTLS13), stranger, 7, "/external_commit_information", info,
			http.StatusTooManyRequests, "for your address"},
		{"a streamed endpoint, same address", client(tls.VersionTLS13), bob.signer, 1, "/attachment_download", download,
			http.StatusTooManyRequests, "for your address"},
		{"another address", other, bob.signer, 1, "/external_commit_information", info, http.StatusOK, ""},
		{"another address, over the hub's bound", other, bob.signer, 1, "/external_commit_information", info,
			http.StatusTooManyRequests, "to the group's hub a.localhost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ds.SignRequest(suite, tc.signer, tc.body, ds.ClientSignature(tc.leaf, time.Now().Add(time.Duration(i)*time.Second)))
			if err != nil {
				t.Fatal(err)
			}
			resp, raw := get(t, tc.client, http.MethodPost, "https://b.localhost:9443"+tc.path, "application/octet-stream", req)
			var r moh.DSResponse
			if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil {
				t.Fatalf("answer %d %x is not a DSResponse: %v", resp.StatusCode, raw, err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("answer %d %s (%s), want %d", resp.StatusCode, r.Error.Code, r.Error.Message, tc.status)
			}
			if tc.status != http.StatusTooManyRequests {
				return
			}
			if r.Error.Code != moh.CodeRateLimited || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(r.Error.Message), tc.reason) {
				t.Fatalf("429 %s %q with Retry-After %q, want b's rate_limited %q with one", r.Error.Code, r.Error.Message,
					resp.Header.Get("Retry-After"), tc.reason)
			}
		})
	}
}

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
	loadConfig(t, limited, "a.localhost", "b.localhost")

	alice := newMIMIClient(t, issuerOf(t, "a.localhost"), "alice", "relay-limit", false)
	bob := newMIMIClientAt(t, issuerOf(t, "b.localhost"), "b.localhost", "bob", "relay-limit", false)
	gid := alice.hostGroupWith(t, bob)
	// b records a as the group's hub when the Welcome arrives.
	bob.joinFromQueue(t, "bob")

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
