package attachment

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/internal/testdir"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// vector is one entry of docs/attachment-vectors.json: the derivation from
// the attachment exporter secret on (MLS-Exporter itself is RFC 9420's, and
// its official vectors pin it), for one cipher suite.
type vector struct {
	CipherSuite      uint16 `json:"cipher_suite"`
	Plaintext        string `json:"plaintext"`
	SenderIndex      uint32 `json:"sender_index"`
	AttachmentHash   string `json:"attachment_hash"`
	Context          string `json:"attachment_context"`
	ExporterSecret   string `json:"attachment_exporter_secret"`
	Nonce            string `json:"nonce"`
	AttachmentSecret string `json:"attachment_secret"`
	Key              string `json:"key"`
	AEADNonce        string `json:"aead_nonce"`
	Ciphertext       string `json:"ciphertext"`
	Token            string `json:"token"`
	Reference        string `json:"reference"`
	// ReferenceWithKey is the reference of a copy: Reference with the
	// attachment secret as key.
	ReferenceWithKey string `json:"reference_with_key"`
}

// vectorsFile is where the vectors are published.
func vectorsFile(t *testing.T) string {
	t.Helper()
	dir, err := testdir.Dir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "..", "docs", "attachment-vectors.json")
}

// pattern is n bytes counting from start.
func pattern(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

// makeVector computes the vector of cs from fixed inputs.
func makeVector(t *testing.T, cs mls.CipherSuite) vector {
	t.Helper()
	plain := []byte("MIMI attachment test vector: a short file.\n")
	const sender = 3
	h, err := cs.Hash(plain)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := Context(h, sender)
	if err != nil {
		t.Fatal(err)
	}
	es, nonce := pattern(0x10, cs.HashSize()), pattern(0xa0, cs.HashSize())
	secret, err := cs.Extract(es, nonce)
	if err != nil {
		t.Fatal(err)
	}
	k, err := DeriveFromExporterSecret(cs, es, nonce)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cs.NewAEAD(k.Key)
	if err != nil {
		t.Fatal(err)
	}
	token := pattern(0x40, 32)
	return vector{
		CipherSuite: uint16(cs), Plaintext: hex.EncodeToString(plain), SenderIndex: sender,
		AttachmentHash: hex.EncodeToString(h), Context: hex.EncodeToString(ctx),
		ExporterSecret: hex.EncodeToString(es), Nonce: hex.EncodeToString(nonce),
		AttachmentSecret: hex.EncodeToString(secret), Key: hex.EncodeToString(k.Key), AEADNonce: hex.EncodeToString(k.Nonce),
		Ciphertext: hex.EncodeToString(aead.Seal(nil, k.Nonce, plain, nil)), Token: hex.EncodeToString(token),
		Reference:        Reference{Token: token, Nonce: nonce, Hash: h}.String(),
		ReferenceWithKey: Reference{Token: token, Nonce: nonce, Hash: h, Key: secret}.String(),
	}
}

// must returns b, or nil on an error.
func must(b []byte, err error) []byte {
	if err != nil {
		return nil
	}
	return b
}

var vectorSuites = []mls.CipherSuite{mls.X25519AES128GCMSHA256Ed25519, mls.P256AES128GCMSHA256P256,
	mls.X25519ChaCha20Poly1305SHA256Ed25519, mls.P521AES256GCMSHA512P521, mls.P384AES256GCMSHA384P384}

// TestVectors checks the published vectors against this implementation.
// MIMI_WRITE_VECTORS=1 writes them instead (only when the derivation is
// meant to change).
func TestVectors(t *testing.T) {
	var want []vector
	for _, cs := range vectorSuites {
		want = append(want, makeVector(t, cs))
	}
	path := vectorsFile(t)
	if os.Getenv("MIMI_WRITE_VECTORS") == "1" {
		b, err := json.MarshalIndent(want, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []vector
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d vectors published, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("vector %d (suite %d) differs from the implementation:\npublished %+v\ncomputed  %+v", i, want[i].CipherSuite, got[i], want[i])
		}
		// And each decrypts, through Open's own path.
		ct, _ := hex.DecodeString(got[i].Ciphertext)
		key, _ := hex.DecodeString(got[i].Key)
		n, _ := hex.DecodeString(got[i].AEADNonce)
		aead, err := mls.CipherSuite(got[i].CipherSuite).NewAEAD(key)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := aead.Open(nil, n, ct, nil)
		if p, _ := hex.DecodeString(got[i].Plaintext); err != nil || !bytes.Equal(plain, p) {
			t.Errorf("vector %d does not decrypt: %v", i, err)
		}
		// The reference with key parses, and its key alone opens it.
		ref, err := ParseReference(got[i].ReferenceWithKey)
		if err != nil {
			t.Fatalf("vector %d: reference_with_key: %v", i, err)
		}
		if p, _ := hex.DecodeString(got[i].Plaintext); !bytes.Equal(must(OpenWithSecret(mls.CipherSuite(got[i].CipherSuite), ref.Key, ref.Hash, ct)), p) {
			t.Errorf("vector %d does not decrypt with the key of reference_with_key", i)
		}
	}
}

// TestVectorsIndependently recomputes the published vectors with a second
// implementation written from docs/protocol.md §6.1 on Node.js's own
// crypto (testdata/peers/attachments/check.mjs), so that the vectors do
// not only agree with the code that made them. Without Node the test is
// skipped, or fails in CI.
func TestVectorsIndependently(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node is not installed; the attachment vectors' independent check needs Node >= 20")
		}
		t.Skip("node is not installed")
	}
	script, err := testdir.Path("peers", "attachments", "check.mjs")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(node, script, vectorsFile(t)).CombinedOutput()
	if err != nil {
		t.Fatalf("the independent check failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
