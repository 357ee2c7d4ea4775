package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// peerKeyPackage makes a KeyPackage of the client uri of site s, bound by
// s's provider keys: the store's record of it (NotAfter an hour away),
// with its encoding in KeyPackage.
func peerKeyPackage(t *testing.T, s *peerSite, uri string, lastResort bool) store.KeyPackage {
	t.Helper()
	c, err := mlstest.NewClient(peerSuite, uri, mlstest.Options{Issuer: &binding.Issuer{Domains: s.g.Providers, Keys: s.g.svc.Keys()}})
	if err != nil {
		t.Fatal(err)
	}
	enc, err := wire.Marshal(c.KeyPackage)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := c.KeyPackage.Ref()
	if err != nil {
		t.Fatal(err)
	}
	return store.KeyPackage{Client: uri, Suite: uint16(peerSuite), Ref: ref, KeyPackage: enc,
		NotAfter: time.Now().Add(time.Hour), LastResort: lastResort}
}

// publishAt publishes one single-use KeyPackage for the client uri of
// site s and returns it encoded.
func publishAt(t *testing.T, s *peerSite, uri string) []byte {
	t.Helper()
	kp := peerKeyPackage(t, s, uri, false)
	if err := s.g.svc.Store().PublishKeyPackages(t.Context(), uri, []store.KeyPackage{kp}, store.KeyPackageLimits{}); err != nil {
		t.Fatal(err)
	}
	return kp.KeyPackage
}

// TestClaimRetriesUnknownKey has a's local API claim a KeyPackage of a
// client of b (group_key_packages) while b answers 401 unknown_key, as a
// receiver does while its refetch of a sender's new key waits out its
// 5 s (docs/protocol.md §4.1): a claim refused once is retried once after
// the wait, signed afresh (another request_id, a signature b verifies),
// and gets the KeyPackage; one refused twice is not retried again and is
// backend_unavailable; and one whose context ends during the wait is
// backend_unavailable with the context's error, without a second request.
func TestClaimRetriesUnknownKey(t *testing.T) {
	a, b := twoProviders(t)
	for _, tc := range []struct {
		name     string
		refuse   int           // how many requests b answers unknown_key
		wait     time.Duration // peerKeyPackages.unknownKeyWait
		cancel   bool          // cancel the claim's context at the first refusal
		requests int           // requests b gets
		wantCode moh.Code      // 0: the KeyPackage
		wantErr  error
	}{
		{name: "refused once", refuse: 1, wait: 50 * time.Millisecond, requests: 2},
		{name: "refused twice", refuse: 2, wait: 50 * time.Millisecond, requests: 2, wantCode: moh.CodeBackendUnavailable},
		{name: "cancelled while waiting", refuse: 1, wait: time.Hour, cancel: true, requests: 1,
			wantCode: moh.CodeBackendUnavailable, wantErr: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uri := moh.ClientURI("b.localhost", "bob", strings.ReplaceAll(tc.name, " ", "-"))
			kp := publishAt(t, b, uri)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var mu sync.Mutex
			var seen []*moh.ProviderRequest
			f := func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/group_key_packages") {
					return false
				}
				raw, err := io.ReadAll(r.Body)
				if err != nil {
					t.Error(err)
				}
				r.Body = io.NopCloser(bytes.NewReader(raw))
				var req moh.ProviderRequest
				if err := wire.Unmarshal(raw, &req, "ProviderRequest"); err != nil {
					t.Errorf("b got a request it cannot decode: %v", err)
				}
				mu.Lock()
				seen = append(seen, &req)
				n := len(seen)
				mu.Unlock()
				if n > tc.refuse {
					return false // b's gateway verifies and serves it
				}
				if tc.cancel {
					cancel()
				}
				writeAnswer(w, http.StatusUnauthorized, moh.EncodeError(moh.DSError{Code: moh.CodeUnknownKey,
					Message: []byte("unknown key")}))
				return true
			}
			b.intercept.Store(&f)
			defer b.intercept.Store(nil)

			p := peerKeyPackages{svc: a.g.svc, unknownKeyWait: tc.wait}
			start := time.Now()
			got, err := p.ClaimClient(ctx, moh.UserURI("a.localhost", "alice"), "b.localhost", []byte(uri))
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != tc.requests {
				t.Fatalf("b got %d requests, want %d", len(seen), tc.requests)
			}
			if len(seen) == 2 {
				if bytes.Equal(seen[0].RequestID, seen[1].RequestID) || bytes.Equal(seen[0].Signature, seen[1].Signature) {
					t.Fatalf("the retry reused request_id %x or the signature: not signed afresh", seen[0].RequestID)
				}
				if took < tc.wait {
					t.Fatalf("retried after %v, want at least the wait of %v", took, tc.wait)
				}
			}
			if tc.wantCode == 0 {
				if err != nil || len(got) != 1 || !bytes.Equal(got[0], kp) {
					t.Fatalf("claim: %d KeyPackages, %v; want the published one", len(got), err)
				}
				return
			}
			if code := moh.DSErrorOf(err).Code; code != tc.wantCode {
				t.Fatalf("claim: %v (code %s), want %s", err, code, tc.wantCode)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("claim: %v, want it to wrap %v", err, tc.wantErr)
			}
		})
	}
}

