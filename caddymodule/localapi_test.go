package caddymodule

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sync/semaphore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

const (
	localProvider = "example.com"
	aliceURI      = "mimi://example.com/d/alice/phone"
	bobURI        = "mimi://example.com/d/bob/laptop"
	testSuite     = mls.X25519AES128GCMSHA256Ed25519
)

// localServer is a mimi_local handler over a real SQLite store in a
// temporary data directory, served over TLS by httptest. The header
// X-Test-User stands in for an authentication handler: it sets
// {http.auth.user.id} as basic_auth does.
type localServer struct {
	h   *LocalAPI
	srv *httptest.Server
}

func newLocalServer(t *testing.T, h *LocalAPI) *localServer {
	t.Helper()
	return newLocalServerWith(t, h, nil)
}

// newLocalServerWith is newLocalServer, calling setup, when not nil, with
// h once it is provisioned and before it serves.
func newLocalServerWith(t *testing.T, h *LocalAPI, setup func(*LocalAPI)) *localServer {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if len(h.Providers) == 0 {
		h.Providers = []string{localProvider}
	}
	if h.DataDir == "" {
		h.DataDir = t.TempDir()
		os.Chmod(h.DataDir, 0o700) //nolint:errcheck // else the service tightens it and says so
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cleanup() })
	if setup != nil {
		setup(h)
	}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusTeapot)
		return nil
	})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repl := caddyhttp.NewTestReplacer(r)
		if u := r.Header.Get("X-Test-User"); u != "" {
			repl.Set("http.auth.user.id", u)
		}
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return &localServer{h: h, srv: srv}
}

// do sends a request as user (none when empty) and returns the status and
// body.
func (s *localServer) do(t *testing.T, user, method, path string, body []byte) (int, []byte) {
	t.Helper()
	status, out, _ := s.send(t, user, method, path, body)
	return status, out
}

// send is do, also returning the answer's header.
func (s *localServer) send(t *testing.T, user, method, path string, body []byte) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, s.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	if user != "" {
		req.Header.Set("X-Test-User", user)
	}
	resp, out := exchangeHTTP(t, s.srv.Client(), req)
	return resp.StatusCode, out, resp.Header
}

// exchangeHTTP sends req with c and returns the answer with its whole body.
func exchangeHTTP(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, out
}

// claimAs POSTs user's claim of target's KeyPackages and returns the
// status, body and header of the answer.
func (s *localServer) claimAs(t *testing.T, user, target string) (int, []byte, http.Header) {
	t.Helper()
	body, err := wire.Marshal(&localapi.ClaimRequest{CipherSuite: uint16(testSuite), Target: []byte(target)})
	if err != nil {
		t.Fatal(err)
	}
	return s.send(t, user, http.MethodPost, "/claim_key_packages", body)
}

// post encodes v and POSTs it.
func (s *localServer) post(t *testing.T, user, path string, v wire.Marshaler) (int, []byte) {
	t.Helper()
	body, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return s.do(t, user, http.MethodPost, path, body)
}

// expectOK decodes a 200 answer into v.
func expectOK(t *testing.T, status int, body []byte, v wire.Unmarshaler) {
	t.Helper()
	if status != http.StatusOK {
		t.Fatalf("status %d, answer %s", status, describeAnswer(body))
	}
	if err := wire.Unmarshal(body, v, "answer"); err != nil {
		t.Fatalf("answer does not decode: %v (%x)", err, body)
	}
}

// expectRefusal checks a DSResponse error answer with code and its status.
func expectRefusal(t *testing.T, status int, body []byte, code moh.Code) {
	t.Helper()
	var resp moh.DSResponse
	if err := wire.Unmarshal(body, &resp, "DSResponse"); err != nil || resp.Type != moh.ResponseError {
		t.Fatalf("status %d with %x, want a DSResponse error", status, body)
	}
	if resp.Error.Code != code || status != statusOf(code) {
		t.Fatalf("got %d %s (%q), want %d %s", status, resp.Error.Code, resp.Error.Message, statusOf(code), code)
	}
}

func describeAnswer(body []byte) string {
	var resp moh.DSResponse
	if wire.Unmarshal(body, &resp, "DSResponse") == nil && resp.Type == moh.ResponseError {
		return fmt.Sprintf("%s: %s", resp.Error.Code, resp.Error.Message)
	}
	return fmt.Sprintf("%x", body)
}

// testClient is an MLS client's signature key.
type testClient struct {
	uri    string
	signer crypto.Signer
	pub    []byte
}

func newTestClient(t *testing.T, uri string) *testClient {
	t.Helper()
	signer, pub, err := testSuite.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	return &testClient{uri: uri, signer: signer, pub: pub}
}

// keyPackage returns an encoded KeyPackage of c whose leaf carries b (none
// when nil) and has identity identity.
func (c *testClient) keyPackage(t *testing.T, identity string, b *binding.ClientBinding) []byte {
	t.Helper()
	random := func() []byte {
		r := make([]byte, 32)
		rand.Read(r)
		return r
	}
	_, encPub, err := testSuite.DeriveKeyPair(random())
	if err != nil {
		t.Fatal(err)
	}
	_, initPub, err := testSuite.DeriveKeyPair(random())
	if err != nil {
		t.Fatal(err)
	}
	leaf := &mls.LeafNode{
		EncryptionKey: encPub,
		SignatureKey:  c.pub,
		Credential:    mls.Credential{Type: mls.CredentialBasic, Identity: []byte(identity)},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10},
			CipherSuites: []mls.CipherSuite{testSuite}, Credentials: []mls.CredentialType{mls.CredentialBasic}},
		Source:   mls.SourceKeyPackage,
		Lifetime: mls.Lifetime{NotBefore: uint64(time.Now().Add(-time.Hour).Unix()), NotAfter: uint64(time.Now().Add(90 * 24 * time.Hour).Unix())},
	}
	if b != nil {
		if err := binding.Attach(leaf, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := leaf.Sign(testSuite, c.signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: testSuite, InitKey: initPub, LeafNode: *leaf}
	if err := kp.Sign(c.signer); err != nil {
		t.Fatal(err)
	}
	enc, err := wire.Marshal(kp)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// bind gets a binding for c through the API as user.
func (s *localServer) bind(t *testing.T, user string, c *testClient) *binding.ClientBinding {
	t.Helper()
	var a localapi.BindingAnswer
	st, body := s.post(t, user, "/binding", &localapi.BindingRequest{ClientURI: []byte(c.uri), SignatureKey: c.pub})
	expectOK(t, st, body, &a)
	return &a.Binding
}

func TestLocalAPIBinding(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{MaxBindingLifetime: caddy.Duration(24 * time.Hour)})
	alice := newTestClient(t, aliceURI)
	// The first request opens the service and its first key (no gateway
	// opened it before), so now is taken after it.
	b := s.bind(t, "alice", alice)
	now := time.Now()
	checker := binding.Checker{Domains: []string{localProvider}, Local: s.h.svc.Keys()}
	if _, err := checker.Verify(t.Context(), []byte(aliceURI), alice.pub, b, now, provider.LookupOptions{}); err != nil {
		t.Fatalf("issued binding does not verify: %v", err)
	}
	if got, limit := int64(b.NotAfter), now.Add(24*time.Hour).Unix(); got > limit+1 || got < limit-5 {
		t.Errorf("not_after %d, want the 24h cap %d", got, limit)
	}

	t.Run("shorter not_after kept", func(t *testing.T) {
		want := uint64(now.Add(time.Hour).Unix())
		var a localapi.BindingAnswer
		st, body := s.post(t, "alice", "/binding", &localapi.BindingRequest{ClientURI: []byte(aliceURI), SignatureKey: alice.pub, NotAfter: want})
		expectOK(t, st, body, &a)
		if a.Binding.NotAfter != want {
			t.Errorf("not_after %d, want %d", a.Binding.NotAfter, want)
		}
	})

	for _, tc := range []struct {
		name, user, uri string
		notAfter        uint64
		code            moh.Code
	}{
		{"another user's client", "alice", bobURI, 0, moh.CodeForbidden},
		{"another provider's client", "alice", "mimi://other.example/d/alice/phone", 0, moh.CodeForbidden},
		{"no authenticated user", "", aliceURI, 0, moh.CodeForbidden},
		{"not a client URI", "alice", "mimi://example.com/u/alice", 0, moh.CodeMalformed},
		{"not_after in the past", "alice", aliceURI, 1000, moh.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := s.post(t, tc.user, "/binding", &localapi.BindingRequest{ClientURI: []byte(tc.uri), SignatureKey: alice.pub, NotAfter: tc.notAfter})
			expectRefusal(t, st, body, tc.code)
		})
	}
}

