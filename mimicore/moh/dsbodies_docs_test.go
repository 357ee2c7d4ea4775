package moh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"os"
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// dsVectorKey is the client signature key of the DS request examples of
// docs/protocol.md §5.5: the Ed25519 key whose seed is 32 bytes of 01.
func dsVectorKey() ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
}

// dsVectors returns the hex rows of docs/protocol.md §5.5, each computed by
// the code: the request_group_id request, a signed attachment_download and
// a signed send_message, whose MLS-carrying body moh does not encode yet
// and is therefore laid out here as §5.2 writes it: the type byte, then the
// MLSMessage as the MLS codec encodes it.
func dsVectors(t *testing.T) map[string][]byte {
	t.Helper()
	key := dsVectorKey()
	suite := mls.X25519AES128GCMSHA256Ed25519
	sign := func(tbs []byte) []byte {
		sig, err := suite.SignWithLabel(key, DSRequestLabel, tbs)
		if err != nil {
			t.Fatal(err)
		}
		if err := suite.VerifyWithLabel(key.Public().(ed25519.PublicKey), DSRequestLabel, tbs, sig); err != nil {
			t.Fatal(err)
		}
		return sig
	}
	out := map[string][]byte{}

	groupID, err := wire.Marshal(&DSRequest{Body: RequestBody{Type: RequestGroupID}})
	if err != nil {
		t.Fatal(err)
	}
	out["request_group_id"] = groupID

	download := &DSRequest{
		Body: RequestBody{Type: AttachmentDownload, Attachment: AttachmentRef{
			GroupID: bytes.Repeat([]byte{0xaa}, 16), Token: bytes.Repeat([]byte{0xbb}, 32)}},
		Auth: AuthData{Type: AuthClientSignature, SenderIndex: 1, Timestamp: 1_790_000_060},
	}
	tbs, err := download.SignedBytes()
	if err != nil {
		t.Fatal(err)
	}
	download.Auth.Signature = sign(tbs)
	full, err := wire.Marshal(download)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := DecodeDSRequest(full)
	if err != nil {
		t.Fatal(err)
	}
	if signed, _ := decoded.SignedBytes(); !bytes.Equal(signed, tbs) || !bytes.Equal(full[:len(tbs)], tbs) {
		t.Fatal("DSRequestTBS is not the request's bytes up to the signature vector")
	}
	out["attachment_download DSRequestTBS"] = tbs
	out["attachment_download DSRequest"] = full

	msg := samplePrivateMessage()
	msg.PrivateMessage.GroupID = bytes.Repeat([]byte{0xaa}, 16)
	mlsMsg, err := wire.Marshal(&msg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mls.DecodeMLSMessage(mlsMsg); err != nil {
		t.Fatal(err)
	}
	auth := AuthData{Type: AuthClientSignature, SenderIndex: 1, Timestamp: 1_790_000_060}
	authTBS, err := wire.Marshal(authTBSOnly{&auth})
	if err != nil {
		t.Fatal(err)
	}
	sendTBS := append(append([]byte{0, 1, byte(SendMessage)}, mlsMsg...), authTBS...)
	auth.Signature = sign(sendTBS)
	authFull, err := wire.Marshal(&auth)
	if err != nil {
		t.Fatal(err)
	}
	send := append(append([]byte{0, 1, byte(SendMessage)}, mlsMsg...), authFull...)
	if h, err := PeekHeader(send); err != nil || RequestType(h.Type) != SendMessage || !SendMessage.CarriesMLS() {
		t.Fatalf("PeekHeader(send_message) = %+v, %v", h, err)
	}
	out["send_message MLSMessage"] = mlsMsg
	out["send_message DSRequestTBS"] = sendTBS
	out["send_message DSRequest"] = send
	return out
}

type authTBSOnly struct{ a *AuthData }

func (x authTBSOnly) MarshalWire(b *cryptobyte.Builder) { x.a.marshalTBS(b) }

// TestDSRequestDocVectors requires docs/protocol.md §5.5 to show every
// example exactly as the code computes it.
func TestDSRequestDocVectors(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range dsVectors(t) {
		if h := hex.EncodeToString(b); !bytes.Contains(doc, []byte("| "+name+" | `"+h+"` |")) {
			t.Errorf("docs/protocol.md §5.5 does not show %s as `%s`", name, h)
		}
	}
}
