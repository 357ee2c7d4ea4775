package admission

import (
	"bytes"
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// TestRefreshOrder overlaps a slow periodic refresh with the refetch for a
// token under an unknown key, against a real TLS directory server on
// loopback: the slow fetch reads the directory before the issuer rotates
// and answers after the refetch installed the rotated keys. Its older keys
// must not replace them.
func TestRefreshOrder(t *testing.T) {
	f := newPPFixture(t)
	ctx := context.Background()
	oldKey := f.keys[privacypass.TypeBlindRSA]
	newKey, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
	if err != nil {
		t.Fatal(err)
	}
	newIss, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: newKey})
	if err != nil {
		t.Fatal(err)
	}

	// The server answers with the directory as it was when the request
	// arrived; the request numbered holdN waits for release first.
	oldDir, newDir := directoryOf(t, oldKey), directoryOf(t, newKey)
	var served atomic.Pointer[[]byte]
	served.Store(&oldDir)
	var requests, holdN atomic.Int64
	arrived, release := make(chan struct{}), make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := *served.Load()
		if requests.Add(1) == holdN.Load() {
			close(arrived)
			<-release
		}
		w.Header().Set("Content-Type", privacypass.MediaTypeIssuerDirectory)
		w.Write(body) //nolint:errcheck // test server
	}))
	t.Cleanup(srv.Close)
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // runs before srv.Close
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	pol := provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{port}, RootCAs: roots,
		Resolve: map[string]string{"example.com": srv.Listener.Addr().String()}}

	o, err := NewOrigin(ctx, OriginConfig{
		OriginConfig: privacypass.OriginConfig{IssuerName: "example.com", OriginInfo: []string{"ds.example.com"}, Spent: f.store},
		DirectoryURL: "https://example.com:" + strconv.Itoa(port) + privacypass.DirectoryPath, Fetch: pol,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()

	// The periodic refresh starts and reads the old directory...
	holdN.Store(requests.Load() + 1)
	slow := make(chan error, 1)
	go func() { slow <- o.Refresh(ctx) }()
	<-arrived
	// ...the issuer rotates, and a token under the new key makes the
	// origin refetch while the slow refresh is still under way...
	served.Store(&newDir)
	if !o.RefreshForUnknownKey(ctx) {
		t.Fatal("the refetch for the unknown key did not install the rotated keys")
	}
	// ...and then the slow refresh answers with the old keys.
	releaseOnce.Do(func() { close(release) })
	if err := <-slow; err != nil {
		t.Fatalf("slow refresh: %v", err)
	}

	cs, err := o.Current().Challenges()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || !bytes.Equal(cs[0].TokenKey, newKey.TokenKey()) {
		t.Fatal("the challenge names the key of the older directory")
	}
	if _, err := o.Current().Redeem(ctx, mintWith(t, newIss.Issue, newKey, cs[0].TokenChallenge)); err != nil {
		t.Fatalf("token under the rotated key: %v", err)
	}
	_, err = o.Current().Redeem(ctx, mintWith(t, f.issuer.Issue, oldKey, cs[0].TokenChallenge))
	if privacypass.ReasonOf(err) != privacypass.ReasonUnknownKey {
		t.Fatalf("token under the key rotated out: %v, want %s", err, privacypass.ReasonUnknownKey)
	}
}
