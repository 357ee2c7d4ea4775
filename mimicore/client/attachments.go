package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// MaxAttachment bounds the plaintext PutAttachment takes and the answer
// GetAttachment reads: attachments are encrypted and decrypted in memory.
const MaxAttachment = 256 << 20

// PutAttachment encrypts plaintext for groupID as this client's leaf, in
// the group's current epoch (docs/protocol.md §6.1), uploads the
// ciphertext to /attachment_upload, and returns the reference a message
// carries and the leaf index a receiver derives the key with. The keys
// derive from the epoch of the message that carries the reference: send
// it in the epoch it was sealed in. When that send is refused with 409
// stale_epoch, the group moved on: Receive, then PutAttachment again and
// send the new reference. The attachment's secret of that epoch is kept
// in the client's state, as for the references Receive reads, so that
// GetAttachment opens the client's own attachment after later commits.
func (c *Client) PutAttachment(ctx context.Context, groupID, plaintext []byte) (attachment.Reference, uint32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ref, leaf, err := c.putAttachment(ctx, groupID, plaintext)
	if err != nil {
		return attachment.Reference{}, 0, fmt.Errorf("uploading an attachment to group %x: %w", groupID, err)
	}
	return ref, leaf, nil
}

func (c *Client) putAttachment(ctx context.Context, groupID, plaintext []byte) (attachment.Reference, uint32, error) {
	if len(plaintext) > MaxAttachment {
		return attachment.Reference{}, 0, fmt.Errorf("the attachment is larger than %d bytes", MaxAttachment)
	}
	g, err := c.settle(ctx, groupID)
	if err != nil {
		return attachment.Reference{}, 0, err
	}
	m := g.cur
	cs := m.State().CipherSuite()
	sealed, err := attachment.Seal(m, cs, m.LeafIndex(), plaintext, rand.Reader)
	if err != nil {
		return attachment.Reference{}, 0, err
	}
	// The Delivery Service does not send a member its own messages, so the
	// message that will carry the reference never reaches keepAttachments
	// here: the secret is kept now, on disk before the upload, so that
	// GetAttachment opens the client's own attachment after the group
	// moved on (and after a restart).
	secret, err := attachment.ExporterSecret(m, cs, sealed.Hash, m.LeafIndex())
	if err != nil {
		return attachment.Reference{}, 0, err
	}
	kept := *g
	kept.attachments = appendKept(g.attachments, keptAttachment{sender: m.LeafIndex(), nonce: sealed.Nonce, hash: sealed.Hash, secret: secret})
	if err := c.writeGroup(&kept); err != nil {
		return attachment.Reference{}, 0, err
	}
	hash, err := cs.Hash(sealed.Ciphertext)
	if err != nil {
		return attachment.Reference{}, 0, err
	}
	head, err := c.sign(moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: groupID, ContentLength: uint64(len(sealed.Ciphertext)), ContentHash: hash}}, m.LeafIndex())
	if err != nil {
		return attachment.Reference{}, 0, err
	}
	body := moh.UploadBody(head, bytes.NewReader(sealed.Ciphertext))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.cfg.Gateway, "/")+"/attachment_upload", body)
	if err != nil {
		return attachment.Reference{}, 0, err
	}
	req.ContentLength = int64(len(head) + len(sealed.Ciphertext))
	req.Header.Set("Content-Type", "application/octet-stream")
	status, answer, err := c.do(req)
	if err != nil {
		return attachment.Reference{}, 0, fmt.Errorf("attachment_upload: %w", err)
	}
	if status != http.StatusOK {
		return attachment.Reference{}, 0, refusal("attachment_upload", status, answer)
	}
	var r moh.DSResponse
	if err := wire.Unmarshal(answer, &r, "DSResponse"); err != nil || r.Type != moh.ResponseAttachmentToken {
		return attachment.Reference{}, 0, fmt.Errorf("attachment_upload: the answer is not an attachment token")
	}
	return attachment.Reference{Token: r.Token, Nonce: sealed.Nonce, Hash: sealed.Hash}, m.LeafIndex(), nil
}

// GetAttachment downloads the attachment of ref from groupID and decrypts
// it as sent by the member at leaf senderIndex in the epoch of the message
// that carried ref: when Receive opened that message, and ref was a line
// of it (or ended one), the client kept the attachment's secret of that
// epoch (PutAttachment kept it too for the client's own attachments);
// otherwise the group's current epoch is taken for it. The
// plaintext is checked against ref's hash.
func (c *Client) GetAttachment(ctx context.Context, groupID []byte, senderIndex uint32, ref attachment.Reference) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	plain, err := c.getAttachment(ctx, groupID, senderIndex, ref)
	if err != nil {
		return nil, fmt.Errorf("downloading an attachment of group %x: %w", groupID, err)
	}
	return plain, nil
}

func (c *Client) getAttachment(ctx context.Context, groupID []byte, senderIndex uint32, ref attachment.Reference) ([]byte, error) {
	m, err := c.member(groupID)
	if err != nil {
		return nil, err
	}
	body, err := c.sign(moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: groupID, Token: ref.Token}}, m.LeafIndex())
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.cfg.Gateway, "/")+"/attachment_download", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("attachment_download: %w", err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, MaxAttachment+64))
	if err != nil {
		return nil, fmt.Errorf("attachment_download: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, refusal("attachment_download", resp.StatusCode, answer)
	}
	var r moh.DSResponse
	if err := wire.Unmarshal(answer, &r, "DSResponse"); err != nil || r.Type != moh.ResponseAttachmentContent {
		return nil, fmt.Errorf("attachment_download: the answer is not attachment content")
	}
	cs := m.State().CipherSuite()
	if g, err := c.loadGroup(groupID); err == nil {
		// The newest kept secret first: a reference sent again in a later
		// epoch was sealed again.
		for _, k := range slices.Backward(g.attachments) {
			if k.sender != senderIndex || !bytes.Equal(k.nonce, ref.Nonce) || !bytes.Equal(k.hash, ref.Hash) {
				continue
			}
			if plain, err := attachment.OpenWithExporterSecret(cs, k.secret, ref.Nonce, ref.Hash, r.Content); err == nil {
				return plain, nil
			}
		}
	}
	return attachment.Open(m, cs, senderIndex, ref.Nonce, ref.Hash, r.Content)
}
