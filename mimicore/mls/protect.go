package mls

import (
	"crypto"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ErrInvalidMessage is wrapped by every message authentication or
// decryption failure.
var ErrInvalidMessage = errors.New("mls: invalid message")

// framedContentTBS encodes FramedContentTBS (RFC 9420 §6.1). gc is required
// for member and new_member_commit senders.
func framedContentTBS(wf WireFormat, c *FramedContent, gc *GroupContext) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 512))
	b.AddUint16(uint16(MLS10))
	b.AddUint16(uint16(wf))
	c.MarshalWire(b)
	switch c.Sender.Type {
	case SenderMember, SenderNewMemberCommit:
		if gc == nil {
			return nil, errors.New("encoding framed content tbs: group context required for this sender")
		}
		gc.MarshalWire(b)
	}
	return b.Bytes()
}

// SignFramedContent signs content as sent with wire format wf (RFC 9420
// §6.1). gc is the sender's GroupContext, required for member and
// new_member_commit senders.
func (cs CipherSuite) SignFramedContent(signer crypto.Signer, wf WireFormat, c *FramedContent, gc *GroupContext) ([]byte, error) {
	tbs, err := framedContentTBS(wf, c, gc)
	if err != nil {
		return nil, err
	}
	return cs.SignWithLabel(signer, "FramedContentTBS", tbs)
}

// VerifyFramedContent checks the signature of ac with the sender's
// signature key.
func (cs CipherSuite) VerifyFramedContent(signatureKey []byte, ac *AuthenticatedContent, gc *GroupContext) error {
	tbs, err := framedContentTBS(ac.WireFormat, &ac.Content, gc)
	if err != nil {
		return err
	}
	if err := cs.VerifyWithLabel(signatureKey, "FramedContentTBS", tbs, ac.Auth.Signature); err != nil {
		return fmt.Errorf("framed content: %w", err)
	}
	return nil
}

// membershipTagInput encodes AuthenticatedContentTBM (RFC 9420 §6.2).
func membershipTagInput(m *PublicMessage, gc *GroupContext) ([]byte, error) {
	tbs, err := framedContentTBS(WireFormatPublicMessage, &m.Content, gc)
	if err != nil {
		return nil, err
	}
	b := cryptobyte.NewBuilder(tbs)
	m.Auth.marshal(b, m.Content.ContentType)
	return b.Bytes()
}

// SetMembershipTag computes m.MembershipTag with the epoch's membership key.
func (m *PublicMessage) SetMembershipTag(cs CipherSuite, membershipKey []byte, gc *GroupContext) error {
	s, err := cs.params()
	if err != nil {
		return err
	}
	in, err := membershipTagInput(m, gc)
	if err != nil {
		return err
	}
	m.MembershipTag = s.mac(membershipKey, in)
	return nil
}

// VerifyMembershipTag checks m.MembershipTag in constant time.
func (m *PublicMessage) VerifyMembershipTag(cs CipherSuite, membershipKey []byte, gc *GroupContext) error {
	s, err := cs.params()
	if err != nil {
		return err
	}
	in, err := membershipTagInput(m, gc)
	if err != nil {
		return err
	}
	if !s.verifyMAC(membershipKey, in, m.MembershipTag) {
		return fmt.Errorf("%w: bad membership tag", ErrInvalidMessage)
	}
	return nil
}

// senderData is the encrypted sender information of a PrivateMessage.
type senderData struct {
	leafIndex  uint32
	generation uint32
	reuseGuard [4]byte
}

func privateAAD(groupID []byte, epoch uint64, ct ContentType, authData []byte, withAuth bool) ([]byte, error) {
	b := cryptobyte.NewBuilder(nil)
	wire.AddOpaque(b, groupID)
	b.AddUint64(epoch)
	b.AddUint8(uint8(ct))
	if withAuth {
		wire.AddOpaque(b, authData)
	}
	return b.Bytes()
}

