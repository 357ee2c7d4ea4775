package ds

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/httptest"
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
