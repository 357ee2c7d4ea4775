package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
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
// A 429 rate_limited upload (a rate limit, or the uploader's uploads in
// progress, docs/protocol.md §6) stored nothing: when the client waits
// out its Retry-After (Config.MaxRetryWait), the same ciphertext is
// uploaded again, signed anew, at most twice (maxRetries). Any other
// refusal or failure, a 503 among them, is returned at once: the upload
// may have been stored.
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
	// A 429 rate_limited stored nothing (a rate limit, or the
	// uploader's uploads in progress, docs/protocol.md §6 upload step 4):
	// the same ciphertext is uploaded again, signed anew (retrySigned).
	// Nothing is sealed or kept again. Any other failure, a 503 among
	// them, may have stored it: a second upload would store, and charge
	// to the quotas, a second copy, so it is returned.
	var token []byte
	err = c.retrySigned(ctx, func(after uint64) (uint64, bool, error) {
		t, signedAt, err := c.upload(ctx, groupID, m.LeafIndex(), hash, sealed.Ciphertext, after)
		token = t
		return signedAt, true, err
	})
	if err != nil {
		return attachment.Reference{}, 0, err
	}
	return attachment.Reference{Token: token, Nonce: sealed.Nonce, Hash: sealed.Hash}, m.LeafIndex(), nil
}

// retrySigned runs attempt, which signs a request under a timestamp later
// than after (0 on the first run) and sends it, returning the timestamp
// it signed under, and runs it again, at most maxRetries times, after each
// 429 rate_limited whose Retry-After the client waits out (retryWait): a
// 429 refused the request before it was carried out (docs/protocol.md
// §5.4 step 8), so sending it again does it once. Each run signs anew
// under a later timestamp, even when the clock did not move on: the
// Delivery Service may keep a refused request's signed bytes in its
// replay set (§5.1). attempt reports, with a 429, whether it answered the
// first sending of the signed bytes (fresh): one answering a resend after
// a lost answer does not say whether the lost one was carried out, so it
// is returned, as is any other refusal or failure, a 503 among them:
// the request may have been carried out, and one signed anew would be
// carried out again. It returns the last run's error, the refusal when
// the wait was not waited out (too long, or ctx done). c.mu is held.
func (c *Client) retrySigned(ctx context.Context, attempt func(after uint64) (signedAt uint64, fresh bool, err error)) error {
	var after uint64
	for n := 0; ; n++ {
		signedAt, fresh, err := attempt(after)
		if err == nil || n == maxRetries || !fresh || !rateLimited(err) {
			return err
		}
		d, ok := c.retryWait(ctx, err)
		if !ok || !sleep(ctx, d) {
			return err
		}
		after = signedAt
	}
}

// rateLimited reports whether err holds a 429 rate_limited DSError: the
// request was refused before it was carried out.
func rateLimited(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusTooManyRequests && e.Code == moh.CodeRateLimited
}

// signAfter signs body as leaf index under the current time, or, when
// that is not later than after (a previous attempt's timestamp; 0 for
// none), under after plus a second, so that no two attempts are the same
// signed bytes even when the clock did not move on between them. It
// returns the signed request and the timestamp it signed under.
func (c *Client) signAfter(body moh.RequestBody, index uint32, after uint64) ([]byte, uint64, error) {
	at := c.now()
	if after > 0 && at.Unix() <= int64(after) {
		at = time.Unix(int64(after)+1, 0)
	}
	req, err := c.signAt(body, index, at)
	if err != nil {
		return nil, 0, err
	}
	return req, uint64(max(at.Unix(), 0)), nil
}

// upload sends ciphertext, whose hash is hash, to groupID's
// /attachment_upload, signed as leaf index under a timestamp later than
// after (signAfter). It returns the attachment's token and the timestamp
// it signed under. c.mu is held.
func (c *Client) upload(ctx context.Context, groupID []byte, index uint32, hash, ciphertext []byte, after uint64) ([]byte, uint64, error) {
	head, signedAt, err := c.signAfter(moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: groupID, ContentLength: uint64(len(ciphertext)), ContentHash: hash}}, index, after)
	if err != nil {
		return nil, 0, err
	}
	body := moh.UploadBody(head, bytes.NewReader(ciphertext))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.cfg.Gateway, "/")+"/attachment_upload", body)
	if err != nil {
		return nil, 0, err
	}
	req.ContentLength = int64(len(head) + len(ciphertext))
	req.Header.Set("Content-Type", "application/octet-stream")
	a, err := c.do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("attachment_upload: %w", err)
	}
	if a.status != http.StatusOK {
		return nil, signedAt, c.refusal("attachment_upload", a)
	}
	var r moh.DSResponse
	if err := wire.Unmarshal(a.body, &r, "DSResponse"); err != nil || r.Type != moh.ResponseAttachmentToken {
		return nil, 0, fmt.Errorf("attachment_upload: the answer is not an attachment token")
	}
	return r.Token, signedAt, nil
}

