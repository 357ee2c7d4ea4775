package ds

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/localfs"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// attachFixture is the fixture with the attachment service on a real
// SQLite file and a real directory.
type attachFixture struct {
	*fixture
	a    *Attachments
	root string
	// signed counts signed requests, so that each gets its own timestamp
	// and no two are the same signed bytes (a replay).
	signed atomic.Int64
}

// skew is the next request's timestamp offset, within the 300 s window.
func (f *attachFixture) skew() time.Duration {
	return time.Duration(f.signed.Add(1)%250) * time.Second
}

func newAttachFixture(t testing.TB, edit func(a *Attachments)) *attachFixture {
	t.Helper()
	f := newFixture(t)
	root := filepath.Join(t.TempDir(), "attachments")
	b, err := localfs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	a := &Attachments{Store: f.st, Backend: b, MaxSize: 1 << 30}
	if edit != nil {
		edit(a)
	}
	f.svc.Attachments = a
	return &attachFixture{fixture: f, a: a, root: root}
}

// upload sends content under a header declaring size and hash, signed by
// c at leaf index of group, f.now later by skew (so repeated uploads
// differ in their signed bytes).
func (f *attachFixture) upload(t *testing.T, c *client, index uint32, group []byte, size uint64, hash []byte, content io.Reader) ([]byte, error) {
	t.Helper()
	body := f.sign(t, c, index, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: group, ContentLength: size, ContentHash: hash}}, f.skew())
	req, err := f.svc.Authenticate(context.Background(), body)
	if err != nil {
		return nil, err
	}
	resp, err := f.svc.Upload(context.Background(), req, content)
	if err != nil {
		return nil, err
	}
	if resp.Type != moh.ResponseAttachmentToken || len(resp.Token) != AttachmentTokenSize {
		t.Fatalf("upload answer %+v", resp)
	}
	return resp.Token, nil
}

// put uploads data to group g1 as alice.
func (f *attachFixture) put(t *testing.T, data []byte) []byte {
	t.Helper()
	h := sha256.Sum256(data)
	tok, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), h[:], bytes.NewReader(data))
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	return tok
}

// download fetches token of group as c at index.
func (f *attachFixture) download(t *testing.T, c *client, index uint32, group, token []byte) ([]byte, error) {
	t.Helper()
	body := f.sign(t, c, index, moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: group, Token: token}}, 0)
	req, err := f.svc.Authenticate(context.Background(), body)
	if err != nil {
		return nil, err
	}
	d, err := f.svc.Download(context.Background(), req)
	if err != nil {
		return nil, err
	}
	defer d.Object.Close()
	return io.ReadAll(d.Object)
}

// handle authenticates and handles a delete or copy.
func (f *attachFixture) handle(t *testing.T, c *client, index uint32, body moh.RequestBody) (*moh.DSResponse, error) {
	t.Helper()
	req, err := f.svc.Authenticate(context.Background(), f.sign(t, c, index, body, f.skew()))
	if err != nil {
		return nil, err
	}
	return f.svc.Handle(context.Background(), req)
}