// ratchetFor returns the ratchet that protects content type ct.
func ratchetFor(ct ContentType) RatchetType {
	if ct == ContentApplication {
		return ApplicationRatchet
	}
	return HandshakeRatchet
}

// EncryptPrivateMessage protects member content as a PrivateMessage (RFC
// 9420 §6.3), the inverse of DecryptPrivateMessage. ac's wire format must
// be PrivateMessage and its sender a member; its signature (over
// FramedContentTBS with the PrivateMessage wire format) and, for commits,
// confirmation tag must already be in ac.Auth. padding zero bytes are
// added.
func (cs CipherSuite) EncryptPrivateMessage(st *SecretTree, senderDataSecret []byte, ac *AuthenticatedContent, padding int) (*PrivateMessage, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	if ac.WireFormat != WireFormatPrivateMessage {
		return nil, fmt.Errorf("encrypting private message: wire format %d", ac.WireFormat)
	}
	c, auth := &ac.Content, &ac.Auth
	if c.Sender.Type != SenderMember {
		return nil, errors.New("encrypting private message: sender is not a member")
	}
	if padding < 0 || padding > 1<<16 {
		return nil, fmt.Errorf("encrypting private message: padding %d out of range", padding)
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, 256+padding))
	marshalContentBody(b, c.ContentType, c.ApplicationData, c.Proposal, c.Commit)
	auth.marshal(b, c.ContentType)
	b.AddBytes(make([]byte, padding))
	pt, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encrypting private message: encoding content: %w", err)
	}
	kn, err := st.Next(c.Sender.Index, ratchetFor(c.ContentType))
	if err != nil {
		return nil, fmt.Errorf("encrypting private message: %w", err)
	}
	var sd senderData
	sd.leafIndex, sd.generation = c.Sender.Index, kn.Generation
	if _, err := rand.Read(sd.reuseGuard[:]); err != nil {
		return nil, fmt.Errorf("encrypting private message: %w", err)
	}
	aead, nonce, aad, err := s.contentAEAD(kn, sd.reuseGuard, c.GroupID, c.Epoch, c.ContentType, c.AuthenticatedData)
	if err != nil {
		return nil, fmt.Errorf("encrypting private message: %w", err)
	}
	ct := aead.Seal(nil, nonce, pt, aad)

	sdAEAD, sdNonce, sdAAD, err := s.senderDataAEAD(senderDataSecret, ct, c.GroupID, c.Epoch, c.ContentType)
	if err != nil {
		return nil, fmt.Errorf("encrypting private message: %w", err)
	}
	sdPlain := make([]byte, 0, 12)
	sdPlain = append(sdPlain, byte(sd.leafIndex>>24), byte(sd.leafIndex>>16), byte(sd.leafIndex>>8), byte(sd.leafIndex))
	sdPlain = append(sdPlain, byte(sd.generation>>24), byte(sd.generation>>16), byte(sd.generation>>8), byte(sd.generation))
	sdPlain = append(sdPlain, sd.reuseGuard[:]...)
	return &PrivateMessage{
		GroupID: cloneBytes(c.GroupID), Epoch: c.Epoch, ContentType: c.ContentType,
		AuthenticatedData:   cloneBytes(c.AuthenticatedData),
		EncryptedSenderData: sdAEAD.Seal(nil, sdNonce, sdPlain, sdAAD),
		Ciphertext:          ct,
	}, nil
}

// contentAEAD returns the AEAD, nonce and additional data that protect a
// PrivateMessage's content (RFC 9420 §6.3.1): the ratchet's key, its nonce
// with the reuse guard XORed into the first bytes, and
// PrivateContentAAD.
func (s *suite) contentAEAD(kn KeyAndNonce, guard [4]byte, groupID []byte, epoch uint64, ct ContentType, authData []byte) (cipher.AEAD, []byte, []byte, error) {
	aad, err := privateAAD(groupID, epoch, ct, authData, true)
	if err != nil {
		return nil, nil, nil, err
	}
	aead, err := s.newAEAD(kn.Key)
	if err != nil {
		return nil, nil, nil, err
	}
	nonce := cloneBytes(kn.Nonce)
	for i := range guard {
		nonce[i] ^= guard[i]
	}
	return aead, nonce, aad, nil
}

