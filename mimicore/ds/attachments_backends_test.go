package ds

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/s3test"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward/forwardtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/localfs"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/s3store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// backends opens each storage backend for the service tests: local files,
// a real S3 server on loopback (versitygw, skipped where s3test has none),
// and the reference legacy backend over HTTP.
var backends = []struct {
	name string
	open func(t *testing.T) storage.Backend
}{
	{"local", func(t *testing.T) storage.Backend {
		b, err := localfs.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}},
	{"s3", func(t *testing.T) storage.Backend {
		srv := s3test.Start(t)
		s, err := s3store.New(s3store.Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "ds/", Region: srv.Region,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Insecure: true, PathStyle: true, PartSize: s3store.MinPartSize})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}},
	{"forward", func(t *testing.T) storage.Backend {
		key := bytes.Repeat([]byte{7}, 32)
		srv := httptest.NewServer(&forwardtest.Backend{Dir: t.TempDir(), Key: key})
		t.Cleanup(srv.Close)
		tr := srv.Client().Transport.(*http.Transport).Clone()
		s, err := forward.New(forward.Config{BaseURL: srv.URL + "/att/", Key: key, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(); tr.CloseIdleConnections() })
		return s
	}},
}

// TestAttachmentBackends runs the attachment service on every backend:
// round trip, a refused upload leaving nothing, copy sharing the bytes
// until the last delete, and retention deleting the bytes from the
// backend too.
func TestAttachmentBackends(t *testing.T) {
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.open(t)
			f := newAttachFixture(t, func(a *Attachments) { a.Backend = b; a.Retention = time.Hour })
			ctx := context.Background()
			object := func(group, token []byte) string {
				t.Helper()
				rec, err := f.st.LookupAttachment(ctx, group, sha256.Sum256(token))
				if err != nil {
					t.Fatal(err)
				}
				return rec.Object
			}
			gone := func(what, name string) {
				t.Helper()
				if o, err := b.Open(ctx, name); !errors.Is(err, storage.ErrNotFound) {
					if err == nil {
						o.Close()
					}
					t.Fatalf("%s: the backend still has the object (%v)", what, err)
				}
			}
			data := make([]byte, 6<<20+123) // more than one S3 part
			rand.Read(data)
			tok := f.put(t, data)
			if got, err := f.download(t, f.bob, 1, f.g1, tok); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("round trip: %v", err)
			}

			bad := sha256.Sum256([]byte("other"))
			_, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), bad[:], bytes.NewReader(data))
			wantCode(t, "hash mismatch", err, moh.CodeContentMismatch)
			if u, _ := f.st.GroupAttachmentUsage(ctx, f.g1); u.Count != 1 {
				t.Fatalf("usage after a refused upload: %+v", u)
			}
			if names, _ := f.st.UnreferencedObjects(ctx, "", 10); len(names) != 0 {
				t.Fatalf("objects left by the refused upload: %v", names)
			}

			resp, err := f.handle(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{
				GroupID: f.g1, Token: tok, TargetGroupID: f.g2}})
			if err != nil {
				t.Fatal(err)
			}
			shared := object(f.g1, tok)
			if _, err := f.handle(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentDelete,
				Attachment: moh.AttachmentRef{GroupID: f.g1, Token: tok}}); err != nil {
				t.Fatal(err)
			}
			if got, err := f.download(t, f.alice, 0, f.g2, resp.Token); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("the copy after the original's delete: %v", err)
			}
			if _, err := f.handle(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentDelete,
				Attachment: moh.AttachmentRef{GroupID: f.g2, Token: resp.Token}}); err != nil {
				t.Fatal(err)
			}
			gone("after the last delete", shared)

			tok = f.put(t, []byte("kept an hour"))
			name := object(f.g1, tok)
			f.now = f.now.Add(2 * time.Hour)
			st, err := f.a.Sweep(ctx, f.now)
			if err != nil || st.Expired != 1 || st.Objects != 1 {
				t.Fatalf("sweep: %+v, %v", st, err)
			}
			gone("after retention", name)
			if u, _ := f.st.GroupAttachmentUsage(ctx, f.g1); u != (store.AttachmentUsage{}) {
				t.Fatalf("usage after the sweep: %+v", u)
			}
		})
	}
}