func TestLocalAPIRequestChecks(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{MaxBody: 1024})
	good, _ := wire.Marshal(&localapi.AckRequest{ClientURI: []byte(aliceURI)})
	for _, tc := range []struct {
		name, method, path, ctype string
		body                      []byte
		status                    int
		code                      moh.Code
	}{
		{"wrong method", http.MethodGet, "/binding", "", nil, 405, moh.CodeMethodNotAllowed},
		{"wrong content type", http.MethodPost, "/messages/ack", "text/plain", good, 415, moh.CodeUnsupportedMedia},
		{"body over max_body", http.MethodPost, "/key_packages", "application/octet-stream", make([]byte, 1025), 413, moh.CodeTooLarge},
		{"other version", http.MethodPost, "/messages/ack", "application/octet-stream", append([]byte{0, 2}, good[2:]...), 400, moh.CodeUnsupportedVersion},
		{"trailing byte", http.MethodPost, "/messages/ack", "application/octet-stream", append(good[:len(good):len(good)], 0), 400, moh.CodeMalformed},
		{"bad query", http.MethodGet, "/messages?client=" + url.QueryEscape(aliceURI) + "&after=x", "", nil, 400, moh.CodeMalformed},
		{"undecodable query value", http.MethodGet, "/messages?client=" + url.QueryEscape(aliceURI) + "&wait=30%", "", nil, 400, moh.CodeMalformed},
		{"semicolon in query", http.MethodGet, "/messages?client=" + url.QueryEscape(aliceURI) + "&wait=30;after=1", "", nil, 400, moh.CodeMalformed},
		{"limit over 1000", http.MethodGet, "/messages?client=" + url.QueryEscape(aliceURI) + "&limit=1001", "", nil, 400, moh.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, s.srv.URL+tc.path, bytes.NewReader(tc.body))
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			req.Header.Set("X-Test-User", "alice")
			resp, err := s.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.status, describeAnswer(body))
			}
			expectRefusal(t, resp.StatusCode, body, tc.code)
		})
	}
	t.Run("chunked body over max_body", func(t *testing.T) {
		// No Content-Length: the limit is found while reading.
		req, _ := http.NewRequest(http.MethodPost, s.srv.URL+"/key_packages", io.MultiReader(bytes.NewReader(make([]byte, 2048))))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("X-Test-User", "alice")
		if req.ContentLength != 0 {
			t.Fatal("the request has a length")
		}
		resp, err := s.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		expectRefusal(t, resp.StatusCode, body, moh.CodeTooLarge)
	})
	t.Run("other paths go to next", func(t *testing.T) {
		if st, _ := s.do(t, "alice", http.MethodGet, "/elsewhere", nil); st != http.StatusTeapot {
			t.Fatalf("status %d, want the next handler's 418", st)
		}
	})
}

