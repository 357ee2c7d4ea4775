package caddymodule

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-mimi/caddy-mimi/internal/metricstest"
	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/internal/s3test"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward/forwardtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// attachEnv is a provisioned gateway behind a real TLS 1.3 server, with
// group g of alice (leaf 0) and bob (leaf 1) stored in its DS, and eve,
// who is in no group.
type attachEnv struct {
	g           *Gateway
	srv         *httptest.Server
	c           *http.Client
	cs          mls.CipherSuite
	alice, bob  *mlstest.Client
	eve         *mlstest.Client
	aliceM      *mls.Member
	bobM        *mls.Member
	group       []byte
	group2      []byte // alice alone
	signedCount int
}

func newAttachEnv(t testing.TB, a *Attachments) *attachEnv {
	t.Helper()
	e := &attachEnv{cs: mls.X25519AES128GCMSHA256Ed25519, group: []byte("attachment test group")}
	e.g = provisioned(t, &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example", Attachments: a})
	var err error
	mk := func(name string) *mlstest.Client {
		c, err := mlstest.NewClient(e.cs, "mimi://a.example/d/"+name+"/1", mlstest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	e.alice, e.bob, e.eve = mk("alice"), mk("bob"), mk("eve")
	first, err := mls.NewGroup(mls.GroupOptions{CipherSuite: e.cs, GroupID: e.group, Leaf: &e.alice.KeyPackage.LeafNode,
		LeafKey: e.alice.LeafKey, Signer: e.alice.Signer})
	if err != nil {
		t.Fatal(err)
	}
	res, err := first.Commit([]*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: e.bob.KeyPackage}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.bobM, err = mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: e.bob.KeyPackage,
		InitKey: e.bob.InitKey, LeafKey: e.bob.LeafKey, Signer: e.bob.Signer})
	if err != nil {
		t.Fatal(err)
	}
	e.aliceM = res.Next
	st := e.g.svc.Store()
	if err := st.CreateGroup(t.Context(), store.GroupCreation{Hub: "a.example", State: first.State()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CommitEpoch(t.Context(), store.EpochCommit{Base: first.State(), Next: e.aliceM.State()}); err != nil {
		t.Fatal(err)
	}
	// A second group, of alice alone, as a copy's target.
	e.group2 = []byte("attachment copy target")
	second, err := mls.NewGroup(mls.GroupOptions{CipherSuite: e.cs, GroupID: e.group2, Leaf: &e.alice.KeyPackage.LeafNode,
		LeafKey: e.alice.LeafKey, Signer: e.alice.Signer})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateGroup(t.Context(), store.GroupCreation{Hub: "a.example", State: second.State()}); err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caddyhttp.NewTestReplacer(r)
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
			w.WriteHeader(http.StatusTeapot)
			return nil
		})
		if err := e.g.ServeHTTP(w, r, next); err != nil {
			t.Error(err)
		}
	}))
	e.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	e.c = e.srv.Client()
	return e
}

// sign signs body as c at leaf index, each request a second apart so no
// two are the same signed bytes.
func (e *attachEnv) sign(t testing.TB, c *mlstest.Client, index uint32, body moh.RequestBody) []byte {
	t.Helper()
	e.signedCount++
	b, err := ds.SignRequest(e.cs, c.Signer, body, ds.ClientSignature(index, time.Now().Add(time.Duration(e.signedCount)*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends body to path with extra headers, and returns the answer.
func (e *attachEnv) post(t *testing.T, path string, body io.Reader, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	for k, v := range header {
		req.Header[k] = v
	}
	return exchangeHTTP(t, e.c, req)
}

// uploadBody is the upload of ct to group as alice.
func (e *attachEnv) uploadBody(t *testing.T, group []byte, ct []byte) []byte {
	t.Helper()
	h := sha256.Sum256(ct)
	head := e.sign(t, e.alice, 0, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: group, ContentLength: uint64(len(ct)), ContentHash: h[:]}})
	return append(head, ct...)
}

// answer decodes a DSResponse and checks its status.
func answer(t testing.TB, what string, resp *http.Response, body []byte, status int) *moh.DSResponse {
	t.Helper()
	var r moh.DSResponse
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil {
		t.Fatalf("%s: status %d, body %x is not a DSResponse: %v", what, resp.StatusCode, body, err)
	}
	if resp.StatusCode != status {
		t.Fatalf("%s: status %d (%s %q), want %d", what, resp.StatusCode, r.Error.Code, r.Error.Message, status)
	}
	return &r
}

// TestAttachmentsOverTLS runs the attachment endpoints over TLS 1.3
// against a provisioned gateway: upload, download and decrypt on the
// other member's side, a range download for resuming, the refusals, and
// delete.
func TestAttachmentsOverTLS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		storage func(t *testing.T) json.RawMessage
	}{
		{"local", func(*testing.T) json.RawMessage { return nil }},
		{"s3", func(t *testing.T) json.RawMessage {
			srv := s3test.Start(t)
			return json.RawMessage(fmt.Sprintf(`{"backend":"s3","endpoint":%q,"bucket":%q,"prefix":"tls/","region":%q,`+
				`"access_key":%q,"secret_key":%q,"insecure":true,"path_style":true}`,
				srv.Endpoint, srv.Bucket, srv.Region, srv.AccessKey, srv.SecretKey))
		}},
		{"forward", func(t *testing.T) json.RawMessage {
			const key = "0123456789abcdef0123456789abcdef"
			srv := httptest.NewServer(&forwardtest.Backend{Dir: t.TempDir(), Key: []byte(key)})
			t.Cleanup(srv.Close)
			return json.RawMessage(fmt.Sprintf(`{"backend":"forward","base_url":%q,"key":%q}`, srv.URL+forwardtest.Base, key))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testAttachmentsOverTLS(t, &Attachments{GroupQuotaBytes: 1 << 20, Storage: tc.storage(t)})
		})
	}
}

