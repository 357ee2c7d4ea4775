package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/metricstest"
	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// heldUpload is an upload sent over its own TLS 1.3 connection as raw
// HTTP/1.1, its body stopped halfway: the gateway streams it and waits
// for the rest.
type heldUpload struct {
	conn net.Conn
	rest []byte
}

// holdUpload starts an upload of size random bytes to e.group as c at
// leaf index and sends half of its body.
func (e *attachEnv) holdUpload(t *testing.T, c *mlstest.Client, index uint32, size int) *heldUpload {
	t.Helper()
	ct := make([]byte, size)
	rand.Read(ct)
	h := sha256.Sum256(ct)
	up := append(e.sign(t, c, index, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: e.group, ContentLength: uint64(size), ContentHash: h[:]}}), ct...)
	conn, err := tls.Dial("tcp", e.srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // the test server's own certificate
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /attachment_upload HTTP/1.1\r\nHost: a.example\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", len(up))
	if _, err := conn.Write(up[:len(up)/2]); err != nil {
		t.Fatal(err)
	}
	return &heldUpload{conn: conn, rest: up[len(up)/2:]}
}

// finish sends the rest of the held upload's body and returns the
// answer.
func (u *heldUpload) finish(t *testing.T) (*http.Response, []byte) {
	t.Helper()
	if _, err := u.conn.Write(u.rest); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(u.conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return resp, body.Bytes()
}

// waitFor polls cond every 10 ms until it holds, for at most 30 s (only
// against a hang).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 3000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: still not so after 30 s", what)
}

// localFiles counts the files under the local backend's root: committed
// objects and temporary files of uploads in progress.
func (e *attachEnv) localFiles(t *testing.T) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(e.g.DataDir, attachmentsDir), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// TestAttachmentUploadsInProgressOverTLS: with max_uploads_in_progress
// 3, three uploads of alice streaming over TLS 1.3 (local storage) make a
// fourth 429 rate_limited with Retry-After, before anything of it is
// stored; bob's upload meanwhile is accepted; an upload that ends, stored
// or cut off by its client mid-body, gives its slot to alice's next one.
func TestAttachmentUploadsInProgressOverTLS(t *testing.T) {
	const limit, size = 3, 256 << 10
	e := newAttachEnv(t, &Attachments{MaxUploadsInProgress: limit})
	alice := string(e.alice.KeyPackage.LeafNode.Credential.Identity)
	slots := e.g.ds.Attachments.Slots
	st := e.g.svc.Store()
	usage := func() int64 {
		u, err := st.UploaderAttachmentUsage(context.Background(), alice)
		if err != nil {
			t.Fatal(err)
		}
		return u.Count
	}
	held := make([]*heldUpload, limit)
	for i := range held {
		held[i] = e.holdUpload(t, e.alice, 0, size)
	}
	// All three streaming: each holds its slot, its reservation and its
	// temporary file.
	waitFor(t, "alice's three uploads streaming", func() bool {
		return slots.InProgress(alice) == limit && usage() == limit && e.localFiles(t) == limit
	})

	upload := func(who *mlstest.Client, index uint32) (*http.Response, []byte) {
		ct := make([]byte, size)
		rand.Read(ct)
		h := sha256.Sum256(ct)
		head := e.sign(t, who, index, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
			GroupID: e.group, ContentLength: size, ContentHash: h[:]}})
		return e.post(t, "/attachment_upload", bytes.NewReader(append(head, ct...)), nil)
	}
	t.Run("one more refused", func(t *testing.T) {
		resp, body := upload(e.alice, 0)
		r := answer(t, "alice's fourth upload", resp, body, http.StatusTooManyRequests)
		if r.Error.Code != moh.CodeRateLimited || resp.Header.Get("Retry-After") != uploadSlotRetryAfter {
			t.Fatalf("code %v, Retry-After %q; want rate_limited with Retry-After %s", r.Error.Code, resp.Header.Get("Retry-After"), uploadSlotRetryAfter)
		}
		if n, files := usage(), e.localFiles(t); n != limit || files != limit {
			t.Fatalf("alice holds %d attachments and %d files are on disk after the refusal; want the %d in progress alone", n, files, limit)
		}
		if n := slots.InProgress(alice); n != limit {
			t.Fatalf("alice holds %d slots after the refusal, want %d", n, limit)
		}
		got := metricstest.Of(t, sweepStats{})
		for name, want := range map[string]float64{"caddy_mimi_attachments_uploads_in_progress": limit,
			"caddy_mimi_attachments_uploads_refused_total": 1} {
			if k := name + "{data_dir=" + e.g.DataDir + ",}"; got[k] != want {
				t.Errorf("%s = %v, want %v", k, got[k], want)
			}
		}
	})
	t.Run("another member unaffected", func(t *testing.T) {
		resp, body := upload(e.bob, 1)
		if r := answer(t, "bob's upload", resp, body, http.StatusOK); r.Type != moh.ResponseAttachmentToken {
			t.Fatalf("bob's upload answered %v", r.Type)
		}
	})
	t.Run("slot of a stored upload freed", func(t *testing.T) {
		resp, body := held[0].finish(t)
		answer(t, "alice's first upload, finished", resp, body, http.StatusOK)
		// Answered after the slot was given back: the next one fits.
		resp, body = upload(e.alice, 0)
		answer(t, "alice's upload after one ended", resp, body, http.StatusOK)
	})
	outer := t // the held upload outlives the subtest
	t.Run("slot of an upload cut off freed", func(t *testing.T) {
		held[0] = e.holdUpload(outer, e.alice, 0, size)
		waitFor(t, "alice's uploads back at the limit", func() bool { return slots.InProgress(alice) == limit })
		resp, body := upload(e.alice, 0)
		answer(t, "alice's upload at the limit again", resp, body, http.StatusTooManyRequests)
		held[1].conn.Close() // the client goes away mid-body
		waitFor(t, "the cut-off upload's slot given back", func() bool { return slots.InProgress(alice) == limit-1 })
		resp, body = upload(e.alice, 0)
		answer(t, "alice's upload after one was cut off", resp, body, http.StatusOK)
	})
	// The last two end; nothing is left held but what was stored: alice's
	// five uploads and bob's one.
	for _, i := range []int{0, 2} {
		resp, body := held[i].finish(t)
		answer(t, "a held upload, finished", resp, body, http.StatusOK)
	}
	if n, u := slots.InProgress(alice), slots.Uploaders(); n != 0 || u != 0 {
		t.Fatalf("%d slots of alice (%d uploaders) held once every upload ended", n, u)
	}
	got := metricstest.Of(t, sweepStats{})
	for name, want := range map[string]float64{"caddy_mimi_attachments_uploads_in_progress": 0,
		"caddy_mimi_attachments_uploads_refused_total": 2} {
		if k := name + "{data_dir=" + e.g.DataDir + ",}"; got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	if g, err := st.GroupAttachmentUsage(context.Background(), e.group); err != nil || g.Count != 6 {
		t.Fatalf("group usage %+v, %v; want alice's five stored uploads and bob's", g, err)
	}
	waitFor(t, "the cut-off upload's temporary file removed", func() bool { return e.localFiles(t) == 6 })
}

