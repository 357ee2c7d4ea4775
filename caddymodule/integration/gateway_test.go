package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func get(t *testing.T, c *http.Client, method, url, ctype string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, raw
}

func TestDiscovery(t *testing.T) {
	startCaddy(t)
	resp, body := get(t, client(tls.VersionTLS13), http.MethodGet, "https://b.localhost:9443/.well-known/mimi/ds-domain", "", nil)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "b.localhost:9443" {
		t.Fatalf("discovery = %d %q", resp.StatusCode, body)
	}
	if resp.ProtoMajor != 2 || resp.TLS.Version != tls.VersionTLS13 {
		t.Fatalf("discovery over %s / TLS %x, want HTTP/2 over TLS 1.3", resp.Proto, resp.TLS.Version)
	}
	if resp.Header.Get("Cache-Control") != "max-age=3600" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("discovery headers: %v", resp.Header)
	}
}

// TestTLS12Refused checks that a client offering at most TLS 1.2 is
// refused, at the handshake and for a request, while a TLS 1.3 client to
// the same address and name is served: without that control the test
// would pass with the server down or the name wrong.
func TestTLS12Refused(t *testing.T) {
	startCaddy(t)
	for _, tc := range []struct {
		name    string
		version uint16
		refused bool
	}{
		{"TLS 1.2", tls.VersionTLS12, true},
		{"TLS 1.3", tls.VersionTLS13, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: "b.localhost", RootCAs: env.roots, MaxVersion: tc.version})
			if err == nil {
				conn.Close()
			}
			if refused := err != nil; refused != tc.refused {
				t.Fatalf("handshake with at most %s: %v, want refused: %v", tc.name, err, tc.refused)
			}
			resp, err := client(tc.version).Get("https://b.localhost:9443/.well-known/mimi/ds-domain")
			if err == nil {
				resp.Body.Close()
			}
			if refused := err != nil; refused != tc.refused {
				t.Fatalf("request with at most %s: %v, want refused: %v", tc.name, err, tc.refused)
			}
			if err == nil && (resp.StatusCode != http.StatusOK || resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13) {
				t.Fatalf("request with at most %s: status %d, TLS %+v", tc.name, resp.StatusCode, resp.TLS)
			}
		})
	}
}

func TestVerificationKey(t *testing.T) {
	startCaddy(t)
	c := client(tls.VersionTLS13)
	for _, tc := range []struct {
		method, ctype string
		body          []byte
	}{
		{http.MethodGet, "", nil},
		{http.MethodPost, "", nil},
		{http.MethodPost, "application/octet-stream", []byte{0, 1}},
	} {
		resp, body := get(t, c, tc.method, "https://b.localhost:9443/verification_key", tc.ctype, tc.body)
		var r moh.DSResponse
		if resp.StatusCode != 200 || wire.Unmarshal(body, &r, "DSResponse") != nil || r.Type != moh.ResponseVerificationKeys {
			t.Fatalf("%s /verification_key = %d %x", tc.method, resp.StatusCode, body)
		}
		if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("answer headers: %v", resp.Header)
		}
		now := uint64(time.Now().Unix())
		if len(r.VerificationKeys) == 0 {
			t.Fatal("no verification keys published")
		}
		k := r.VerificationKeys[0]
		if k.Scheme != moh.SchemeEd25519 || k.NotBefore > now || k.NotAfter < now || k.NotAfter-k.NotBefore > 90*86400 {
			t.Fatalf("published key %+v does not cover now with a lifetime under 90 days", k)
		}
	}
	resp, body := get(t, c, http.MethodPost, "https://b.localhost:9443/verification_key", "application/octet-stream", []byte{0, 2})
	assertDSError(t, resp, body, 400, moh.CodeUnsupportedVersion)
}

// assertDSError checks that an answer is the given status with a DSError
// body carrying code.
func assertDSError(t *testing.T, resp *http.Response, body []byte, status int, code moh.Code) {
	t.Helper()
	var r moh.DSResponse
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil {
		t.Fatalf("%s: status %d, body is not a DSResponse: %v (%q)", resp.Request.URL.Path, resp.StatusCode, err, body)
	}
	if resp.StatusCode != status || r.Type != moh.ResponseError || r.Error.Code != code {
		t.Fatalf("%s: got %d %v %q, want %d %v", resp.Request.URL.Path, resp.StatusCode, r.Error.Code, r.Error.Message, status, code)
	}
}