// forwardGetsEnv is an attachEnv whose storage is a forward backend on
// loopback that counts the GETs it gets (gets) and, while failGets is
// set, answers them 503.
func forwardGetsEnv(t *testing.T) (e *attachEnv, gets *atomic.Int32, failGets *atomic.Bool) {
	t.Helper()
	const key = "0123456789abcdef0123456789abcdef"
	gets, failGets = new(atomic.Int32), new(atomic.Bool)
	backend := &forwardtest.Backend{Dir: t.TempDir(), Key: []byte(key)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			gets.Add(1)
			if failGets.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
		}
		backend.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e = newAttachEnv(t, &Attachments{Storage: json.RawMessage(fmt.Sprintf(`{"backend":"forward","base_url":%q,"key":%q}`,
		srv.URL+forwardtest.Base, key))})
	return e, gets, failGets
}

// A whole download reads its object as one stream: the forward backend
// sees one GET, not one ranged GET per buffer of copyStream.
func TestAttachmentDownloadOneGET(t *testing.T) {
	e, gets, _ := forwardGetsEnv(t)
	content := make([]byte, 1<<20+123) // 4 buffers of copyStream and a bit
	rand.Read(content)
	resp, body := e.post(t, "/attachment_upload", bytes.NewReader(e.uploadBody(t, e.group, content)), nil)
	token := answer(t, "upload", resp, body, http.StatusOK).Token
	gets.Store(0)
	req := moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: e.group, Token: token}}
	resp, body = e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.bob, 1, req)), nil)
	if r := answer(t, "download", resp, body, http.StatusOK); !bytes.Equal(r.Content, content) {
		t.Fatalf("downloaded %d bytes, not the %d uploaded", len(r.Content), len(content))
	}
	if n := gets.Load(); n != 1 {
		t.Fatalf("the download sent %d GETs to the backend, want 1", n)
	}
}

// TestAttachmentDownloadBackendFails: a forward backend that answers
// the HEAD of Open but fails the GET of the content (its storage down,
// 503). The download was answered 200 with its Content-Length, then cut
// off after the DSResponse's prefix: the peer saw a broken transfer
// instead of a DSError, and the operator nothing but a debug log. It is
// answered 503 backend_unavailable.
func TestAttachmentDownloadBackendFails(t *testing.T) {
	e, _, failGets := forwardGetsEnv(t)
	content := make([]byte, 300<<10) // more than one buffer
	rand.Read(content)
	resp, body := e.post(t, "/attachment_upload", bytes.NewReader(e.uploadBody(t, e.group, content)), nil)
	token := answer(t, "upload", resp, body, http.StatusOK).Token
	failGets.Store(true)
	signed := e.sign(t, e.bob, 1, moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: e.group, Token: token}})
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/attachment_download", bytes.NewReader(signed))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("download while the backend fails its GETs: status %d, want 503", resp.StatusCode)
	}
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if r := answer(t, "download", resp, body, http.StatusServiceUnavailable); r.Error.Code != moh.CodeBackendUnavailable {
		t.Fatalf("code %s, want backend_unavailable", r.Error.Code)
	}
	if resp.Header.Get("ETag") != "" {
		t.Fatalf("the refusal carries the ETag %q of the content", resp.Header.Get("ETag"))
	}
}

