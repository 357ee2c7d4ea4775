package caddymodule

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mimi/caddy-mimi/internal/testca"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// mtlsPeers is two gateways, a.localhost and b.localhost, each serving
// TLS 1.3 on its own loopback port with a server certificate of its own
// CA, each asking for client certificates, requiring mutual TLS on
// provider requests with the other's CA as the only root, and presenting
// its server certificate (from files) when it sends.
type mtlsPeers struct {
	a, b     *peerSite
	caA, caB *testca.CA
}

func newMTLSPeers(t *testing.T) *mtlsPeers {
	t.Helper()
	dir := t.TempDir()
	m := &mtlsPeers{}
	var err error
	if m.caA, err = testca.NewCA("CA of a.localhost"); err != nil {
		t.Fatal(err)
	}
	if m.caB, err = testca.NewCA("CA of b.localhost"); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 2)
	site := func(name, port string, ca *testca.CA, peer, peerPort string, peerCA *testca.CA) *peerSite {
		cert, err := ca.Issue(testca.Leaf{DNSNames: []string{name}}) // serverAuth only, as WebPKI issues them
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile, err := testca.WriteKeyPair(cert, dir, name)
		if err != nil {
			t.Fatal(err)
		}
		peerRoot, err := peerCA.WritePEM(dir, peer+"-root.pem")
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(peerPort)
		g := provisioned(t, &Gateway{Providers: []string{name}, DSDomain: name + ":" + port,
			Federation: &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{p}, Timeout: peerTimeout,
				Resolve: map[string]string{peer: "127.0.0.1:" + peerPort}, RootCAFiles: []string{peerRoot}},
			MutualTLS: &MutualTLS{RootCAFiles: []string{peerRoot}, CertificateFile: certFile, KeyFile: keyFile}})
		s := &peerSite{g: g, addr: "127.0.0.1:" + port, cert: cert, clientAuth: tls.RequestClientCert}
		s.start(t)
		t.Cleanup(s.stop)
		return s
	}
	m.a = site("a.localhost", ports[0], m.caA, "b.localhost", ports[1], m.caB)
	m.b = site("b.localhost", ports[1], m.caB, "a.localhost", ports[0], m.caA)
	return m
}

// sendToA signs a request of typ as b.localhost with b's keys and posts it
// to a over TLS 1.3, presenting cert (none when nil).
func (m *mtlsPeers) sendToA(t *testing.T, cert *tls.Certificate, typ moh.ProviderRequestType, payload []byte) *provider.Answer {
	t.Helper()
	_, port, _ := net.SplitHostPort(m.a.addr)
	p, _ := strconv.Atoi(port)
	f := provider.NewKeyFetcher(provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{p},
		Resolve: map[string]string{"a.localhost": m.a.addr}, RootCAs: m.caA.Pool(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return new(tls.Certificate), nil
			}
			return cert, nil
		}})
	defer f.Close()
	pc := &provider.Client{Sender: "b.localhost", Keys: m.b.g.svc.Keys(), Fetcher: f}
	ans, err := pc.Send(t.Context(), "a.localhost", typ, payload)
	if err != nil {
		t.Fatal(err)
	}
	return ans
}