func TestSignedProviderRequest(t *testing.T) {
	startCaddy(t)
	a := peerClient(t, "a.localhost")
	ctx := context.Background()
	payload, _ := wire.Marshal(&moh.ConnectionKeyPackagesRequest{
		Requester: []byte("mimi://a.localhost/u/alice"), UserID: []byte("mimi://b.localhost/u/bob"),
	})

	// b verifies a's signature with the key it fetches from a through
	// discovery; the request passes authentication and is answered: bob
	// has published no KeyPackage, so the list is empty.
	ans, err := a.Send(ctx, "b.localhost", moh.ConnectionKeyPackages, payload)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Status != http.StatusOK || ans.Response.Type != moh.ResponseKeyPackages || len(ans.Response.KeyPackages) != 0 {
		t.Fatalf("authenticated request: %d %+v", ans.Status, ans.Response)
	}

	// A byte-identical retry gets the first answer; the same request id
	// with other bytes is a replay (409).
	raw, err := a.Sign("b.localhost", moh.ConnectionKeyPackages, payload)
	if err != nil {
		t.Fatal(err)
	}
	first, err := a.Post(ctx, "b.localhost", moh.ConnectionKeyPackages, raw)
	if err != nil {
		t.Fatal(err)
	}
	retry, err := a.Post(ctx, "b.localhost", moh.ConnectionKeyPackages, raw)
	if err != nil || retry.Status != first.Status || !bytes.Equal(retry.Raw, first.Raw) {
		t.Fatalf("retry answered %d %x, first %d %x (%v)", retry.Status, retry.Raw, first.Status, first.Raw, err)
	}
	var req moh.ProviderRequest
	if err := wire.Unmarshal(raw, &req, "ProviderRequest"); err != nil {
		t.Fatal(err)
	}
	key, _ := a.Keys.Current(time.Now())
	reused, err := provider.SignRequest(&moh.ProviderRequest{
		RequestType: req.RequestType, Sender: req.Sender, Recipient: req.Recipient, Timestamp: req.Timestamp,
		RequestID: req.RequestID, Payload: append(bytes.Clone(req.Payload), 0),
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	ans, err = a.Post(ctx, "b.localhost", moh.ConnectionKeyPackages, reused)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Status != http.StatusConflict || ans.Response.Error.Code != moh.CodeReplay {
		t.Fatalf("reused request id: %d %v", ans.Status, ans.Response.Error.Code)
	}

	// A request addressed to another provider is refused before any key is
	// fetched.
	raw, err = a.Sign("c.localhost", moh.ConnectionKeyPackages, payload)
	if err != nil {
		t.Fatal(err)
	}
	ans, err = a.Post(ctx, "b.localhost", moh.ConnectionKeyPackages, raw)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Status != http.StatusMisdirectedRequest || ans.Response.Error.Code != moh.CodeRecipientMismatch {
		t.Fatalf("forwarded request: %d %v", ans.Status, ans.Response.Error.Code)
	}

	// A flipped signature bit is refused with 401.
	raw, _ = a.Sign("b.localhost", moh.ConnectionKeyPackages, payload)
	raw[len(raw)-1] ^= 1
	ans, err = a.Post(ctx, "b.localhost", moh.ConnectionKeyPackages, raw)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Status != http.StatusUnauthorized || ans.Response.Error.Code != moh.CodeBadSignature {
		t.Fatalf("bad signature: %d %v", ans.Status, ans.Response.Error.Code)
	}

	// A sender whose keys are not where discovery says is refused with 401
	// unknown_key, not a 5xx.
	stranger := peerClient(t, "a.localhost")
	stranger.Sender = "c.localhost"
	ans, err = stranger.Send(ctx, "b.localhost", moh.ConnectionKeyPackages, payload)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Status != http.StatusUnauthorized || ans.Response.Error.Code != moh.CodeUnknownKey {
		t.Fatalf("unknown sender: %d %v", ans.Status, ans.Response.Error.Code)
	}
}

// TestClientVerifiesPeerKeys runs the Go client's own verification against
// keys fetched from a live gateway.
func TestClientVerifiesPeerKeys(t *testing.T) {
	startCaddy(t)
	a := peerClient(t, "a.localhost")
	raw, err := a.Sign("b.localhost", moh.GroupKeyPackages, []byte{1})
	if err != nil {
		t.Fatal(err)
	}
	v := &provider.Verifier{Domains: []string{"b.localhost"}, Keys: peerClient(t, "b.localhost").Fetcher}
	if _, err := v.Verify(context.Background(), raw, moh.GroupKeyPackages); err != nil {
		t.Fatalf("verifying a request signed by a.localhost with its published key: %v", err)
	}
	raw[len(raw)-2] ^= 0x40
	var e *moh.Error
	if _, err := v.Verify(context.Background(), raw, moh.GroupKeyPackages); !errors.As(err, &e) || e.Code != moh.CodeBadSignature {
		t.Fatalf("tampered request: %v", err)
	}
}

// TestGarbageNeverFails5xx posts malformed bodies to every endpoint and
// requires a 4xx DSError answer (501 is allowed only for well-formed
// requests of types that are not implemented yet).
func TestGarbageNeverFails5xx(t *testing.T) {
	startCaddy(t)
	c := client(tls.VersionTLS13)
	paths := []string{"/group_operation", "/welcome_information", "/external_commit_information",
		"/verification_key", "/connection_request", "/deliver_message", "/connection_key_packages",
		"/group_key_packages", "/attachment_upload", "/attachment_download", "/attachment_delete", "/attachment_copy"}
	bodies := [][]byte{
		[]byte("garbage"), {0}, {0, 1}, {0, 1, 0xff}, {0, 1, 0, 0x40, 0x01}, bytes.Repeat([]byte{0xff}, 1000),
		{0, 1, 15, 0xc0, 0, 0, 0}, {0, 2, 0, 0},
	}
	for _, p := range paths {
		for _, b := range bodies {
			if p == "/verification_key" && bytes.Equal(b, []byte{0, 1}) {
				continue // a valid VerificationKeyRequest
			}
			resp, body := get(t, c, http.MethodPost, "https://b.localhost:9443"+p, "application/octet-stream", b)
			var r moh.DSResponse
			if resp.StatusCode < 400 || resp.StatusCode >= 500 {
				t.Errorf("POST %s %x: status %d", p, b, resp.StatusCode)
				continue
			}
			if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil || r.Type != moh.ResponseError {
				t.Errorf("POST %s %x: body is not a DSError: %x", p, b, body)
			}
		}
		resp, body := get(t, c, http.MethodPost, "https://b.localhost:9443"+p, "text/plain", []byte("x"))
		assertDSError(t, resp, body, http.StatusUnsupportedMediaType, moh.CodeUnsupportedMedia)
	}
	// Over max_body (64 KiB on b).
	resp, body := get(t, c, http.MethodPost, "https://b.localhost:9443/group_key_packages", "application/octet-stream", make([]byte, 65*1024))
	assertDSError(t, resp, body, http.StatusRequestEntityTooLarge, moh.CodeTooLarge)
	// Wrong method.
	resp, body = get(t, c, http.MethodGet, "https://b.localhost:9443/deliver_message", "", nil)
	assertDSError(t, resp, body, http.StatusMethodNotAllowed, moh.CodeMethodNotAllowed)
	if resp.Header.Get("Allow") != "POST" {
		t.Fatalf("Allow = %q", resp.Header.Get("Allow"))
	}
	// A type sent to the wrong endpoint.
	req, _ := wire.Marshal(&moh.DSRequest{Body: moh.RequestBody{Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: []byte("g")}}})
	resp, body = get(t, c, http.MethodPost, "https://b.localhost:9443/welcome_information", "application/octet-stream", req)
	assertDSError(t, resp, body, http.StatusBadRequest, moh.CodeWrongRequestType)
	// Paths the gateway does not own go to the next handler.
	resp, _ = get(t, c, http.MethodGet, "https://b.localhost:9443/other", "", nil)
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") == "application/octet-stream" {
		t.Fatalf("/other: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestRequestGroupID(t *testing.T) {
	startCaddy(t)
	req, _ := wire.Marshal(&moh.DSRequest{Body: moh.RequestBody{Type: moh.RequestGroupID}})
	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		resp, body := get(t, client(tls.VersionTLS13), http.MethodPost, "https://a.localhost:9443/group_operation", "application/octet-stream", req)
		var r moh.DSResponse
		if resp.StatusCode != 200 || wire.Unmarshal(body, &r, "DSResponse") != nil || r.Type != moh.ResponseGroupID || len(r.GroupID) != 16 {
			t.Fatalf("request_group_id = %d %x", resp.StatusCode, body)
		}
		if seen[string(r.GroupID)] {
			t.Fatal("group id repeated")
		}
		seen[string(r.GroupID)] = true
	}
}
