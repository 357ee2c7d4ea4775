package provider

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/testca"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// issue issues a leaf of ca described by l, or fails the test.
func issue(t *testing.T, ca *testca.CA, l testca.Leaf) []*x509.Certificate {
	t.Helper()
	c, err := ca.Issue(l)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{c.Leaf}
}

func newCA(t *testing.T, name string) *testca.CA {
	t.Helper()
	ca, err := testca.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestCertVerifier checks the client certificate of a provider request
// against certificates of two CAs: the peer's, which is trusted, and
// another one, which is not.
func TestCertVerifier(t *testing.T) {
	peerCA, otherCA := newCA(t, "peer CA"), newCA(t, "other CA")
	now := time.Now()
	v := &CertVerifier{Roots: peerCA.Pool()}
	const authority = "ds.peer.example:8443"
	for _, tc := range []struct {
		name      string
		certs     []*x509.Certificate
		authority string
		want      moh.Code // 0: accepted
	}{
		{"server certificate of the DS host", issue(t, peerCA, testca.Leaf{DNSNames: []string{"ds.peer.example"}}), authority, 0},
		{"authority without a port", issue(t, peerCA, testca.Leaf{DNSNames: []string{"ds.peer.example"}}), "ds.peer.example", 0},
		{"clientAuth only", issue(t, peerCA, testca.Leaf{DNSNames: []string{"ds.peer.example"},
			ExtKeyUse: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}), authority, 0},
		{"no extended key usage", issue(t, peerCA, testca.Leaf{DNSNames: []string{"ds.peer.example"},
			ExtKeyUse: []x509.ExtKeyUsage{}}), authority, 0},
		{"wildcard", issue(t, peerCA, testca.Leaf{DNSNames: []string{"*.peer.example"}}), authority, 0},
		{"no certificate", nil, authority, moh.CodeCertRequired},
		{"untrusted CA", issue(t, otherCA, testca.Leaf{DNSNames: []string{"ds.peer.example"}}), authority, moh.CodeBadCertificate},
		{"another name", issue(t, peerCA, testca.Leaf{DNSNames: []string{"peer.example.com"}}), authority, moh.CodeBadCertificate},
		{"wildcard two labels deep", issue(t, peerCA, testca.Leaf{DNSNames: []string{"*.example"}}), authority, moh.CodeBadCertificate},
		{"expired", issue(t, peerCA, testca.Leaf{DNSNames: []string{"ds.peer.example"},
			NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Minute)}), authority, moh.CodeBadCertificate},
		{"not yet valid", issue(t, peerCA, testca.Leaf{DNSNames: []string{"ds.peer.example"},
			NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)}), authority, moh.CodeBadCertificate},
		{"e-mail protection only", issue(t, peerCA, testca.Leaf{DNSNames: []string{"ds.peer.example"},
			ExtKeyUse: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}), authority, moh.CodeBadCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 { // the second time from the cache of verified chains
				err := v.Verify(tc.certs, tc.authority)
				if got := moh.DSErrorOf(err).Code; tc.want == 0 && err != nil || tc.want != 0 && got != tc.want {
					t.Fatalf("Verify = %v, want code %v", err, tc.want)
				}
			}
		})
	}
}

// TestCertVerifierCacheExpires checks that a chain verified once is not
// accepted from the cache after its certificate expired.
func TestCertVerifierCacheExpires(t *testing.T) {
	ca := newCA(t, "peer CA")
	certs := issue(t, ca, testca.Leaf{DNSNames: []string{"ds.peer.example"}, NotAfter: time.Now().Add(time.Minute)})
	clock := time.Now()
	v := &CertVerifier{Roots: ca.Pool(), Now: func() time.Time { return clock }}
	if err := v.Verify(certs, "ds.peer.example"); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(2 * time.Minute)
	if err := v.Verify(certs, "ds.peer.example"); moh.DSErrorOf(err).Code != moh.CodeBadCertificate {
		t.Fatalf("Verify of an expired certificate verified before = %v, want bad_certificate", err)
	}
}