// TestMutualTLSRefusals posts group_key_packages from b.localhost to a
// gateway that requires mutual TLS with b's CA as root: accepted with b's
// certificate, refused without one, with one of an untrusted CA, with one
// for another name than b's DS authority, with an expired one, and with
// one whose usage does not allow TLS authentication; each refusal tells
// the peer which check failed, and nothing internal.
func TestMutualTLSRefusals(t *testing.T) {
	m := newMTLSPeers(t)
	otherCA, err := testca.NewCA("a CA nobody trusts")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *testca.CA, l testca.Leaf) *tls.Certificate {
		c, err := ca.Issue(l)
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}
	payload, err := wire.Marshal(&moh.GroupKeyPackagesRequest{Requester: []byte(moh.UserURI("b.localhost", "bob")),
		ClientIDs: [][]byte{[]byte(moh.ClientURI("a.localhost", "alice", "phone"))}})
	if err != nil {
		t.Fatal(err)
	}
	bName := []string{"b.localhost"}
	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		status int
		code   moh.Code
		reason string // in the peer-visible message
	}{
		{"b's server certificate", &m.b.cert, http.StatusOK, 0, ""},
		{"another certificate of b's CA for b", issue(m.caB, testca.Leaf{DNSNames: bName}), http.StatusOK, 0, ""},
		{"no certificate", nil, http.StatusUnauthorized, moh.CodeCertRequired, "required"},
		{"untrusted CA", issue(otherCA, testca.Leaf{DNSNames: bName}), http.StatusUnauthorized, moh.CodeBadCertificate, "trusted root"},
		{"a's CA, trusted by b but not by a", issue(m.caA, testca.Leaf{DNSNames: bName}), http.StatusUnauthorized, moh.CodeBadCertificate, "trusted root"},
		{"another name", issue(m.caB, testca.Leaf{DNSNames: []string{"c.localhost"}}), http.StatusUnauthorized, moh.CodeBadCertificate, "does not name"},
		{"expired", issue(m.caB, testca.Leaf{DNSNames: bName, NotBefore: time.Now().Add(-2 * time.Hour),
			NotAfter: time.Now().Add(-time.Minute)}), http.StatusUnauthorized, moh.CodeBadCertificate, "expired"},
		{"e-mail protection only", issue(m.caB, testca.Leaf{DNSNames: bName,
			ExtKeyUse: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}), http.StatusUnauthorized, moh.CodeBadCertificate, "authentication"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ans := m.sendToA(t, tc.cert, moh.GroupKeyPackages, payload)
			if ans.Status != tc.status {
				t.Fatalf("status %d (%s %q), want %d", ans.Status, ans.Response.Error.Code, ans.Response.Error.Message, tc.status)
			}
			if tc.code == 0 {
				if ans.Response.Type != moh.ResponseKeyPackages || len(ans.Response.Missing) != 1 {
					t.Fatalf("answer %+v, want key_packages with alice missing", ans.Response)
				}
				return
			}
			if ans.Response.Type != moh.ResponseError || ans.Response.Error.Code != tc.code {
				t.Fatalf("answer %+v, want error %s", ans.Response, tc.code)
			}
			if msg := string(ans.Response.Error.Message); !strings.Contains(msg, tc.reason) ||
				strings.Contains(msg, "x509") || strings.Contains(msg, "internal") {
				t.Fatalf("the refusal tells the peer %q, want the reason (%q) without internal detail", msg, tc.reason)
			}
		})
	}
}

// TestMutualTLSBetweenGateways runs two gateways that both require mutual
// TLS, each with a certificate of its own CA: a claims a KeyPackage of b's
// user (group_key_packages, a to b), b claims one of a's (b to a), a's
// user creates a group and adds b's user, and a's federation sender
// delivers the Welcome and an application message to b (deliver_message).
func TestMutualTLSBetweenGateways(t *testing.T) {
	m := newMTLSPeers(t)
	a, b := m.a, m.b
	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	publish := func(s *peerSite, c *peerMember) {
		t.Helper()
		enc, err := wire.Marshal(c.kp)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := c.kp.Ref()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.g.svc.Store().PublishKeyPackages(t.Context(), c.uri, []store.KeyPackage{{Client: c.uri,
			Suite: uint16(c.kp.CipherSuite), Ref: ref, KeyPackage: enc, NotAfter: time.Now().Add(time.Hour)}}, store.KeyPackageLimits{}); err != nil {
			t.Fatal(err)
		}
	}
	publish(a, alice)
	publish(b, bob)
	claim := func(from *peerSite, requester, target string, want *peerMember) {
		t.Helper()
		pc := &provider.Client{Sender: from.g.Providers[0], Keys: from.g.svc.Keys(), Fetcher: from.g.svc.Fetcher()}
		payload, err := wire.Marshal(&moh.GroupKeyPackagesRequest{Requester: []byte(requester), ClientIDs: [][]byte{[]byte(want.uri)}})
		if err != nil {
			t.Fatal(err)
		}
		ans, err := pc.Send(t.Context(), target, moh.GroupKeyPackages, payload)
		if err != nil {
			t.Fatal(err)
		}
		enc, _ := wire.Marshal(want.kp)
		if ans.Status != http.StatusOK || len(ans.Response.KeyPackages) != 1 || !bytes.Equal(ans.Response.KeyPackages[0], enc) {
			t.Fatalf("group_key_packages from %s to %s: %d %+v", from.g.Providers[0], target, ans.Status, ans.Response)
		}
	}
	claim(a, moh.UserURI("a.localhost", "alice"), "b.localhost", bob)
	claim(b, moh.UserURI("b.localhost", "bob"), "a.localhost", alice)

	gid := []byte("a group over mutual TLS")
	createGroupAt(t, a, alice, gid)
	addAt(t, a, alice, false, bob)
	app, err := alice.m.Protect([]byte("over mutual TLS"), nil)
	if err != nil {
		t.Fatal(err)
	}
	groupOp(t, a, alice, moh.RequestBody{Type: moh.SendMessage, Message: *app})
	got := waitQueue(t, b, bob.uri, 2)
	if len(got) != 2 {
		t.Fatalf("bob's queue at b holds %d messages, want the Welcome and the message", len(got))
	}
	welcome, err := mls.DecodeMLSMessage(got[0].Message)
	if err != nil {
		t.Fatal(err)
	}
	if bob.m, err = mls.JoinFromWelcome(welcome.Welcome, mls.WelcomeOptions{KeyPackage: bob.kp, InitKey: bob.initKey,
		LeafKey: bob.leafKey, Signer: bob.signer}); err != nil {
		t.Fatal(err)
	}
	msg, err := mls.DecodeMLSMessage(got[1].Message)
	if err != nil {
		t.Fatal(err)
	}
	if _, plain, err := bob.m.Unprotect(msg); err != nil || string(plain) != "over mutual TLS" {
		t.Fatalf("bob reads %q, %v", plain, err)
	}
	waitOutboxEmpty(t, a, "b.localhost")
}