func TestLocalAPIKeyPackages(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{})
	alice := newTestClient(t, aliceURI)
	b := s.bind(t, "alice", alice)
	kp1 := alice.keyPackage(t, aliceURI, b)
	kp2 := alice.keyPackage(t, aliceURI, b)
	last := alice.keyPackage(t, aliceURI, b)

	var list localapi.KeyPackageList
	st, body := s.post(t, "alice", "/key_packages", &localapi.PublishRequest{ClientURI: []byte(aliceURI),
		KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: kp1}, {KeyPackage: kp2}, {LastResort: true, KeyPackage: last}}})
	expectOK(t, st, body, &list)
	if len(list.KeyPackages) != 3 {
		t.Fatalf("publish answered %d KeyPackages, want 3", len(list.KeyPackages))
	}

	t.Run("list", func(t *testing.T) {
		var got localapi.KeyPackageList
		st, body := s.do(t, "alice", http.MethodGet, "/key_packages?client="+url.QueryEscape(aliceURI), nil)
		expectOK(t, st, body, &got)
		lastResort := 0
		for _, e := range got.KeyPackages {
			if e.LastResort {
				lastResort++
				if !bytes.Equal(e.KeyPackage, last) {
					t.Error("the last-resort entry is not the last-resort KeyPackage")
				}
			}
		}
		if len(got.KeyPackages) != 3 || lastResort != 1 {
			t.Fatalf("listed %d KeyPackages with %d last-resort, want 3 with 1", len(got.KeyPackages), lastResort)
		}
	})

	t.Run("claims are single-use, then last resort", func(t *testing.T) {
		st := s.h.svc.Store()
		seen := map[string]bool{}
		for i := range 2 {
			kp, err := st.ClaimKeyPackage(t.Context(), aliceURI, uint16(testSuite))
			if err != nil {
				t.Fatal(err)
			}
			if kp.LastResort || seen[string(kp.KeyPackage)] {
				t.Fatalf("claim %d: last resort %v, seen before %v", i, kp.LastResort, seen[string(kp.KeyPackage)])
			}
			seen[string(kp.KeyPackage)] = true
		}
		for range 2 {
			kp, err := st.ClaimKeyPackage(t.Context(), aliceURI, uint16(testSuite))
			if err != nil || !kp.LastResort || !bytes.Equal(kp.KeyPackage, last) {
				t.Fatalf("claim after the single-use ones: %v, last resort %v", err, kp.LastResort)
			}
		}
		var got localapi.KeyPackageList
		status, body := s.do(t, "alice", http.MethodGet, "/key_packages?client="+url.QueryEscape(aliceURI), nil)
		expectOK(t, status, body, &got)
		if len(got.KeyPackages) != 1 || !got.KeyPackages[0].LastResort {
			t.Fatalf("after the claims %d KeyPackages listed, want the last-resort one", len(got.KeyPackages))
		}
	})

	t.Run("a claimed KeyPackage is not published again", func(t *testing.T) {
		st, body := s.post(t, "alice", "/key_packages", &localapi.PublishRequest{ClientURI: []byte(aliceURI),
			KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: kp1}}})
		expectRefusal(t, st, body, moh.CodeReplay)
	})

	bob := newTestClient(t, bobURI)
	bobBinding := s.bind(t, "bob", bob)
	otherKey := newTestClient(t, aliceURI)
	for _, tc := range []struct {
		name, user, uri string
		entries         []localapi.KeyPackageEntry
		code            moh.Code
	}{
		{"alice for bob's client", "alice", bobURI,
			[]localapi.KeyPackageEntry{{KeyPackage: bob.keyPackage(t, bobURI, bobBinding)}}, moh.CodeForbidden},
		{"garbage", "alice", aliceURI, []localapi.KeyPackageEntry{{KeyPackage: []byte("garbage")}}, moh.CodeMalformed},
		{"bad signature", "alice", aliceURI, []localapi.KeyPackageEntry{{KeyPackage: flipLast(alice.keyPackage(t, aliceURI, b))}}, moh.CodeMalformed},
		{"identity of another client", "bob", bobURI, []localapi.KeyPackageEntry{{KeyPackage: bob.keyPackage(t, "mimi://example.com/d/bob/tablet", bobBinding)}}, moh.CodeForbidden},
		{"no binding", "alice", aliceURI, []localapi.KeyPackageEntry{{KeyPackage: alice.keyPackage(t, aliceURI, nil)}}, moh.CodeForbidden},
		{"binding of another key", "alice", aliceURI, []localapi.KeyPackageEntry{{KeyPackage: otherKey.keyPackage(t, aliceURI, b)}}, moh.CodeBadSignature},
		{"two last-resort", "alice", aliceURI, []localapi.KeyPackageEntry{
			{LastResort: true, KeyPackage: alice.keyPackage(t, aliceURI, b)},
			{LastResort: true, KeyPackage: alice.keyPackage(t, aliceURI, b)}}, moh.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := s.post(t, tc.user, "/key_packages", &localapi.PublishRequest{ClientURI: []byte(tc.uri), KeyPackages: tc.entries})
			expectRefusal(t, st, body, tc.code)
		})
	}

	t.Run("suite not allowed", func(t *testing.T) {
		s2 := newLocalServer(t, &LocalAPI{CipherSuites: []uint16{2}})
		b := s2.bind(t, "alice", alice)
		st, body := s2.post(t, "alice", "/key_packages", &localapi.PublishRequest{ClientURI: []byte(aliceURI),
			KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: alice.keyPackage(t, aliceURI, b)}}})
		expectRefusal(t, st, body, moh.CodeForbidden)
	})

	t.Run("bob cannot list alice's", func(t *testing.T) {
		st, body := s.do(t, "bob", http.MethodGet, "/key_packages?client="+url.QueryEscape(aliceURI), nil)
		expectRefusal(t, st, body, moh.CodeForbidden)
	})
}

// flipLast returns b with its last byte changed (inside the KeyPackage's
// signature).
func flipLast(b []byte) []byte {
	b = bytes.Clone(b)
	b[len(b)-1] ^= 1
	return b
}

// appendFor queues a message for client, as a delivery would.
func appendFor(t *testing.T, s *localServer, client, msg string) uint64 {
	t.Helper()
	got, err := s.h.svc.Store().Append(context.Background(), store.Delivery{
		Recipients: []string{client}, GroupID: []byte("g1"), Sender: "example.com", Message: []byte(msg)})
	if err != nil || got[0].Err != nil {
		t.Fatalf("append: %v %v", err, got)
	}
	return got[0].Seq
}

func TestLocalAPIMessages(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{})
	q := "/messages?client=" + url.QueryEscape(aliceURI)

	t.Run("empty without wait", func(t *testing.T) {
		var l localapi.MessageList
		st, body := s.do(t, "alice", http.MethodGet, q, nil)
		expectOK(t, st, body, &l)
		if len(l.Messages) != 0 {
			t.Fatalf("%d messages, want none", len(l.Messages))
		}
	})

	t.Run("long poll wakes on append", func(t *testing.T) {
		const wait = 30 * time.Second
		type result struct {
			status int
			body   []byte
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			st, body := s.do(t, "alice", http.MethodGet, q+"&wait=30", nil)
			done <- result{st, body}
		}()
		time.Sleep(200 * time.Millisecond) // let the poll start waiting; it is also correct if it has not
		appendFor(t, s, aliceURI, "hello")
		var r result
		select {
		case r = <-done:
		case <-time.After(wait):
			t.Fatal("the long poll did not answer before its wait")
		}
		if elapsed := time.Since(start); elapsed >= wait {
			t.Fatalf("answered after %s, not before the %s wait", elapsed, wait)
		}
		var l localapi.MessageList
		expectOK(t, r.status, r.body, &l)
		if len(l.Messages) != 1 || string(l.Messages[0].Message) != "hello" || l.Messages[0].Seq != 1 ||
			string(l.Messages[0].GroupID) != "g1" || string(l.Messages[0].Sender) != "example.com" {
			t.Fatalf("got %+v", l.Messages)
		}
	})

	t.Run("a stopping handler ends the wait", func(t *testing.T) {
		// A second handler on the same service, stopped while alice waits.
		other := newLocalServer(t, &LocalAPI{DataDir: s.h.DataDir})
		done := make(chan int, 1)
		go func() {
			st, _ := other.do(t, "alice", http.MethodGet, q+"&after=1&wait=30", nil)
			done <- st
		}()
		time.Sleep(200 * time.Millisecond)
		other.h.stop()
		select {
		case st := <-done:
			if st != http.StatusOK {
				t.Fatalf("status %d, want 200 with an empty list", st)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the long poll outlived its handler")
		}
	})

	t.Run("wait ends empty", func(t *testing.T) {
		var l localapi.MessageList
		st, body := s.do(t, "alice", http.MethodGet, q+"&after=1&wait=1", nil)
		expectOK(t, st, body, &l)
		if len(l.Messages) != 0 {
			t.Fatalf("%d messages after the cursor, want none", len(l.Messages))
		}
	})

	appendFor(t, s, aliceURI, "second")
	appendFor(t, s, aliceURI, "third")

	t.Run("fetch after cursor with limit", func(t *testing.T) {
		var l localapi.MessageList
		st, body := s.do(t, "alice", http.MethodGet, q+"&after=1&limit=1", nil)
		expectOK(t, st, body, &l)
		if len(l.Messages) != 1 || l.Messages[0].Seq != 2 {
			t.Fatalf("got %+v, want seq 2 alone", l.Messages)
		}
	})

	t.Run("ack", func(t *testing.T) {
		var a localapi.AckAnswer
		st, body := s.post(t, "alice", "/messages/ack", &localapi.AckRequest{ClientURI: []byte(aliceURI), UpTo: 2})
		expectOK(t, st, body, &a)
		if a.Deleted != 2 {
			t.Fatalf("deleted %d, want 2", a.Deleted)
		}
		st, body = s.post(t, "alice", "/messages/ack", &localapi.AckRequest{ClientURI: []byte(aliceURI), UpTo: 2})
		expectOK(t, st, body, &a)
		if a.Deleted != 0 {
			t.Fatalf("acknowledging again deleted %d, want 0", a.Deleted)
		}
		var l localapi.MessageList
		st, body = s.do(t, "alice", http.MethodGet, q, nil)
		expectOK(t, st, body, &l)
		if len(l.Messages) != 1 || l.Messages[0].Seq != 3 {
			t.Fatalf("after ack up to 2 the queue holds %+v, want seq 3", l.Messages)
		}
		st, body = s.post(t, "alice", "/messages/ack", &localapi.AckRequest{ClientURI: []byte(aliceURI), UpTo: 4})
		expectRefusal(t, st, body, moh.CodeMalformed)
	})

	t.Run("cursor beyond the queue", func(t *testing.T) {
		st, body := s.do(t, "alice", http.MethodGet, q+"&after=99", nil)
		expectRefusal(t, st, body, moh.CodeMalformed)
	})

	t.Run("bob cannot read or ack alice's queue", func(t *testing.T) {
		st, body := s.do(t, "bob", http.MethodGet, q, nil)
		expectRefusal(t, st, body, moh.CodeForbidden)
		st, body = s.post(t, "bob", "/messages/ack", &localapi.AckRequest{ClientURI: []byte(aliceURI), UpTo: 3})
		expectRefusal(t, st, body, moh.CodeForbidden)
	})
}