// files counts the committed objects and temporary files on disk.
func (f *attachFixture) files(t *testing.T) (objects, temporary int) {
	t.Helper()
	err := filepath.WalkDir(f.root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch filepath.Base(filepath.Dir(filepath.Dir(path))) {
		case "objects":
			objects++
		default:
			temporary++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objects, temporary
}

// wantNothingLeft checks that g1 holds no attachment, no object is
// unreferenced, and no byte is on disk.
func (f *attachFixture) wantNothingLeft(t *testing.T) {
	t.Helper()
	u, err := f.st.GroupAttachmentUsage(context.Background(), f.g1)
	if err != nil || u != (store.AttachmentUsage{}) {
		t.Fatalf("g1 usage %+v, %v; want nothing", u, err)
	}
	if names, err := f.st.UnreferencedObjects(context.Background(), "", 10); err != nil || len(names) != 0 {
		t.Fatalf("unreferenced objects %v, %v", names, err)
	}
	if o, tmp := f.files(t); o != 0 || tmp != 0 {
		t.Fatalf("%d objects and %d temporary files on disk", o, tmp)
	}
}

func wantCode(t *testing.T, what string, err error, want moh.Code) {
	t.Helper()
	if got := codeOf(err); got != want {
		t.Fatalf("%s: %v (%v), want %v", what, got, err, want)
	}
}

// TestAttachmentRoundTrip: alice seals with her epoch's exporter, uploads
// the ciphertext; bob downloads it and opens it with keys derived on his
// side.
func TestAttachmentRoundTrip(t *testing.T) {
	f := newAttachFixture(t, nil)
	plain := bytes.Repeat([]byte("a photo of a cat "), 5000)
	sealed, err := attachment.Seal(f.aliceG1, f.cs, 0, plain, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tok := f.put(t, sealed.Ciphertext)
	ct, err := f.download(t, f.bob, 1, f.g1, tok)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	got, err := attachment.Open(f.bobG1, f.cs, 0, sealed.Nonce, sealed.Hash, ct)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open: %v, equal %v", err, bytes.Equal(got, plain))
	}
	if o, tmp := f.files(t); o != 1 || tmp != 0 {
		t.Fatalf("%d objects, %d temporary files; want 1 and 0", o, tmp)
	}
}

// TestAttachmentNotFoundAlike: a non-member, a removed member, a token
// presented with another group and an unknown token all get the same
// not_found.
func TestAttachmentNotFoundAlike(t *testing.T) {
	f := newAttachFixture(t, nil)
	tok := f.put(t, []byte("secret ciphertext"))
	// g3: alice uploads there too, so that bob (removed, leaf 1 blank)
	// asks for a token that exists.
	h := sha256.Sum256([]byte("g3 bytes"))
	tok3, err := f.upload(t, f.alice, 0, f.g3, 8, h[:], bytes.NewReader([]byte("g3 bytes")))
	if err != nil {
		t.Fatal(err)
	}
	var messages []string
	for _, tc := range []struct {
		name  string
		c     *client
		index uint32
		group []byte
		token []byte
	}{
		{"non-member", f.eve, 7, f.g1, tok},
		{"removed member", f.bob, 1, f.g3, tok3},
		{"token of another group", f.alice, 0, f.g2, tok},
		{"unknown token", f.alice, 0, f.g1, bytes.Repeat([]byte{1}, 32)},
		{"short token", f.alice, 0, f.g1, tok[:16]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.download(t, tc.c, tc.index, tc.group, tc.token)
			wantCode(t, "download", err, moh.CodeNotFound)
			messages = append(messages, string(moh.DSErrorOf(err).Message))
		})
	}
	for _, m := range messages {
		if m != messages[0] {
			t.Fatalf("not_found messages differ: %q", messages)
		}
	}
	// The owner still gets it.
	if got, err := f.download(t, f.bob, 1, f.g1, tok); err != nil || string(got) != "secret ciphertext" {
		t.Fatalf("member download: %q, %v", got, err)
	}
}

// refusingReader fails the test if anything reads it: the checks before
// the content must not consume it.
type refusingReader struct{ t *testing.T }

func (r refusingReader) Read([]byte) (int, error) {
	r.t.Error("content read before the header was accepted")
	return 0, io.EOF
}

// TestAttachmentRefusedBeforeContent: the size limit, the hash length and
// the quota are checked before a byte of content is read, and a refusal
// stores nothing.
func TestAttachmentRefusedBeforeContent(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) {
		a.MaxSize = 1000
		a.Quota = store.AttachmentQuota{GroupBytes: 1500}
	})
	f.put(t, make([]byte, 1000))
	h := sha256.Sum256(nil)
	for _, tc := range []struct {
		name string
		size uint64
		hash []byte
		want moh.Code
	}{
		{"above max size", 1001, h[:], moh.CodeTooLarge},
		{"above the group quota", 501, h[:], moh.CodeQuotaExceeded},
		{"hash of another suite's length", 10, make([]byte, 48), moh.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.upload(t, f.alice, 0, f.g1, tc.size, tc.hash, refusingReader{t})
			wantCode(t, "upload", err, tc.want)
		})
	}
	if u, _ := f.st.GroupAttachmentUsage(context.Background(), f.g1); u.Count != 1 {
		t.Fatalf("usage %+v after refusals", u)
	}
}

// gateReader hands out its data only after gate is closed.
type gateReader struct {
	gate <-chan struct{}
	r    io.Reader
}

func (g *gateReader) Read(p []byte) (int, error) {
	<-g.gate
	return g.r.Read(p)
}

// TestAttachmentQuotaRace: two uploads race for a group quota with room
// for one; both headers are accepted by the checks, the reservation lets
// only one through, and the other reads nothing.
func TestAttachmentQuotaRace(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) { a.Quota = store.AttachmentQuota{GroupBytes: 150} })
	data := make([]byte, 100)
	h := sha256.Sum256(data)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.upload(t, f.alice, 0, f.g1, 100, h[:], &gateReader{gate: gate, r: bytes.NewReader(data)})
		}()
	}
	// The loser is refused without reading; the winner waits at the gate.
	deadline := time.Now().Add(10 * time.Second)
	for {
		u, err := f.st.GroupAttachmentUsage(context.Background(), f.g1)
		if err != nil {
			t.Fatal(err)
		}
		if u.Count == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(gate)
	wg.Wait()
	ok, quota := 0, 0
	for _, err := range errs {
		switch codeOf(err) {
		case 0:
			ok++
		case moh.CodeQuotaExceeded:
			quota++
		default:
			t.Fatalf("upload: %v", err)
		}
	}
	if ok != 1 || quota != 1 {
		t.Fatalf("%d uploads stored, %d refused for quota; want 1 and 1", ok, quota)
	}
	if o, _ := f.files(t); o != 1 {
		t.Fatalf("%d objects on disk, want 1", o)
	}
}