// TestAttachmentRangeBackendFails: a ranged download from a forward
// backend that answers the HEAD of Open but fails the GET of the range
// (its storage down, 503) was answered 206 with its headers, then cut
// off: the peer saw a broken transfer instead of a DSError. It is
// answered 503 backend_unavailable, one range or several; a backend that
// answers still gets one GET per range, and the client its bytes.
func TestAttachmentRangeBackendFails(t *testing.T) {
	e, gets, failGets := forwardGetsEnv(t)
	content := make([]byte, 300<<10)
	rand.Read(content)
	resp, body := e.post(t, "/attachment_upload", bytes.NewReader(e.uploadBody(t, e.group, content)), nil)
	token := answer(t, "upload", resp, body, http.StatusOK).Token
	download := func(t *testing.T, rng string) (*http.Response, []byte) {
		signed := e.sign(t, e.bob, 1, moh.RequestBody{Type: moh.AttachmentDownload,
			Attachment: moh.AttachmentRef{GroupID: e.group, Token: token}})
		return e.post(t, "/attachment_download", bytes.NewReader(signed), http.Header{"Range": {rng}})
	}
	for _, tc := range []struct {
		name, rng string
		ranges    int32
	}{
		{"one range", "bytes=1000-299999", 1},
		{"one range within the first bytes", "bytes=10-19", 1},
		{"several ranges", "bytes=0-9,200000-200099", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			failGets.Store(false)
			gets.Store(0)
			resp, body := download(t, tc.rng)
			if resp.StatusCode != http.StatusPartialContent {
				t.Fatalf("status %d, want 206", resp.StatusCode)
			}
			if n := gets.Load(); n != tc.ranges {
				t.Fatalf("the download sent %d GETs to the backend, want %d", n, tc.ranges)
			}
			if tc.ranges == 1 {
				var first, last int64
				if _, err := fmt.Sscanf(tc.rng, "bytes=%d-%d", &first, &last); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(body, content[first:last+1]) {
					t.Fatalf("got %d bytes, not the %d of the range", len(body), last+1-first)
				}
			}

			failGets.Store(true)
			resp, body = download(t, tc.rng)
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("download while the backend fails its GETs: status %d, want 503", resp.StatusCode)
			}
			if r := answer(t, "download", resp, body, http.StatusServiceUnavailable); r.Error.Code != moh.CodeBackendUnavailable {
				t.Fatalf("code %s, want backend_unavailable", r.Error.Code)
			}
			if resp.Header.Get("ETag") != "" || resp.Header.Get("Content-Range") != "" {
				t.Fatalf("the refusal carries the content's headers %v", resp.Header)
			}
		})
	}
}

