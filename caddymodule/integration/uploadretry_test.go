package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	mimiclient "github.com/caddy-mimi/caddy-mimi/mimicore/client"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
)

// TestGoClientUploadWaitsOutUploadsInProgress: the Go client's upload
// refused 429 rate_limited with Retry-After 5 because its client has
// max_uploads_in_progress (default 4) uploads in progress is uploaded
// again once the wait is over, and stored, through the real Caddy over
// TLS 1.3. Four uploads of alice's client (from copies of her state
// directory: the same client URI and signature key) are held halfway
// through their bodies; her PutAttachment is refused (the gateway's
// refusals counter moves), then the held uploads end, and PutAttachment
// returns a token that GetAttachment opens. Before, the refusal was
// returned.
func TestGoClientUploadWaitsOutUploadsInProgress(t *testing.T) {
	startClientSite(t)
	dataDir := filepath.Join(env.dir, "m-"+t.Name())
	alice := newGoClient(t, "alice", "phone")
	ctx := t.Context()
	gid, err := alice.CreateGroup(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// The held uploads come from copies of alice's state, each a Client
	// of its own (a Client runs one call at a time), whose HTTP client
	// stops an upload's body halfway until release is closed.
	release := make(chan struct{})
	const limit = ds.DefaultMaxUploadsInProgress
	held := make(chan error, limit)
	for i := range limit {
		dir := filepath.Join(t.TempDir(), "alice-phone")
		if err := os.CopyFS(dir, os.DirFS(alice.Dir())); err != nil {
			t.Fatal(err)
		}
		cfg := clientConfig("alice")
		cfg.HTTPClient.Transport = &haltUploads{base: cfg.HTTPClient.Transport, release: release}
		c, err := mimiclient.Open(dir, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			_, _, err := c.PutAttachment(ctx, gid, bytes.Repeat([]byte{byte(i)}, 128<<10))
			held <- err
		}()
	}
	waitUploadsInProgress(t, dataDir, limit)

	refusedBefore := uploadsRefused(t, dataDir)
	plain := make([]byte, 64<<10)
	rand.Read(plain)
	type put struct {
		ref  attachment.Reference
		leaf uint32
		err  error
	}
	done := make(chan put, 1)
	go func() {
		ref, leaf, err := alice.PutAttachment(ctx, gid, plain)
		done <- put{ref, leaf, err}
	}()
	for i := 0; uploadsRefused(t, dataDir) == refusedBefore; i++ {
		if i == 300 {
			t.Fatal("after 30 s alice's upload was not refused")
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(release)
	for range limit {
		if err := <-held; err != nil {
			t.Fatalf("a held upload of alice, let go on: %v", err)
		}
	}
	res := <-done
	if res.err != nil {
		t.Fatalf("alice's upload, refused while her uploads were in progress: %v; want it uploaded again once they ended", res.err)
	}
	if got, err := alice.GetAttachment(ctx, gid, res.leaf, res.ref); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("alice's GetAttachment of her upload: %d bytes, %v", len(got), err)
	}
	waitUploadsInProgress(t, dataDir, 0)
}

// haltUploads is an http.RoundTripper that sends the first half of an
// /attachment_upload's body, then the rest once release is closed.
type haltUploads struct {
	base    http.RoundTripper
	release <-chan struct{}
}

// RoundTrip implements http.RoundTripper.
func (h *haltUploads) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path != "/attachment_upload" || r.Body == nil {
		return h.base.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Body = &haltedBody{ReadCloser: r.Body, left: r.ContentLength / 2, release: h.release, done: r.Context().Done()}
	return h.base.RoundTrip(r)
}

// haltedBody reads left bytes of the body, then waits for release.
type haltedBody struct {
	io.ReadCloser
	left    int64
	release <-chan struct{}
	done    <-chan struct{}
}

func (b *haltedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		select {
		case <-b.release:
		case <-b.done:
			return 0, io.ErrUnexpectedEOF
		}
		return b.ReadCloser.Read(p)
	}
	n, err := b.ReadCloser.Read(p[:min(int64(len(p)), b.left)])
	b.left -= int64(n)
	return n, err
}

// uploadsRefused returns the gateway of dataDir's
// caddy_mimi_attachments_uploads_refused_total, from Caddy's admin
// /metrics (0 while it has none).
func uploadsRefused(t *testing.T, dataDir string) float64 {
	t.Helper()
	resp, err := http.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	prefix := fmt.Sprintf("caddy_mimi_attachments_uploads_refused_total{data_dir=%q} ", dataDir)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", sc.Text(), err)
			}
			return n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return 0
}