// cutReader gives n bytes of r, then fails like a connection cut off.
type cutReader struct {
	r io.Reader
	n int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

// TestAttachmentBadContent: a body cut off halfway, a short body, a long
// body and a hash mismatch are content_mismatch (or the reader's own
// error), and leave nothing: no record, no quota held, no byte on disk.
func TestAttachmentBadContent(t *testing.T) {
	f := newAttachFixture(t, nil)
	data := make([]byte, 1<<20)
	rand.Read(data)
	h := sha256.Sum256(data)
	timeout := moh.Errorf(moh.CodeBodyTimeout, "the body did not arrive in time")
	for _, tc := range []struct {
		name    string
		size    uint64
		hash    []byte
		content io.Reader
		want    moh.Code
	}{
		{"cut off halfway", 1 << 20, h[:], &cutReader{r: bytes.NewReader(data), n: 1 << 19}, moh.CodeContentMismatch},
		{"short", 1 << 20, h[:], bytes.NewReader(data[:1000]), moh.CodeContentMismatch},
		{"long", 1<<20 - 1, h[:], bytes.NewReader(data), moh.CodeContentMismatch},
		{"hash mismatch", 1 << 20, make([]byte, 32), bytes.NewReader(data), moh.CodeContentMismatch},
		{"body timeout", 1 << 20, h[:], io.MultiReader(bytes.NewReader(data[:4096]), errReader{timeout}), moh.CodeBodyTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.upload(t, f.alice, 0, f.g1, tc.size, tc.hash, tc.content)
			wantCode(t, "upload", err, tc.want)
			f.wantNothingLeft(t)
		})
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// TestAttachmentDelete: the uploader deletes; another member is forbidden
// unless the admin allows members to delete; a deleted token is not_found.
func TestAttachmentDelete(t *testing.T) {
	for _, allow := range []bool{false, true} {
		name := map[bool]string{false: "uploader only", true: "members allowed"}[allow]
		t.Run(name, func(t *testing.T) {
			f := newAttachFixture(t, func(a *Attachments) { a.AllowDeleteByMembers = allow })
			tok := f.put(t, []byte("bytes"))
			del := moh.RequestBody{Type: moh.AttachmentDelete, Attachment: moh.AttachmentRef{GroupID: f.g1, Token: tok}}
			_, err := f.handle(t, f.bob, 1, del)
			if !allow {
				wantCode(t, "delete by bob", err, moh.CodeForbidden)
				if _, err := f.download(t, f.bob, 1, f.g1, tok); err != nil {
					t.Fatalf("a refused delete removed it: %v", err)
				}
				_, err = f.handle(t, f.alice, 0, del)
			}
			if err != nil {
				t.Fatalf("delete: %v", err)
			}
			_, err = f.download(t, f.alice, 0, f.g1, tok)
			wantCode(t, "download after delete", err, moh.CodeNotFound)
			_, err = f.handle(t, f.alice, 0, del)
			wantCode(t, "second delete", err, moh.CodeNotFound)
			f.wantNothingLeft(t)
		})
	}
}

// TestAttachmentCopy: a member of both groups copies; the copy shares the
// bytes, counts against the target's quota, and deleting one of the two
// keeps the bytes for the other. A signer who is not in both is refused.
func TestAttachmentCopy(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) { a.Quota = store.AttachmentQuota{GroupBytes: 1000} })
	data := bytes.Repeat([]byte{9}, 600)
	tok := f.put(t, data)
	cp := func(target []byte, index uint32) moh.RequestBody {
		return moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{GroupID: f.g1, Token: tok,
			TargetGroupID: target, TargetSenderIndex: index}}
	}
	// bob is not in g2: his key is not at leaf 0 there.
	_, err := f.handle(t, f.bob, 1, cp(f.g2, 0))
	wantCode(t, "copy by a non-member of the target", err, moh.CodeNotFound)

	resp, err := f.handle(t, f.alice, 0, cp(f.g2, 0))
	if err != nil || resp.Type != moh.ResponseAttachmentToken || bytes.Equal(resp.Token, tok) {
		t.Fatalf("copy: %+v, %v", resp, err)
	}
	copyTok := resp.Token
	if u, _ := f.st.GroupAttachmentUsage(context.Background(), f.g2); u.Bytes != 600 {
		t.Fatalf("target usage %+v, want the copy's 600 bytes", u)
	}
	// A second copy does not fit the target's quota.
	_, err = f.handle(t, f.alice, 0, cp(f.g2, 0))
	wantCode(t, "copy over the target quota", err, moh.CodeQuotaExceeded)
	if o, _ := f.files(t); o != 1 {
		t.Fatalf("%d objects on disk, want the one shared", o)
	}
	// The copy's token is bound to g2.
	_, err = f.download(t, f.alice, 0, f.g1, copyTok)
	wantCode(t, "copy token with the source group", err, moh.CodeNotFound)

	_, err = f.handle(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentDelete,
		Attachment: moh.AttachmentRef{GroupID: f.g1, Token: tok}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.download(t, f.alice, 0, f.g2, copyTok)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the copy after deleting the original: %v", err)
	}
	_, err = f.handle(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentDelete,
		Attachment: moh.AttachmentRef{GroupID: f.g2, Token: copyTok}})
	if err != nil {
		t.Fatal(err)
	}
	if o, tmp := f.files(t); o != 0 || tmp != 0 {
		t.Fatalf("%d objects, %d temporary files after the last delete", o, tmp)
	}
}