// senderDataAEAD returns the AEAD, nonce and additional data that protect a
// PrivateMessage's sender data (RFC 9420 §6.3.2): keys derived from the
// sender data secret and a sample of the content ciphertext, and
// SenderDataAAD.
func (s *suite) senderDataAEAD(secret, ciphertext, groupID []byte, epoch uint64, ct ContentType) (cipher.AEAD, []byte, []byte, error) {
	key, nonce, err := s.senderDataKeys(secret, ciphertext)
	if err != nil {
		return nil, nil, nil, err
	}
	aad, err := privateAAD(groupID, epoch, ct, nil, false)
	if err != nil {
		return nil, nil, nil, err
	}
	aead, err := s.newAEAD(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return aead, nonce, aad, nil
}

// DecryptPrivateMessage removes the protection of m (RFC 9420 §6.3) and
// returns its content with the PrivateMessage wire format. The caller must
// still check that the sender leaf is a member and verify the signature
// with VerifyFramedContent.
func (cs CipherSuite) DecryptPrivateMessage(st *SecretTree, senderDataSecret []byte, m *PrivateMessage) (*AuthenticatedContent, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	sdAEAD, sdNonce, sdAAD, err := s.senderDataAEAD(senderDataSecret, m.Ciphertext, m.GroupID, m.Epoch, m.ContentType)
	if err != nil {
		return nil, fmt.Errorf("decrypting private message: %w", err)
	}
	sdPlain, err := sdAEAD.Open(nil, sdNonce, m.EncryptedSenderData, sdAAD)
	if err != nil || len(sdPlain) != 12 {
		return nil, fmt.Errorf("%w: sender data does not decrypt", ErrInvalidMessage)
	}
	sds := cryptobyte.String(sdPlain)
	var sd senderData
	sds.ReadUint32(&sd.leafIndex)
	sds.ReadUint32(&sd.generation)
	copy(sd.reuseGuard[:], sds)

	kn, err := st.Get(sd.leafIndex, ratchetFor(m.ContentType), sd.generation)
	if err != nil {
		return nil, fmt.Errorf("decrypting private message: %w", err)
	}
	aead, nonce, aad, err := s.contentAEAD(kn, sd.reuseGuard, m.GroupID, m.Epoch, m.ContentType, m.AuthenticatedData)
	if err != nil {
		return nil, fmt.Errorf("decrypting private message: %w", err)
	}
	pt, err := aead.Open(nil, nonce, m.Ciphertext, aad)
	if err != nil {
		return nil, fmt.Errorf("%w: content does not decrypt", ErrInvalidMessage)
	}
	ac := &AuthenticatedContent{
		WireFormat: WireFormatPrivateMessage,
		Content: FramedContent{
			GroupID: m.GroupID, Epoch: m.Epoch, Sender: Sender{Type: SenderMember, Index: sd.leafIndex},
			AuthenticatedData: m.AuthenticatedData, ContentType: m.ContentType,
		},
	}
	body := cryptobyte.String(pt)
	c := &ac.Content
	if !unmarshalContentBody(&body, c.ContentType, &c.ApplicationData, &c.Proposal, &c.Commit) ||
		!ac.Auth.unmarshal(&body, c.ContentType) {
		return nil, fmt.Errorf("%w: malformed private message content", ErrInvalidMessage)
	}
	for _, p := range body {
		if p != 0 {
			return nil, fmt.Errorf("%w: non-zero padding", ErrInvalidMessage)
		}
	}
	return ac, nil
}