// TestLocalAPISharesGatewayService requires mimi_local and mimi of one
// data directory to use one service (one store, one key ring).
func TestLocalAPISharesGatewayService(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700) //nolint:errcheck
	g := provisioned(t, &Gateway{Providers: []string{localProvider}, DSDomain: "ds.example.com", DataDir: dir})
	s := newLocalServer(t, &LocalAPI{DataDir: dir})
	if s.h.svc != g.svc {
		t.Fatal("mimi_local opened a second service for the gateway's data directory")
	}
}

func TestLocalAPICaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        *LocalAPI
		wantErr     string
	}{
		{"minimal", `mimi_local {
	provider example.com
}`, &LocalAPI{Providers: []string{"example.com"}}, ""},
		{"all", `mimi_local {
	provider example.com example.org
	user {http.request.header.X-User}
	data_dir /var/lib/mimi
	max_body 2MiB
	max_binding_lifetime 7d
	max_wait 30s
	max_long_polls 500
	max_long_polls_per_user 8
	max_key_packages_per_client 100
	max_key_packages_per_user 300
	remote_claim_rate 10/1m
	remote_claim_burst 20
	cipher_suites 1 2
}`, &LocalAPI{Providers: []string{"example.com", "example.org"}, User: "{http.request.header.X-User}",
			DataDir: "/var/lib/mimi", MaxBody: 2 << 20, MaxBindingLifetime: caddy.Duration(7 * 24 * time.Hour),
			MaxWait: caddy.Duration(30 * time.Second), MaxLongPolls: 500, MaxLongPollsPerUser: 8,
			MaxKeyPackagesPerClient: 100, MaxKeyPackagesPerUser: 300,
			RemoteClaims: 10, RemoteClaimWindow: caddy.Duration(time.Minute), RemoteClaimBurst: 20, CipherSuites: []uint16{1, 2}}, ""},
		{"remote_claim_rate without a window", `mimi_local {
	provider a.example
	remote_claim_rate 10
}`, nil, "invalid remote_claim_rate '10'"},
		{"remote_claim_burst zero", `mimi_local {
	provider a.example
	remote_claim_burst 0
}`, nil, "invalid remote_claim_burst '0'"},
		{"max_long_polls zero", `mimi_local {
	provider a.example
	max_long_polls 0
}`, nil, "invalid max_long_polls '0'"},
		{"per-user long polls above the total", `mimi_local {
	provider a.example
	max_long_polls 100
	max_long_polls_per_user 200
}`, nil, "invalid max_long_polls_per_user '200': want at most max_long_polls (100)"},
		{"max_key_packages_per_client zero", `mimi_local {
	provider a.example
	max_key_packages_per_client 0
}`, nil, "invalid max_key_packages_per_client '0'"},
		{"max_key_packages_per_client above a list", `mimi_local {
	provider a.example
	max_key_packages_per_client 257
}`, nil, "invalid max_key_packages_per_client '257': want a number from 1 to 256"},
		{"max_key_packages_per_user too large", `mimi_local {
	provider a.example
	max_key_packages_per_user 100001
}`, nil, "invalid max_key_packages_per_user '100001'"},
		{"per-client KeyPackages above the per-user bound", `mimi_local {
	provider a.example
	max_key_packages_per_client 200
	max_key_packages_per_user 100
}`, nil, "invalid max_key_packages_per_client '200': want at most max_key_packages_per_user (100)"},
		{"no provider", `mimi_local {
	max_wait 10s
}`, nil, "provider is required"},
		{"argument", `mimi_local example.com`, nil, "wrong argument count"},
		{"duplicate", `mimi_local {
	provider a.example
	provider b.example
}`, nil, "duplicate mimi_local option 'provider'"},
		{"unknown", `mimi_local {
	provider a.example
	bogus 1
}`, nil, "unrecognized mimi_local option 'bogus'"},
		{"suite 4", `mimi_local {
	provider a.example
	cipher_suites 4
}`, nil, "invalid cipher suite '4'"},
		{"max_wait too long", `mimi_local {
	provider a.example
	max_wait 1h
}`, nil, "invalid max_wait '1h'"},
		{"max_wait below a second", `mimi_local {
	provider a.example
	max_wait 500ms
}`, nil, "invalid max_wait '500ms'"},
		{"binding lifetime below a second", `mimi_local {
	provider a.example
	max_binding_lifetime 999ms
}`, nil, "invalid max_binding_lifetime '999ms'"},
		{"binding lifetime too long", `mimi_local {
	provider a.example
	max_binding_lifetime 91d
}`, nil, "invalid max_binding_lifetime '91d'"},
		{"max_body too large", `mimi_local {
	provider a.example
	max_body 9MiB
}`, nil, "invalid max_body '9MiB'"},
		{"user constant", `mimi_local {
	provider a.example
	user alice
}`, nil, "invalid user 'alice'"},
		{"user without value", `mimi_local {
	provider a.example
	user
}`, nil, "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := new(LocalAPI)
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if !parsedAsWanted(t, err, tc.wantErr) {
				return
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(tc.want)
			if !bytes.Equal(gotJSON, wantJSON) {
				t.Fatalf("got %s, want %s", gotJSON, wantJSON)
			}
		})
	}
}