// signedUpload signs alice's upload of data to g1 once and returns a
// function that sends those same signed bytes with content as the body,
// as a client's byte-identical retry does.
func (f *attachFixture) signedUpload(t *testing.T, data []byte) func(content io.Reader) (*moh.DSResponse, error) {
	t.Helper()
	h := sha256.Sum256(data)
	body := f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: f.g1, ContentLength: uint64(len(data)), ContentHash: h[:]}}, f.skew())
	return func(content io.Reader) (*moh.DSResponse, error) {
		req, err := f.svc.Authenticate(context.Background(), body)
		if err != nil {
			return nil, err
		}
		return f.svc.Upload(context.Background(), req, content)
	}
}

// TestAttachmentUploadRetry: a byte-identical retry of an upload that
// succeeded (its answer lost on the way) gets the first answer, the same
// token, without its content being read and without a second attachment
// being stored or charged.
func TestAttachmentUploadRetry(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) { a.Quota = store.AttachmentQuota{GroupBytes: 1000} })
	data := bytes.Repeat([]byte{5}, 600)
	send := f.signedUpload(t, data)
	first, err := send(bytes.NewReader(data))
	if err != nil || first.Type != moh.ResponseAttachmentToken {
		t.Fatalf("upload: %+v, %v", first, err)
	}
	for i := range 2 {
		// The retry's content is not read (refusingReader): the
		// answer comes from the record, and nothing is stored again
		// (a second 600 bytes would not fit the quota).
		again, err := send(refusingReader{t})
		if err != nil || again.Type != moh.ResponseAttachmentToken || !bytes.Equal(again.Token, first.Token) {
			t.Fatalf("retry %d of the upload: %+v, %v; want the first token %x", i, again, err, first.Token)
		}
	}
	if u, err := f.st.GroupAttachmentUsage(context.Background(), f.g1); err != nil || u.Count != 1 || u.Bytes != 600 {
		t.Fatalf("group usage %+v, %v; want the one upload", u, err)
	}
	if o, tmp := f.files(t); o != 1 || tmp != 0 {
		t.Fatalf("%d objects, %d temporary files; want the one upload", o, tmp)
	}
	if got, err := f.download(t, f.bob, 1, f.g1, first.Token); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download of the upload: %v", err)
	}
}

// startedReader signals started at its first Read, then reads r once
// gate is closed.
type startedReader struct {
	started chan<- struct{}
	gate    <-chan struct{}
	r       io.Reader
	once    sync.Once
}

func (s *startedReader) Read(p []byte) (int, error) {
	s.once.Do(func() { close(s.started) })
	<-s.gate
	return s.r.Read(p)
}

// TestAttachmentUploadRetryInProgress: a byte-identical retry of an
// upload still streaming its content is 409 replay (no answer yet, and no
// second upload), and once the first succeeded a retry gets its token.
func TestAttachmentUploadRetryInProgress(t *testing.T) {
	f := newAttachFixture(t, nil)
	data := bytes.Repeat([]byte{3}, 100)
	send := f.signedUpload(t, data)
	started, gate := make(chan struct{}), make(chan struct{})
	type result struct {
		resp *moh.DSResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := send(&startedReader{started: started, gate: gate, r: bytes.NewReader(data)})
		done <- result{resp, err}
	}()
	<-started
	_, err := send(refusingReader{t})
	wantCode(t, "retry of an upload in progress", err, moh.CodeReplay)
	close(gate)
	first := <-done
	if first.err != nil {
		t.Fatalf("upload: %v", first.err)
	}
	again, err := send(refusingReader{t})
	if err != nil || !bytes.Equal(again.Token, first.resp.Token) {
		t.Fatalf("retry after the upload: %+v, %v; want its token", again, err)
	}
}

// TestAttachmentCopyRetry: a byte-identical retry of a copy that
// succeeded (its answer lost on the way) gets the first answer, the same
// token, and makes no second copy; a retry of a copy that failed is still
// refused as a replay.
func TestAttachmentCopyRetry(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) { a.Quota = store.AttachmentQuota{GroupBytes: 1000} })
	data := bytes.Repeat([]byte{7}, 600)
	tok := f.put(t, data)
	cp := func(token []byte) []byte {
		return f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{
			GroupID: f.g1, Token: token, TargetGroupID: f.g2, TargetSenderIndex: 0}}, f.skew())
	}
	send := func(body []byte) (*moh.DSResponse, error) {
		req, err := f.svc.Authenticate(context.Background(), body)
		if err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		return f.svc.Handle(context.Background(), req)
	}

	body := cp(tok)
	first, err := send(body)
	if err != nil || first.Type != moh.ResponseAttachmentToken {
		t.Fatalf("copy: %+v, %v", first, err)
	}
	for i := range 2 {
		again, err := send(body)
		if err != nil || again.Type != moh.ResponseAttachmentToken || !bytes.Equal(again.Token, first.Token) {
			t.Fatalf("retry %d of the copy: %+v, %v; want the first token %x", i, again, err, first.Token)
		}
	}
	if u, err := f.st.GroupAttachmentUsage(context.Background(), f.g2); err != nil || u.Count != 1 || u.Bytes != 600 {
		t.Fatalf("target usage %+v, %v; want the one copy", u, err)
	}
	if got, err := f.download(t, f.alice, 0, f.g2, first.Token); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download of the copy: %v", err)
	}

	for _, tc := range []struct {
		name string
		body []byte
		code moh.Code
	}{
		{"over the target's quota", cp(tok), moh.CodeQuotaExceeded},
		{"of an unknown token", cp(bytes.Repeat([]byte{1}, AttachmentTokenSize)), moh.CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := send(tc.body)
			wantCode(t, "copy", err, tc.code)
			_, err = send(tc.body)
			wantCode(t, "retry of the failed copy", err, moh.CodeReplay)
		})
	}
}

