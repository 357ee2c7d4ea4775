package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// outboxDir holds, per group, the application message whose answer was
// lost (keptMessage), named like the group's file.
const outboxDir = "outbox"

// keptFormat is the version byte of a kept message's file.
const keptFormat = 1

// textDigestLabel separates the digest of a kept message's plaintext.
const textDigestLabel = "MIMI client kept message"

// ErrMessagePending is wrapped by the error of an operation on a group
// that has an application message whose answer was lost: the message is
// kept, on disk, and resent byte for byte before anything else is sent to
// the group (Send, a commit, Leave, PutAttachment), so that the Delivery
// Service, which may have taken it, never gets a second encryption of it.
// The operation that returns it sent nothing new. A Send of the same text
// completes the kept message instead of encrypting the text again.
var ErrMessagePending = errors.New("client: a message to the group awaits its answer (kept, and resent before anything new)")

// ErrMessageUnknown is wrapped by the error of an operation whose resend of
// a kept message (ErrMessagePending) the Delivery Service refused for good
// (a 4xx DSError other than a rate limit, a token required, too early or a
// stale timestamp: the sender was removed, say): the first attempt may
// have been delivered or not, which the client cannot learn. One
// refusal tells more: a hub that follows docs/protocol.md §5.4.1 answers
// the resend of a message it delivered ok even after a commit moved the
// group on, so its 409 stale_epoch (CodeOf) within 7 days of the first
// attempt means that the message was delivered to no one. The kept
// message is dropped; the operation sent nothing new, and may be run
// again.
var ErrMessageUnknown = errors.New("client: a message whose answer was lost was refused when resent: whether it was delivered is not known")

// keptMessage is an application message written before its send_message
// leaves, and kept while its answer is not known:
//
//	struct {
//	    uint8 format = 1;
//	    opaque group_id<V>;
//	    opaque text_digest<V>; // SHA-256 of the label and the plaintext
//	    opaque request<V>;     // the signed DSRequest, as last sent
//	} KeptMessage;
type keptMessage struct {
	groupID []byte
	digest  []byte
	request []byte
}

// MarshalWire implements wire.Marshaler.
func (k *keptMessage) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint8(keptFormat)
	wire.AddOpaque(b, k.groupID)
	wire.AddOpaque(b, k.digest)
	wire.AddOpaque(b, k.request)
}

// UnmarshalWire implements wire.Unmarshaler.
func (k *keptMessage) UnmarshalWire(s *cryptobyte.String) bool {
	var format uint8
	return s.ReadUint8(&format) && format == keptFormat && wire.ReadOpaque(s, &k.groupID) &&
		wire.ReadOpaque(s, &k.digest) && wire.ReadOpaque(s, &k.request)
}

// textDigest returns the digest a kept message records of its plaintext.
func textDigest(data []byte) []byte {
	h := sha256.New()
	h.Write([]byte(textDigestLabel))
	h.Write(data)
	return h.Sum(nil)
}

// keptPath returns the file of group groupID's kept message. c.mu is
// held.
func (c *Client) keptPath(groupID []byte) (string, error) {
	if c.closed {
		return "", errors.New("client: closed")
	}
	i := c.rec.group(groupID)
	if i < 0 {
		return "", fmt.Errorf("%w %x", ErrUnknownGroup, groupID)
	}
	return filepath.Join(c.dir, outboxDir, strconv.FormatUint(c.rec.groups[i].file, 10)), nil
}

// loadKept returns group groupID's kept message, nil when there is none.
// c.mu is held.
func (c *Client) loadKept(groupID []byte) (*keptMessage, error) {
	path, err := c.keptPath(groupID)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the kept message of group %x: %w", groupID, err)
	}
	k := new(keptMessage)
	if err := wire.Unmarshal(data, k, "kept message"); err != nil {
		return nil, fmt.Errorf("%w: the kept message of group %x: %w", ErrStateEncoding, groupID, err)
	}
	if !bytes.Equal(k.groupID, groupID) {
		return nil, fmt.Errorf("%w: the kept message of group %x is of another group", ErrStateEncoding, groupID)
	}
	return k, nil
}

// writeKept writes k to disk (atomically, synced) before its request
// leaves. c.mu is held.
func (c *Client) writeKept(k *keptMessage) error {
	path, err := c.keptPath(k.groupID)
	if err != nil {
		return err
	}
	data, err := wire.Marshal(k)
	if err != nil {
		return fmt.Errorf("encoding the kept message: %w", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); errors.Is(err, os.ErrNotExist) {
		// A state directory of an older client has none yet.
		if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("keeping the message: %w", err)
		}
		if err := syncDir(c.dir); err != nil {
			return fmt.Errorf("keeping the message: %w", err)
		}
	}
	if err := writeFileAtomic(path, data); err != nil {
		return fmt.Errorf("keeping the message: %w", err)
	}
	return nil
}