// TestLocalAPIJSONRoundTrip requires the JSON config to decode strictly
// into the same handler and encode back byte for byte.
func TestLocalAPIJSONRoundTrip(t *testing.T) {
	const in = `{"user":"{http.request.header.X-User}","providers":["example.com"],"data_dir":"/var/lib/mimi",` +
		`"max_body":2097152,"max_binding_lifetime":604800000000000,"max_wait":30000000000,` +
		`"max_key_packages_per_client":100,"max_key_packages_per_user":300,"cipher_suites":[1,2]}`
	var h LocalAPI
	dec := json.NewDecoder(strings.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Fatalf("round trip:\n got %s\nwant %s", out, in)
	}
	var dur LocalAPI
	if err := json.Unmarshal([]byte(`{"providers":["example.com"],"max_wait":"90s"}`), &dur); err != nil || time.Duration(dur.MaxWait) != 90*time.Second {
		t.Fatalf("duration string: %v, %s", err, time.Duration(dur.MaxWait))
	}
}

// TestLocalEndpointTableMatchesDocs requires docs/protocol.md §10.3 to
// list exactly the local API's endpoint table, row for row.
func TestLocalEndpointTableMatchesDocs(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	const header = "| path | methods | request | answer |"
	section := strings.Index(string(doc), "### 10.3 Endpoints")
	start := strings.Index(string(doc[max(section, 0):]), header) + max(section, 0)
	if section < 0 || start < section {
		t.Fatalf("docs/protocol.md has no local endpoint table headed %q", header)
	}
	var documented []localRoute
	for _, line := range strings.Split(string(doc[start:]), "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		if len(cells) != 4 {
			t.Fatalf("row %q has %d cells, want 4", line, len(cells))
		}
		documented = append(documented, localRoute{strings.Trim(cells[0], "`"), cells[1], cells[2], cells[3]})
	}
	if fmt.Sprint(documented) != fmt.Sprint(localRoutes) {
		t.Fatalf("docs list\n%v\nthe code has\n%v", documented, localRoutes)
	}
}

// TestLocalAPIReadmeExample adapts the README's mimi_local example and
// requires the authentication handler to run before mimi_local, with the
// options the README shows.
func TestLocalAPIReadmeExample(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "### Local client API")
	if !ok {
		t.Fatal("README has no Local client API section")
	}
	_, rest, ok = strings.Cut(rest, "```caddyfile\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("the section has no caddyfile block")
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(block), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		t.Errorf("adapt warning: %s", w.Message)
	}
	js := string(out)
	auth, local := strings.Index(js, `"handler":"authentication"`), strings.Index(js, `"handler":"mimi_local"`)
	if auth < 0 || local < 0 || auth > local {
		t.Fatalf("want authentication before mimi_local in %s", js)
	}
	for _, want := range []string{`"providers":["localhost"]`, `"user":"{http.auth.user.id}"`, `"max_wait":60000000000`} {
		if !strings.Contains(js[local:], want) {
			t.Errorf("mimi_local lacks %s in %s", want, js[local:])
		}
	}
}

// TestLocalAPIClaimKeyPackages claims KeyPackages over HTTP: of every
// client of a user (a single-use one each, then the last-resort one that
// stays), of one client, and the refusals.
func TestLocalAPIClaimKeyPackages(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{})
	const bobPhoneURI = "mimi://example.com/d/bob/phone"
	laptop, phone := newTestClient(t, bobURI), newTestClient(t, bobPhoneURI)
	lb, pb := s.bind(t, "bob", laptop), s.bind(t, "bob", phone)
	laptopKP, laptopLast := laptop.keyPackage(t, bobURI, lb), laptop.keyPackage(t, bobURI, lb)
	phoneKP := phone.keyPackage(t, bobPhoneURI, pb)
	for _, req := range []*localapi.PublishRequest{
		{ClientURI: []byte(bobURI), KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: laptopKP}, {LastResort: true, KeyPackage: laptopLast}}},
		{ClientURI: []byte(bobPhoneURI), KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: phoneKP}}},
	} {
		st, body := s.post(t, "bob", "/key_packages", req)
		expectOK(t, st, body, &localapi.KeyPackageList{})
	}
	claim := func(t *testing.T, target string, want ...[]byte) {
		t.Helper()
		var got localapi.KeyPackageList
		st, body := s.post(t, "alice", "/claim_key_packages", &localapi.ClaimRequest{CipherSuite: uint16(testSuite), Target: []byte(target)})
		expectOK(t, st, body, &got)
		if len(got.KeyPackages) != len(want) {
			t.Fatalf("claim of %s answered %d KeyPackages, want %d", target, len(got.KeyPackages), len(want))
		}
		for i, e := range got.KeyPackages {
			if !bytes.Equal(e.KeyPackage, want[i]) || e.LastResort != bytes.Equal(want[i], laptopLast) {
				t.Fatalf("claim of %s: entry %d is not the KeyPackage expected", target, i)
			}
		}
	}
	// Ordered by client URI: bob/laptop before bob/phone.
	claim(t, "mimi://example.com/u/bob", laptopKP, phoneKP)
	claim(t, "mimi://example.com/u/bob", laptopLast)
	claim(t, bobURI, laptopLast)
	claim(t, bobPhoneURI)
	claim(t, "mimi://example.com/u/nobody")

	for _, tc := range []struct {
		name   string
		user   string
		suite  uint16
		target string
		code   moh.Code
	}{
		{"a suite not accepted", "alice", 0x7777, "mimi://example.com/u/bob", moh.CodeForbidden},
		{"a target that is no URI", "alice", uint16(testSuite), "bob", moh.CodeMalformed},
		// Claimed through the peer, whose name does not resolve (RFC 6761).
		{"another provider's user", "alice", uint16(testSuite), "mimi://peer.invalid/u/bob", moh.CodeBackendUnavailable},
		{"another provider's client", "alice", uint16(testSuite), "mimi://peer.invalid/d/bob/phone", moh.CodeBackendUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := s.post(t, tc.user, "/claim_key_packages", &localapi.ClaimRequest{CipherSuite: tc.suite, Target: []byte(tc.target)})
			expectRefusal(t, st, body, tc.code)
		})
	}
}

// TestLocalAPIValidateDurations requires Validate to hold the JSON
// config's durations to the ranges its messages name: a sub-second
// max_binding_lifetime would issue a binding whose not_after is the
// second it was issued in. Zero is the default.
func TestLocalAPIValidateDurations(t *testing.T) {
	for _, tc := range []struct {
		name           string
		lifetime, wait time.Duration
		wantErr        string
	}{
		{"defaults", 0, 0, ""},
		{"one second", time.Second, time.Second, ""},
		{"lifetime 1ms", time.Millisecond, 0, "max_binding_lifetime"},
		{"lifetime negative", -time.Second, 0, "max_binding_lifetime"},
		{"lifetime 91d", 91 * 24 * time.Hour, 0, "max_binding_lifetime"},
		{"wait 999ms", 0, 999 * time.Millisecond, "max_wait"},
		{"wait 11m", 0, 11 * time.Minute, "max_wait"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &LocalAPI{Providers: []string{"example.com"}, MaxBindingLifetime: caddy.Duration(tc.lifetime), MaxWait: caddy.Duration(tc.wait)}
			wantValidate(t, h, tc.wantErr)
		})
	}
}

