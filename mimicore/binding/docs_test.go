package binding

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// seedKey returns the provider Ed25519 key of seed, valid from nb to na,
// through the key file format (the package cannot build a PrivateKey from
// a seed otherwise).
func seedKey(t testing.TB, seed []byte, nb, na time.Time) *provider.PrivateKey {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	k, err := provider.ParsePEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{
		"Not-Before": nb.UTC().Format(time.RFC3339), "Not-After": na.UTC().Format(time.RFC3339)}, Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// staticLocal is a LocalKeys publishing fixed keys.
type staticLocal []moh.VerificationKey

func (s staticLocal) Published(time.Time) []moh.VerificationKey { return s }

// docVectors returns the rows of the worked example of docs/protocol.md
// §5.6, each computed by the code: provider a.example's Ed25519 key of seed
// 32 bytes of 01 (the key of §4.3, valid from 1790000000 for 30 days)
// binds mimi://a.example/d/alice/phone to the Ed25519 leaf key of seed 32
// bytes of 02 until 1790604800, issued at 1790000060.
func docVectors(t *testing.T) map[string][]byte {
	t.Helper()
	nb := time.Unix(1_790_000_000, 0)
	key := seedKey(t, bytes.Repeat([]byte{1}, 32), nb, nb.Add(30*24*time.Hour))
	issuedAt := nb.Add(time.Minute)
	leafKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	uri := []byte("mimi://a.example/d/alice/phone")
	notAfter := nb.Add(7 * 24 * time.Hour)

	iss := &Issuer{Domains: []string{"a.example"}, Keys: oneKey{key}, Now: func() time.Time { return issuedAt }}
	b, err := iss.Issue(uri, leafKey, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	tbs, err := SignedContent(uri, leafKey, b.NotAfter)
	if err != nil {
		t.Fatal(err)
	}
	sc := cryptobyte.NewBuilder(nil)
	wire.AddOpaque(sc, []byte("MLS 1.0 "+Label))
	wire.AddOpaque(sc, tbs)
	signContent := sc.BytesOrPanic()
	if !ed25519.Verify(ed25519.PublicKey(key.Public().PublicKey), signContent, b.Signature) {
		t.Fatal("the signature is not Ed25519 over the SignContent shown")
	}
	ext, err := b.Extension()
	if err != nil {
		t.Fatal(err)
	}
	extBytes, err := wire.Marshal(&ext)
	if err != nil {
		t.Fatal(err)
	}

	// The checker accepts the binding in a leaf, at its not_after.
	leaf := &mls.LeafNode{SignatureKey: leafKey, Credential: mls.Credential{Type: mls.CredentialBasic, Identity: uri},
		Extensions: mls.Extensions{ext}}
	chk := &Checker{Domains: []string{"a.example"}, Local: staticLocal{key.Public()}}
	if _, err := chk.CheckLeafNode(t.Context(), leaf, notAfter, provider.LookupOptions{}); err != nil {
		t.Fatalf("the example does not check: %v", err)
	}
	return map[string][]byte{
		"key_id":           key.ID,
		"signature_key":    leafKey,
		"ClientBindingTBS": tbs,
		"SignContent":      signContent,
		"ClientBinding":    ext.Data,
		"Extension":        extBytes,
	}
}

// TestDocVectors requires docs/protocol.md §5.6 to show every row of the
// worked example exactly as the code computes it.
func TestDocVectors(t *testing.T) {
	raw, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, doc, ok := bytes.Cut(raw, []byte("\n### 5.6 Client bindings\n"))
	if !ok {
		t.Fatal("docs/protocol.md has no §5.6 Client bindings")
	}
	if end := bytes.Index(doc, []byte("\n## ")); end >= 0 {
		doc = doc[:end]
	}
	for name, b := range docVectors(t) {
		t.Run(name, func(t *testing.T) {
			row := "| " + name + " | `" + hex.EncodeToString(b) + "` |"
			if !bytes.Contains(doc, []byte(row)) {
				t.Errorf("docs/protocol.md §5.6 does not show %s", row)
			}
		})
	}
}
