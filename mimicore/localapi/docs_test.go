package localapi

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// seedKeys is the Keys of one Ed25519 provider key made from a seed,
// through the key file format.
type seedKeys struct{ k *provider.PrivateKey }

func (s seedKeys) Current(time.Time) (*provider.PrivateKey, error) { return s.k, nil }
func (s seedKeys) Published(time.Time) []moh.VerificationKey {
	return []moh.VerificationKey{s.k.Public()}
}

func newSeedKeys(t testing.TB, seed []byte, nb, na time.Time) seedKeys {
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
	return seedKeys{k}
}

// noStore is a Store that is never called.
type noStore struct {
	store.KeyPackages
	store.Queues
}

// docVectors computes the rows of docs/protocol.md §10.5: provider
// a.example (the Ed25519 key of seed 32 bytes of 01, valid from 1790000000
// for 30 days, as in §4.3 and §5.6) at 1790000060; its user alice binds
// mimi://a.example/d/alice/phone to the leaf key of seed 32 bytes of 02
// until 1790604800; a message from b.example for group "g1" is queued;
// alice acknowledges it; bob asks for alice's binding.
func docVectors(t *testing.T) map[string][]byte {
	t.Helper()
	nb := time.Unix(1_790_000_000, 0)
	now := nb.Add(time.Minute)
	api, err := New(Config{
		Domains: []string{"a.example"}, Store: noStore{},
		Keys: newSeedKeys(t, bytes.Repeat([]byte{1}, 32), nb, nb.Add(30*24*time.Hour)),
		Now:  func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	uri := []byte("mimi://a.example/d/alice/phone")
	leafKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	out := map[string][]byte{}
	enc := func(name string, v wire.Marshaler) {
		b, err := wire.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}

	req := &BindingRequest{ClientURI: uri, SignatureKey: leafKey, NotAfter: 1_790_604_800}
	enc("BindingRequest", req)
	b, err := api.IssueBinding("alice", req)
	if err != nil {
		t.Fatal(err)
	}
	enc("BindingAnswer", &BindingAnswer{Binding: *b})
	enc("MessageList", &MessageList{Messages: []Message{{
		Seq: 1, Arrived: 1_790_000_030, Expires: 1_790_000_030 + 30*24*3600,
		GroupID: []byte("g1"), Sender: []byte("b.example"), Message: []byte{0xde, 0xad, 0xbe, 0xef},
	}}})
	enc("AckRequest", &AckRequest{ClientURI: uri, UpTo: 1})
	enc("AckAnswer", &AckAnswer{Deleted: 1})
	_, err = api.IssueBinding("bob", req)
	out["refusal"] = moh.EncodeError(moh.DSErrorOf(err))
	return out
}

// TestWorkedExampleMatchesDocs requires the worked example of
// docs/protocol.md §10.5 to be what the code computes, row for row.
func TestWorkedExampleMatchesDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(doc, []byte("### 10.5 Worked example"))
	if start < 0 {
		t.Fatal("docs/protocol.md has no §10.5 worked example")
	}
	rows := regexp.MustCompile("(?m)^\\| `?([A-Za-z ]+?)`? \\| `([0-9a-f]+)` \\|$").FindAllSubmatch(doc[start:], -1)
	documented := map[string]string{}
	for _, r := range rows {
		documented[string(r[1])] = string(r[2])
	}
	for name, want := range docVectors(t) {
		t.Run(name, func(t *testing.T) {
			got, ok := documented[name]
			if !ok {
				t.Fatalf("row %s is missing; the code computes %x", name, want)
			}
			if got != hex.EncodeToString(want) {
				t.Fatalf("docs say %s, the code computes %x", got, want)
			}
			if name == "BindingRequest" || name == "AckRequest" {
				if err := moh.CheckVersion(want); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestWireRoundTrip decodes every documented body back into the struct
// that encoded it, and refuses trailing bytes and out-of-range fields.
func TestWireRoundTrip(t *testing.T) {
	v := docVectors(t)
	for _, tc := range []struct {
		name string
		into wire.Unmarshaler
	}{
		{"BindingRequest", new(BindingRequest)},
		{"BindingAnswer", new(BindingAnswer)},
		{"MessageList", new(MessageList)},
		{"AckRequest", new(AckRequest)},
		{"AckAnswer", new(AckAnswer)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := wire.Unmarshal(v[tc.name], tc.into, tc.name); err != nil {
				t.Fatal(err)
			}
			again, err := wire.Marshal(tc.into.(wire.Marshaler))
			if err != nil || !bytes.Equal(again, v[tc.name]) {
				t.Fatalf("re-encoded %x, want %x (%v)", again, v[tc.name], err)
			}
			if err := wire.Unmarshal(append(bytes.Clone(v[tc.name]), 0), tc.into, tc.name); err == nil {
				t.Fatal("a trailing byte was accepted")
			}
		})
	}
	for _, tc := range []struct {
		name string
		body string
		into wire.Unmarshaler
	}{
		{"empty client_uri", "0001" + "00" + "0101" + "0000000000000000", new(BindingRequest)},
		{"empty signature_key", "0001" + "0161" + "00" + "0000000000000000", new(BindingRequest)},
		{"last_resort 2", "0001" + "0161" + "03" + "020161", new(PublishRequest)},
		{"no KeyPackage", "0001" + "0161" + "00", new(PublishRequest)},
		{"empty KeyPackage", "0001" + "0161" + "02" + "0000", new(PublishRequest)},
		{"version 2", "0002" + "0161" + "0000000000000001", new(AckRequest)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, _ := hex.DecodeString(tc.body)
			if err := wire.Unmarshal(body, tc.into, tc.name); err == nil {
				t.Fatalf("%s accepted", tc.body)
			}
		})
	}
}
