package privacypass_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass/pptest"
)

// The live peer test runs @cloudflare/privacypass-ts through pp-peer (see
// package pptest), installed once per test binary and removed by TestMain.

func TestMain(m *testing.M) {
	code := m.Run()
	pptest.Remove()
	os.Exit(code)
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestPeerTokensAcceptedByOrigin: pp-peer (privacypass-ts client and issuer)
// mints tokens against challenges the Go Origin made; the Origin accepts
// them once and refuses a modified token, a token for another origin's
// challenge and a replay.
func TestPeerTokensAcceptedByOrigin(t *testing.T) {
	dir := pptest.Dir(t)
	goK2, goK1, _ := testKeys(t)
	// A fresh directory per run: the peer's install is shared across the
	// test binary (and -count runs), the key files are not.
	outDir, err := os.MkdirTemp(dir, "out-")
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		goKey := map[privacypass.TokenType]*privacypass.Key{privacypass.TypeBlindRSA: goK2, privacypass.TypeVOPRF: goK1}[typ]
		for _, source := range []string{"go-key", "peer-key"} {
			t.Run(typ.String()+"/"+source, func(t *testing.T) {
				ctx := context.Background()
				path := filepath.Join(outDir, source+"-"+typ.String()+".json")
				var key *privacypass.Key
				if source == "go-key" {
					if err := privacypass.WriteKeyFile(path, goKey); err != nil {
						t.Fatal(err)
					}
					key = goKey
				} else {
					pptest.Run(t, dir, 0, "keygen", "--type", typ.String()[5:], "--out", path)
					var err error
					if key, err = privacypass.ReadKeyFile(path); err != nil {
						t.Fatalf("reading pp-peer key file: %v", err)
					}
					if key.Type() != typ || !key.HasPrivate() {
						t.Fatal("pp-peer key file: wrong type or no private key")
					}
				}
				store := newMemStore()
				o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{key}, Spent: store, OriginInfo: []string{"ds.example"}})
				other := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{key}, Spent: store, OriginInfo: []string{"other.example"}})
				hdr, err := o.WWWAuthenticate()
				if err != nil {
					t.Fatal(err)
				}
				auths := lines(pptest.Run(t, dir, 0, "token", "--key", path, "--www-authenticate", hdr, "--count", "2"))
				if len(auths) != 2 {
					t.Fatalf("pp-peer printed %d tokens, want 2", len(auths))
				}
				otherHdr, err := other.WWWAuthenticate()
				if err != nil {
					t.Fatal(err)
				}
				foreign := lines(pptest.Run(t, dir, 0, "token", "--key", path, "--www-authenticate", otherHdr, "--quoted"))

				// Modified: flip one bit of the authenticator, re-encode.
				tok, err := privacypass.ParseAuthorization(auths[1])
				if err != nil {
					t.Fatalf("parsing pp-peer Authorization %q: %v", auths[1], err)
				}
				tok.Authenticator[len(tok.Authenticator)/2] ^= 0x10
				_, err = o.Redeem(ctx, privacypass.FormatAuthorization(tok))
				wantReason(t, err, privacypass.ReasonAuthenticator)

				// Another origin's challenge.
				_, err = o.Redeem(ctx, foreign[0])
				wantReason(t, err, privacypass.ReasonChallengeDigest)

				// Both genuine tokens once (the unquoted form privacypass-ts writes).
				for i, a := range auths {
					if _, err := o.Redeem(ctx, a); err != nil {
						t.Fatalf("token %d refused: %v", i, err)
					}
				}
				// The foreign token is fine at its own origin.
				if _, err := other.Redeem(ctx, foreign[0]); err != nil {
					t.Fatalf("foreign token refused at its origin: %v", err)
				}
				// Replays.
				for _, a := range auths {
					_, err = o.Redeem(ctx, a)
					wantReason(t, err, privacypass.ReasonReplay)
				}
			})
		}
	}
}