func testAttachmentsOverTLS(t *testing.T, a *Attachments) {
	e := newAttachEnv(t, a)
	plain := bytes.Repeat([]byte("holiday picture "), 20000) // 320 KB
	sealed, err := attachment.Seal(e.aliceM, e.cs, 0, plain, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	upload := e.uploadBody(t, e.group, sealed.Ciphertext)
	resp, body := e.post(t, "/attachment_upload", bytes.NewReader(upload), nil)
	token := answer(t, "upload", resp, body, http.StatusOK).Token
	if len(token) != ds.AttachmentTokenSize {
		t.Fatalf("token of %d bytes", len(token))
	}
	// A byte-identical retry (the answer lost) gets the same token, its
	// content left unread, and stores nothing more.
	resp, body = e.post(t, "/attachment_upload", bytes.NewReader(upload), nil)
	if again := answer(t, "retry of the upload", resp, body, http.StatusOK).Token; !bytes.Equal(again, token) {
		t.Fatalf("retry of the upload answered token %x, want %x", again, token)
	}
	if u, err := e.g.svc.Store().GroupAttachmentUsage(context.Background(), e.group); err != nil || u.Count != 1 {
		t.Fatalf("group usage %+v, %v after a retry; want the one upload", u, err)
	}
	download := func(c *mlstest.Client, index uint32, group, token []byte) moh.RequestBody {
		return moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: group, Token: token}}
	}

	t.Run("download and open", func(t *testing.T) {
		resp, body := e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.bob, 1, download(e.bob, 1, e.group, token))), nil)
		r := answer(t, "download", resp, body, http.StatusOK)
		if r.Type != moh.ResponseAttachmentContent {
			t.Fatalf("answer type %v", r.Type)
		}
		got, err := attachment.Open(e.bobM, e.cs, 0, sealed.Nonce, sealed.Hash, r.Content)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("bob opens: %v", err)
		}
		if resp.Header.Get("ETag") == "" || resp.Header.Get("Accept-Ranges") != "bytes" {
			t.Fatalf("headers %v", resp.Header)
		}
	})

	t.Run("range resumes", func(t *testing.T) {
		for _, tc := range []struct {
			rng        string
			from, to   int // ciphertext slice
			contentRng string
		}{
			{"bytes=100-199", 100, 200, fmt.Sprintf("bytes 100-199/%d", len(sealed.Ciphertext))},
			{"bytes=300000-", 300000, len(sealed.Ciphertext), fmt.Sprintf("bytes 300000-%d/%d", len(sealed.Ciphertext)-1, len(sealed.Ciphertext))},
			{"bytes=-16", len(sealed.Ciphertext) - 16, len(sealed.Ciphertext), ""},
		} {
			t.Run(tc.rng, func(t *testing.T) {
				resp, body := e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.bob, 1, download(e.bob, 1, e.group, token))),
					http.Header{"Range": {tc.rng}})
				if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, sealed.Ciphertext[tc.from:tc.to]) {
					t.Fatalf("status %d, %d bytes; want 206 with ciphertext[%d:%d]", resp.StatusCode, len(body), tc.from, tc.to)
				}
				if tc.contentRng != "" && resp.Header.Get("Content-Range") != tc.contentRng {
					t.Fatalf("Content-Range %q, want %q", resp.Header.Get("Content-Range"), tc.contentRng)
				}
			})
		}
		size := len(sealed.Ciphertext)
		for _, rng := range []string{"bytes=999999999-", "bytes=abc", "items=0-1", "bytes=-0"} {
			t.Run("unsatisfiable "+rng, func(t *testing.T) {
				resp, body := e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.bob, 1, download(e.bob, 1, e.group, token))),
					http.Header{"Range": {rng}})
				if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
					t.Fatalf("status %d, want 416", resp.StatusCode)
				}
				if got, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes */%d", size); got != want {
					t.Fatalf("Content-Range %q, want %q", got, want)
				}
				if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("ETag") == "" || len(body) == 0 {
					t.Fatalf("416 without the download's headers or a text body: %v %q", resp.Header, body)
				}
			})
		}
		// Ranges that add up to more than the content, none at all, or
		// a set RFC 9110 §14.2 lets a server ignore (overlapping, out of
		// order, too many) are ignored: the answer is the whole
		// DSResponse, never the raw ciphertext with a 200.
		for _, rng := range []string{"bytes=0-,0-", fmt.Sprintf("bytes=0-%d,-%d", size-1, size/2), "bytes= , ",
			"bytes=0-0,0-0,0-0", "bytes=20-29,0-9", manyRanges(17)} {
			t.Run("ignored "+rng, func(t *testing.T) {
				resp, body := e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.bob, 1, download(e.bob, 1, e.group, token))),
					http.Header{"Range": {rng}})
				if r := answer(t, "download", resp, body, http.StatusOK); !bytes.Equal(r.Content, sealed.Ciphertext) {
					t.Fatalf("the ignored range's answer holds %d bytes, not the %d of the attachment", len(r.Content), size)
				}
			})
		}
		t.Run("several ranges", func(t *testing.T) {
			resp, body := e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.bob, 1, download(e.bob, 1, e.group, token))),
				http.Header{"Range": {"bytes=0-9,20-29"}})
			mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
			if resp.StatusCode != http.StatusPartialContent || err != nil || mt != "multipart/byteranges" {
				t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
			for _, want := range [][2]int{{0, 10}, {20, 30}} {
				part, err := mr.NextPart()
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(part)
				if err != nil || !bytes.Equal(got, sealed.Ciphertext[want[0]:want[1]]) {
					t.Fatalf("part %v: %v", want, err)
				}
			}
		})
		t.Run("conditions not evaluated", func(t *testing.T) {
			resp, body := e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.bob, 1, download(e.bob, 1, e.group, token))),
				http.Header{"Range": {"bytes=0-9"}, "If-Match": {`"elsewhere"`}, "If-None-Match": {"*"}})
			if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, sealed.Ciphertext[:10]) {
				t.Fatalf("status %d, %d bytes; want 206 with the first 10 bytes", resp.StatusCode, len(body))
			}
		})
	})

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			body   []byte
			status int
			code   moh.Code
		}{
			{"non-member", e.sign(t, e.eve, 5, download(e.eve, 5, e.group, token)), http.StatusNotFound, moh.CodeNotFound},
			{"unknown token", e.sign(t, e.bob, 1, download(e.bob, 1, e.group, make([]byte, 32))), http.StatusNotFound, moh.CodeNotFound},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, body := e.post(t, "/attachment_download", bytes.NewReader(tc.body), nil)
				if r := answer(t, tc.name, resp, body, tc.status); r.Error.Code != tc.code {
					t.Fatalf("code %v", r.Error.Code)
				}
			})
		}
		// Over the group quota: 413, before the content is read.
		big := make([]byte, 800<<10)
		resp, body := e.post(t, "/attachment_upload", bytes.NewReader(e.uploadBody(t, e.group, big)), nil)
		if r := answer(t, "over quota", resp, body, http.StatusRequestEntityTooLarge); r.Error.Code != moh.CodeQuotaExceeded {
			t.Fatalf("code %v", r.Error.Code)
		}
		// A body whose length disagrees with the header.
		up := e.uploadBody(t, e.group, []byte("twelve bytes"))
		resp, body = e.post(t, "/attachment_upload", bytes.NewReader(up[:len(up)-1]), nil)
		if r := answer(t, "short body", resp, body, http.StatusBadRequest); r.Error.Code != moh.CodeContentMismatch {
			t.Fatalf("code %v", r.Error.Code)
		}
		// Wrong content type.
		resp, body = e.post(t, "/attachment_upload", bytes.NewReader(up), http.Header{"Content-Type": {"text/plain"}})
		answer(t, "content type", resp, body, http.StatusUnsupportedMediaType)
	})

	t.Run("copy", func(t *testing.T) {
		cp := func(index uint32) moh.RequestBody {
			return moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{GroupID: e.group, Token: token,
				TargetGroupID: e.group2, TargetSenderIndex: index}}
		}
		// bob is not in the target group.
		resp, body := e.post(t, "/attachment_copy", bytes.NewReader(e.sign(t, e.bob, 1, cp(0))), nil)
		if r := answer(t, "copy by bob", resp, body, http.StatusNotFound); r.Error.Code != moh.CodeNotFound {
			t.Fatalf("code %v", r.Error.Code)
		}
		resp, body = e.post(t, "/attachment_copy", bytes.NewReader(e.sign(t, e.alice, 0, cp(0))), nil)
		copied := answer(t, "copy by alice", resp, body, http.StatusOK).Token
		resp, body = e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.alice, 0, download(e.alice, 0, e.group2, copied))), nil)
		if r := answer(t, "download of the copy", resp, body, http.StatusOK); !bytes.Equal(r.Content, sealed.Ciphertext) {
			t.Fatal("the copy's content differs")
		}
		del := moh.RequestBody{Type: moh.AttachmentDelete, Attachment: moh.AttachmentRef{GroupID: e.group2, Token: copied}}
		resp, body = e.post(t, "/attachment_delete", bytes.NewReader(e.sign(t, e.alice, 0, del)), nil)
		answer(t, "delete of the copy", resp, body, http.StatusOK)
	})

	t.Run("delete", func(t *testing.T) {
		del := moh.RequestBody{Type: moh.AttachmentDelete, Attachment: moh.AttachmentRef{GroupID: e.group, Token: token}}
		resp, body := e.post(t, "/attachment_delete", bytes.NewReader(e.sign(t, e.bob, 1, del)), nil)
		if r := answer(t, "delete by bob", resp, body, http.StatusForbidden); r.Error.Code != moh.CodeForbidden {
			t.Fatalf("code %v", r.Error.Code)
		}
		// Once alice removed bob from the group, bob gets the answer of
		// a token that does not exist.
		res, err := e.aliceM.Commit([]*mls.Proposal{{Type: mls.ProposalRemove, Removed: 1}}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.g.svc.Store().CommitEpoch(t.Context(), store.EpochCommit{Base: e.aliceM.State(), Next: res.Next.State()}); err != nil {
			t.Fatal(err)
		}
		e.aliceM = res.Next
		resp, body = e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.bob, 1, download(e.bob, 1, e.group, token))), nil)
		if r := answer(t, "download by the removed bob", resp, body, http.StatusNotFound); r.Error.Code != moh.CodeNotFound {
			t.Fatalf("code %v", r.Error.Code)
		}
		resp, body = e.post(t, "/attachment_delete", bytes.NewReader(e.sign(t, e.alice, 0, del)), nil)
		answer(t, "delete by alice", resp, body, http.StatusOK)
		resp, body = e.post(t, "/attachment_download", bytes.NewReader(e.sign(t, e.alice, 0, download(e.alice, 0, e.group, token))), nil)
		answer(t, "download after delete", resp, body, http.StatusNotFound)
		e.wantNoFiles(t)
	})
}

