package integration

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// subsetSite serves two providers, x1.localhost and x2.localhost, from
// one gateway with the default data directory, and a local client API for
// x2.localhost only, without data_dir; /orphan/ is a local client API for
// x3.localhost, which no gateway serves.
const subsetSite = `
x1.localhost:9443, x2.localhost:9443 {
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider x1.localhost x2.localhost
		ds_domain x1.localhost:9443
	}
	handle_path /local/* {
		mimi_local {
			provider x2.localhost
			user {http.request.header.X-Test-User}
		}
	}
	handle_path /orphan/* {
		mimi_local {
			provider x3.localhost
			user {http.request.header.X-Test-User}
		}
	}
	respond "not mimi" 404
}
`

// TestLocalAPIDefaultDataDirOfSubset requires a mimi_local without
// data_dir that serves a subset of a gateway's domains (not its first) to
// use that gateway's store and keys: a binding it issues verifies with
// the key the gateway publishes for the domain. A mimi_local whose
// domains no gateway serves answers 503 backend_unavailable instead of
// opening a store of its own.
func TestLocalAPIDefaultDataDirOfSubset(t *testing.T) {
	startCaddy(t)
	loadConfig(t, baseConfig()+subsetSite, "x1.localhost", "x2.localhost")
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const clientURI = "mimi://x2.localhost/d/alice/phone"
	req := &localapi.BindingRequest{ClientURI: []byte(clientURI), SignatureKey: pub}
	post := func(t *testing.T, path string) (*http.Response, []byte) {
		t.Helper()
		body, err := wire.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		r, err := http.NewRequest(http.MethodPost, "https://x2.localhost:9443"+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", "application/octet-stream")
		r.Header.Set("X-Test-User", "alice")
		resp, err := client(tls.VersionTLS13).Do(r)
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

	t.Run("binding verifies with the gateway's key", func(t *testing.T) {
		resp, body := post(t, "/local/binding")
		var answer localapi.BindingAnswer
		if resp.StatusCode != http.StatusOK || wire.Unmarshal(body, &answer, "BindingAnswer") != nil {
			t.Fatalf("POST /local/binding = %d %x", resp.StatusCode, body)
		}
		fetcher := provider.NewKeyFetcher(provider.FetchPolicy{
			AllowPrivate: true, AllowedPorts: []int{9443}, RootCAs: env.roots,
			Resolve: map[string]string{"x1.localhost": httpsAddr, "x2.localhost": httpsAddr},
		})
		defer fetcher.Close()
		checker := &binding.Checker{Remote: fetcher}
		if _, err := checker.Verify(t.Context(), []byte(clientURI), pub, &answer.Binding, time.Now(), provider.LookupOptions{}); err != nil {
			t.Fatalf("the binding from mimi_local does not verify with the keys the gateway publishes: %v", err)
		}
	})
	t.Run("no gateway for the domain", func(t *testing.T) {
		for range 2 {
			resp, body := post(t, "/orphan/binding")
			assertDSError(t, resp, body, http.StatusServiceUnavailable, moh.CodeBackendUnavailable)
		}
	})
}