// dropKept deletes group groupID's kept message, once its answer is
// known. c.mu is held.
func (c *Client) dropKept(groupID []byte) error {
	path, err := c.keptPath(groupID)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("dropping the kept message: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// PendingMessage reports whether group groupID has an application message
// whose answer was lost, kept to be resent before anything new is sent to
// the group (ErrMessagePending).
func (c *Client) PendingMessage(groupID []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	k, err := c.loadKept(groupID)
	return err == nil && k != nil
}

// retryLater reports whether err, a refusal, says only that the request
// came at the wrong time, which can pass: a rate limit, a token required,
// TLS early data, a stale timestamp. A kept message refused so is kept.
func retryLater(err error) bool {
	code, _ := CodeOf(err)
	switch code {
	case moh.CodeRateLimited, moh.CodeTokenRequired, moh.CodeTooEarly, moh.CodeStaleTimestamp:
		return true
	}
	return false
}

// resend sends group groupID's kept message again, byte for byte, and
// returns the digest of its plaintext once the Delivery Service took it
// (the message is then dropped), or nil when the group has none. A 401
// stale_timestamp (the answer was lost long enough ago) signs the same
// request body, the same MLS message, again under the current time, keeps
// that and sends it. A refusal for good drops it (ErrMessageUnknown); any
// other failure keeps it (ErrMessagePending). c.mu is held.
func (c *Client) resend(ctx context.Context, groupID []byte) ([]byte, error) {
	waits := maxRetries
	return c.resendWaiting(ctx, groupID, &waits)
}

// resendWaiting is resend with the waits it may take from *waits (see
// postKept), which an operation that made waits of its own already (Send)
// passes on.
func (c *Client) resendWaiting(ctx context.Context, groupID []byte, waits *int) ([]byte, error) {
	k, err := c.loadKept(groupID)
	if err != nil || k == nil {
		return nil, err
	}
	// Resending it is safe whatever came of the attempts before, so a
	// 503 that asks for a wait is waited out as a 429 is.
	k, err = c.postKept(ctx, k, func(error) bool { return true }, waits)
	if code, _ := CodeOf(err); code == moh.CodeStaleTimestamp {
		signed, serr := c.resignKept(k)
		if serr != nil {
			return nil, fmt.Errorf("%w: %w", ErrMessagePending, serr)
		}
		k = signed
		_, err = c.postDS(ctx, "/group_operation", "send_message", k.request)
	}
	switch {
	case err == nil:
		if derr := c.dropKept(groupID); derr != nil {
			return nil, fmt.Errorf("the kept message was resent and taken, but: %w", derr)
		}
		return k.digest, nil
	case refused(err) && !retryLater(err):
		if derr := c.dropKept(groupID); derr != nil {
			return nil, fmt.Errorf("%w: %w (and %v)", ErrMessageUnknown, err, derr)
		}
		return nil, fmt.Errorf("%w: %w", ErrMessageUnknown, err)
	default:
		return nil, fmt.Errorf("%w: resending it: %w", ErrMessagePending, err)
	}
}

// resignKept signs kept message k's request body, the same MLS message,
// again under the current time, and keeps that in its place. c.mu is
// held.
func (c *Client) resignKept(k *keptMessage) (*keptMessage, error) {
	req, err := moh.DecodeDSRequest(k.request)
	if err != nil {
		return nil, fmt.Errorf("%w: the kept message of group %x: %w", ErrStateEncoding, k.groupID, err)
	}
	signed, err := c.sign(req.Body, req.Auth.SenderIndex)
	if err != nil {
		return nil, fmt.Errorf("signing the kept message again: %w", err)
	}
	k = &keptMessage{groupID: k.groupID, digest: k.digest, request: signed}
	if err := c.writeKept(k); err != nil {
		return nil, err
	}
	return k, nil
}

// postKept sends kept message k (send_message) and, while *waits is
// above 0 (each wait takes one), again after each refusal that again
// accepts and whose Retry-After the client waits out (retryWait): one
// operation's waits are counted together, so that it holds the Client
// for at most maxRetries of them in all. Each time it sends the same MLS
// message, signed afresh and kept first (resignKept), so that the wait
// cannot make its timestamp stale; the Delivery Service delivers an MLS
// message once however often it comes (docs/protocol.md §5.4 step 9).
// It returns k as last sent, and the last attempt's error. c.mu is held.
func (c *Client) postKept(ctx context.Context, k *keptMessage, again func(error) bool, waits *int) (*keptMessage, error) {
	for {
		_, err := c.postDS(ctx, "/group_operation", "send_message", k.request)
		if err == nil || *waits <= 0 || !again(err) {
			return k, err
		}
		d, ok := c.retryWait(ctx, err)
		if !ok || !sleep(ctx, d) {
			return k, err
		}
		*waits--
		signed, serr := c.resignKept(k)
		if serr != nil {
			return k, fmt.Errorf("%w (and %v)", err, serr)
		}
		k = signed
	}
}

// sameText reports whether digest, of a kept message, is that of data.
func sameText(digest, data []byte) bool {
	return subtle.ConstantTimeCompare(digest, textDigest(data)) == 1
}