// wantNoFiles checks that the local backend holds no object and no
// temporary file, waiting for a handler still cleaning up up to 30 s (only
// against a hang: a file left behind stays).
func (e *attachEnv) wantNoFiles(t *testing.T) {
	t.Helper()
	root := filepath.Join(e.g.DataDir, attachmentsDir)
	var files []string
	for range 1500 {
		files = files[:0]
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, p)
			}
			return nil
		})
		if len(files) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("files left under %s: %v", root, files)
}

// TestAttachmentUploadCutOff: a client that sends half of an upload's
// content and closes the connection leaves nothing: no record, no quota
// held, no temporary file.
func TestAttachmentUploadCutOff(t *testing.T) {
	e := newAttachEnv(t, nil)
	ct := make([]byte, 1<<20)
	rand.Read(ct)
	up := e.uploadBody(t, e.group, ct)
	conn, err := tls.Dial("tcp", e.srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // the test server's own certificate
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /attachment_upload HTTP/1.1\r\nHost: a.example\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", len(up))
	if _, err := conn.Write(up[:len(up)/2]); err != nil {
		t.Fatal(err)
	}
	// Wait until the upload is streaming (its reservation is held), then
	// cut the connection.
	st := e.g.svc.Store()
	for i := 0; ; i++ {
		u, err := st.GroupAttachmentUsage(context.Background(), e.group)
		if err != nil {
			t.Fatal(err)
		}
		if u.Count == 1 {
			break
		}
		if i == 3000 { // 30 s
			t.Fatal("the upload never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn.Close()
	for i := 0; ; i++ {
		u, _ := st.GroupAttachmentUsage(context.Background(), e.group)
		if u.Count == 0 {
			break
		}
		if i == 3000 { // 30 s
			t.Fatalf("the cut-off upload still holds %+v", u)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.wantNoFiles(t)
}

// TestAttachmentsCaddyfile checks the attachments block and the local
// storage module's syntax.
func TestAttachmentsCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     *Attachments
		err      string
	}{
		{"full", `mimi {
			attachments {
				max_size 10MiB
				group_quota 1GiB 500
				uploader_quota 0 20
				retention 168h
				upload_deadline 30m
				commit_grace 2h
				allow_delete_by_members
				max_uploads_in_progress 8
				storage local /srv/attachments
			}
		}`, &Attachments{MaxSize: 10 << 20, GroupQuotaBytes: 1 << 30, GroupQuotaCount: 500, UploaderQuotaCount: 20,
			Retention: caddy.Duration(168 * time.Hour), UploadDeadline: caddy.Duration(30 * time.Minute),
			CommitGrace: caddy.Duration(2 * time.Hour), AllowDeleteByMembers: true, MaxUploadsInProgress: 8,
			Storage: []byte(`{"backend":"local","root":"/srv/attachments"}`)}, ""},
		{"uploads in progress, the most", `mimi {
			attachments {
				max_uploads_in_progress 1000
			}
		}`, &Attachments{MaxUploadsInProgress: 1000}, ""},
		{"uploads in progress 0", `mimi {
			attachments {
				max_uploads_in_progress 0
			}
		}`, nil, "invalid max_uploads_in_progress '0': want a number from 1 to 1000"},
		{"uploads in progress above the most", `mimi {
			attachments {
				max_uploads_in_progress 1001
			}
		}`, nil, "invalid max_uploads_in_progress '1001'"},
		{"uploads in progress not a number", `mimi {
			attachments {
				max_uploads_in_progress four
			}
		}`, nil, "invalid max_uploads_in_progress 'four'"},
		{"uploads in progress without a number", `mimi {
			attachments {
				max_uploads_in_progress
			}
		}`, nil, "wrong argument count"},
		{"uploads in progress with two numbers", `mimi {
			attachments {
				max_uploads_in_progress 4 5
			}
		}`, nil, "wrong argument count"},
		{"duplicate uploads in progress", `mimi {
			attachments {
				max_uploads_in_progress 4
				max_uploads_in_progress 5
			}
		}`, nil, "duplicate attachments option 'max_uploads_in_progress'"},
		{"off", `mimi {
			attachments off
		}`, &Attachments{Disabled: true}, ""},
		{"duplicate", `mimi {
			attachments {
				max_size 1MiB
				max_size 2MiB
			}
		}`, nil, "duplicate attachments option 'max_size'"},
		{"too large", `mimi {
			attachments {
				max_size 2GiB
			}
		}`, nil, "invalid max_size '2GiB'"},
		{"bad deadline", `mimi {
			attachments {
				upload_deadline 1s
			}
		}`, nil, "upload_deadline: 1s is outside"},
		{"short grace", `mimi {
			attachments {
				commit_grace 5m
			}
		}`, nil, "commit_grace: 5m0s is outside 10m0s..24h0m0s"},
		{"long grace", `mimi {
			attachments {
				commit_grace 25h
			}
		}`, nil, "commit_grace: 25h0m0s is outside"},
		{"grace without a duration", `mimi {
			attachments {
				commit_grace
			}
		}`, nil, "wrong argument count"},
		{"duplicate grace", `mimi {
			attachments {
				commit_grace 1h
				commit_grace 2h
			}
		}`, nil, "duplicate attachments option 'commit_grace'"},
		{"unknown", `mimi {
			attachments {
				quota 1
			}
		}`, nil, "unrecognized attachments option 'quota'"},
		{"unknown backend", `mimi {
			attachments {
				storage nowhere
			}
		}`, nil, "nowhere"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := new(Gateway)
			err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := g.Attachments
			if string(got.Storage) != string(tc.want.Storage) {
				t.Fatalf("storage %s, want %s", got.Storage, tc.want.Storage)
			}
			got.Storage, tc.want.Storage = nil, nil
			if fmt.Sprint(*got) != fmt.Sprint(*tc.want) {
				t.Fatalf("got %+v, want %+v", *got, *tc.want)
			}
		})
	}
}

// TestAttachmentsCommitGraceJSON: commit_grace decodes strictly from the
// JSON config, encodes back byte for byte, is checked by Validate, and
// reaches the Delivery Service's attachment service, which keeps each
// upload's object name that long after its deadline.
func TestAttachmentsCommitGraceJSON(t *testing.T) {
	const in = `{"retention":86400000000000,"upload_deadline":1800000000000,"commit_grace":7200000000000}`
	var a Attachments
	dec := json.NewDecoder(strings.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		t.Fatal(err)
	}
	if out, err := json.Marshal(&a); err != nil || string(out) != in {
		t.Fatalf("round trip:\n got %s, %v\nwant %s", out, err, in)
	}
	g := provisioned(t, &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example", Attachments: &a})
	if err := g.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := g.ds.Attachments.CommitGrace; got != 2*time.Hour {
		t.Fatalf("the attachment service's commit grace is %s, want 2h", got)
	}
	for _, tc := range []struct {
		name, grace, err string
	}{
		{"below the minimum", `"9m"`, "commit_grace: 9m0s is outside"},
		{"above the maximum", `"24h1s"`, "commit_grace: 24h0m1s is outside"},
		{"negative", `"-1h"`, "commit_grace: -1h0m0s is outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bad Attachments
			if err := json.Unmarshal([]byte(`{"commit_grace":`+tc.grace+`}`), &bad); err != nil {
				t.Fatal(err)
			}
			err := bad.validate()
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("validate: %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

// TestAttachmentsDisabled: attachments off answers 501.
func TestAttachmentsDisabled(t *testing.T) {
	e := newAttachEnv(t, &Attachments{Disabled: true})
	resp, body := e.post(t, "/attachment_upload", bytes.NewReader(e.uploadBody(t, e.group, []byte("x"))), nil)
	answer(t, "upload", resp, body, http.StatusNotImplemented)
}

// TestContentPrefix: the streamed download's prefix followed by the
// content is the encoding of the attachment_content DSResponse, at every
// length of the <V> varint.
func TestContentPrefix(t *testing.T) {
	for _, size := range []int{0, 1, 63, 64, 16383, 16384, 100000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			content := bytes.Repeat([]byte{0xab}, size)
			want, err := wire.Marshal(&moh.DSResponse{Type: moh.ResponseAttachmentContent, Content: content})
			if err != nil {
				t.Fatal(err)
			}
			if got := append(contentPrefix(int64(size)), content...); !bytes.Equal(got, want) {
				t.Fatalf("prefix %x, want %x", got[:len(got)-size], want[:len(want)-size])
			}
		})
	}
}

// genReader is n deterministic bytes that cost no memory.
type genReader struct{ n, off int64 }

func (g *genReader) Read(p []byte) (int, error) {
	if g.off == g.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), g.n-g.off)]
	for i := range p {
		p[i] = byte((g.off + int64(i)) * 7)
	}
	g.off += int64(len(p))
	return len(p), nil
}

// TestAttachmentLargeOverTLSMemory: a 64 MiB upload and its download
// through the gateway over TLS allocate a bounded amount in total (client
// and server in this process), so neither holds the attachment in memory.
func TestAttachmentLargeOverTLSMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 128 MiB over loopback")
	}
	const size = 64 << 20
	e := newAttachEnv(t, nil)
	h := sha256.New()
	io.Copy(h, &genReader{n: size})
	head := e.sign(t, e.alice, 0, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: e.group, ContentLength: size, ContentHash: h.Sum(nil)}})

	var before, mid, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/attachment_upload", io.MultiReader(bytes.NewReader(head), &genReader{n: size}))
	req.ContentLength = int64(len(head)) + size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	token := answer(t, "upload", resp, body, http.StatusOK).Token
	runtime.ReadMemStats(&mid)

	down := e.sign(t, e.bob, 1, moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: e.group, Token: token}})
	req, _ = http.NewRequest(http.MethodPost, e.srv.URL+"/attachment_download", bytes.NewReader(down))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	dh := sha256.New()
	n, err := io.Copy(dh, resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if err != nil || resp.StatusCode != http.StatusOK || n != size+int64(len(contentPrefix(size))) {
		t.Fatalf("download: status %d, %d bytes, %v", resp.StatusCode, n, err)
	}
	up, dl := mid.TotalAlloc-before.TotalAlloc, after.TotalAlloc-mid.TotalAlloc
	t.Logf("peak RSS of the test process (client and gateway): %s", peakRSS())
	t.Logf("64 MiB over TLS: upload allocated %d KiB, download %d KiB (client and server); heap in use after %d KiB",
		up>>10, dl>>10, after.HeapInuse>>10)
	if up > 16<<20 || dl > 16<<20 {
		t.Fatalf("a 64 MiB upload allocated %d bytes and its download %d: not streamed", up, dl)
	}
}