// TestAttachmentRetentionAfterRestart: attachments expire after the
// retention; a sweeper on a reopened store and backend (a restart)
// deletes records and bytes, and the temporary file of an upload the
// crash interrupted.
func TestAttachmentRetentionAfterRestart(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	dbPath, root := filepath.Join(dir, "attach.db"), filepath.Join(dir, "attachments")
	clock := func() time.Time { return f.now }
	open := func() (*sqlitestore.Store, *localfs.Backend) {
		st, err := sqlitestore.Open(context.Background(), dbPath, sqlitestore.WithClock(clock))
		if err != nil {
			t.Fatal(err)
		}
		b, err := localfs.New(root)
		if err != nil {
			t.Fatal(err)
		}
		return st, b
	}
	st, b := open()
	f.svc.Attachments = &Attachments{Store: st, Backend: b, Retention: 24 * time.Hour}
	af := &attachFixture{fixture: f, a: f.svc.Attachments, root: root}
	tok := af.put(t, []byte("kept a day"))
	// A crash mid-upload: a reservation and a temporary file, never
	// committed or released.
	w, err := b.Create(context.Background(), "00112233445566778899aabbccddeeff", 10)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("half"))
	if err := st.ReserveAttachment(context.Background(), store.Attachment{TokenHash: sha256.Sum256([]byte("x")),
		GroupID: f.g1, Object: "00112233445566778899aabbccddeeff", Size: 10, ContentHash: make([]byte, 32),
		Uploader: "mimi://a.example/d/alice/1", Created: f.now, Expires: f.now.Add(DefaultUploadDeadline)}, store.AttachmentQuota{}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	// Restart, a day and a bit later (the temporary file is old too).
	st, b = open()
	defer st.Close()
	f.svc.Attachments = &Attachments{Store: st, Backend: b, Retention: 24 * time.Hour}
	af.a = f.svc.Attachments
	f.now = f.now.Add(25 * time.Hour)
	old := f.now.Add(-2 * time.Hour)
	filepath.WalkDir(filepath.Join(root, "tmp"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			os.Chtimes(p, old, old)
		}
		return nil
	})
	stats, err := f.svc.Attachments.Sweep(context.Background(), f.now)
	if err != nil {
		t.Fatal(err)
	}
	if stats != (SweepStats{Expired: 2, Objects: 2, Temporary: 1}) {
		t.Fatalf("sweep %+v: want the expired attachment and the crashed reservation with both objects, and the crashed upload's temporary file", stats)
	}
	_, err = af.download(t, f.alice, 0, f.g1, tok)
	wantCode(t, "download after expiry", err, moh.CodeNotFound)
	if o, tmp := af.files(t); o != 0 || tmp != 0 {
		t.Fatalf("%d objects, %d temporary files after the sweep", o, tmp)
	}
}

// prng is a deterministic stream of n bytes.
type prng struct {
	r *mrand.ChaCha8
	n int64
}

func (p *prng) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	p.r.Read(b)
	p.n -= int64(len(b))
	return len(b), nil
}

// TestAttachmentLargeUploadMemory: a 128 MiB upload streams through a
// fixed amount of memory (bytes allocated during the upload, MemStats).
func TestAttachmentLargeUploadMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 128 MiB")
	}
	const size = 128 << 20
	f := newAttachFixture(t, nil)
	seed := [32]byte{1}
	h := sha256.New()
	io.Copy(h, &prng{r: mrand.NewChaCha8(seed), n: size})
	sum := h.Sum(nil)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tok, err := f.upload(t, f.alice, 0, f.g1, size, sum, &prng{r: mrand.NewChaCha8(seed), n: size})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("128 MiB upload allocated %d KiB in total; heap in use %d KiB after", alloc>>10, after.HeapInuse>>10)
	if alloc > 8<<20 {
		t.Fatalf("a %d byte upload allocated %d bytes: it does not stream", size, alloc)
	}
	got, err := f.download(t, f.bob, 1, f.g1, tok)
	if err != nil || int64(len(got)) != size {
		t.Fatalf("download: %d bytes, %v", len(got), err)
	}
}