// TestClaimRateLimitedRetryAfter has a's local API claim from b while b
// answers 429 rate_limited: the refusal reaches the local client as 429
// with b's Retry-After, or 1 s when b gave none (a 429 always carries
// one, docs/protocol.md §3).
func TestClaimRateLimitedRetryAfter(t *testing.T) {
	a, b := twoProviders(t)
	for _, tc := range []struct {
		name, header, want string
	}{
		{"the peer's", "7", "7"},
		{"none given", "", "1"},
		{"a date", "Wed, 21 Oct 2015 07:28:00 GMT", "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/group_key_packages") {
					return false
				}
				if tc.header != "" {
					w.Header().Set("Retry-After", tc.header)
				}
				writeAnswer(w, http.StatusTooManyRequests, moh.EncodeError(moh.DSError{Code: moh.CodeRateLimited}))
				return true
			}
			b.intercept.Store(&f)
			defer b.intercept.Store(nil)
			err := claimBobFromA(t, a)
			if code := moh.DSErrorOf(err).Code; code != moh.CodeRateLimited {
				t.Fatalf("claim: %v (code %s), want rate_limited", err, code)
			}
			rec := httptest.NewRecorder()
			h := &LocalAPI{logger: zap.NewNop()}
			h.refuse(&exchange{w: rec, r: httptest.NewRequest(http.MethodPost, "/claim_key_packages", nil)}, "alice", err)
			if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != tc.want {
				t.Fatalf("local answer %d with Retry-After %q, want 429 with %q", rec.Code, rec.Header().Get("Retry-After"), tc.want)
			}
		})
	}
}

// TestClaimPeerRefusalTextIsLogged has b refuse a's claim with a code that
// concerns the exchange between the providers: the local client gets 503
// backend_unavailable whose message does not carry b's text (which is for
// a's admin, and may say anything), and a's log has it.
func TestClaimPeerRefusalTextIsLogged(t *testing.T) {
	a, b := twoProviders(t)
	const peerText = "peer-internal detail 10.1.2.3"
	f := func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/group_key_packages") {
			return false
		}
		writeAnswer(w, http.StatusBadRequest, moh.EncodeError(moh.DSError{Code: moh.CodeMalformed, Message: []byte(peerText)}))
		return true
	}
	b.intercept.Store(&f)
	defer b.intercept.Store(nil)
	err := claimBobFromA(t, a)
	core, logs := observer.New(zapcore.DebugLevel)
	rec := httptest.NewRecorder()
	h := &LocalAPI{logger: zap.New(core), sampled: zap.New(core)}
	h.refuse(&exchange{w: rec, r: httptest.NewRequest(http.MethodPost, "/claim_key_packages", nil)}, "alice", err)
	var resp moh.DSResponse
	if err := wire.Unmarshal(rec.Body.Bytes(), &resp, "DSResponse"); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusServiceUnavailable || resp.Error.Code != moh.CodeBackendUnavailable {
		t.Fatalf("local answer %d %s, want 503 backend_unavailable", rec.Code, resp.Error.Code)
	}
	if strings.Contains(string(resp.Error.Message), peerText) {
		t.Errorf("the local client got b's text: %q", resp.Error.Message)
	}
	logged := false
	for _, e := range logs.All() {
		for _, v := range e.ContextMap() {
			if s, ok := v.(string); ok && strings.Contains(s, peerText) {
				logged = true
			}
		}
	}
	if !logged {
		t.Errorf("b's text is not in a's log: %v", logs.All())
	}
}

// claimBobFromA has a's alice claim a KeyPackage of bob's phone on
// b.localhost through a's peer claims, and returns the claim's error.
func claimBobFromA(t *testing.T, a *peerSite) error {
	t.Helper()
	p := peerKeyPackages{svc: a.g.svc}
	_, err := p.ClaimClient(t.Context(), moh.UserURI("a.localhost", "alice"), "b.localhost",
		[]byte(moh.ClientURI("b.localhost", "bob", "phone")))
	return err
}