// BenchmarkAttachmentTransfer moves a 256 MiB attachment up and down
// through the gateway over TLS 1.3 on loopback, and serves the same bytes
// from a file with net/http's file server (what Caddy's file_server uses)
// in the same run, for comparison. Run with -benchtime=1x.
func BenchmarkAttachmentTransfer(b *testing.B) {
	const size = 256 << 20
	e := newAttachEnv(b, &Attachments{MaxSize: 1<<30 - 9})
	h := sha256.New()
	io.Copy(h, &genReader{n: size})
	sum := h.Sum(nil)
	file := filepath.Join(b.TempDir(), "same.bin")
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(f, &genReader{n: size})
	f.Close()
	fs := httptest.NewUnstartedServer(http.FileServer(http.Dir(filepath.Dir(file))))
	fs.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	fs.StartTLS()
	defer fs.Close()

	var token []byte
	b.Run("upload", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			head := e.sign(b, e.alice, 0, moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
				GroupID: e.group, ContentLength: size, ContentHash: sum}})
			req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/attachment_upload", io.MultiReader(bytes.NewReader(head), &genReader{n: size}))
			req.ContentLength = int64(len(head)) + size
			req.Header.Set("Content-Type", "application/octet-stream")
			resp, err := e.c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			token = answer(b, "upload", resp, body, http.StatusOK).Token
		}
	})
	b.Run("download", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			down := e.sign(b, e.bob, 1, moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: e.group, Token: token}})
			req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/attachment_download", bytes.NewReader(down))
			req.Header.Set("Content-Type", "application/octet-stream")
			resp, err := e.c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			if n, _ := io.Copy(io.Discard, resp.Body); n < size {
				b.Fatalf("downloaded %d bytes", n)
			}
			resp.Body.Close()
		}
	})
	b.Logf("peak RSS of the benchmark process (client and gateway) after upload and download: %s", peakRSS())
	b.Run("file_server", func(b *testing.B) {
		b.SetBytes(size)
		c := fs.Client()
		for range b.N {
			resp, err := c.Get(fs.URL + "/same.bin")
			if err != nil {
				b.Fatal(err)
			}
			if n, _ := io.Copy(io.Discard, resp.Body); n != size {
				b.Fatalf("served %d bytes", n)
			}
			resp.Body.Close()
		}
	})
}

