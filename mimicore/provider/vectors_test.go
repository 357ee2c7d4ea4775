package provider

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// providerVector is the worked example of docs/protocol.md §4: a
// connection_key_packages request signed with a fixed Ed25519 seed.
type providerVector struct {
	Seed             string `json:"seed"`
	NotBefore        int64  `json:"not_before"`
	NotAfter         int64  `json:"not_after"`
	KeyID            string `json:"key_id"`
	PublicKey        string `json:"public_key"`
	Payload          string `json:"payload"`
	SignContent      string `json:"sign_content"`
	Request          string `json:"request"`
	VerificationKeys string `json:"verification_keys_response"`
}

// buildProviderVector recomputes the vector from its inputs.
func buildProviderVector(t *testing.T, seed []byte, nb, na int64) providerVector {
	t.Helper()
	k, err := newPrivateKey(moh.SchemeEd25519, ed25519.NewKeyFromSeed(seed), time.Unix(nb, 0), time.Unix(na, 0))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := wire.Marshal(&moh.ConnectionKeyPackagesRequest{
		Requester: []byte("mimi://a.example/u/alice"), UserID: []byte("mimi://b.example/u/bob"),
	})
	if err != nil {
		t.Fatal(err)
	}
	req := &moh.ProviderRequest{
		RequestType: moh.ConnectionKeyPackages, Sender: []byte("a.example"), Recipient: []byte("b.example"),
		Timestamp: uint64(nb + 60), RequestID: bytes.Repeat([]byte{0x42}, 16), Payload: payload,
	}
	raw, err := SignRequest(req, k)
	if err != nil {
		t.Fatal(err)
	}
	tbs, _ := req.SignedBytes()
	sc, _ := signContent(moh.ProviderRequestLabel, tbs)
	keys, err := wire.Marshal(&moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: []moh.VerificationKey{k.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	return providerVector{
		Seed: hex.EncodeToString(seed), NotBefore: nb, NotAfter: na,
		KeyID: hex.EncodeToString(k.ID), PublicKey: hex.EncodeToString(k.public),
		Payload: hex.EncodeToString(payload), SignContent: hex.EncodeToString(sc),
		Request: hex.EncodeToString(raw), VerificationKeys: hex.EncodeToString(keys),
	}
}

// TestProviderRequestVector checks the published vector: the encoder must
// reproduce it byte for byte (Ed25519 is deterministic) and the verifier
// must accept it. Set MIMI_WRITE_VECTORS=1 to regenerate the file.
func TestProviderRequestVector(t *testing.T) {
	const path = "testdata/provider-request.json"
	seed := bytes.Repeat([]byte{0x01}, 32)
	got := buildProviderVector(t, seed, 1_790_000_000, 1_790_000_000+30*86400)
	if os.Getenv("MIMI_WRITE_VECTORS") != "" {
		out, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile(path, append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var want providerVector
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("vector differs:\n got %+v\nwant %+v", got, want)
	}
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"key_id": want.KeyID, "payload": want.Payload,
		"SignContent": want.SignContent, "request": want.Request, "keys answer": want.VerificationKeys} {
		if !bytes.Contains(doc, []byte(v)) {
			t.Errorf("docs/protocol.md §4.3 does not show the current %s", name)
		}
	}
	raw, _ := hex.DecodeString(want.Request)
	keysRaw, _ := hex.DecodeString(want.VerificationKeys)
	var keys moh.DSResponse
	if err := wire.Unmarshal(keysRaw, &keys, "DSResponse"); err != nil {
		t.Fatal(err)
	}
	v := &Verifier{
		Domains: []string{"b.example"},
		Keys:    staticKeys{"a.example": keys.VerificationKeys},
		Now:     func() time.Time { return time.Unix(want.NotBefore+100, 0) },
	}
	if _, err := v.Verify(t.Context(), raw, moh.ConnectionKeyPackages); err != nil {
		t.Fatalf("published vector does not verify: %v", err)
	}
}