// reconfigure replaces s's gateway by one provisioned with s's options
// changed by mutate, as a configuration reload does (the old one is
// cleaned up with the test), and serves it on s's address.
func (s *peerSite) reconfigure(t *testing.T, mutate func(*Gateway)) {
	t.Helper()
	old := s.g
	g := &Gateway{Providers: old.Providers, DSDomain: old.DSDomain, DataDir: old.DataDir, Federation: old.Federation}
	if old.MutualTLS != nil {
		m := *old.MutualTLS
		g.MutualTLS = &m
	}
	mutate(g)
	g = provisioned(t, g)
	s.stop()
	s.g = g
	s.start(t)
}

// outboxOf returns the admin view of site's outbox for destination.
func outboxOf(t *testing.T, site *peerSite, destination string) outboxView {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := (adminOutbox{}).list(rec, httptest.NewRequest(http.MethodGet, "/mimi/outbox", nil)); err != nil {
		t.Fatal(err)
	}
	var view map[string][]outboxView
	if err := json.Unmarshal(rec.Body.Bytes(), &view); err != nil {
		t.Fatal(err)
	}
	for _, v := range view[site.g.DataDir] {
		if v.Destination == destination {
			return v
		}
	}
	return outboxView{}
}

// TestMutualTLSRefusalIsRetried checks that a deliver_message refused for
// its client certificate stays in the sender's outbox, and arrives once
// the receiver trusts the certificate: b first trusts another CA than a's,
// refuses the Welcome a's outbox sends (401 bad_certificate), then is
// reconfigured to trust a's CA, and bob gets the Welcome once.
func TestMutualTLSRefusalIsRetried(t *testing.T) {
	m := newMTLSPeers(t)
	a, b := m.a, m.b
	otherCA, err := testca.NewCA("a CA b trusts at first")
	if err != nil {
		t.Fatal(err)
	}
	otherRoot, err := otherCA.WritePEM(t.TempDir(), "other.pem")
	if err != nil {
		t.Fatal(err)
	}
	rightRoots := b.g.MutualTLS.RootCAFiles
	b.reconfigure(t, func(g *Gateway) { g.MutualTLS.RootCAFiles = []string{otherRoot} })

	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid := []byte("a group whose Welcome waits for trust")
	createGroupAt(t, a, alice, gid)
	addAt(t, a, alice, false, bob)

	deadline := time.Now().Add(30 * time.Second)
	for v := outboxOf(t, a, "b.localhost"); !strings.Contains(v.LastError, "bad_certificate"); v = outboxOf(t, a, "b.localhost") {
		if time.Now().After(deadline) {
			t.Fatalf("a's outbox for b: %+v, want a bad_certificate refusal", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := outboxOf(t, a, "b.localhost"); v.Messages != 1 {
		t.Fatalf("a's outbox for b holds %d messages after the refusal, want the Welcome kept", v.Messages)
	}
	if got := waitQueue(t, b, bob.uri, 0); len(got) != 0 {
		t.Fatalf("bob's queue holds %d messages while b refuses a's certificate", len(got))
	}

	// b trusts a's CA now; the operator ends a's backoff.
	b.reconfigure(t, func(g *Gateway) { g.MutualTLS.RootCAFiles = rightRoots })
	rec := httptest.NewRecorder()
	if err := (adminOutbox{}).retry(rec, httptest.NewRequest(http.MethodPost, "/mimi/outbox/retry?destination=b.localhost", nil)); err != nil {
		t.Fatal(err)
	}
	waitOutboxEmpty(t, a, "b.localhost")
	got := waitQueue(t, b, bob.uri, 1)
	if len(got) != 1 {
		t.Fatalf("bob's queue holds %d messages, want the Welcome once", len(got))
	}
	if msg, err := mls.DecodeMLSMessage(got[0].Message); err != nil || msg.WireFormat != mls.WireFormatWelcome {
		t.Fatalf("bob's message is %v (%v), want the Welcome", msg, err)
	}
}

// TestUnmarshalMutualTLS parses the mutual_tls block.
func TestUnmarshalMutualTLS(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        *MutualTLS
	}{
		{"empty block", "mimi {\n mutual_tls\n}", &MutualTLS{}},
		{"every option", `mimi {
			mutual_tls {
				root_ca /etc/mimi/peers-a.pem
				root_ca /etc/mimi/peers-b.pem
				trust_pki_ca local
				system_roots
				certificate /etc/mimi/me.crt /etc/mimi/me.key
			}
		}`, &MutualTLS{RootCAFiles: []string{"/etc/mimi/peers-a.pem", "/etc/mimi/peers-b.pem"}, TrustPKICAs: []string{"local"},
			SystemRoots: true, CertificateFile: "/etc/mimi/me.crt", KeyFile: "/etc/mimi/me.key"}},
		{"present only", "mimi {\n mutual_tls {\n present_only\n }\n}", &MutualTLS{PresentOnly: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := new(Gateway)
			if err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(g.MutualTLS, tc.want) {
				t.Fatalf("parsed %+v, want %+v", g.MutualTLS, tc.want)
			}
		})
	}
	for _, tc := range []struct{ name, input, want string }{
		{"argument", "mimi {\n mutual_tls on\n}", "wrong argument count"},
		{"duplicate", "mimi {\n mutual_tls\n mutual_tls\n}", "duplicate mimi option 'mutual_tls'"},
		{"unknown option", "mimi {\n mutual_tls {\n bogus\n }\n}", "unrecognized mutual_tls option 'bogus'"},
		{"duplicate option", "mimi {\n mutual_tls {\n present_only\n present_only\n }\n}", "duplicate mutual_tls option 'present_only'"},
		{"certificate without key", "mimi {\n mutual_tls {\n certificate /etc/me.crt\n }\n}", "wrong argument count"},
		{"system_roots alone", "mimi {\n mutual_tls {\n system_roots\n }\n}", "system_roots"},
		{"present_only with root_ca", "mimi {\n mutual_tls {\n present_only\n root_ca /etc/mimi/peers.pem\n }\n}", "present_only does not check"},
		{"present_only with trust_pki_ca", "mimi {\n mutual_tls {\n present_only\n trust_pki_ca local\n }\n}", "present_only does not check"},
		{"present_only with system_roots", "mimi {\n mutual_tls {\n present_only\n root_ca /etc/mimi/peers.pem\n system_roots\n }\n}", "present_only does not check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := new(Gateway).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestMutualTLSPresentOnly checks that present_only sets the certificate
// the gateway presents to peers and checks none of theirs, and that
// without mutual_tls neither happens.
func TestMutualTLSPresentOnly(t *testing.T) {
	ca, err := testca.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(testca.Leaf{DNSNames: []string{"ds.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := testca.WriteKeyPair(cert, t.TempDir(), "ds")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name             string
		m                *MutualTLS
		presents, checks bool
	}{
		{"off", nil, false, false},
		{"present only", &MutualTLS{PresentOnly: true, CertificateFile: certFile, KeyFile: keyFile}, true, false},
		{"required", &MutualTLS{CertificateFile: certFile, KeyFile: keyFile}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", MutualTLS: tc.m})
			get := g.svc.Options().Fetch.GetClientCertificate
			if (get != nil) != tc.presents || (g.peerCerts != nil) != tc.checks {
				t.Fatalf("presents %v, checks %v; want %v, %v", get != nil, g.peerCerts != nil, tc.presents, tc.checks)
			}
			if get == nil {
				return
			}
			c, err := get(&tls.CertificateRequestInfo{Version: tls.VersionTLS13,
				SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}})
			if err != nil || len(c.Certificate) != 1 || !bytes.Equal(c.Certificate[0], cert.Certificate[0]) {
				t.Fatalf("presented %v, %v; want the configured certificate", c, err)
			}
			// A peer that accepts none of the certificate's signature
			// schemes gets no certificate, and the handshake goes on.
			if c, err := get(&tls.CertificateRequestInfo{Version: tls.VersionTLS13,
				SignatureSchemes: []tls.SignatureScheme{tls.Ed25519}}); err != nil || len(c.Certificate) != 0 {
				t.Fatalf("presented %v, %v to a peer that cannot take it; want none", c, err)
			}
		})
	}
}

// TestMutualTLSReadmeJSON decodes the README's JSON example strictly, as
// Caddy does, and requires its mutual_tls object to mean what the
// Caddyfile's mutual_tls block means.
func TestMutualTLSReadmeJSON(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "\n## JSON\n")
	if !ok {
		t.Fatal("README has no JSON section")
	}
	_, rest, _ = strings.Cut(rest, "```json\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("README's JSON section has no json block")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(block), &fields); err != nil {
		t.Fatal(err)
	}
	delete(fields, "handler") // Caddy's module key, not a field
	js, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	var g Gateway
	if err := caddy.StrictUnmarshalJSON(js, &g); err != nil {
		t.Fatalf("the README's JSON does not decode: %v", err)
	}
	want := &MutualTLS{RootCAFiles: []string{"/etc/caddy-mimi/peers.pem"}, TrustPKICAs: []string{},
		CertificateFile: "/etc/caddy-mimi/ds.crt", KeyFile: "/etc/caddy-mimi/ds.key"}
	if !reflect.DeepEqual(g.MutualTLS, want) {
		t.Fatalf("README mutual_tls decodes to %+v, want %+v", g.MutualTLS, want)
	}
}

// TestMutualTLSProvisionErrors checks that a half-named or unreadable
// certificate and unreadable roots fail the configuration.
func TestMutualTLSProvisionErrors(t *testing.T) {
	base := func() *Gateway { return &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"} }
	g := base()
	g.MutualTLS = &MutualTLS{CertificateFile: "/nonexistent.crt"}
	if err := g.Validate(); err == nil || !strings.Contains(err.Error(), "mutual_tls certificate") {
		t.Fatalf("a certificate without a key: %v", err)
	}
	ca, err := testca.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(testca.Leaf{DNSNames: []string{"ds.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := testca.WriteKeyPair(cert, t.TempDir(), "ds")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		m    *MutualTLS
		want string
	}{
		{"missing certificate files", &MutualTLS{CertificateFile: "/nonexistent.crt", KeyFile: "/nonexistent.key"}, "mutual_tls certificate"},
		{"certificate and key swapped", &MutualTLS{CertificateFile: keyFile, KeyFile: certFile}, "mutual_tls certificate"},
		{"missing root file", &MutualTLS{RootCAFiles: []string{"/nonexistent.pem"}, CertificateFile: certFile, KeyFile: keyFile}, "mutual_tls root_ca"},
		{"root file without certificates", &MutualTLS{RootCAFiles: []string{keyFile}, CertificateFile: certFile, KeyFile: keyFile}, "holds no PEM certificate"},
		{"present_only with root_ca", &MutualTLS{PresentOnly: true, RootCAFiles: []string{certFile}, CertificateFile: certFile, KeyFile: keyFile},
			"mutual_tls present_only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := base()
			g.MutualTLS = tc.m
			g.DataDir = t.TempDir()
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := g.Provision(ctx)
			g.Cleanup() //nolint:errcheck // nothing was opened
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