// TestLocalAPIPublishRefusalNamesIndex requires the refusal of a publish
// to name the index of the first refused entry, as docs/protocol.md §10.4
// says (`key package 2: ...`), whatever the check that refused it.
func TestLocalAPIPublishRefusalNamesIndex(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{})
	alice := newTestClient(t, aliceURI)
	b := s.bind(t, "alice", alice)
	good := alice.keyPackage(t, aliceURI, b)
	for _, tc := range []struct {
		name string
		bad  []byte
		code moh.Code
	}{
		{"garbage", []byte("garbage"), moh.CodeMalformed},
		{"no binding", alice.keyPackage(t, aliceURI, nil), moh.CodeForbidden},
		{"other identity", alice.keyPackage(t, "mimi://example.com/d/alice/tablet", b), moh.CodeForbidden},
		{"same twice", good, moh.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := s.post(t, "alice", "/key_packages", &localapi.PublishRequest{ClientURI: []byte(aliceURI),
				KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: good}, {KeyPackage: tc.bad}}})
			var resp moh.DSResponse
			if err := wire.Unmarshal(body, &resp, "DSResponse"); err != nil || resp.Type != moh.ResponseError {
				t.Fatalf("status %d, body %x: not a refusal", st, body)
			}
			if resp.Error.Code != tc.code || !strings.HasPrefix(string(resp.Error.Message), "key package 1: ") {
				t.Errorf("refusal %d %s %q, want %s naming key package 1", st, resp.Error.Code, resp.Error.Message, tc.code)
			}
		})
	}
}

// TestLocalAPIClaimLimit requires /claim_key_packages to bound how fast
// one local user claims one target user's KeyPackages, as a peer's claims
// are bound (30 a minute after a burst of 60): past the burst, 429
// rate_limited with Retry-After, for the user URI and its clients alike,
// while other pairs of user and target still claim.
func TestLocalAPIClaimLimit(t *testing.T) {
	// The claims' zone, with the burst of the real one, refills once an
	// hour rather than every 2 s: the burst, spent over 60 requests, stays
	// spent however slowly a loaded machine serves them.
	s := newLocalServerWith(t, &LocalAPI{}, func(h *LocalAPI) {
		z, err := ratelimit.NewZone("local_claims_test", ratelimit.Config{Rate: 1.0 / 3600, Burst: keyPackageBurst})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = z.Destruct() })
		h.claims.zone = z
	})
	for i := range keyPackageBurst {
		if status, _, _ := s.claimAs(t, "mallory", "mimi://example.com/u/bob"); status != http.StatusOK {
			t.Fatalf("claim %d of the burst: status %d", i+1, status)
		}
	}
	for _, tc := range []struct {
		name, user, target string
		refused            bool
	}{
		{"the user past the burst", "mallory", "mimi://example.com/u/bob", true},
		{"a client of the user", "mallory", bobURI, true},
		{"another target", "mallory", "mimi://example.com/u/carol", false},
		{"another claimer", "alice", "mimi://example.com/u/bob", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, header := s.claimAs(t, tc.user, tc.target)
			switch {
			case !tc.refused && status != http.StatusOK:
				t.Fatalf("status %d, want 200", status)
			case tc.refused && status != http.StatusTooManyRequests:
				t.Fatalf("status %d, want 429", status)
			case tc.refused && header.Get("Retry-After") == "":
				t.Fatalf("a 429 without Retry-After")
			}
		})
	}
}

// TestLocalAPILongPollBounds requires the long polls that wait at once to
// be bounded per authenticated user (whatever device names it sends) and
// in all: a poll over a bound that has messages gets them at once, one
// without is 429 rate_limited with Retry-After; a poll that ends, even by
// its client going away, frees its place.
func TestLocalAPILongPollBounds(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{MaxLongPolls: 3, MaxLongPollsPerUser: 2, MaxWait: caddy.Duration(time.Minute)})
	poll := func(ctx context.Context, user, client string) (*http.Response, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.srv.URL+"/messages?wait=60&client="+url.QueryEscape(client), nil)
		if err != nil {
			return nil, nil, err
		}
		req.Header.Set("X-Test-User", user)
		resp, err := s.srv.Client().Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp, body, err
	}
	waiting := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); s.h.polls.waiting() != want; {
			if time.Now().After(deadline) {
				t.Fatalf("%d long polls waiting, want %d", s.h.polls.waiting(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ended := make(chan error, 3)
	for _, p := range []struct{ user, client string }{
		{"mallory", "mimi://example.com/d/mallory/dev1"},
		{"mallory", "mimi://example.com/d/mallory/dev2"},
		{"alice", aliceURI},
	} {
		go func() {
			_, _, err := poll(ctx, p.user, p.client)
			ended <- err
		}()
	}
	waiting(3)
	appendFor(t, s, "mimi://example.com/d/mallory/dev4", "queued")
	for _, tc := range []struct {
		name, user, client string
		messages           int // -1: refused
	}{
		{"the user's bound", "mallory", "mimi://example.com/d/mallory/dev3", -1},
		{"the total bound", "bob", bobURI, -1},
		{"a queued message", "mallory", "mimi://example.com/d/mallory/dev4", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// At once, not after the poll's wait of 60 s: a poll that
			// waited would end with this context, however loaded the
			// machine.
			ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
			defer cancel()
			resp, body, err := poll(ctx, tc.user, tc.client)
			if err != nil {
				t.Fatalf("answered not at once: %v", err)
			}
			if tc.messages < 0 {
				expectRefusal(t, resp.StatusCode, body, moh.CodeRateLimited)
				if resp.Header.Get("Retry-After") == "" {
					t.Fatal("a 429 without Retry-After")
				}
				return
			}
			var l localapi.MessageList
			expectOK(t, resp.StatusCode, body, &l)
			if len(l.Messages) != tc.messages {
				t.Fatalf("%d messages, want %d", len(l.Messages), tc.messages)
			}
		})
	}
	cancel()
	for range 3 {
		<-ended
	}
	waiting(0)
}

// TestLocalAPIValidateLongPollBounds requires max_long_polls and
// max_long_polls_per_user to be 1..1000000, the per-user bound at most
// the total one; zero is the default.
func TestLocalAPIValidateLongPollBounds(t *testing.T) {
	for _, tc := range []struct {
		name           string
		total, perUser int
		wantErr        string
	}{
		{"defaults", 0, 0, ""},
		{"both", 100, 10, ""},
		{"per user only", 0, 50_000, ""},
		{"total negative", -1, 0, "max_long_polls"},
		{"total too large", maxLongPolls + 1, 0, "max_long_polls"},
		{"per user above total", 10, 11, "max_long_polls_per_user"},
		{"per user too large", 0, maxLongPolls + 1, "max_long_polls_per_user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &LocalAPI{Providers: []string{"example.com"}, MaxLongPolls: tc.total, MaxLongPollsPerUser: tc.perUser}
			wantValidate(t, h, tc.wantErr)
		})
	}
}

// TestLocalAPIValidateKeyPackageBounds requires
// max_key_packages_per_client and max_key_packages_per_user to be
// 1..100000, the per-client bound at most the per-user one; zero is the
// default.
func TestLocalAPIValidateKeyPackageBounds(t *testing.T) {
	for _, tc := range []struct {
		name              string
		perClient, perUse int
		wantErr           string
	}{
		{"defaults", 0, 0, ""},
		{"both", 10, 100, ""},
		{"per client only", 200, 0, ""},
		{"per user only", 0, 10, ""},
		{"per client negative", -1, 0, "max_key_packages_per_client"},
		{"per user negative", 0, -1, "max_key_packages_per_user"},
		{"per user too large", 0, maxLocalKeyPackages + 1, "max_key_packages_per_user"},
		{"per client above a list", localapi.MaxPublish + 1, 0, "max_key_packages_per_client"},
		{"per client above per user", 11, 10, "max_key_packages_per_client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &LocalAPI{Providers: []string{"example.com"}, MaxKeyPackagesPerClient: tc.perClient, MaxKeyPackagesPerUser: tc.perUse}
			wantValidate(t, h, tc.wantErr)
		})
	}
}