// TestAuthorityIsCached checks that Authority discovers a peer's DS once,
// reuses the answer, takes it from a key fetch too, and remembers a
// failure for MinInterval.
func TestAuthorityIsCached(t *testing.T) {
	var discoveries atomic.Int32
	var srv *httptest.Server
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/mimi/ds-domain", func(w http.ResponseWriter, r *http.Request) {
		discoveries.Add(1)
		if r.Host == "gone.example.com" {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		io.WriteString(w, "ds.example.com:"+srv.URL[strings.LastIndexByte(srv.URL, ':')+1:]+"\n")
	})
	srv = httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	f, clock := fetcherFor(t, srv, "peer.example.com", "gone.example.com")
	for i := range 3 {
		got, err := f.Authority(t.Context(), "peer.example.com")
		if err != nil || !strings.HasPrefix(got, "ds.example.com:") {
			t.Fatalf("Authority #%d = %q, %v", i, got, err)
		}
	}
	if n := discoveries.Load(); n != 1 {
		t.Fatalf("%d discoveries for three lookups, want 1", n)
	}
	*clock = clock.Add(AuthorityTTL)
	if _, err := f.Authority(t.Context(), "peer.example.com"); err != nil || discoveries.Load() != 2 {
		t.Fatalf("after the TTL: %v, %d discoveries, want 2", err, discoveries.Load())
	}
	for range 2 {
		if _, err := f.Authority(t.Context(), "gone.example.com"); !errors.Is(err, ErrFetchFailed) {
			t.Fatalf("Authority of a peer without discovery = %v, want ErrFetchFailed", err)
		}
	}
	if n := discoveries.Load(); n != 3 {
		t.Fatalf("%d discoveries, want the failure remembered", n)
	}
}

// TestFetcherPresentsClientCertificate checks that the fetcher's transport
// presents the certificate of FetchPolicy.GetClientCertificate to a peer
// that asks for one, and none when the function is not set.
func TestFetcherPresentsClientCertificate(t *testing.T) {
	ca := newCA(t, "our CA")
	mine, err := ca.Issue(testca.Leaf{DNSNames: []string{"ds.ours.example"}})
	if err != nil {
		t.Fatal(err)
	}
	var presented atomic.Pointer[string]
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := "none"
		if len(r.TLS.PeerCertificates) > 0 {
			name = r.TLS.PeerCertificates[0].DNSNames[0]
		}
		presented.Store(&name)
		io.WriteString(w, "ds.example.com")
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	policy := FetchPolicy{AllowPrivate: true, AllowedPorts: []int{srv.Listener.Addr().(*net.TCPAddr).Port},
		RootCAs:  srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
		Resolve:  map[string]string{"peer.example.com": srv.Listener.Addr().String()},
		MaxPeers: 10}
	for _, tc := range []struct {
		name string
		get  func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
		want string
	}{
		{"with a certificate", func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &mine, nil }, "ds.ours.example"},
		{"without", nil, "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := policy
			p.GetClientCertificate = tc.get
			f := NewKeyFetcher(p)
			defer f.Close()
			if _, err := f.Discover(t.Context(), "peer.example.com"); err != nil {
				t.Fatal(err)
			}
			if got := presented.Load(); got == nil || *got != tc.want {
				t.Fatalf("the peer saw %v, want %s", got, tc.want)
			}
		})
	}
}

