package mls

import (
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// MLSMessage is the top-level MLS framing (RFC 9420 §6): a version, a wire
// format and the matching body. Exactly one body pointer is set.
type MLSMessage struct {
	Version        ProtocolVersion
	WireFormat     WireFormat
	PublicMessage  *PublicMessage
	PrivateMessage *PrivateMessage
	Welcome        *Welcome
	GroupInfo      *GroupInfo
	KeyPackage     *KeyPackage
}

// MarshalWire implements wire.Marshaler.
func (m *MLSMessage) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(uint16(m.Version))
	b.AddUint16(uint16(m.WireFormat))
	var body wire.Marshaler
	switch m.WireFormat {
	case WireFormatPublicMessage:
		if m.PublicMessage != nil {
			body = m.PublicMessage
		}
	case WireFormatPrivateMessage:
		if m.PrivateMessage != nil {
			body = m.PrivateMessage
		}
	case WireFormatWelcome:
		if m.Welcome != nil {
			body = m.Welcome
		}
	case WireFormatGroupInfo:
		if m.GroupInfo != nil {
			body = m.GroupInfo
		}
	case WireFormatKeyPackage:
		if m.KeyPackage != nil {
			body = m.KeyPackage
		}
	}
	if body == nil {
		b.SetError(errEncoding)
		return
	}
	body.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler. Only version mls10 and the five
// RFC 9420 wire formats are accepted, since other bodies cannot be delimited.
func (m *MLSMessage) UnmarshalWire(s *cryptobyte.String) bool {
	*m = MLSMessage{}
	if !s.ReadUint16((*uint16)(&m.Version)) || m.Version != MLS10 || !s.ReadUint16((*uint16)(&m.WireFormat)) {
		return false
	}
	switch m.WireFormat {
	case WireFormatPublicMessage:
		m.PublicMessage = new(PublicMessage)
		return m.PublicMessage.UnmarshalWire(s)
	case WireFormatPrivateMessage:
		m.PrivateMessage = new(PrivateMessage)
		return m.PrivateMessage.UnmarshalWire(s)
	case WireFormatWelcome:
		m.Welcome = new(Welcome)
		return m.Welcome.UnmarshalWire(s)
	case WireFormatGroupInfo:
		m.GroupInfo = new(GroupInfo)
		return m.GroupInfo.UnmarshalWire(s)
	case WireFormatKeyPackage:
		m.KeyPackage = new(KeyPackage)
		return m.KeyPackage.UnmarshalWire(s)
	default:
		return false
	}
}

// DecodeMLSMessage decodes one MLSMessage that must fill data exactly.
// Errors wrap wire.ErrMalformed.
func DecodeMLSMessage(data []byte) (*MLSMessage, error) {
	m := new(MLSMessage)
	if err := wire.Unmarshal(data, m, "mls message"); err != nil {
		return nil, err
	}
	return m, nil
}

// Epoch returns the epoch of a PublicMessage or PrivateMessage and whether
// the message has one.
func (m *MLSMessage) Epoch() (uint64, bool) {
	switch {
	case m.PublicMessage != nil:
		return m.PublicMessage.Content.Epoch, true
	case m.PrivateMessage != nil:
		return m.PrivateMessage.Epoch, true
	}
	return 0, false
}

// GroupID returns the group ID of a PublicMessage, PrivateMessage or
// GroupInfo, or nil.
func (m *MLSMessage) GroupID() []byte {
	switch {
	case m.PublicMessage != nil:
		return m.PublicMessage.Content.GroupID
	case m.PrivateMessage != nil:
		return m.PrivateMessage.GroupID
	case m.GroupInfo != nil:
		return m.GroupInfo.GroupContext.GroupID
	}
	return nil
}