// GetAttachment downloads the attachment of ref from groupID and decrypts
// it as sent by the member at leaf senderIndex in the epoch of the message
// that carried ref: when Receive opened that message, and ref was a line
// of it (or ended one), the client kept the attachment's secret of that
// epoch (PutAttachment kept it too for the client's own attachments);
// otherwise the group's current epoch is taken for it. A ref with a key
// (the reference of a copy, docs/protocol.md §6.1) is opened with that key
// alone, whatever senderIndex says. The plaintext is checked against
// ref's hash.
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
	content, err := c.download(ctx, groupID, m.LeafIndex(), ref.Token)
	if err != nil {
		return nil, err
	}
	plain, _, err := c.openAttachment(groupID, m, senderIndex, ref, content)
	return plain, err
}

// download fetches the ciphertext of token from groupID with
// /attachment_download, signed as leaf index; a read, it is sent again,
// signed afresh, after a refusal whose Retry-After the client waits out.
// c.mu is held.
func (c *Client) download(ctx context.Context, groupID []byte, index uint32, token []byte) ([]byte, error) {
	var content []byte
	err := c.repeatable(ctx, func() error {
		var err error
		content, err = c.downloadOnce(ctx, groupID, index, token)
		return err
	})
	return content, err
}

// downloadOnce is download without retries. c.mu is held.
func (c *Client) downloadOnce(ctx context.Context, groupID []byte, index uint32, token []byte) ([]byte, error) {
	body, err := c.sign(moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: groupID, Token: token}}, index)
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
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxAttachment+64))
	if err != nil {
		return nil, fmt.Errorf("attachment_download: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, c.refusal("attachment_download", &answer{status: resp.StatusCode, header: resp.Header, body: raw})
	}
	var r moh.DSResponse
	if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil || r.Type != moh.ResponseAttachmentContent {
		return nil, fmt.Errorf("attachment_download: the answer is not attachment content")
	}
	return r.Content, nil
}

// openAttachment decrypts content, the ciphertext of ref in groupID (m
// the client's current Member of it), as sent by the member at leaf
// senderIndex, and returns the plaintext and the attachment_secret that
// opened it: ref's key when it has one; else one derived from the kept
// secrets of the epochs that carried ref, the newest first (a reference
// sent again in a later epoch was sealed again), then from the current
// epoch. c.mu is held.
func (c *Client) openAttachment(groupID []byte, m *mls.Member, senderIndex uint32, ref attachment.Reference, content []byte) (plain, secret []byte, err error) {
	cs := m.State().CipherSuite()
	if len(ref.Key) > 0 {
		plain, err := attachment.OpenWithSecret(cs, ref.Key, ref.Hash, content)
		if err != nil {
			return nil, nil, fmt.Errorf("opening with the reference's key: %w", err)
		}
		return plain, ref.Key, nil
	}
	if g, err := c.loadGroup(groupID); err == nil {
		for _, k := range slices.Backward(g.attachments) {
			if k.sender != senderIndex || !bytes.Equal(k.nonce, ref.Nonce) || !bytes.Equal(k.hash, ref.Hash) {
				continue
			}
			secret, err := attachment.Secret(cs, k.secret, ref.Nonce)
			if err != nil {
				continue
			}
			if plain, err := attachment.OpenWithSecret(cs, secret, ref.Hash, content); err == nil {
				return plain, secret, nil
			}
		}
	}
	es, err := attachment.ExporterSecret(m, cs, ref.Hash, senderIndex)
	if err != nil {
		return nil, nil, err
	}
	if secret, err = attachment.Secret(cs, es, ref.Nonce); err != nil {
		return nil, nil, err
	}
	if plain, err = attachment.OpenWithSecret(cs, secret, ref.Hash, content); err != nil {
		return nil, nil, err
	}
	return plain, secret, nil
}

