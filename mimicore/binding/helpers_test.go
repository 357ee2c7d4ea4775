package binding

import (
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// suite is the cipher suite of the test leaves.
const suite = mls.X25519AES128GCMSHA256Ed25519

// client is an MLS client's leaf material.
type client struct {
	leaf    *mls.LeafNode
	signer  crypto.Signer
	encPriv hpke.PrivateKey
	initPub []byte
}

// newClient returns a client whose KeyPackage leaf has identity uri and a
// fresh signature key; bind, when set, makes the leaf's binding from that
// key (and may change the leaf before it is signed).
func newClient(t testing.TB, uri string, bind func(leaf *mls.LeafNode) *ClientBinding) *client {
	t.Helper()
	signer, pub, err := suite.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	encPriv, encPub, err := suite.DeriveKeyPair(random(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	_, initPub, err := suite.DeriveKeyPair(random(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	leaf := &mls.LeafNode{
		EncryptionKey: encPub,
		SignatureKey:  pub,
		Credential:    mls.Credential{Type: mls.CredentialBasic, Identity: []byte(uri)},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10},
			CipherSuites: []mls.CipherSuite{suite}, Credentials: []mls.CredentialType{mls.CredentialBasic}},
		Source:   mls.SourceKeyPackage,
		Lifetime: mls.Lifetime{NotBefore: 0, NotAfter: 1 << 62},
	}
	if bind != nil {
		if b := bind(leaf); b != nil {
			if err := Attach(leaf, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := leaf.Sign(suite, signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	return &client{leaf: leaf, signer: signer, encPriv: encPriv, initPub: initPub}
}

// keyPackage returns c's signed KeyPackage.
func (c *client) keyPackage(t testing.TB) *mls.KeyPackage {
	t.Helper()
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: suite, InitKey: c.initPub, LeafNode: *c.leaf}
	if err := kp.Sign(c.signer); err != nil {
		t.Fatal(err)
	}
	if err := kp.Verify(); err != nil {
		t.Fatalf("the mls package refuses the KeyPackage: %v", err)
	}
	return kp
}

func random(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// openRing opens a key ring of scheme in a temporary directory at now.
func openRing(t testing.TB, scheme moh.SignatureScheme, now time.Time) *provider.KeyRing {
	t.Helper()
	r, err := provider.OpenKeyRing(t.Context(), t.TempDir(), provider.KeyRingOptions{Scheme: scheme}, now)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// oneKey is a SigningKeys that always signs with its key.
type oneKey struct{ k *provider.PrivateKey }

func (o oneKey) Current(time.Time) (*provider.PrivateKey, error) { return o.k, nil }

// peer is a remote provider served over real TLS on loopback: discovery
// at /.well-known/mimi/ds-domain naming itself as ds.example.com, and its
// keys at /verification_key, as provider's own fetch tests stand one up.
type peer struct {
	srv     *httptest.Server
	keys    atomic.Pointer[[]byte]
	fetches atomic.Int32
}

func newPeer(t testing.TB, keys ...*provider.PrivateKey) *peer {
	t.Helper()
	p := &peer{}
	p.publish(keys...)
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/mimi/ds-domain", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ds.example.com:"+p.srv.URL[strings.LastIndexByte(p.srv.URL, ':')+1:]+"\n")
	})
	mux.HandleFunc("/verification_key", func(w http.ResponseWriter, r *http.Request) {
		p.fetches.Add(1)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(*p.keys.Load())
	})
	p.srv = httptest.NewTLSServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

// publish makes keys the peer's verification key answer.
func (p *peer) publish(keys ...*provider.PrivateKey) {
	var vk []moh.VerificationKey
	for _, k := range keys {
		vk = append(vk, k.Public())
	}
	raw, err := wire.Marshal(&moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: vk})
	if err != nil {
		panic(err)
	}
	p.keys.Store(&raw)
}

// fetcher returns a KeyFetcher that reaches the peer for every name in
// hosts (and its DS, ds.example.com) over TLS with the server's root.
func (p *peer) fetcher(t testing.TB, hosts ...string) *provider.KeyFetcher {
	t.Helper()
	addr := p.srv.Listener.Addr().String()
	resolve := map[string]string{"ds.example.com": addr}
	for _, h := range hosts {
		resolve[h] = addr
	}
	f := provider.NewKeyFetcher(provider.FetchPolicy{
		AllowPrivate: true, AllowedPorts: []int{p.srv.Listener.Addr().(*net.TCPAddr).Port},
		RootCAs: p.srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, Resolve: resolve,
	})
	t.Cleanup(f.Close)
	return f
}