// BenchmarkCertVerifier measures the check of a client certificate: a
// chain verified before (the cache, the cost per request on a kept-alive
// connection) and a chain verified afresh.
func BenchmarkCertVerifier(b *testing.B) {
	ca, err := testca.NewCA("peer CA")
	if err != nil {
		b.Fatal(err)
	}
	c, err := ca.Issue(testca.Leaf{DNSNames: []string{"ds.peer.example"}})
	if err != nil {
		b.Fatal(err)
	}
	certs := []*x509.Certificate{c.Leaf}
	b.Run("cached", func(b *testing.B) {
		v := &CertVerifier{Roots: ca.Pool()}
		for b.Loop() {
			if err := v.Verify(certs, "ds.peer.example:443"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("uncached", func(b *testing.B) {
		for b.Loop() {
			v := &CertVerifier{Roots: ca.Pool()}
			if err := v.Verify(certs, "ds.peer.example:443"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestPostRefreshesRefusedConnection checks that a provider request
// refused for its connection's client certificate has the next one sent
// over a new connection, which presents the certificate of the moment:
// a peer checks the certificate of the handshake at each request
// (docs/protocol.md §4.4), so a connection kept alive past the expiry of
// the certificate it presented, or opened before this gateway had one,
// would otherwise be refused for as long as traffic keeps it open.
func TestPostRefreshesRefusedConnection(t *testing.T) {
	ca := newCA(t, "our CA")
	start := time.Now()
	first, err := ca.Issue(testca.Leaf{DNSNames: []string{"ds.ours.example"}, NotBefore: start.Add(-time.Hour), NotAfter: start.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := ca.Issue(testca.Leaf{DNSNames: []string{"ds.ours.example"}, NotBefore: start.Add(-time.Hour), NotAfter: start.Add(3 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		before *tls.Certificate // presented at the first handshake; nil: none
		after  time.Time        // the peer's clock once renewed is presented, after before
	}{
		{"certificate expired since the handshake", &first, start.Add(2 * time.Hour)},
		{"no certificate at the handshake", nil, start},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var clock atomic.Pointer[time.Time]
			clock.Store(&start)
			verifier := &CertVerifier{Roots: ca.Pool(), Now: func() time.Time { return *clock.Load() }}
			ok, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseOK})
			mux := http.NewServeMux()
			var srv *httptest.Server
			mux.HandleFunc("/.well-known/mimi/ds-domain", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "ds.example.com:"+srv.URL[strings.LastIndexByte(srv.URL, ':')+1:])
			})
			mux.HandleFunc("/connection_key_packages", func(w http.ResponseWriter, r *http.Request) {
				if err := verifier.Verify(r.TLS.PeerCertificates, "ds.ours.example"); err != nil {
					w.WriteHeader(http.StatusUnauthorized)
					w.Write(moh.ErrorAnswer(err))
					return
				}
				w.Write(ok)
			})
			srv = httptest.NewUnstartedServer(mux)
			srv.EnableHTTP2 = true
			srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS13}
			srv.StartTLS()
			t.Cleanup(srv.Close)

			var current atomic.Pointer[tls.Certificate]
			if tc.before != nil {
				current.Store(tc.before)
			}
			addr := srv.Listener.Addr().String()
			f := NewKeyFetcher(FetchPolicy{AllowPrivate: true, AllowedPorts: []int{srv.Listener.Addr().(*net.TCPAddr).Port},
				RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
				Resolve: map[string]string{"peer.example.com": addr, "ds.example.com": addr},
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					if c := current.Load(); c != nil {
						return c, nil
					}
					return new(tls.Certificate), nil
				}})
			t.Cleanup(f.Close)
			c := &Client{Sender: "ours.example", Fetcher: f}
			post := func() *Answer {
				t.Helper()
				a, err := c.Post(t.Context(), "peer.example.com", moh.ConnectionKeyPackages, []byte{0})
				if err != nil {
					t.Fatal(err)
				}
				return a
			}
			if tc.before != nil {
				if a := post(); a.Status != http.StatusOK {
					t.Fatalf("first request: status %d %v, want 200", a.Status, a.Err())
				}
				// This gateway renews its certificate; the peer's clock
				// passes the first one's expiry.
				current.Store(&renewed)
				clock.Store(&tc.after)
			}
			if a := post(); a.Status != http.StatusUnauthorized {
				t.Fatalf("request over the connection of the first handshake: status %d, want 401", a.Status)
			}
			current.Store(&renewed) // without a certificate before, this gateway has one now
			for i := range 2 {
				if a := post(); a.Status != http.StatusOK {
					t.Fatalf("request %d after the refusal: status %d %v, want 200 over a new connection", i+1, a.Status, a.Err())
				}
			}
		})
	}
}
