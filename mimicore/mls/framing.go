package mls

import (
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// WireFormat identifies the body of an MLSMessage (RFC 9420 §6).
type WireFormat uint16

// The wire formats of RFC 9420 §17.2.
const (
	WireFormatPublicMessage  WireFormat = 1
	WireFormatPrivateMessage WireFormat = 2
	WireFormatWelcome        WireFormat = 3
	WireFormatGroupInfo      WireFormat = 4
	WireFormatKeyPackage     WireFormat = 5
)

// ContentType is the kind of content a framed message carries (RFC 9420 §6).
type ContentType uint8

// The content types of RFC 9420 §6.
const (
	ContentApplication ContentType = 1
	ContentProposal    ContentType = 2
	ContentCommit      ContentType = 3
)

// SenderType is the kind of sender of a framed message (RFC 9420 §6).
type SenderType uint8

// The sender types of RFC 9420 §6.
const (
	SenderMember            SenderType = 1
	SenderExternal          SenderType = 2
	SenderNewMemberProposal SenderType = 3
	SenderNewMemberCommit   SenderType = 4
)

// Sender identifies who sent a framed message. Index is the leaf index of a
// member or the index into the external_senders extension of an external
// sender; it is unused for new members.
type Sender struct {
	Type  SenderType
	Index uint32
}

// MarshalWire implements wire.Marshaler.
func (s *Sender) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint8(uint8(s.Type))
	switch s.Type {
	case SenderMember, SenderExternal:
		b.AddUint32(s.Index)
	case SenderNewMemberProposal, SenderNewMemberCommit:
	default:
		b.SetError(errEncoding)
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (s *Sender) UnmarshalWire(str *cryptobyte.String) bool {
	*s = Sender{}
	if !str.ReadUint8((*uint8)(&s.Type)) {
		return false
	}
	switch s.Type {
	case SenderMember, SenderExternal:
		return str.ReadUint32(&s.Index)
	case SenderNewMemberProposal, SenderNewMemberCommit:
		return true
	default:
		return false
	}
}

// FramedContent is the content of a handshake or application message (RFC
// 9420 §6). ApplicationData, Proposal or Commit is set per ContentType.
type FramedContent struct {
	GroupID           []byte
	Epoch             uint64
	Sender            Sender
	AuthenticatedData []byte
	ContentType       ContentType
	ApplicationData   []byte
	Proposal          *Proposal
	Commit            *Commit
}

// MarshalWire implements wire.Marshaler.
func (c *FramedContent) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, c.GroupID)
	b.AddUint64(c.Epoch)
	c.Sender.MarshalWire(b)
	wire.AddOpaque(b, c.AuthenticatedData)
	b.AddUint8(uint8(c.ContentType))
	marshalContentBody(b, c.ContentType, c.ApplicationData, c.Proposal, c.Commit)
}

// marshalContentBody writes the content-type dependent body shared by
// FramedContent and PrivateMessageContent.
func marshalContentBody(b *cryptobyte.Builder, ct ContentType, app []byte, p *Proposal, c *Commit) {
	switch ct {
	case ContentApplication:
		wire.AddOpaque(b, app)
	case ContentProposal:
		if p == nil {
			b.SetError(errEncoding)
			return
		}
		p.MarshalWire(b)
	case ContentCommit:
		if c == nil {
			b.SetError(errEncoding)
			return
		}
		c.MarshalWire(b)
	default:
		b.SetError(errEncoding)
	}
}