// CopyAttachment copies the attachment of ref, sent by the member at leaf
// senderIndex of group srcGroupID, to group targetGroupID with
// /attachment_copy (docs/protocol.md §6), and returns the reference to
// send in targetGroupID: the copy's token, ref's nonce and hash, and as
// key the attachment_secret of ref in the source group (§6.1), which the
// members of the target group cannot derive from their own exporter. The
// client must be a member of both groups, hosted on one Delivery Service
// (a follower relays the copy to the source group's hub), and both must
// have the same cipher suite. The attachment is first downloaded and
// opened in the source group as GetAttachment does, so that only a key
// that opens it, and an attachment that matches its hash, are passed on;
// a ref that has a key already (a copy) passes it on. A copy request that
// gets no answer (a connection lost before or while it came) is sent once
// more, byte-identically, which the Delivery Service answers with the
// first answer when the first copy was made: no second copy is made. A
// copy refused 429 rate_limited (which made none) is requested again,
// signed anew, when the client waits out its Retry-After
// (Config.MaxRetryWait), at most twice (maxRetries), as PutAttachment
// uploads again; any other refusal or failure, a 503 among them, and a
// 429 to the resend after a lost answer, is returned at once: the copy
// may have been made.
func (c *Client) CopyAttachment(ctx context.Context, srcGroupID []byte, senderIndex uint32, ref attachment.Reference, targetGroupID []byte) (attachment.Reference, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	copied, err := c.copyAttachment(ctx, srcGroupID, senderIndex, ref, targetGroupID)
	if err != nil {
		return attachment.Reference{}, fmt.Errorf("copying an attachment of group %x to group %x: %w", srcGroupID, targetGroupID, err)
	}
	return copied, nil
}

func (c *Client) copyAttachment(ctx context.Context, srcGroupID []byte, senderIndex uint32, ref attachment.Reference, targetGroupID []byte) (attachment.Reference, error) {
	src, err := c.member(srcGroupID)
	if err != nil {
		return attachment.Reference{}, err
	}
	target, err := c.member(targetGroupID)
	if err != nil {
		return attachment.Reference{}, err
	}
	if scs, tcs := src.State().CipherSuite(), target.State().CipherSuite(); scs != tcs {
		return attachment.Reference{}, fmt.Errorf("the source group's cipher suite %d is not the target group's %d: the target's members could not use the key", uint16(scs), uint16(tcs))
	}
	content, err := c.download(ctx, srcGroupID, src.LeafIndex(), ref.Token)
	if err != nil {
		return attachment.Reference{}, err
	}
	_, secret, err := c.openAttachment(srcGroupID, src, senderIndex, ref, content)
	if err != nil {
		return attachment.Reference{}, err
	}
	// A 429 rate_limited made no copy (docs/protocol.md §5.4 step 8): the
	// copy is requested again, signed anew (retrySigned). A lost answer
	// is not: the same bytes are sent once more instead, which get the
	// first answer of a copy that was made (§5.1), and 409 replay of one
	// that failed or is still being made; a 429 to that resend does not
	// say whether the lost one made a copy, so it is returned, as is any
	// other failure, a 503 among them: a copy signed anew would make a
	// second copy, charged to the quotas.
	copyBody := moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{GroupID: srcGroupID, Token: ref.Token,
		TargetGroupID: targetGroupID, TargetSenderIndex: target.LeafIndex()}}
	var r *moh.DSResponse
	err = c.retrySigned(ctx, func(after uint64) (uint64, bool, error) {
		body, signedAt, err := c.signAfter(copyBody, src.LeafIndex(), after)
		if err != nil {
			return 0, false, err
		}
		r, err = c.postDS(ctx, "/attachment_copy", "attachment_copy", body)
		if err == nil || !isTransport(err) || ctx.Err() != nil {
			return signedAt, true, err
		}
		r, err = c.postDS(ctx, "/attachment_copy", "attachment_copy", body)
		return signedAt, false, err
	})
	if err != nil {
		return attachment.Reference{}, err
	}
	if r.Type != moh.ResponseAttachmentToken || len(r.Token) == 0 || len(r.Token) > attachment.MaxTokenLen {
		return attachment.Reference{}, fmt.Errorf("attachment_copy: the answer is not an attachment token")
	}
	return attachment.Reference{Token: r.Token, Nonce: ref.Nonce, Hash: ref.Hash, Key: secret}, nil
}
