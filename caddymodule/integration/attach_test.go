package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/cmd/mimictl/cli"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestMimictlAttach uploads a file with `mimictl attach put` from one
// client and fetches it with `attach get` on the other, over the real
// gateway: encrypted on one side, decrypted with keys derived on the other.
func TestMimictlAttach(t *testing.T) {
	startClientSite(t)
	dir := t.TempDir()
	run := func(state string, stdin []byte, args ...string) (string, string, int) {
		t.Helper()
		environ := map[string]string{"MIMI_GATEWAY": "https://m.localhost:9443", "MIMI_USER": "carol",
			"MIMI_PASSWORD": clientUsers["carol"], "MIMI_STATE": filepath.Join(dir, state)}
		var stdout, stderr bytes.Buffer
		status := cli.Run(t.Context(), args, cli.Env{Stdin: bytes.NewReader(stdin), Stdout: &stdout, Stderr: &stderr,
			Getenv: func(k string) string { return environ[k] }, HTTPClient: clientHTTP()})
		return stdout.String(), stderr.String(), status
	}
	must := func(state string, stdin []byte, args ...string) string {
		t.Helper()
		out, errOut, status := run(state, stdin, args...)
		if status != 0 {
			t.Fatalf("mimictl %v (%s): exit %d: %s", args, state, status, errOut)
		}
		return out
	}
	must("phone", nil, "client", "init", "-key-packages", "1", "mimi://m.localhost/d/carol/phone")
	must("laptop", nil, "client", "init", "mimi://m.localhost/d/carol/laptop")
	gid := strings.TrimSpace(must("phone", nil, "group", "create"))
	info := must("phone", nil, "group", "export", gid, "-")
	must("laptop", []byte(info), "group", "join", "-")
	must("phone", nil, "recv", "-wait", "5s") // the join's commit: both in epoch 1

	file := make([]byte, 300<<10)
	rand.Read(file)
	out := must("phone", file, "attach", "put", gid, "-")
	leaf, ref, ok := strings.Cut(strings.TrimSpace(out), "\t")
	if !ok || leaf != "0" || !strings.HasPrefix(ref, "message/external-body; access-type=token; token=") {
		t.Fatalf("attach put printed %q", out)
	}
	if got := must("laptop", nil, "attach", "get", gid, leaf, ref, "-"); got != string(file) {
		t.Fatalf("attach get returned %d bytes, not the %d uploaded", len(got), len(file))
	}
	assertAttachmentsStored(t, "m.localhost", filepath.Join(env.dir, "m-"+t.Name()))
	// phone sends the reference; laptop's commit moves the group on. Both
	// still open the attachment in the epoch of the message, every command
	// a new process on its state file: laptop with the secret its recv
	// kept, phone, whose own message is not queued for it, with the one
	// its attach put kept.
	must("phone", nil, "send", gid, ref)
	if out := must("laptop", nil, "recv", "-wait", "5s"); !strings.Contains(out, ref) {
		t.Fatalf("laptop's recv printed %q, want the reference", out)
	}
	must("laptop", nil, "group", "update", gid)
	if out := must("phone", nil, "recv", "-wait", "5s"); !strings.HasPrefix(out, "commit\t") {
		t.Fatalf("phone's recv printed %q, want laptop's commit", out)
	}
	for _, state := range []string{"phone", "laptop"} {
		if got := must(state, nil, "attach", "get", gid, leaf, ref, "-"); got != string(file) {
			t.Fatalf("%s's attach get after a commit returned %d bytes, not the %d uploaded", state, len(got), len(file))
		}
	}
	// The wrong sender's keys do not open it.
	if _, errOut, status := run("laptop", nil, "attach", "get", gid, "1", ref, "-"); status != 1 || errOut == "" {
		t.Fatalf("attach get with the wrong sender: exit %d, %q", status, errOut)
	}
	// A client outside the group gets not_found.
	must("other", nil, "client", "init", "mimi://m.localhost/d/carol/tablet")
	if _, errOut, status := run("other", nil, "attach", "get", gid, leaf, ref, "-"); status != 1 || !strings.Contains(errOut, "not") {
		t.Fatalf("attach get outside the group: exit %d, %q", status, errOut)
	}

	// attach copy: the tablet creates a second group, which phone joins
	// (at leaf 1 there, leaf 0 in the first); phone copies its attachment,
	// of an epoch the first group has left, to the second group and sends
	// the copy's reference there. The tablet, a member of the second group
	// only, opens it with the reference's key alone; not without the key,
	// nor with another key.
	gid2 := strings.TrimSpace(must("other", nil, "group", "create"))
	info2 := must("other", nil, "group", "export", gid2, "-")
	must("phone", []byte(info2), "group", "join", "-")
	must("other", nil, "recv", "-wait", "5s")
	out = must("phone", nil, "attach", "copy", gid, leaf, ref, gid2)
	copied, err := attachment.ParseReference(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("attach copy printed %q: %v", out, err)
	}
	orig, err := attachment.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(copied.Token, orig.Token) || !bytes.Equal(copied.Nonce, orig.Nonce) || !bytes.Equal(copied.Hash, orig.Hash) ||
		len(copied.Key) != 32 {
		t.Fatalf("attach copy printed %s for %s", copied, orig)
	}
	must("phone", nil, "send", gid2, copied.String())
	if out := must("other", nil, "recv", "-wait", "5s"); !strings.Contains(out, copied.String()) {
		t.Fatalf("the tablet's recv printed %q, want the copy's reference", out)
	}
	got := must("other", nil, "attach", "get", gid2, "1", copied.String(), "-")
	if h := sha256.Sum256([]byte(got)); got != string(file) || !bytes.Equal(h[:], copied.Hash) {
		t.Fatalf("the tablet's attach get of the copy returned %d bytes, not the %d uploaded", len(got), len(file))
	}
	wrong := copied
	wrong.Key = bytes.Clone(copied.Key)
	wrong.Key[0] ^= 1
	noKey := copied
	noKey.Key = nil
	for _, tc := range []struct{ name, leaf, ref, want string }{
		{"another key", "1", wrong.String(), "authentication failed"},
		{"no key, as sent by phone there", "1", noKey.String(), "authentication failed"},
		{"no key, as sent by phone in the first group", "0", noKey.String(), "authentication failed"},
	} {
		if _, errOut, status := run("other", nil, "attach", "get", gid2, tc.leaf, tc.ref, "-"); status != 1 || !strings.Contains(errOut, tc.want) {
			t.Fatalf("the tablet's attach get of the copy with %s: exit %d, %q", tc.name, status, errOut)
		}
	}
	// The copy's token is the second group's: not the first's.
	if _, errOut, status := run("phone", nil, "attach", "get", gid, leaf, copied.String(), "-"); status != 1 || !strings.Contains(errOut, "not_found") {
		t.Fatalf("attach get of the copy in the first group: exit %d, %q", status, errOut)
	}
}