// TestLocalAPIKeyPackageQuota requires POST /key_packages to refuse, 413
// quota_exceeded and storing nothing, a publish that would leave a client
// more available KeyPackages than max_key_packages_per_client, or the
// clients of its user together more than max_key_packages_per_user.
func TestLocalAPIKeyPackageQuota(t *testing.T) {
	s := newLocalServer(t, &LocalAPI{MaxKeyPackagesPerClient: 2, MaxKeyPackagesPerUser: 3})
	const laptopURI = "mimi://example.com/d/alice/laptop"
	phone, laptop := newTestClient(t, aliceURI), newTestClient(t, laptopURI)
	phoneBinding, laptopBinding := s.bind(t, "alice", phone), s.bind(t, "alice", laptop)
	entries := func(c *testClient, b *binding.ClientBinding, n int) []localapi.KeyPackageEntry {
		out := make([]localapi.KeyPackageEntry, n)
		for i := range out {
			out[i] = localapi.KeyPackageEntry{KeyPackage: c.keyPackage(t, c.uri, b)}
		}
		return out
	}
	available := func(uri string) int {
		var l localapi.KeyPackageList
		st, body := s.do(t, "alice", http.MethodGet, "/key_packages?client="+url.QueryEscape(uri), nil)
		expectOK(t, st, body, &l)
		return len(l.KeyPackages)
	}
	for _, tc := range []struct {
		name    string
		client  *testClient
		b       *binding.ClientBinding
		n       int
		refused bool
		phone   int // available after the request
		laptop  int
	}{
		{"phone to its bound", phone, phoneBinding, 2, false, 2, 0},
		{"phone past its bound", phone, phoneBinding, 1, true, 2, 0},
		{"laptop past the user's bound, refused whole", laptop, laptopBinding, 2, true, 2, 0},
		{"laptop to the user's bound", laptop, laptopBinding, 1, false, 2, 1},
		{"laptop past the user's bound", laptop, laptopBinding, 1, true, 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := s.post(t, "alice", "/key_packages", &localapi.PublishRequest{ClientURI: []byte(tc.client.uri),
				KeyPackages: entries(tc.client, tc.b, tc.n)})
			if tc.refused {
				expectRefusal(t, st, body, moh.CodeQuotaExceeded)
			} else {
				expectOK(t, st, body, new(localapi.KeyPackageList))
			}
			if p, l := available(aliceURI), available(laptopURI); p != tc.phone || l != tc.laptop {
				t.Fatalf("%d and %d KeyPackages available, want %d and %d", p, l, tc.phone, tc.laptop)
			}
		})
	}
	t.Run("another user is not counted", func(t *testing.T) {
		bob := newTestClient(t, bobURI)
		st, body := s.post(t, "bob", "/key_packages", &localapi.PublishRequest{ClientURI: []byte(bobURI),
			KeyPackages: entries(bob, s.bind(t, "bob", bob), 2)})
		expectOK(t, st, body, new(localapi.KeyPackageList))
	})
}

// wantValidate checks h.Validate: nil when want is empty, else an error
// naming want.
func wantValidate(t *testing.T, h *LocalAPI, want string) {
	t.Helper()
	err := h.Validate()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one naming %s", err, want)
	}
}

// TestLocalAPILongPollEndsWhenExiting requires a waiting long poll to be
// answered (an empty list) once the process is exiting, without a
// shutdown hook: Caddy gives those only to its HTTP/1 and HTTP/2
// servers, so a poll over HTTP/3 would otherwise hold up the exit for up
// to max_wait. The deadline only keeps a failing test from hanging.
func TestLocalAPILongPollEndsWhenExiting(t *testing.T) {
	var exiting atomic.Bool
	s := newLocalServer(t, &LocalAPI{MaxWait: caddy.Duration(maxLocalWait), exiting: exiting.Load})
	type result struct {
		status int
		body   []byte
	}
	done := make(chan result, 1)
	go func() {
		st, body := s.do(t, "alice", http.MethodGet, "/messages?wait=600&client="+url.QueryEscape(aliceURI), nil)
		done <- result{st, body}
	}()
	for s.h.polls.waiting() == 0 {
		select {
		case r := <-done:
			t.Fatalf("the poll ended before waiting: %d %x", r.status, r.body)
		case <-time.After(10 * time.Millisecond):
		}
	}
	exiting.Store(true)
	select {
	case r := <-done:
		var l localapi.MessageList
		expectOK(t, r.status, r.body, &l)
		if len(l.Messages) != 0 {
			t.Fatalf("%d messages, want none", len(l.Messages))
		}
	case <-time.After(time.Minute):
		s.h.stop() // else the server's Close waits for the poll
		t.Fatal("the long poll still waits after the process began exiting")
	}
}

// TestLocalAPIRemoteClaimLimit requires /claim_key_packages to bound how
// fast one user claims other providers' KeyPackages whatever the targets
// (each is a signed request of this provider to the target's provider):
// past remote_claim_burst, 429 rate_limited with Retry-After, for new
// targets too, while the user still claims local users and other users
// still claim remotely. A peer that cannot be reached is a warning of the
// sampled log, never an error.
func TestLocalAPIRemoteClaimLimit(t *testing.T) {
	const burst = 3
	s := newLocalServer(t, &LocalAPI{RemoteClaims: 1, RemoteClaimWindow: caddy.Duration(time.Hour), RemoteClaimBurst: burst})
	core, logs := observer.New(zapcore.DebugLevel)
	s.h.logger, s.h.sampled = zap.New(core), zap.New(core)
	claim := func(t *testing.T, user, target string) (int, []byte, http.Header) {
		t.Helper()
		return s.claimAs(t, user, target)
	}
	// Targets at a provider whose name does not resolve (RFC 6761): each
	// claim is tried and fails.
	for i := range burst {
		st, body, _ := claim(t, "mallory", fmt.Sprintf("mimi://peer.invalid/u/victim%d", i))
		expectRefusal(t, st, body, moh.CodeBackendUnavailable)
	}
	for _, tc := range []struct {
		name, user, target string
		ok                 bool
		code               moh.Code // when not ok
	}{
		{"a new remote target past the burst", "mallory", "mimi://peer.invalid/u/another", false, moh.CodeRateLimited},
		{"a remote client past the burst", "mallory", "mimi://other.invalid/d/bob/phone", false, moh.CodeRateLimited},
		{"a local target", "mallory", "mimi://example.com/u/bob", true, 0},
		{"another user", "alice", "mimi://peer.invalid/u/victim0", false, moh.CodeBackendUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body, h := claim(t, tc.user, tc.target)
			if tc.ok {
				expectOK(t, st, body, &localapi.KeyPackageList{})
				return
			}
			expectRefusal(t, st, body, tc.code)
			if tc.code == moh.CodeRateLimited && h.Get("Retry-After") == "" {
				t.Fatal("a 429 without Retry-After")
			}
		})
	}
	if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 0 {
		t.Errorf("%d error lines for unreachable peers: %v", n, logs.FilterLevelExact(zapcore.ErrorLevel).All()[0].Message)
	}
	if logs.FilterMessage("claiming KeyPackages from another provider failed").FilterLevelExact(zapcore.WarnLevel).Len() == 0 {
		t.Error("no warning for the unreachable peer")
	}
}