// unmarshalContentBody reads the body matching ct.
func unmarshalContentBody(s *cryptobyte.String, ct ContentType, app *[]byte, p **Proposal, c **Commit) bool {
	switch ct {
	case ContentApplication:
		return wire.ReadOpaque(s, app)
	case ContentProposal:
		*p = new(Proposal)
		return (*p).UnmarshalWire(s)
	case ContentCommit:
		*c = new(Commit)
		return (*c).UnmarshalWire(s)
	default:
		return false
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (c *FramedContent) UnmarshalWire(s *cryptobyte.String) bool {
	*c = FramedContent{}
	return wire.ReadOpaque(s, &c.GroupID) && s.ReadUint64(&c.Epoch) && c.Sender.UnmarshalWire(s) &&
		wire.ReadOpaque(s, &c.AuthenticatedData) && s.ReadUint8((*uint8)(&c.ContentType)) &&
		unmarshalContentBody(s, c.ContentType, &c.ApplicationData, &c.Proposal, &c.Commit)
}

// FramedContentAuthData is the signature over a FramedContent and, for
// commits, the confirmation tag (RFC 9420 §6.1).
type FramedContentAuthData struct {
	Signature       []byte
	ConfirmationTag []byte
}

func (a *FramedContentAuthData) marshal(b *cryptobyte.Builder, ct ContentType) {
	wire.AddOpaque(b, a.Signature)
	if ct == ContentCommit {
		wire.AddOpaque(b, a.ConfirmationTag)
	}
}

func (a *FramedContentAuthData) unmarshal(s *cryptobyte.String, ct ContentType) bool {
	*a = FramedContentAuthData{}
	if !wire.ReadOpaque(s, &a.Signature) {
		return false
	}
	if ct == ContentCommit {
		return wire.ReadOpaque(s, &a.ConfirmationTag)
	}
	return true
}

// AuthenticatedContent is a FramedContent with its wire format and
// authentication data (RFC 9420 §6.1). ProposalRefs hash its encoding.
type AuthenticatedContent struct {
	WireFormat WireFormat
	Content    FramedContent
	Auth       FramedContentAuthData
}

// MarshalWire implements wire.Marshaler.
func (a *AuthenticatedContent) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(uint16(a.WireFormat))
	a.Content.MarshalWire(b)
	a.Auth.marshal(b, a.Content.ContentType)
}

// UnmarshalWire implements wire.Unmarshaler.
func (a *AuthenticatedContent) UnmarshalWire(s *cryptobyte.String) bool {
	return s.ReadUint16((*uint16)(&a.WireFormat)) && a.Content.UnmarshalWire(s) &&
		a.Auth.unmarshal(s, a.Content.ContentType)
}

// PublicMessage is a signed, unencrypted handshake or application message
// (RFC 9420 §6.2). MembershipTag is present for member senders only.
type PublicMessage struct {
	Content       FramedContent
	Auth          FramedContentAuthData
	MembershipTag []byte
}

// MarshalWire implements wire.Marshaler.
func (m *PublicMessage) MarshalWire(b *cryptobyte.Builder) {
	m.Content.MarshalWire(b)
	m.Auth.marshal(b, m.Content.ContentType)
	if m.Content.Sender.Type == SenderMember {
		wire.AddOpaque(b, m.MembershipTag)
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (m *PublicMessage) UnmarshalWire(s *cryptobyte.String) bool {
	*m = PublicMessage{}
	if !m.Content.UnmarshalWire(s) || !m.Auth.unmarshal(s, m.Content.ContentType) {
		return false
	}
	if m.Content.Sender.Type == SenderMember {
		return wire.ReadOpaque(s, &m.MembershipTag)
	}
	return true
}

// AuthenticatedContent returns the message's content as an
// AuthenticatedContent with the PublicMessage wire format.
func (m *PublicMessage) AuthenticatedContent() *AuthenticatedContent {
	return &AuthenticatedContent{WireFormat: WireFormatPublicMessage, Content: m.Content, Auth: m.Auth}
}

// PrivateMessage is an encrypted handshake or application message (RFC 9420
// §6.3). A Delivery Service sees only these outer fields.
type PrivateMessage struct {
	GroupID             []byte
	Epoch               uint64
	ContentType         ContentType
	AuthenticatedData   []byte
	EncryptedSenderData []byte
	Ciphertext          []byte
}

// MarshalWire implements wire.Marshaler.
func (m *PrivateMessage) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, m.GroupID)
	b.AddUint64(m.Epoch)
	b.AddUint8(uint8(m.ContentType))
	wire.AddOpaque(b, m.AuthenticatedData)
	wire.AddOpaque(b, m.EncryptedSenderData)
	wire.AddOpaque(b, m.Ciphertext)
}

// UnmarshalWire implements wire.Unmarshaler. The content type must be one of
// the three RFC 9420 types.
func (m *PrivateMessage) UnmarshalWire(s *cryptobyte.String) bool {
	if !wire.ReadOpaque(s, &m.GroupID) || !s.ReadUint64(&m.Epoch) || !s.ReadUint8((*uint8)(&m.ContentType)) {
		return false
	}
	if m.ContentType < ContentApplication || m.ContentType > ContentCommit {
		return false
	}
	return wire.ReadOpaque(s, &m.AuthenticatedData) && wire.ReadOpaque(s, &m.EncryptedSenderData) &&
		wire.ReadOpaque(s, &m.Ciphertext)
}
