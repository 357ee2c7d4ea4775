package moh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"os"
	"testing"

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

	msg := sampleSendMessage()
	mlsMsg, err := wire.Marshal(&msg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mls.DecodeMLSMessage(mlsMsg); err != nil {
		t.Fatal(err)
	}
	sendReq := &DSRequest{Body: RequestBody{Type: SendMessage, Message: msg},
		Auth: AuthData{Type: AuthClientSignature, SenderIndex: 1, Timestamp: 1_790_000_060}}
	sendTBS, err := sendReq.SignedBytes()
	if err != nil {
		t.Fatal(err)
	}
	sendReq.Auth.Signature = sign(sendTBS)
	send, err := wire.Marshal(sendReq)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := PeekHeader(send); err != nil || RequestType(h.Type) != SendMessage || !SendMessage.CarriesMLS() {
		t.Fatalf("PeekHeader(send_message) = %+v, %v", h, err)
	}
	if decoded, err := DecodeDSRequest(send); err != nil {
		t.Fatal(err)
	} else if signed, _ := decoded.SignedBytes(); !bytes.Equal(signed, sendTBS) {
		t.Fatal("send_message DSRequestTBS is not the request's bytes up to the signature vector")
	}
	out["send_message MLSMessage"] = mlsMsg
	out["send_message DSRequestTBS"] = sendTBS
	out["send_message DSRequest"] = send

	// §5.2: the pieces of the MLS-carrying bodies, then one body of each
	// type (the DSRequestBody: type byte and fields).
	enc := func(name string, v wire.Marshaler) []byte {
		b, err := wire.Marshal(v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return b
	}
	cg := sampleCreateGroup()
	commit := sampleCommit(mls.Sender{Type: mls.SenderMember, Index: 1})
	external := sampleCommit(mls.Sender{Type: mls.SenderNewMemberCommit})
	partial := samplePartialGroupInfo()
	welcome := sampleWelcomePackage()
	remove := sampleSelfRemove()
	out["LeafNode"] = enc("LeafNode", &cg.LeafNode)
	out["GroupInfo MLSMessage"] = enc("GroupInfo", &cg.GroupInfo)
	out["commit MLSMessage"] = enc("commit", &commit)
	out["external commit MLSMessage"] = enc("external commit", &external)
	out["PartialGroupInfo"] = enc("PartialGroupInfo", &partial)
	out["WelcomePackage"] = enc("WelcomePackage", &welcome)
	out["self-remove proposal MLSMessage"] = enc("proposal", &remove)
	for typ, body := range sampleMLSBodies() {
		b := enc(typ.String(), &body)
		var back RequestBody
		if err := wire.Unmarshal(b, &back, typ.String()); err != nil {
			t.Fatalf("%s body does not decode: %v", typ, err)
		}
		out[typ.String()+" body"] = b
	}
	return out
}

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

// TestPrintDSVectors prints the rows of §5.5 (go test -run
// TestPrintDSVectors -v) for editing the document.
func TestPrintDSVectors(t *testing.T) {
	if !testing.Verbose() {
		t.Skip("prints only with -v")
	}
	for name, b := range dsVectors(t) {
		t.Logf("| %s | `%x` |", name, b)
	}
}
