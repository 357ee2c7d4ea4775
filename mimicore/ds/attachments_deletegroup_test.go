package ds

import (
	"bytes"
	"crypto/sha256"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/localfs"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestAttachmentsGoWithTheirGroup: alice fills her uploader quota with
// attachments of a group, one of them copied to another group, then
// deletes the group with delete_group. Nobody can reach the group's
// attachments any more, so they go with it: her quota is released at once
// (she can upload to the other group again), the next sweep deletes the
// bytes only the deleted group held, and the copy still downloads.
func TestAttachmentsGoWithTheirGroup(t *testing.T) {
	h, a := localAttachments(t, store.AttachmentQuota{UploaderBytes: 1500})
	alice := h.newTClient(t, "alice", "phone", false)
	keep, gid := []byte("group kept"), []byte("group deleted with its attachments")
	h.mustDo(t, "create_group kept", createBody(t, alice, keep))
	h.mustDo(t, "create_group deleted", createBody(t, alice, gid)) // alice.m is now of gid

	upload := func(group, data []byte) ([]byte, error) {
		req, err := uploadRequest(t, h, alice, group, data)
		if err != nil {
			return nil, err
		}
		resp, err := h.svc.Upload(t.Context(), req, bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		return resp.Token, nil
	}
	if _, err := upload(gid, bytes.Repeat([]byte{1}, 400)); err != nil {
		t.Fatalf("upload: %v", err)
	}
	copied := bytes.Repeat([]byte{2}, 500)
	tok, err := upload(gid, copied)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	resp := h.mustDo(t, "attachment copy", signed(t, alice, 0, moh.RequestBody{Type: moh.AttachmentCopy,
		Copy: moh.AttachmentCopyRequest{GroupID: gid, Token: tok, TargetGroupID: keep, TargetSenderIndex: 0}}))
	copyTok := resp.Token
	more := bytes.Repeat([]byte{3}, 300)
	_, err = upload(keep, more)
	wantCode(t, "upload over alice's quota", err, moh.CodeQuotaExceeded)

	h.mustDo(t, "delete_group", commitBody(t, moh.DeleteGroup, alice, alice.m, commit(t, alice.m, nil, nil, nil)))
	if _, err := upload(keep, bytes.Repeat([]byte{4}, 300)); err != nil {
		t.Fatalf("upload after the group holding alice's quota was deleted: %v", err)
	}
	st, err := a.Sweep(t.Context(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.Objects != 1 {
		t.Fatalf("the sweep deleted %d objects, want the one only the deleted group held", st.Objects)
	}

	req, err := h.svc.Authenticate(t.Context(), signed(t, alice, 0, moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: keep, Token: copyTok}}))
	if err != nil {
		t.Fatal(err)
	}
	d, err := h.svc.Download(t.Context(), req)
	if err != nil {
		t.Fatalf("download of the copy after its source group was deleted: %v", err)
	}
	defer d.Object.Close()
	if got, err := io.ReadAll(d.Object); err != nil || !bytes.Equal(got, copied) {
		t.Fatalf("the copy read back as %d bytes, %v", len(got), err)
	}
}

// TestAttachmentUploadGroupDeletedMidway: the group is deleted while an
// upload to it streams. Its reservation went with the group, so the
// upload is refused, and with 404 not_found, as any request for the
// deleted group: not with body_timeout, which would tell the client that
// it was too slow, and nothing of it stays.
func TestAttachmentUploadGroupDeletedMidway(t *testing.T) {
	h, a := localAttachments(t, store.AttachmentQuota{})
	alice := h.newTClient(t, "alice", "phone", false)
	gid := []byte("group deleted during an upload")
	h.mustDo(t, "create_group", createBody(t, alice, gid))

	data := []byte("an upload the group's deletion overtakes")
	req, err := uploadRequest(t, h, alice, gid, data)
	if err != nil {
		t.Fatal(err)
	}
	sent := false
	content := readerFunc(func(p []byte) (int, error) {
		if sent {
			return 0, io.EOF
		}
		// Mid-stream: the group is deleted.
		h.mustDo(t, "delete_group", commitBody(t, moh.DeleteGroup, alice, alice.m, commit(t, alice.m, nil, nil, nil)))
		sent = true
		return copy(p, data), nil
	})
	_, err = h.svc.Upload(t.Context(), req, content)
	wantCode(t, "upload to a group deleted meanwhile", err, moh.CodeNotFound)
	if _, err := a.Sweep(t.Context(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if names, err := h.st.UnreferencedObjects(t.Context(), "", 10); err != nil || len(names) != 0 {
		t.Fatalf("unreferenced objects %v, %v", names, err)
	}
	if u, err := h.st.UploaderAttachmentUsage(t.Context(), alice.uri); err != nil || u != (store.AttachmentUsage{}) {
		t.Fatalf("alice's usage %+v, %v; want nothing", u, err)
	}
}

// TestAttachmentUploadAuthenticatedBeforeDeleteGroup: an upload
// authenticated just before delete_group committed reaches its
// reservation after it. The reservation is refused with 404 not_found, as
// any request for the deleted group, and nothing of it is recorded: no
// record in the deleted group, no quota held.
func TestAttachmentUploadAuthenticatedBeforeDeleteGroup(t *testing.T) {
	h, _ := localAttachments(t, store.AttachmentQuota{})
	alice := h.newTClient(t, "alice", "phone", false)
	gid := []byte("group deleted after an upload's authentication")
	h.mustDo(t, "create_group", createBody(t, alice, gid))

	data := []byte("an upload the group's deletion overtakes")
	req, err := uploadRequest(t, h, alice, gid, data)
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "delete_group", commitBody(t, moh.DeleteGroup, alice, alice.m, commit(t, alice.m, nil, nil, nil)))
	_, err = h.svc.Upload(t.Context(), req, bytes.NewReader(data))
	wantCode(t, "upload authenticated before delete_group", err, moh.CodeNotFound)
	if u, err := h.st.GroupAttachmentUsage(t.Context(), gid); err != nil || u != (store.AttachmentUsage{}) {
		t.Fatalf("the deleted group's usage %+v, %v; want nothing", u, err)
	}
	if u, err := h.st.UploaderAttachmentUsage(t.Context(), alice.uri); err != nil || u != (store.AttachmentUsage{}) {
		t.Fatalf("alice's usage %+v, %v; want nothing", u, err)
	}
}

// localAttachments is a harness whose DS keeps attachments of up to 1 MiB
// on the local backend, under quota.
func localAttachments(t *testing.T, quota store.AttachmentQuota) (*harness, *Attachments) {
	t.Helper()
	h := newHarness(t)
	backend, err := localfs.New(filepath.Join(t.TempDir(), "attachments"))
	if err != nil {
		t.Fatal(err)
	}
	a := &Attachments{Store: h.st, Backend: backend, MaxSize: 1 << 20, Quota: quota}
	h.svc.Attachments = a
	return h, a
}

// uploadRequest authenticates alice's attachment_upload of data to group
// (its header: length and hash), as the gateway does before it streams
// the content to Upload.
func uploadRequest(t *testing.T, h *harness, alice *tclient, group, data []byte) (*Request, error) {
	t.Helper()
	sum := sha256.Sum256(data)
	return h.svc.Authenticate(t.Context(), signed(t, alice, 0, moh.RequestBody{Type: moh.AttachmentUpload,
		Upload: moh.UploadAttachmentHeader{GroupID: group, ContentLength: uint64(len(data)), ContentHash: sum[:]}}))
}
