package integration

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestMutualTLSWithCaddyCertificates reloads the configuration with mutual
// TLS between a.localhost and b.localhost as an operator writes it: each
// site asks for client certificates (client_auth mode request), each
// gateway requires them on provider requests, trusts the certificates of
// Caddy's local CA (trust_pki_ca local) and presents the certificate Caddy
// manages for its own DS host. bob claims alice's KeyPackage through b,
// which asks a with its certificate; a provider request without one is
// refused certificate_required.
func TestMutualTLSWithCaddyCertificates(t *testing.T) {
	startCaddy(t)
	base := baseConfig()
	cfg := base
	for _, p := range []string{"a.localhost", "b.localhost"} {
		site := "\ttls internal {\n\t\tprotocols tls1.3\n\t}\n\tmimi {\n\t\tprovider " + p + "\n"
		if !strings.Contains(cfg, site) {
			t.Fatalf("the test configuration changed: %s's tls and mimi blocks not found", p)
		}
		cfg = strings.Replace(cfg, site, "\ttls internal {\n\t\tprotocols tls1.3\n\t\tclient_auth {\n\t\t\tmode request\n\t\t}\n\t}\n"+
			"\tmimi {\n\t\tprovider "+p+"\n\t\tmutual_tls {\n\t\t\ttrust_pki_ca local\n\t\t}\n", 1)
	}
	loadConfig(t, cfg, "a.localhost", "b.localhost")

	// b presents Caddy's certificate for b.localhost to a.
	alice := newMIMIClient(t, issuerOf(t, "a.localhost"), "alice", "mtls-phone", false)
	status, body := postLocal(t, "a.localhost", "alice", "/key_packages", &localapi.PublishRequest{ClientURI: []byte(alice.uri),
		KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: mustEncode(t, alice.kp)}}})
	if status != http.StatusOK {
		t.Fatalf("publishing alice's KeyPackage at a: %d %x", status, body)
	}
	status, body = postLocal(t, "b.localhost", "bob", "/claim_key_packages",
		&localapi.ClaimRequest{CipherSuite: uint16(suite), Target: []byte(alice.uri)})
	var list localapi.KeyPackageList
	if status != http.StatusOK || wire.Unmarshal(body, &list, "KeyPackageList") != nil || len(list.KeyPackages) != 1 ||
		!bytes.Equal(list.KeyPackages[0].KeyPackage, mustEncode(t, alice.kp)) {
		t.Fatalf("claim of alice's KeyPackage through b over mutual TLS: %d %x", status, body)
	}

	// A request of b's signed by b's key, sent without a certificate.
	pc := peerClient(t, "b.localhost")
	defer pc.Fetcher.Close()
	payload := mustEncode(t, &moh.GroupKeyPackagesRequest{Requester: []byte(moh.UserURI("b.localhost", "bob")),
		ClientIDs: [][]byte{[]byte(alice.uri)}})
	ans, err := pc.Send(t.Context(), "a.localhost", moh.GroupKeyPackages, payload)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Status != http.StatusUnauthorized || ans.Response.Error.Code != moh.CodeCertRequired {
		t.Fatalf("a provider request without a client certificate: %d %s, want 401 certificate_required", ans.Status, ans.Response.Error.Code)
	}
}