// peakRSS is the process's peak resident set (VmHWM), where /proc has it.
func peakRSS() string {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// TestAttachmentStorageProvision: the local backend is the default, under
// data_dir/attachments, whether the storage is unset or names local
// without a root; a root given is used as it is.
func TestAttachmentStorageProvision(t *testing.T) {
	root := filepath.Join(t.TempDir(), "elsewhere")
	for _, tc := range []struct {
		name    string
		storage string
		want    func(dataDir string) string
	}{
		{"unset", "", func(d string) string { return filepath.Join(d, attachmentsDir) }},
		{"local without root", `{"backend":"local"}`, func(d string) string { return filepath.Join(d, attachmentsDir) }},
		{"local with root", `{"backend":"local","root":"` + root + `"}`, func(string) string { return root }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &Attachments{}
			if tc.storage != "" {
				a.Storage = []byte(tc.storage)
			}
			g := provisioned(t, &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example", Attachments: a})
			if g.ds.Attachments == nil {
				t.Fatal("attachments are off")
			}
			var got string
			switch b := g.ds.Attachments.Backend.(type) {
			case *LocalStorage:
				got = b.Root
			default:
				t.Fatalf("backend %T", b)
			}
			if got != tc.want(g.DataDir) {
				t.Fatalf("root %s, want %s", got, tc.want(g.DataDir))
			}
			if st, err := os.Stat(filepath.Join(got, "objects")); err != nil || !st.IsDir() {
				t.Fatalf("the backend's directory: %v", err)
			}
		})
	}
	// Off: no service, the endpoints answer 501.
	g := provisioned(t, &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example", Attachments: &Attachments{Disabled: true}})
	if g.ds.Attachments != nil {
		t.Fatal("attachments off but a service is set")
	}
	// A module that is not a storage backend is refused.
	bad := &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example", DataDir: t.TempDir(),
		Attachments: &Attachments{Storage: []byte(`{"backend":"nowhere"}`)}}
	err := bad.Provision(caddyContext(t))
	bad.Cleanup() // as Caddy does after a failed Provision
	if err == nil || !strings.Contains(err.Error(), "attachments storage") {
		t.Fatalf("unknown backend: %v", err)
	}
}

func caddyContext(t *testing.T) caddy.Context {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}

// TestAttachmentAdmission: the admission policy covers the attachment
// endpoints like any other: a member zone on uploads refuses the second
// upload of the same member with 429, and stores nothing of it.
func TestAttachmentAdmission(t *testing.T) {
	e := newAttachEnv(t, nil)
	e.g.Cleanup()
	g := provisioned(t, &Gateway{Providers: []string{"a.example"}, DSDomain: "ds.a.example", DataDir: e.g.DataDir,
		RateLimits: []*RateLimitZone{{Name: "per_member", Key: "member", Events: 1, Window: caddy.Duration(time.Hour),
			Endpoints: []string{"attachment_upload", "attachment_download"}}}})
	e.g = g
	up := func() *http.Response {
		resp, _ := e.post(t, "/attachment_upload", bytes.NewReader(e.uploadBody(t, e.group, []byte("ciphertext"))), nil)
		return resp
	}
	if resp := up(); resp.StatusCode != http.StatusOK {
		t.Fatalf("first upload: %d", resp.StatusCode)
	}
	resp := up()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second upload by the same member: %d, want 429 with Retry-After", resp.StatusCode)
	}
	if u, _ := g.svc.Store().GroupAttachmentUsage(context.Background(), e.group); u.Count != 1 {
		t.Fatalf("the refused upload stored something: %+v", u)
	}
}

