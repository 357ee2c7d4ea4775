package caddymodule

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// provisioned returns a Gateway provisioned under a bare Caddy context, with
// its data in a temporary directory unless g names one. Benchmarks use it
// too.
func provisioned(t testing.TB, g *Gateway) *Gateway {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if g.DataDir == "" {
		g.DataDir = t.TempDir()
		os.Chmod(g.DataDir, 0o700) //nolint:errcheck // else the service tightens it and says so
	}
	if err := g.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Cleanup() })
	return g
}

func serve(g *Gateway, r *http.Request) (*httptest.ResponseRecorder, bool) {
	w := httptest.NewRecorder()
	nextCalled := false
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { nextCalled = true; return nil })
	caddyhttp.NewTestReplacer(r)
	if err := g.ServeHTTP(w, r, next); err != nil {
		panic(err)
	}
	return w, nextCalled
}

func TestRefusesWithoutTLS13(t *testing.T) {
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", TrustedTLSProxies: []string{"10.1.0.0/16"}})
	for _, tc := range []struct {
		name   string
		tls    *tls.ConnectionState
		remote string
		want   int
	}{
		{"plain http", nil, "192.0.2.1:1234", http.StatusForbidden},
		{"tls 1.2", &tls.ConnectionState{Version: tls.VersionTLS12, HandshakeComplete: true}, "192.0.2.1:1234", http.StatusForbidden},
		{"0-rtt early data", &tls.ConnectionState{Version: tls.VersionTLS13}, "192.0.2.1:1234", http.StatusTooEarly},
		{"0-rtt early data from a trusted proxy address", &tls.ConnectionState{Version: tls.VersionTLS13}, "10.1.2.3:555", http.StatusTooEarly},
		{"tls 1.2 from a trusted proxy address", &tls.ConnectionState{Version: tls.VersionTLS12, HandshakeComplete: true}, "10.1.2.3:555", http.StatusForbidden},
		{"tls 1.3", &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true}, "192.0.2.1:1234", http.StatusOK},
		{"trusted proxy", nil, "10.1.2.3:555", http.StatusOK},
		{"trusted proxy v4-mapped", nil, "[::ffff:10.1.2.3]:555", http.StatusOK},
	} {
		r := httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil)
		r.TLS = tc.tls
		r.RemoteAddr = tc.remote
		w, _ := serve(g, r)
		if w.Code != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, w.Code, tc.want)
		}
		if want := map[int]moh.Code{http.StatusForbidden: moh.CodeForbidden, http.StatusTooEarly: moh.CodeTooEarly}[tc.want]; want != 0 {
			var resp moh.DSResponse
			if err := wire.Unmarshal(w.Body.Bytes(), &resp, "DSResponse"); err != nil || resp.Error.Code != want {
				t.Errorf("%s: body %x is not a %s DSError", tc.name, w.Body.Bytes(), want)
			}
		}
	}
}

func TestPassesOtherPathsToNext(t *testing.T) {
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"})
	for _, p := range []string{"/", "/group_operation/x", "/.well-known/other", "/GROUP_OPERATION"} {
		r := httptest.NewRequest(http.MethodPost, p, nil)
		if _, next := serve(g, r); !next {
			t.Errorf("%s was not passed to the next handler", p)
		}
	}
}

func TestReloadSharesState(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	a := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir}
	b := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir}
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	// The new config is provisioned before the old one is cleaned up.
	if err := b.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if a.svc != b.svc {
		t.Fatal("two instances on one data_dir opened separate state")
	}
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/verification_key", nil)
	r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true}
	if w, _ := serve(b, r); w.Code != http.StatusOK {
		t.Fatalf("new instance answers %d after the old one was cleaned up", w.Code)
	}
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
}