// TestAttachmentRelay runs attachments of a group hosted on a.localhost
// with a member on b.localhost: alice uploads at a (the hub); bob
// downloads through his own provider b, which streams the request to the
// hub and the answer back, also a range of it; bob uploads through b, and
// alice downloads his attachment at a and opens it with keys derived on
// her side; bob copies alice's attachment, through b, to a second group
// hosted at a, and alice opens the copy with the key bob computed.
func TestAttachmentRelay(t *testing.T) {
	startCaddy(t)
	alice := newMIMIClient(t, issuerOf(t, "a.localhost"), "alice", "attach", false)
	bob := newMIMIClientAt(t, issuerOf(t, "b.localhost"), "b.localhost", "bob", "attach", false)
	gid := alice.hostGroupWith(t, bob)
	var got []localapi.Message
	for deadline := time.Now().Add(30 * time.Second); len(got) == 0 && time.Now().Before(deadline); {
		got = fetchQueue(t, bob, "bob", 0, 10)
	}
	if len(got) == 0 {
		t.Fatal("bob's Welcome never reached b")
	}
	welcome, err := mls.DecodeMLSMessage(got[0].Message)
	if err != nil {
		t.Fatal(err)
	}
	if bob.m, err = mls.JoinFromWelcome(welcome.Welcome, mls.WelcomeOptions{KeyPackage: bob.kp, InitKey: bob.initKey,
		LeafKey: bob.leafKey, Signer: bob.signer}); err != nil {
		t.Fatal(err)
	}

	c := client(tls.VersionTLS13)
	post := func(host, path string, body io.Reader, header http.Header) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "https://"+host+":9443"+path, body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, out
	}
	upload := func(who *mimiClient, host string, ct []byte) []byte {
		t.Helper()
		h := sha256.Sum256(ct)
		head := who.sign(t, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
			GroupID: gid, ContentLength: uint64(len(ct)), ContentHash: h[:]}}, 0)
		resp, body := post(host, "/attachment_upload", io.MultiReader(bytes.NewReader(head), bytes.NewReader(ct)), nil)
		var r moh.DSResponse
		if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil || resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentToken {
			t.Fatalf("upload at %s: %d %x", host, resp.StatusCode, body)
		}
		return r.Token
	}
	download := func(who *mimiClient, host string, token []byte, header http.Header) (*http.Response, []byte) {
		t.Helper()
		return post(host, "/attachment_download", bytes.NewReader(who.sign(t, moh.RequestBody{Type: moh.AttachmentDownload,
			Attachment: moh.AttachmentRef{GroupID: gid, Token: token}}, 0)), header)
	}

	plain := bytes.Repeat([]byte("a file from a "), 40000)
	sealed, err := attachment.Seal(alice.m, suite, alice.m.LeafIndex(), plain, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	token := upload(alice, "a.localhost", sealed.Ciphertext)
	assertAttachmentsStored(t, "a.localhost", filepath.Join(env.dir, "a"))

	resp, body := download(bob, "b.localhost", token, nil)
	var r moh.DSResponse
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil || resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentContent {
		t.Fatalf("bob's download through b: %d, %v", resp.StatusCode, err)
	}
	opened, err := attachment.Open(bob.m, suite, alice.m.LeafIndex(), sealed.Nonce, sealed.Hash, r.Content)
	if err != nil || !bytes.Equal(opened, plain) {
		t.Fatalf("bob opens alice's attachment: %v", err)
	}
	resp, body = download(bob, "b.localhost", token, http.Header{"Range": {"bytes=1000-1999"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, sealed.Ciphertext[1000:2000]) ||
		resp.Header.Get("Content-Range") == "" {
		t.Fatalf("bob's range through b: %d, %d bytes, %q", resp.StatusCode, len(body), resp.Header.Get("Content-Range"))
	}

	// bob uploads through b; alice downloads at a.
	reply := bytes.Repeat([]byte("an answer from b "), 30000)
	sealedB, err := attachment.Seal(bob.m, suite, bob.m.LeafIndex(), reply, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tokenB := upload(bob, "b.localhost", sealedB.Ciphertext)
	resp, body = download(alice, "a.localhost", tokenB, nil)
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("alice's download of bob's upload: %d, %v", resp.StatusCode, err)
	}
	if opened, err := attachment.Open(alice.m, suite, bob.m.LeafIndex(), sealedB.Nonce, sealedB.Hash, r.Content); err != nil || !bytes.Equal(opened, reply) {
		t.Fatalf("alice opens bob's attachment: %v", err)
	}
	// bob copies alice's attachment, through b, to a second group of a's
	// that he is also a member of (at leaf 1 in both, as alice's adds put
	// him): b relays attachment_copy to the hub like any DS request, and
	// alice opens the copy in the second group with the attachment secret
	// bob computed in the first, as a reference's key carries it.
	inFirst := alice.m
	gid2 := random32(t)[:16]
	m2 := alice.newGroup(t, gid2)
	gi2, err := m2.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "create_group of the second group", alice.sign(t, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: gid2,
		LeafNode: alice.kp.LeafNode, GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi2}}}, 0))
	alice.m = m2
	res2 := alice.commit(t, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: bob.kp})
	mustOK(t, "add_users to the second group", alice.sign(t, groupUpdate(moh.AddUsers, res2), 0))
	alice.m = inFirst
	var welcomed bool
	for deadline := time.Now().Add(30 * time.Second); !welcomed && time.Now().Before(deadline); {
		for _, q := range fetchQueue(t, bob, "bob", got[0].Seq, 10) {
			welcomed = welcomed || bytes.Equal(q.GroupID, gid2)
		}
	}
	if !welcomed {
		t.Fatal("bob's Welcome to the second group never reached b")
	}
	inSecond := res2.Next
	copyReq := bob.sign(t, moh.RequestBody{Type: moh.AttachmentCopy,
		Copy: moh.AttachmentCopyRequest{GroupID: gid, Token: token, TargetGroupID: gid2, TargetSenderIndex: 1}}, 0)
	resp, body = post("b.localhost", "/attachment_copy", bytes.NewReader(copyReq), nil)
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil || resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentToken {
		t.Fatalf("bob's copy through b: %d %x", resp.StatusCode, body)
	}
	copyToken := r.Token
	// bob's answer was lost: he sends the same bytes again, through b and
	// to the hub itself, and learns the first copy's token each time
	// (docs/protocol.md §5.1), not a second copy's.
	for _, host := range []string{"b.localhost", "a.localhost"} {
		resp, body = post(host, "/attachment_copy", bytes.NewReader(copyReq), nil)
		var again moh.DSResponse
		if err := wire.Unmarshal(body, &again, "DSResponse"); err != nil || resp.StatusCode != http.StatusOK ||
			again.Type != moh.ResponseAttachmentToken || !bytes.Equal(again.Token, copyToken) {
			t.Fatalf("bob's retry of the copy at %s: %d %x, want the first copy's token", host, resp.StatusCode, body)
		}
	}
	es, err := attachment.ExporterSecret(bob.m, suite, sealed.Hash, alice.m.LeafIndex())
	if err != nil {
		t.Fatal(err)
	}
	secret, err := attachment.Secret(suite, es, sealed.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	alice.m = inSecond
	resp, body = post("a.localhost", "/attachment_download", bytes.NewReader(alice.sign(t, moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: gid2, Token: copyToken}}, 0)), nil)
	alice.m = inFirst
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil || resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentContent {
		t.Fatalf("alice's download of bob's copy in the second group: %d, %v", resp.StatusCode, err)
	}
	if opened, err := attachment.OpenWithSecret(suite, secret, sealed.Hash, r.Content); err != nil || !bytes.Equal(opened, plain) {
		t.Fatalf("alice opens the copy with bob's key: %v", err)
	}

	// A token b's DS never heard of, for a group b knows no hub for, stays
	// not_found at b.
	other := random32(t)[:16]
	resp, _ = post("b.localhost", "/attachment_download", bytes.NewReader(bob.sign(t, moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: other, Token: token}}, 0)), nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a download for a group b does not know: %d", resp.StatusCode)
	}
}
