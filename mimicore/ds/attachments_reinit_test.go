package ds

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/localfs"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestAttachmentsOfReInitializedGroup: once re_initialize_group closed a
// group (docs/protocol.md §5.4.1, After re_initialize_group), an upload
// to it, also one authenticated before the ReInit, and a copy into it,
// from its successor or within it, are refused 403 forbidden before a
// byte of content is read, and store nothing: no record, no quota, no
// object. Its attachments are still downloaded and copied out to the
// successor group, which is how its members carry them over.
func TestAttachmentsOfReInitializedGroup(t *testing.T) {
	h := newHarness(t)
	root := filepath.Join(t.TempDir(), "attachments")
	backend, err := localfs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	h.svc.Attachments = &Attachments{Store: h.st, Backend: backend, MaxSize: 1 << 20}
	alice := h.newTClient(t, "alice", "phone", false)
	gid, successor := []byte("reinitialized group with attachments"), []byte("successor of the group")
	h.mustDo(t, "create_group", createBody(t, alice, gid))

	upload := func(t *testing.T, req *Request, content io.Reader) ([]byte, error) {
		t.Helper()
		resp, err := h.svc.Upload(t.Context(), req, content)
		if err != nil {
			return nil, err
		}
		return resp.Token, nil
	}
	put := func(t *testing.T, group, data []byte) []byte {
		t.Helper()
		req, err := uploadRequest(t, h, alice, group, data)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := upload(t, req, bytes.NewReader(data))
		if err != nil {
			t.Fatalf("upload to %q: %v", group, err)
		}
		return tok
	}
	data := []byte("an attachment of the group, uploaded before its ReInit")
	tok := put(t, gid, data)
	early, err := uploadRequest(t, h, alice, gid, []byte("an upload authenticated before the ReInit"))
	if err != nil {
		t.Fatal(err)
	}

	res := commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalReInit, ReInit: &mls.ReInit{GroupID: successor,
		Version: mls.MLS10, CipherSuite: alice.c.kp.CipherSuite}}}, nil, nil)
	h.mustDo(t, "re_initialize_group", commitBody(t, moh.ReInitializeGroup, alice, alice.m, res))
	h.mustDo(t, "create_group of the successor", createBody(t, alice, successor)) // alice.m is now of successor
	succData := []byte("an attachment of the successor group")
	succTok := put(t, successor, succData)

	type held struct {
		group, uploader store.AttachmentUsage
		objects         int
	}
	holding := func(t *testing.T) held {
		t.Helper()
		g, err := h.st.GroupAttachmentUsage(t.Context(), gid)
		if err != nil {
			t.Fatal(err)
		}
		u, err := h.st.UploaderAttachmentUsage(t.Context(), alice.uri)
		if err != nil {
			t.Fatal(err)
		}
		if names, err := h.st.UnreferencedObjects(t.Context(), "", 10); err != nil || len(names) != 0 {
			t.Fatalf("unreferenced objects %v, %v", names, err)
		}
		n := 0
		if err := filepath.WalkDir(root, func(_ string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				n++
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return held{g, u, n}
	}
	before := holding(t)
	if before.group != (store.AttachmentUsage{Bytes: int64(len(data)), Count: 1}) || before.objects != 2 {
		t.Fatalf("before the refusals: %+v", before)
	}

	copyTo := func(src, srcTok, target []byte) []byte {
		return signed(t, alice, 0, moh.RequestBody{Type: moh.AttachmentCopy,
			Copy: moh.AttachmentCopyRequest{GroupID: src, Token: srcTok, TargetGroupID: target, TargetSenderIndex: 0}})
	}
	for _, tc := range []struct {
		name string
		do   func(t *testing.T) error
	}{
		{"upload", func(t *testing.T) error {
			req, err := uploadRequest(t, h, alice, gid, []byte("an upload after the ReInit"))
			if err != nil {
				return err
			}
			_, err = upload(t, req, refusingReader{t})
			return err
		}},
		{"upload authenticated before the ReInit", func(t *testing.T) error {
			_, err := upload(t, early, refusingReader{t})
			return err
		}},
		{"copy into it from the successor", func(t *testing.T) error {
			_, err := h.do(t, copyTo(successor, succTok, gid))
			return err
		}},
		{"copy within it", func(t *testing.T) error {
			_, err := h.do(t, copyTo(gid, tok, gid))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.name, tc.do(t), moh.CodeForbidden)
			if got := holding(t); got != before {
				t.Fatalf("after the refusal: %+v, want %+v", got, before)
			}
		})
	}

	download := func(t *testing.T, group, token []byte) []byte {
		t.Helper()
		req, err := h.svc.Authenticate(t.Context(), signed(t, alice, 0, moh.RequestBody{Type: moh.AttachmentDownload,
			Attachment: moh.AttachmentRef{GroupID: group, Token: token}}))
		if err != nil {
			t.Fatal(err)
		}
		d, err := h.svc.Download(t.Context(), req)
		if err != nil {
			t.Fatalf("download from %q: %v", group, err)
		}
		defer d.Object.Close()
		got, err := io.ReadAll(d.Object)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := download(t, gid, tok); !bytes.Equal(got, data) {
		t.Fatalf("download from the reinitialized group: %q", got)
	}
	resp := h.mustDo(t, "copy out of the reinitialized group", copyTo(gid, tok, successor))
	if got := download(t, successor, resp.Token); !bytes.Equal(got, data) {
		t.Fatalf("download of the copy in the successor group: %q", got)
	}
}