// TestAttachmentReplayAndOff: an upload's signed bytes are recorded (a
// retry of a failed upload is refused as a replay before content), and
// without the service every attachment type is not_implemented.
func TestAttachmentReplayAndOff(t *testing.T) {
	f := newAttachFixture(t, nil)
	body := f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: f.g1, ContentLength: 3, ContentHash: func() []byte { h := sha256.Sum256([]byte("abc")); return h[:] }()}}, 0)
	for i, want := range []moh.Code{moh.CodeContentMismatch, moh.CodeReplay} {
		req, err := f.svc.Authenticate(context.Background(), body)
		if err != nil {
			t.Fatal(err)
		}
		var content io.Reader = bytes.NewReader([]byte("abd"))
		if i > 0 {
			content = refusingReader{t}
		}
		_, err = f.svc.Upload(context.Background(), req, content)
		wantCode(t, "upload", err, want)
	}
	f.svc.Attachments = nil
	req, err := f.svc.Authenticate(context.Background(), f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: f.g1, Token: []byte{1}}}, 0))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.Download(context.Background(), req)
	wantCode(t, "download without the service", err, moh.CodeNotImplemented)
}

// FuzzAttachmentUpload uploads arbitrary content under a header whose
// length and hash may or may not match it: an upload succeeds exactly
// when the content matches the header, and a refused one leaves nothing
// (no record, no quota held, no byte on disk).
//
// Every run reads the store, so the engine takes long to minimize a new
// input: with the default -fuzzminimizetime of 60s, a run of a minute
// spends most of it minimizing one input (the exec count stops). Fuzz with
// a short one:
//
//	go test -run '^$' -fuzz FuzzAttachmentUpload -fuzztime 45s -fuzzminimizetime 2s ./mimicore/ds
func FuzzAttachmentUpload(f *testing.F) {
	f.Add([]byte("hello"), int16(0), true)
	f.Add([]byte("hello"), int16(-1), true)
	f.Add([]byte("hello"), int16(3), true)
	f.Add([]byte(""), int16(0), false)
	f.Add(bytes.Repeat([]byte{1}, 70000), int16(0), false)
	fx := newAttachFixture(f, nil)
	f.Fuzz(func(t *testing.T, content []byte, delta int16, hashOK bool) {
		size := int64(len(content)) + int64(delta)
		if size < 0 {
			size = 0
		}
		h := sha256.Sum256(content)
		if !hashOK {
			h[0] ^= 1
		}
		before, err := fx.st.GroupAttachmentUsage(context.Background(), fx.g1)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := fx.upload(t, fx.alice, 0, fx.g1, uint64(size), h[:], bytes.NewReader(content))
		match := hashOK && size == int64(len(content))
		after, _ := fx.st.GroupAttachmentUsage(context.Background(), fx.g1)
		if err == nil {
			if !match {
				t.Fatalf("an upload of %d bytes declared as %d (hash ok %v) was stored", len(content), size, hashOK)
			}
			got, err := fx.download(t, fx.alice, 0, fx.g1, tok)
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("download of a stored upload: %v", err)
			}
			return
		}
		if code := codeOf(err); code != moh.CodeContentMismatch && code != moh.CodeReplay {
			t.Fatalf("refused with %v: %v", code, err)
		}
		if match && codeOf(err) != moh.CodeReplay {
			t.Fatalf("a matching upload was refused: %v", err)
		}
		if after != before {
			t.Fatalf("a refused upload changed the usage from %+v to %+v", before, after)
		}
		if _, tmp := fx.files(t); tmp != 0 {
			t.Fatalf("%d temporary files after a refused upload", tmp)
		}
	})
}

// TestAttachmentUploadPastDeadline: an upload that outlasts its deadline,
// so that the sweeper removed its reservation while it streamed, is
// refused and leaves no bytes behind, although its object was committed
// in the backend after the sweep.
func TestAttachmentUploadPastDeadline(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) { a.UploadDeadline = time.Minute })
	f.uploadSweptMidway(t, nil)
	f.wantNothingLeft(t)
}

// uploadSweptMidway uploads content during which the upload deadline
// passes and the sweeper runs (removing its reservation), calls swept (if
// set) after that sweep, and checks that the upload is refused with
// body_timeout, although its object is committed in the backend after
// the sweep.
func (f *attachFixture) uploadSweptMidway(t *testing.T, swept func()) {
	t.Helper()
	data := []byte("slow upload")
	h := sha256.Sum256(data)
	done := make(chan struct{})
	content := readerFunc(func(p []byte) (int, error) {
		select {
		case <-done:
			return 0, io.EOF
		default:
		}
		// Mid-stream: the deadline passes and the sweeper runs.
		f.now = f.now.Add(2 * time.Minute)
		if st, err := f.a.Sweep(context.Background(), f.now); err != nil || st.Expired != 1 {
			t.Errorf("sweep during the upload: %+v, %v", st, err)
		}
		if swept != nil {
			swept()
		}
		close(done)
		return copy(p, data), nil
	})
	_, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), h[:], content)
	wantCode(t, "upload past its deadline", err, moh.CodeBodyTimeout)
}

// readerFunc is a Reader from a function.
type readerFunc func([]byte) (int, error)

func (r readerFunc) Read(p []byte) (int, error) { return r(p) }

// failingDelete is a backend whose Delete fails for the names fail
// reports, as for an object under an S3 object lock.
type failingDelete struct {
	storage.Backend
	fail func(name string) bool
}

func (b failingDelete) Delete(ctx context.Context, name string) error {
	if b.fail(name) {
		return errors.New("the object is locked")
	}
	return b.Backend.Delete(ctx, name)
}