// slowLegacy is the reference legacy backend over HTTP, taking delay to
// store a PUT's complete body (the fsync of a large file, a slow disk),
// and a Store of it waiting timeout for answers (0: the default). It
// records the names created.
type slowLegacy struct {
	storage.Backend
	mu    sync.Mutex
	names []string
}

func newSlowLegacy(t *testing.T, delay, timeout time.Duration) *slowLegacy {
	t.Helper()
	key := bytes.Repeat([]byte{7}, 32)
	lb := &forwardtest.Backend{Dir: t.TempDir(), Key: key}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			time.Sleep(delay)
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		lb.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s, err := forward.New(forward.Config{BaseURL: srv.URL + "/att/", Key: key, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &slowLegacy{Backend: s}
}

func (b *slowLegacy) Create(ctx context.Context, name string, size int64) (storage.Writer, error) {
	b.mu.Lock()
	b.names = append(b.names, name)
	b.mu.Unlock()
	return b.Backend.Create(ctx, name, size)
}

// lateObjectSwept uploads to b with ctx, reading content, then waits for
// the backend to store what it got, sweeps past the upload deadline and
// the retention, and checks that no byte and no record is left: an
// object the backend stored late is swept, not orphaned.
func lateObjectSwept(t *testing.T, f *attachFixture, b *slowLegacy, ctx context.Context, content io.Reader, size int) error {
	t.Helper()
	h := sha256.Sum256(bytes.Repeat([]byte("x"), size))
	body := f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: f.g1, ContentLength: uint64(size), ContentHash: h[:]}}, f.skew())
	req, err := f.svc.Authenticate(context.Background(), body)
	if err != nil {
		t.Fatal(err)
	}
	_, uerr := f.svc.Upload(ctx, req, content)
	// The backend stores the object it got, late, whatever the upload
	// did: the sweep comes after that, however slow the machine (30 s
	// only against a hang).
	deadline := time.Now().Add(30 * time.Second)
	for stored := false; !stored; {
		b.mu.Lock()
		names := slices.Clone(b.names)
		b.mu.Unlock()
		if len(names) == 1 {
			if o, err := b.Open(context.Background(), names[0]); err == nil {
				o.Close()
				stored = true
				continue
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload error %v: the backend stored no object within 30 s (%d created)", uerr, len(names))
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.now = f.now.Add(f.a.uploadDeadline() + f.a.retention() + time.Minute)
	if _, err := f.a.Sweep(context.Background(), f.now); err != nil {
		t.Fatal(err)
	}
	if len(b.names) != 1 {
		t.Fatalf("%d objects created, want 1", len(b.names))
	}
	if o, err := b.Open(context.Background(), b.names[0]); err == nil {
		o.Close()
		t.Errorf("upload error %v: after a sweep past its deadline and retention, its object is still on the backend, outside any record", uerr)
	} else if !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	u, err := f.st.GroupAttachmentUsage(context.Background(), f.g1)
	if err != nil || u != (store.AttachmentUsage{}) {
		t.Errorf("g1 usage %+v, %v; want nothing", u, err)
	}
	return uerr
}

// TestForwardCommitCancelOrphan: the uploading client goes away right
// after its last byte, while the legacy backend is storing the body. The
// commit goes on (the client cannot cancel it), so the object is
// recorded, and swept at the end of its retention; it used to fail, have
// its object deleted and forgotten before the backend stored it, which
// then stayed outside any record and quota.
func TestForwardCommitCancelOrphan(t *testing.T) {
	b := newSlowLegacy(t, 300*time.Millisecond, 0)
	f := newAttachFixture(t, func(a *Attachments) { a.Backend = b; a.Retention = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	content := io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("x"), 1000)), readerFunc(func([]byte) (int, error) {
		time.AfterFunc(50*time.Millisecond, cancel)
		return 0, io.EOF
	}))
	if err := lateObjectSwept(t, f, b, ctx, content, 1000); err != nil {
		t.Errorf("upload whose client went away after its last byte: %v", err)
	}
}

// TestForwardCommitTimeoutOrphan: the legacy backend takes longer than
// the forward Timeout to store a complete body. The commit's outcome is
// unknown, so the reservation is left to expire, and the sweep then
// deletes the object the backend stored late; it used to be released at
// once, its delete arriving before the backend stored the object.
func TestForwardCommitTimeoutOrphan(t *testing.T) {
	b := newSlowLegacy(t, 2*time.Second, time.Second)
	f := newAttachFixture(t, func(a *Attachments) { a.Backend = b })
	err := lateObjectSwept(t, f, b, context.Background(), bytes.NewReader(bytes.Repeat([]byte("x"), 1000)), 1000)
	wantCode(t, "upload whose commit timed out", err, moh.CodeBackendUnavailable)
}

// TestForwardCommitGatewayTimeoutOrphan: a reverse proxy in front of the
// legacy backend answers the completed PUT 504 while the backend goes on
// storing the body, which it finishes after the gateway gave the upload up
// (its DELETEs of the name sent, the upload answered). A 5xx does not say
// that the backend will not store the object: the upload is
// backend_unavailable, its reservation left to expire, and the sweep
// deletes the late object. The gateway used to take the 504 for "not
// stored": it released the reservation, deleted the absent object and
// forgot its name at once, and the object stored afterwards stayed on the
// backend, outside any record.
func TestForwardCommitGatewayTimeoutOrphan(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	lb := &forwardtest.Backend{Dir: t.TempDir(), Key: key}
	var mu sync.Mutex
	var held *http.Request // the PUT answered 504, not stored yet
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.ContentLength > 0:
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			mu.Lock()
			held = r.Clone(context.Background())
			held.Body = io.NopCloser(bytes.NewReader(body))
			mu.Unlock()
			http.Error(w, "upstream timed out", http.StatusGatewayTimeout)
			return
		case r.Method == http.MethodHead:
			// The first look at the name after the upload ended
			// (lateObjectSwept's) finds the backend done storing.
			mu.Lock()
			late := held
			held = nil
			mu.Unlock()
			if late != nil {
				rec := httptest.NewRecorder()
				lb.ServeHTTP(rec, late)
				if rec.Code != http.StatusCreated {
					t.Errorf("the late PUT was answered %d", rec.Code)
				}
			}
		}
		lb.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s, err := forward.New(forward.Config{BaseURL: srv.URL + "/att/", Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	b := &slowLegacy{Backend: s}
	f := newAttachFixture(t, func(a *Attachments) { a.Backend = b })
	err = lateObjectSwept(t, f, b, context.Background(), bytes.NewReader(bytes.Repeat([]byte("x"), 1000)), 1000)
	wantCode(t, "upload whose commit was answered 504", err, moh.CodeBackendUnavailable)
}

// TestForwardStalledBackendBlocksWrite: a legacy backend that takes the
// body (100 Continue), then stops reading without closing. The upload
// deadline bounds the upload, the backend's writes included: the upload
// ends with body_timeout. A Write used to block as long as the backend
// did not read, the request context having no deadline.
func TestForwardStalledBackendBlocksWrite(t *testing.T) {
	release := make(chan struct{})
	key := bytes.Repeat([]byte{7}, 32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut {
			w.WriteHeader(http.StatusNoContent) // the release's DELETE
			return
		}
		io.CopyN(io.Discard, r.Body, 1000)
		<-release
	}))
	defer srv.Close()
	var once sync.Once
	unstall := func() { once.Do(func() { close(release) }) }
	defer unstall()
	s, err := forward.New(forward.Config{BaseURL: srv.URL + "/att/", Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := newAttachFixture(t, func(a *Attachments) { a.Backend = s; a.UploadDeadline = time.Second })
	const size = 256 << 20
	h := sha256.Sum256(nil)
	done := make(chan error, 1)
	go func() {
		_, err := f.upload(t, f.alice, 0, f.g1, size, h[:], io.LimitReader(readerFunc(func(p []byte) (int, error) {
			clear(p)
			return len(p), nil
		}), size))
		done <- err
	}()
	select {
	case err := <-done:
		wantCode(t, "upload to a stalled backend", err, moh.CodeBodyTimeout)
	case <-time.After(30 * time.Second): // only against a hang: it used to block for ever
		t.Errorf("upload still blocked after 30 s (30 times its deadline) on a backend that stopped reading")
		unstall()
		<-done
	}
}

// TestSweepKeepsUploadsOfLongerDeadline has two gateways on one store and
// one backend during a rolling upload_deadline change: a, on 4h, streams
// an upload while b, still on 1h, sweeps 2 hours later. b's sweep leaves
// a's upload alone (its reservation, which says 4h, still holds) and the
// upload commits; an upload that no reservation holds (a process that
// died before its record) and one whose reservation expired (its own
// deadline passed) are removed as before. (b used to abort every upload
// initiated more than its own 1h ago: a's upload failed at its next
// part.) The local backend's sweep goes by the time of the last write,
// which a streaming upload keeps recent.
func TestSweepKeepsUploadsOfLongerDeadline(t *testing.T) {
	for _, bk := range backends[:2] {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.open(t)
			f := newAttachFixture(t, func(a *Attachments) { a.Backend = b; a.UploadDeadline = 4 * time.Hour })
			f.now = time.Now()
			other := &Attachments{Store: f.st, Backend: b, MaxSize: 1 << 30, UploadDeadline: time.Hour}
			ctx := context.Background()

			data := make([]byte, 12<<20) // more than two S3 parts
			rand.Read(data)
			h := sha256.Sum256(data)
			body := f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
				GroupID: f.g1, ContentLength: uint64(len(data)), ContentHash: h[:]}}, f.skew())
			req, err := f.svc.Authenticate(ctx, body)
			if err != nil {
				t.Fatal(err)
			}
			pr, pw := io.Pipe()
			type result struct {
				resp *moh.DSResponse
				err  error
			}
			done := make(chan result, 1)
			go func() {
				resp, err := f.svc.Upload(ctx, req, pr)
				pr.CloseWithError(errors.New("upload returned"))
				done <- result{resp, err}
			}()
			// 6 MiB read means the first 5 MiB part is uploaded, the
			// multipart upload under way.
			if _, err := pw.Write(data[:6<<20]); err != nil {
				t.Fatalf("streaming the first half: %v", err)
			}

			// An upload that no reservation holds, and one whose
			// reservation expires before the sweep.
			orphan := randomHex(objectNameSize)
			ow, err := b.Create(ctx, orphan, int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ow.Write(data[:6<<20]); err != nil {
				t.Fatal(err)
			}
			expired := store.Attachment{TokenHash: sha256.Sum256([]byte("expired")), GroupID: f.g1, Object: randomHex(objectNameSize),
				Size: int64(len(data)), ContentHash: h[:], Uploader: "mimi://a.example/d/x/y", Created: f.now, Expires: f.now.Add(time.Hour)}
			if err := f.st.ReserveAttachment(ctx, expired, store.AttachmentQuota{}); err != nil {
				t.Fatal(err)
			}
			ew, err := b.Create(ctx, expired.Object, int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ew.Write(data[:6<<20]); err != nil {
				t.Fatal(err)
			}
			sweepAt := f.now.Add(2 * time.Hour)
			if bk.name == "local" {
				// Its cut-off is by last write; the writes above are
				// all recent, so nothing of them goes.
				sweepAt = f.now
			}
			st, err := other.Sweep(ctx, sweepAt)
			if err != nil {
				t.Fatalf("b's sweep: %v", err)
			}
			if bk.name == "s3" && st.Temporary != 2 {
				t.Errorf("b's sweep aborted %d uploads, want 2 (the orphan and the expired one)", st.Temporary)
			}
			if _, err := pw.Write(data[6<<20:]); err != nil {
				t.Fatalf("streaming the second half after b's sweep: %v", err)
			}
			pw.Close()
			r := <-done
			if r.err != nil {
				t.Fatalf("a's upload after b's sweep: %v", r.err)
			}
			if got, err := f.download(t, f.bob, 1, f.g1, r.resp.Token); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("downloading a's upload: %v", err)
			}
			ow.Abort() //nolint:errcheck // swept already
			ew.Abort() //nolint:errcheck // swept already
		})
	}
}