// TestAttachmentSweepMetrics: the data directory's sweeper deletes an
// expired attachment's record and bytes, and counts them in
// caddy_mimi_attachments_swept_total.
func TestAttachmentSweepMetrics(t *testing.T) {
	e := newAttachEnv(t, &Attachments{Retention: caddy.Duration(time.Hour)})
	resp, body := e.post(t, "/attachment_upload", bytes.NewReader(e.uploadBody(t, e.group, []byte("expires"))), nil)
	answer(t, "upload", resp, body, http.StatusOK)
	v, ok := sweeperPool.References(e.g.DataDir)
	if !ok || v == 0 {
		t.Fatal("no sweeper for the data directory")
	}
	var sw *sweeper
	sweeperPool.Range(func(key, value any) bool {
		if key == e.g.DataDir {
			sw = value.(*sweeper)
		}
		return true
	})
	sw.sweep(context.Background(), time.Now().Add(2*time.Hour))
	got := metricstest.Of(t, sweepStats{})
	for _, kind := range []string{"expired", "objects"} {
		if k := "caddy_mimi_attachments_swept_total{data_dir=" + e.g.DataDir + ",kind=" + kind + ",}"; got[k] != 1 {
			t.Fatalf("%s = %v; metrics %v", k, got[k], got)
		}
	}
	e.wantNoFiles(t)
}