// TestGoIssuerWithPeerClient: pp-peer, as a client only, POSTs its
// TokenRequests to the Go Issuer over HTTP on 127.0.0.1 and finalizes the
// responses; the Go Origin accepts the tokens.
func TestGoIssuerWithPeerClient(t *testing.T) {
	dir := pptest.Dir(t)
	k2, k1, _ := testKeys(t)
	is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k2}, privacypass.IssuerKey{Key: k1})
	if err != nil {
		t.Fatal(err)
	}
	var requests int
	var mu sync.Mutex
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != privacypass.MediaTypeTokenRequest {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 1024))
		if err != nil {
			http.Error(w, "read", http.StatusBadRequest)
			return
		}
		resp, err := is.Issue(body)
		if err != nil {
			http.Error(w, string(privacypass.ReasonOf(err)), http.StatusUnprocessableEntity)
			return
		}
		mu.Lock()
		requests++
		mu.Unlock()
		w.Header().Set("Content-Type", privacypass.MediaTypeTokenResponse)
		_, _ = w.Write(resp)
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.Start()
	defer srv.Close()

	o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2, k1}})
	for _, k := range []*privacypass.Key{k2, k1} {
		path := filepath.Join(t.TempDir(), "pub.json")
		pub, err := privacypass.MarshalKeyFile(k, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, pub, 0o600); err != nil {
			t.Fatal(err)
		}
		hdr, err := o.WWWAuthenticate()
		if err != nil {
			t.Fatal(err)
		}
		auth := lines(pptest.Run(t, dir, 0, "token", "--key", path, "--www-authenticate", hdr, "--issuer-url", srv.URL+"/token-request"))
		if len(auth) != 1 {
			t.Fatalf("pp-peer printed %d tokens", len(auth))
		}
		if _, err := o.Redeem(context.Background(), auth[0]); err != nil {
			t.Fatalf("%s token issued over HTTP refused: %v", k.Type(), err)
		}
	}
	if requests != 2 {
		t.Fatalf("issuer answered %d requests, want 2", requests)
	}
}

// TestPeerVerifiesGoTokens: tokens made by the Go client and Go Issuer are
// accepted by privacypass-ts's origin verification, and a modified one is
// refused.
func TestPeerVerifiesGoTokens(t *testing.T) {
	dir := pptest.Dir(t)
	k2, k1, _ := testKeys(t)
	for _, k := range []*privacypass.Key{k2, k1} {
		t.Run(k.Type().String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key.json")
			if err := privacypass.WriteKeyFile(path, k); err != nil {
				t.Fatal(err)
			}
			o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k}})
			c := challengeFor(t, o, k.Type())
			tok := mint(t, k, c.TokenChallenge)
			chal := base64.URLEncoding.EncodeToString(c.TokenChallenge)
			if out := pptest.Run(t, dir, 0, "verify", "--key", path, "--challenge", chal, "--authorization", privacypass.FormatAuthorization(tok)); strings.TrimSpace(out) != "ACCEPT" {
				t.Fatalf("pp-peer verify: %q", out)
			}
			tok.Authenticator[0] ^= 1
			out := pptest.Run(t, dir, 1, "verify", "--key", path, "--challenge", chal, "--authorization", privacypass.FormatAuthorization(tok))
			if !strings.Contains(out, "REJECT") || !strings.Contains(out, "authenticator") {
				t.Fatalf("pp-peer verify of a modified token: %q", out)
			}
		})
	}
}

// TestPeerKeyFileFormat: a pp-peer key file written by the Go side has the
// fields pp-peer reads.
func TestPeerKeyFileFormat(t *testing.T) {
	k2, _, _ := testKeys(t)
	b, err := privacypass.MarshalKeyFile(k2, true)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"token_type", "private_key", "token_key", "token_key_id"} {
		if _, ok := m[f]; !ok {
			t.Errorf("key file lacks %s", f)
		}
	}
	if !strings.HasPrefix(m["private_key"].(string), "-----BEGIN PRIVATE KEY-----") {
		t.Error("type 2 private key is not PKCS#8 PEM")
	}
}