// staleTemporary leaves the temporary file of an upload that was neither
// committed nor aborted, dated long before any sweep's cut.
func (f *attachFixture) staleTemporary(t *testing.T) {
	t.Helper()
	w, err := f.a.Backend.Create(context.Background(), randomHex(objectNameSize), 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1_000_000_000, 0)
	err = filepath.WalkDir(f.root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Base(filepath.Dir(filepath.Dir(path))) == "objects" {
			return err
		}
		return os.Chtimes(path, old, old)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAttachmentSweepPastFailedDelete: an object whose bytes cannot be
// deleted (the lowest-sorting name) does not stop the sweep: the other
// unreferenced objects and the stale temporary data go, and the sweep
// reports the failure; the object stays listed for the next sweep.
func TestAttachmentSweepPastFailedDelete(t *testing.T) {
	f := newAttachFixture(t, nil)
	var objects []string
	for _, data := range []string{"one", "two", "three"} {
		tok := f.put(t, []byte(data))
		rec, err := f.st.LookupAttachment(context.Background(), f.g1, sha256.Sum256(tok))
		if err != nil {
			t.Fatal(err)
		}
		objects = append(objects, rec.Object)
	}
	locked := slices.Min(objects)
	f.staleTemporary(t)
	f.a.Backend = failingDelete{f.a.Backend, func(name string) bool { return name == locked }}

	f.now = f.now.Add(DefaultAttachmentRetention + time.Hour)
	st, err := f.a.Sweep(context.Background(), f.now)
	if err == nil || !strings.Contains(err.Error(), "1 of 3 unreferenced objects") {
		t.Fatalf("sweep error %v, want one of three objects not deleted", err)
	}
	if st.Expired != 3 || st.Objects != 2 || st.Temporary != 1 {
		t.Fatalf("sweep %+v, want 3 expired, 2 objects and 1 temporary file removed", st)
	}
	if o, tmp := f.files(t); o != 1 || tmp != 0 {
		t.Fatalf("%d objects and %d temporary files on disk, want the locked object alone", o, tmp)
	}
	if names, err := f.st.UnreferencedObjects(context.Background(), "", 10); err != nil || !slices.Equal(names, []string{locked}) {
		t.Fatalf("unreferenced objects %v, %v; want %s", names, err, locked)
	}
}

// TestAttachmentSweepPastFailedBatch: more unreferenced objects that
// cannot be deleted than a sweep lists at once, all sorting first, do not
// keep the sweep from the others.
func TestAttachmentSweepPastFailedBatch(t *testing.T) {
	f := newAttachFixture(t, nil)
	ctx := context.Background()
	const locked, others = sweepBatch + 3, 5
	var names []string
	for i := range locked + others {
		a := store.Attachment{TokenHash: sha256.Sum256([]byte{byte(i), byte(i >> 8)}), GroupID: f.g1,
			Object: fmt.Sprintf("%032x", i), Size: 1, ContentHash: make([]byte, 32), Uploader: "mimi://a.example/u/x",
			Created: f.now, Expires: f.now.Add(time.Hour)}
		if err := f.st.ReserveAttachment(ctx, a, store.AttachmentQuota{}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.st.ReleaseAttachment(ctx, a.TokenHash); err != nil {
			t.Fatal(err)
		}
		names = append(names, a.Object)
	}
	f.a.Backend = failingDelete{f.a.Backend, func(name string) bool { return name <= names[locked-1] }}
	st, err := f.a.Sweep(ctx, f.now)
	if err == nil || st.Objects != others {
		t.Fatalf("sweep %+v, %v; want %d objects removed and an error", st, err, others)
	}
	left, err := f.st.UnreferencedObjects(ctx, "", 2*sweepBatch)
	if err != nil || !slices.Equal(left, names[:locked]) {
		t.Fatalf("%d unreferenced objects left, %v; want the %d locked ones", len(left), err, locked)
	}
}

// failDeleteOnce is a backend whose Delete fails once after armed is
// set, as for a backend that is briefly unreachable.
type failDeleteOnce struct {
	storage.Backend
	armed, failed *atomic.Bool
}

func (b failDeleteOnce) Delete(ctx context.Context, name string) error {
	if b.armed.Load() && b.failed.CompareAndSwap(false, true) {
		return errors.New("the backend is unreachable")
	}
	return b.Backend.Delete(ctx, name)
}

// TestAttachmentUploadPastDeadlineDeleteFails: as in
// TestAttachmentUploadPastDeadline, the sweeper removes the reservation
// and the object row while the upload streams, and the backend then
// commits the bytes; the one attempt to delete them fails. A later sweep
// still removes them.
func TestAttachmentUploadPastDeadlineDeleteFails(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) { a.UploadDeadline = time.Minute })
	var armed, failed atomic.Bool
	f.a.Backend = failDeleteOnce{f.a.Backend, &armed, &failed}
	f.uploadSweptMidway(t, func() { armed.Store(true) })
	if !failed.Load() {
		t.Fatal("the upload's bytes were not deleted after the sweep")
	}
	if st, err := f.a.Sweep(context.Background(), f.now); err != nil || st.Objects != 1 {
		t.Fatalf("sweep after the failed delete: %+v, %v; want the object's bytes deleted", st, err)
	}
	f.wantNothingLeft(t)
}

// commitThenFail is a store whose CommitAttachment fails once with an
// error that is not ErrNotFound, after committing (commits) or without
// (as a store that refused the write), like PostgreSQL losing the
// connection after or before COMMIT.
type commitThenFail struct {
	store.Attachments
	commits bool
	failed  atomic.Bool
	// lookupFails has the first LookupAttachment fail too.
	lookupFails  bool
	lookupFailed atomic.Bool
}

func (s *commitThenFail) LookupAttachment(ctx context.Context, groupID []byte, tokenHash [32]byte) (store.Attachment, error) {
	if s.lookupFails && !s.lookupFailed.Swap(true) {
		return store.Attachment{}, errors.New("the connection was lost")
	}
	return s.Attachments.LookupAttachment(ctx, groupID, tokenHash)
}

func (s *commitThenFail) CommitAttachment(ctx context.Context, tokenHash [32]byte, expires time.Time, ans store.SignatureAnswer) error {
	if s.failed.Swap(true) {
		return s.Attachments.CommitAttachment(ctx, tokenHash, expires, ans)
	}
	if s.commits {
		if err := s.Attachments.CommitAttachment(ctx, tokenHash, expires, ans); err != nil {
			return err
		}
	}
	return errors.New("the connection was lost")
}

// TestAttachmentCommitAmbiguousRetry: an upload whose record committed
// while the store answered an error, and whose lookup failed too, is
// answered 503; its byte-identical retry gets the token the commit
// recorded with the record, so the client reaches the attachment it paid
// quota for instead of uploading it again.
func TestAttachmentCommitAmbiguousRetry(t *testing.T) {
	f := newAttachFixture(t, nil)
	f.a.Store = &commitThenFail{Attachments: f.a.Store, commits: true, lookupFails: true}
	data := []byte("an attachment committed in doubt")
	send := f.signedUpload(t, data)
	_, err := send(bytes.NewReader(data))
	wantCode(t, "upload whose commit and lookup failed", err, moh.CodeBackendUnavailable)
	resp, err := send(refusingReader{t})
	if err != nil || resp.Type != moh.ResponseAttachmentToken {
		t.Fatalf("retry of the upload: %+v, %v; want its token", resp, err)
	}
	if got, err := f.download(t, f.bob, 1, f.g1, resp.Token); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download with the retry's token: %q, %v", got, err)
	}
	if u, err := f.st.GroupAttachmentUsage(context.Background(), f.g1); err != nil || u.Count != 1 {
		t.Fatalf("g1 usage %+v, %v; want the one record", u, err)
	}
}

