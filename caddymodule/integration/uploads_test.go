package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestUploadsInProgress runs the bound on a member's uploads in progress
// (max_uploads_in_progress, default 4) through the real Caddy over TLS
// 1.3: with four uploads of alice stopped halfway through their bodies,
// a fifth is 429 rate_limited with Retry-After 5; carol, another member
// of the group, uploads meanwhile; once one of alice's uploads is
// stored, and once another is cut off by its client mid-body, alice's
// next upload is accepted.
func TestUploadsInProgress(t *testing.T) {
	startCaddy(t)
	issuer := issuerOf(t, "a.localhost")
	alice := newMIMIClient(t, issuer, "alice", "uploads", false)
	carol := newMIMIClient(t, issuer, "carol", "uploads", false)
	gid := random32(t)[:16]
	m := alice.newGroup(t, gid)
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "create_group", alice.sign(t, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: gid,
		LeafNode: alice.kp.LeafNode, GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}}, 0))
	alice.m = m
	res := alice.commit(t, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: carol.kp})
	mustOK(t, "add_users of carol", alice.sign(t, groupUpdate(moh.AddUsers, res), 0))
	alice.m = res.Next

	const size = 128 << 10
	// body is an upload of size random bytes signed by who at leaf
	// index, each second apart so no two are the same signed bytes.
	signed := 0
	body := func(who *mimiClient, index uint32) []byte {
		t.Helper()
		ct := make([]byte, size)
		rand.Read(ct)
		h := sha256.Sum256(ct)
		signed++
		head, err := ds.SignRequest(suite, who.signer, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
			GroupID: gid, ContentLength: size, ContentHash: h[:]}}, ds.ClientSignature(index, time.Now().Add(time.Duration(signed)*time.Second)))
		if err != nil {
			t.Fatal(err)
		}
		return append(head, ct...)
	}
	c := client(tls.VersionTLS13)
	upload := func(who *mimiClient, index uint32) (*http.Response, *moh.DSResponse) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "https://a.localhost:9443/attachment_upload", bytes.NewReader(body(who, index)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		var r moh.DSResponse
		if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil {
			t.Fatalf("upload answered %d %x: %v", resp.StatusCode, raw, err)
		}
		return resp, &r
	}
	// hold sends an upload of alice's over a connection of its own, its
	// body stopped halfway, and returns the connection and the rest.
	type held struct {
		conn net.Conn
		rest []byte
	}
	hold := func() *held {
		t.Helper()
		up := body(alice, 0)
		conn, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: "a.localhost", RootCAs: env.roots,
			MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fmt.Fprintf(conn, "POST /attachment_upload HTTP/1.1\r\nHost: a.localhost:9443\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", len(up))
		if _, err := conn.Write(up[:len(up)/2]); err != nil {
			t.Fatal(err)
		}
		return &held{conn: conn, rest: up[len(up)/2:]}
	}
	finish := func(h *held) int {
		t.Helper()
		if _, err := h.conn.Write(h.rest); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(h.conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const limit = ds.DefaultMaxUploadsInProgress
	dataDir := filepath.Join(env.dir, "a")
	refused := func(what string) {
		t.Helper()
		resp, r := upload(alice, 0)
		if resp.StatusCode != http.StatusTooManyRequests || r.Error.Code != moh.CodeRateLimited || resp.Header.Get("Retry-After") != "5" {
			t.Fatalf("%s: %d %v %q, Retry-After %q; want 429 rate_limited with Retry-After 5", what, resp.StatusCode,
				r.Error.Code, r.Error.Message, resp.Header.Get("Retry-After"))
		}
	}
	accepted := func(who *mimiClient, index uint32, what string) {
		t.Helper()
		if resp, r := upload(who, index); resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentToken {
			t.Fatalf("%s: %d %v %q", what, resp.StatusCode, r.Error.Code, r.Error.Message)
		}
	}

	uploads := make([]*held, limit)
	for i := range uploads {
		uploads[i] = hold()
	}
	waitUploadsInProgress(t, dataDir, limit)
	refused("a fifth upload of alice")
	accepted(carol, 1, "carol's upload while alice's are in progress")
	if status := finish(uploads[0]); status != http.StatusOK {
		t.Fatalf("alice's first upload, finished: %d", status)
	}
	// Answered after its slot was given back: the next one fits.
	accepted(alice, 0, "alice's upload after one was stored")
	uploads[0] = hold()
	waitUploadsInProgress(t, dataDir, limit)
	refused("alice's upload at the limit again")
	uploads[1].conn.Close() // the client goes away mid-body
	waitUploadsInProgress(t, dataDir, limit-1)
	accepted(alice, 0, "alice's upload after one was cut off")
	for _, i := range []int{0, 2, 3} {
		if status := finish(uploads[i]); status != http.StatusOK {
			t.Fatalf("alice's held upload %d, finished: %d", i, status)
		}
	}
	waitUploadsInProgress(t, dataDir, 0)
}

// waitUploadsInProgress waits, at most 30 s (only against a hang), until
// the gateway of dataDir counts want attachment uploads in progress
// (caddy_mimi_attachments_uploads_in_progress, from Caddy's admin
// /metrics).
func waitUploadsInProgress(t *testing.T, dataDir string, want int) {
	t.Helper()
	line := fmt.Sprintf("caddy_mimi_attachments_uploads_in_progress{data_dir=%q} %d\n", dataDir, want)
	var last []byte
	for range 300 {
		resp, err := http.Get("http://localhost:2999/metrics")
		if err != nil {
			t.Fatal(err)
		}
		last, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(last, []byte(line)) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	var got []string
	for _, l := range strings.Split(string(last), "\n") {
		if strings.HasPrefix(l, "caddy_mimi_attachments_uploads_in_progress") {
			got = append(got, l)
		}
	}
	t.Fatalf("after 30 s the metrics hold %q, want %q", got, strings.TrimSpace(line))
}