// TestAttachmentUploadSlotsPerDataDir: the gateways of one data
// directory (the sites of one provider, or a config and the one a reload
// starts while the first still serves) count uploads in progress
// together, each with its own limit; another data directory counts its
// own.
func TestAttachmentUploadSlotsPerDataDir(t *testing.T) {
	first := provisioned(t, &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example",
		Attachments: &Attachments{MaxUploadsInProgress: 2}})
	second := provisioned(t, &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example", DataDir: first.DataDir,
		Attachments: &Attachments{MaxUploadsInProgress: 3}})
	other := provisioned(t, &Gateway{Providers: []string{"b.example"}, DSDomain: "ds.b.example"})
	a, b, c := first.ds.Attachments, second.ds.Attachments, other.ds.Attachments
	if a.Slots == nil || a.Slots != b.Slots {
		t.Fatalf("the configs of one data directory count apart (%p, %p)", a.Slots, b.Slots)
	}
	if c.Slots == nil || c.Slots == a.Slots {
		t.Fatal("another data directory shares the counts")
	}
	if a.MaxUploadsInProgress != 2 || b.MaxUploadsInProgress != 3 {
		t.Fatalf("limits %d and %d, want each config's own", a.MaxUploadsInProgress, b.MaxUploadsInProgress)
	}
}

// TestAttachmentsMaxUploadsInProgressJSON: max_uploads_in_progress
// decodes from the JSON config, is checked by validate, and reaches the
// Delivery Service's attachment service, whose default is 4.
func TestAttachmentsMaxUploadsInProgressJSON(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     int
		err      string
	}{
		{"set", `{"max_uploads_in_progress":7}`, 7, ""},
		{"default", `{}`, ds.DefaultMaxUploadsInProgress, ""},
		{"negative", `{"max_uploads_in_progress":-1}`, 0, "max_uploads_in_progress: -1 is outside 1..1000"},
		{"above the most", `{"max_uploads_in_progress":1001}`, 0, "max_uploads_in_progress: 1001 is outside 1..1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a Attachments
			dec := json.NewDecoder(strings.NewReader(tc.in))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&a); err != nil {
				t.Fatal(err)
			}
			if err := a.validate(); tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("validate: %v, want an error containing %q", err, tc.err)
				}
				return
			} else if err != nil {
				t.Fatal(err)
			}
			g := provisioned(t, &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example", Attachments: &a})
			svc := g.ds.Attachments
			limit := svc.MaxUploadsInProgress
			if limit == 0 {
				limit = ds.DefaultMaxUploadsInProgress
			}
			if limit != tc.want {
				t.Fatalf("the attachment service allows %d uploads in progress, want %d", limit, tc.want)
			}
		})
	}
}
