package caddymodule

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// TestRelayAttachmentRetry: a client of a follower retries an upload and
// a copy, byte-identically, after they succeeded at the group's hub (the
// first answer lost, as when the follower gave up on the hub and answered
// 503): the retries are relayed to the hub and get the first answers, the
// same tokens, and the hub stores one upload and one copy.
func TestRelayAttachmentRetry(t *testing.T) {
	a, b := twoProviders(t)
	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid := make([]byte, 16)
	rand.Read(gid)
	// The Welcome reaches b, which records a as the group's hub.
	hostWithPeer(t, a, b, alice, bob, gid)

	_, port, _ := net.SplitHostPort(b.addr)
	post := func(t *testing.T, path string, body []byte) *moh.DSResponse {
		t.Helper()
		resp, r := postDS(t, b.client(), "https://b.localhost:"+port+path, body)
		if resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentToken || len(r.Token) != ds.AttachmentTokenSize {
			t.Fatalf("%s: %d %s %q, want 200 with a token", path, resp.StatusCode, r.Error.Code, r.Error.Message)
		}
		return r
	}
	sign := func(t *testing.T, body moh.RequestBody) []byte {
		t.Helper()
		req, err := ds.SignRequest(peerSuite, bob.signer, body, ds.ClientSignature(1, time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		return req
	}

	// More than the 256 KiB a server drains of an unread body.
	content := make([]byte, 300<<10)
	rand.Read(content)
	h := sha256.Sum256(content)
	upload := append(sign(t, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: gid, ContentLength: uint64(len(content)), ContentHash: h[:]}}), content...)
	token := post(t, "/attachment_upload", upload).Token
	if again := post(t, "/attachment_upload", upload).Token; !bytes.Equal(again, token) {
		t.Fatalf("retry of the upload answered token %x, want %x", again, token)
	}

	cp := sign(t, moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{
		GroupID: gid, Token: token, TargetGroupID: gid, TargetSenderIndex: 1}})
	copied := post(t, "/attachment_copy", cp).Token
	if again := post(t, "/attachment_copy", cp).Token; !bytes.Equal(again, copied) {
		t.Fatalf("retry of the copy answered token %x, want %x", again, copied)
	}

	u, err := a.g.svc.Store().GroupAttachmentUsage(t.Context(), gid)
	if err != nil || u.Count != 2 || u.Bytes != 2*int64(len(content)) {
		t.Fatalf("the hub's usage of the group %+v, %v; want the upload and the copy", u, err)
	}
}