// aliceBinding has h serve alice's POST /binding directly (no server in
// front) and returns its answer.
func aliceBinding(t *testing.T, h *LocalAPI) *httptest.ResponseRecorder {
	t.Helper()
	body, err := wire.Marshal(&localapi.BindingRequest{ClientURI: []byte(aliceURI), SignatureKey: []byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "/binding", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/octet-stream")
	r.Header.Set("X-Test-User", "alice")
	caddyhttp.NewTestReplacer(r)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatal(err)
	}
	return w
}

// TestLocalAPIDefaultDataDirOrder requires a mimi_local without data_dir
// provisioned before the gateway of its config to join that gateway's
// service at its first request, and one whose config was cleaned up
// before any request to join nothing: a request then answers 503 and
// leaves the gateway's service and the claim zones unheld.
func TestLocalAPIDefaultDataDirOrder(t *testing.T) {
	for _, tc := range []struct {
		name         string
		cleanedFirst bool
	}{
		{"provisioned before the gateway", false},
		{"a request after cleanup", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			dir := t.TempDir()
			os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
			h := &LocalAPI{Providers: []string{localProvider}, User: "{http.request.header.X-Test-User}"}
			if err := h.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			defer h.Cleanup()
			g := &Gateway{Providers: []string{"other.example", localProvider}, DSDomain: "ds.example.com", DataDir: dir}
			if err := g.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			defer g.Cleanup()
			if tc.cleanedFirst {
				if err := h.Cleanup(); err != nil {
					t.Fatal(err)
				}
			}
			w := aliceBinding(t, h)
			refs, _ := servicePool.References(g.DataDir)
			if !tc.cleanedFirst {
				expectOK(t, w.Code, w.Body.Bytes(), &localapi.BindingAnswer{})
				if h.svc != g.svc || refs != 2 {
					t.Fatalf("mimi_local did not join the gateway's service (%d holds)", refs)
				}
				return
			}
			expectRefusal(t, w.Code, w.Body.Bytes(), moh.CodeBackendUnavailable)
			if refs != 1 || h.claimZoneKey != "" || h.remoteZoneKey != "" {
				t.Fatalf("a request after cleanup took the service (%d holds) or zones (%q, %q)", refs, h.claimZoneKey, h.remoteZoneKey)
			}
		})
	}
}

// TestLocalAPIDefaultDataDirConflict requires a mimi_local without
// data_dir whose domain two gateways of its config serve from different
// data directories to answer 503 backend_unavailable and join neither,
// whatever order the three were provisioned in (README: it opens no store
// when its domains are served from different data directories). Before,
// a handler provisioned between the two gateways saw only the first and
// silently used its store and keys.
func TestLocalAPIDefaultDataDirConflict(t *testing.T) {
	for _, tc := range []struct {
		name  string
		order string // g: a gateway, l: the local API
	}{
		{"local API between the gateways", "glg"},
		{"local API after the gateways", "ggl"},
		{"local API before the gateways", "lgg"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			h := &LocalAPI{Providers: []string{localProvider}, User: "{http.request.header.X-Test-User}"}
			var gs []*Gateway
			for _, c := range tc.order {
				if c == 'l' {
					if err := h.Provision(ctx); err != nil {
						t.Fatal(err)
					}
					defer h.Cleanup()
					continue
				}
				dir := t.TempDir()
				os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
				g := &Gateway{Providers: []string{localProvider}, DSDomain: "ds.example.com", DataDir: dir}
				if err := g.Provision(ctx); err != nil {
					t.Fatal(err)
				}
				defer g.Cleanup()
				gs = append(gs, g)
			}
			w := aliceBinding(t, h)
			expectRefusal(t, w.Code, w.Body.Bytes(), moh.CodeBackendUnavailable)
			for i, g := range gs {
				if refs, _ := servicePool.References(g.DataDir); refs != 1 {
					t.Errorf("gateway %d's service has %d holds: the local API joined it", i, refs)
				}
			}
		})
	}
}

// TestLocalAPIMessageListBudget: the message lists being sent hold the
// whole budget of lists in flight (a user's streams that read none of
// them). A fetch that finds messages waits for its share, then is refused
// 503 backend_unavailable with Retry-After, its messages still queued;
// once memory is free the same fetch gets them, and the budget is whole
// again after the answer. Before, lists were held without a bound.
func TestLocalAPIMessageListBudget(t *testing.T) {
	oldBudget, oldAnswers, oldWait := answerBudget, answers, answerWait
	t.Cleanup(func() { answerBudget, answers, answerWait = oldBudget, oldAnswers, oldWait })
	answerBudget, answerWait = 4000, 100*time.Millisecond
	answers = semaphore.NewWeighted(answerBudget)
	s := newLocalServer(t, &LocalAPI{})
	q := "/messages?client=" + url.QueryEscape(aliceURI)
	// The first request opens the service; an empty list holds nothing.
	var l localapi.MessageList
	st, b := s.do(t, "alice", http.MethodGet, q, nil)
	expectOK(t, st, b, &l)
	appendFor(t, s, aliceURI, "hello")

	if !answers.TryAcquire(answerBudget) {
		t.Fatal("the budget is not free at the start")
	}
	status, body, header := s.send(t, "alice", http.MethodGet, q, nil)
	var r moh.DSResponse
	if status != http.StatusServiceUnavailable || wire.Unmarshal(body, &r, "DSResponse") != nil ||
		r.Error.Code != moh.CodeBackendUnavailable || header.Get("Retry-After") != "1" {
		t.Fatalf("a fetch with the budget held answered %d (Retry-After %q) %x, want 503 backend_unavailable with Retry-After 1",
			status, header.Get("Retry-After"), body)
	}

	answers.Release(answerBudget)
	st, b = s.do(t, "alice", http.MethodGet, q, nil)
	expectOK(t, st, b, &l)
	if len(l.Messages) != 1 || string(l.Messages[0].Message) != "hello" {
		t.Fatalf("with memory free: %+v, want the message still queued", l.Messages)
	}
	if !answers.TryAcquire(answerBudget) {
		t.Fatal("the list's share was not given back after its answer")
	}
	answers.Release(answerBudget)
}