// TestAttachmentCommitAmbiguous: a commit of the record whose outcome
// the store cannot tell (an error that is not ErrNotFound). When the
// record did commit, it is whole: the upload answers its token and the
// attachment downloads, also after a sweep. When it did not, the upload
// fails and nothing is left. When the lookup that would tell fails too,
// the upload fails and the committed record keeps its bytes.
func TestAttachmentCommitAmbiguous(t *testing.T) {
	for _, tc := range []struct {
		name        string
		commits     bool
		lookupFails bool
	}{
		{"committed", true, false},
		{"not committed", false, false},
		{"committed, lookup fails", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newAttachFixture(t, nil)
			f.a.Store = &commitThenFail{Attachments: f.a.Store, commits: tc.commits, lookupFails: tc.lookupFails}
			data := []byte("an attachment committed in doubt")
			h := sha256.Sum256(data)
			tok, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), h[:], bytes.NewReader(data))
			if _, serr := f.a.Sweep(context.Background(), f.now.Add(time.Minute)); serr != nil {
				t.Fatalf("sweep: %v", serr)
			}
			if tc.lookupFails {
				wantCode(t, "upload whose commit and lookup failed", err, moh.CodeBackendUnavailable)
				u, err := f.st.GroupAttachmentUsage(context.Background(), f.g1)
				if err != nil || u != (store.AttachmentUsage{Bytes: int64(len(data)), Count: 1}) {
					t.Fatalf("g1 usage %+v, %v; want the committed record", u, err)
				}
				if o, tmp := f.files(t); o != 1 || tmp != 0 {
					t.Fatalf("%d objects and %d temporary files on disk, want the record's bytes", o, tmp)
				}
				// At the end of its retention, record and bytes go.
				if _, err := f.a.Sweep(context.Background(), f.now.Add(DefaultAttachmentRetention+time.Hour)); err != nil {
					t.Fatalf("sweep after the retention: %v", err)
				}
				f.wantNothingLeft(t)
				return
			}
			if !tc.commits {
				wantCode(t, "upload whose commit failed", err, moh.CodeBackendUnavailable)
				f.wantNothingLeft(t)
				return
			}
			if err != nil {
				t.Fatalf("upload whose record committed: %v", err)
			}
			got, err := f.download(t, f.bob, 1, f.g1, tok)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("download: %q, %v; want the content", got, err)
			}
			u, err := f.st.GroupAttachmentUsage(context.Background(), f.g1)
			if err != nil || u != (store.AttachmentUsage{Bytes: int64(len(data)), Count: 1}) {
				t.Fatalf("g1 usage %+v, %v; want the one attachment", u, err)
			}
		})
	}
}
