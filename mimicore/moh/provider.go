package moh

import (
	"bytes"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ProviderRequestType selects the payload of a ProviderRequest and must match
// the endpoint it is posted to.
type ProviderRequestType uint8

// The provider request types of docs/protocol.md §4.
const (
	DeliverMessage        ProviderRequestType = 0
	ConnectionRequest     ProviderRequestType = 1
	ConnectionKeyPackages ProviderRequestType = 2
	GroupKeyPackages      ProviderRequestType = 3

	maxProviderRequestType = GroupKeyPackages
)

// String returns the endpoint name of t.
func (t ProviderRequestType) String() string {
	switch t {
	case DeliverMessage:
		return "deliver_message"
	case ConnectionRequest:
		return "connection_request"
	case ConnectionKeyPackages:
		return "connection_key_packages"
	case GroupKeyPackages:
		return "group_key_packages"
	}
	return "unknown"
}

// ProviderRequestLabel is the SignWithLabel label of provider requests.
const ProviderRequestLabel = "MIMI provider request"

// ProviderRequest is the signed envelope of provider-to-provider requests
// (docs/protocol.md §4).
type ProviderRequest struct {
	RequestType ProviderRequestType
	Sender      []byte // provider FQDN
	Recipient   []byte // provider FQDN
	Timestamp   uint64 // unix seconds
	RequestID   []byte // 16 random bytes
	KeyID       []byte
	Payload     []byte // the request type's struct, encoded
	Signature   []byte

	// signed holds, after decoding, the exact bytes the signature covers.
	signed []byte
}

// MarshalTBS writes the fields the signature covers.
func (p *ProviderRequest) MarshalTBS(b *cryptobyte.Builder) {
	b.AddUint16(ProtocolVersion)
	b.AddUint8(uint8(p.RequestType))
	wire.AddOpaque(b, p.Sender)
	wire.AddOpaque(b, p.Recipient)
	b.AddUint64(p.Timestamp)
	wire.AddOpaque(b, p.RequestID)
	wire.AddOpaque(b, p.KeyID)
	wire.AddOpaque(b, p.Payload)
}

// MarshalWire implements wire.Marshaler.
func (p *ProviderRequest) MarshalWire(b *cryptobyte.Builder) {
	p.MarshalTBS(b)
	wire.AddOpaque(b, p.Signature)
}

// UnmarshalWire implements wire.Unmarshaler. Domains are checked to be valid
// FQDNs and the request id to be non-empty.
func (p *ProviderRequest) UnmarshalWire(s *cryptobyte.String) bool {
	start := *s
	var version uint16
	var typ uint8
	if !s.ReadUint16(&version) || version != ProtocolVersion ||
		!s.ReadUint8(&typ) || ProviderRequestType(typ) > maxProviderRequestType ||
		!wire.ReadOpaqueMax(s, &p.Sender, MaxFQDNLen) || !ValidFQDN(p.Sender) ||
		!wire.ReadOpaqueMax(s, &p.Recipient, MaxFQDNLen) || !ValidFQDN(p.Recipient) ||
		!s.ReadUint64(&p.Timestamp) ||
		!wire.ReadOpaqueMax(s, &p.RequestID, MaxRequestIDLen) || len(p.RequestID) == 0 ||
		!wire.ReadOpaqueMax(s, &p.KeyID, MaxKeyIDLen) || len(p.KeyID) == 0 ||
		!wire.ReadOpaqueMax(s, &p.Payload, MaxPayloadLen) {
		return false
	}
	p.RequestType = ProviderRequestType(typ)
	p.signed = start[:len(start)-len(*s)]
	return wire.ReadOpaqueMax(s, &p.Signature, MaxSignatureLen) && len(p.Signature) > 0
}

// SignedBytes returns the bytes the signature covers: the exact input bytes
// for a decoded request, a fresh encoding otherwise.
func (p *ProviderRequest) SignedBytes() ([]byte, error) {
	if p.signed != nil {
		return p.signed, nil
	}
	return wire.Marshal(tbsMarshaler{p})
}

type tbsMarshaler struct{ p *ProviderRequest }

func (t tbsMarshaler) MarshalWire(b *cryptobyte.Builder) { t.p.MarshalTBS(b) }

// QueueingServiceRequest is the deliver_message payload.
type QueueingServiceRequest struct {
	GroupID   []byte
	ClientIDs [][]byte // client URIs, all local to the recipient
	// Message is a PublicMessage, PrivateMessage or Welcome; a KeyPackage
	// or GroupInfo is refused.
	Message mls.MLSMessage
	// RawMessage is Message's encoding exactly as UnmarshalWire read it
	// (a slice of its input), so that a receiver can keep the bytes the
	// hub sent without encoding them again. MarshalWire ignores it.
	RawMessage []byte
}

// MarshalWire implements wire.Marshaler.
func (q *QueueingServiceRequest) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, q.GroupID)
	addOpaqueList(b, q.ClientIDs)
	q.Message.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler.
func (q *QueueingServiceRequest) UnmarshalWire(s *cryptobyte.String) bool {
	if !readGroupID(s, &q.GroupID) || !readOpaqueList(s, &q.ClientIDs, MaxClientIDs, MaxURILen) ||
		len(q.ClientIDs) == 0 {
		return false
	}
	start := *s
	if !q.Message.UnmarshalWire(s) {
		return false
	}
	q.RawMessage = start[:len(start)-len(*s)]
	switch q.Message.WireFormat {
	case mls.WireFormatPublicMessage, mls.WireFormatPrivateMessage, mls.WireFormatWelcome:
		return true
	}
	return false
}

// ConnectionRequestPayload is the connection_request payload: a Welcome into
// a connection group for a local user.
type ConnectionRequestPayload struct {
	UserID  []byte // user URI
	GroupID []byte
	Welcome mls.MLSMessage // wire format welcome
	// RawWelcome is Welcome's encoding exactly as UnmarshalWire read it
	// (a slice of its input), so that a receiver can queue the bytes the
	// sender sent without encoding them again, as it queues a
	// QueueingServiceRequest's RawMessage. MarshalWire ignores it.
	RawWelcome []byte
}

// MarshalWire implements wire.Marshaler.
func (c *ConnectionRequestPayload) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, c.UserID)
	wire.AddOpaque(b, c.GroupID)
	c.Welcome.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler.
func (c *ConnectionRequestPayload) UnmarshalWire(s *cryptobyte.String) bool {
	if !wire.ReadOpaqueMax(s, &c.UserID, MaxURILen) || len(c.UserID) == 0 || !readGroupID(s, &c.GroupID) {
		return false
	}
	start := *s
	if !c.Welcome.UnmarshalWire(s) {
		return false
	}
	c.RawWelcome = start[:len(start)-len(*s)]
	return c.Welcome.WireFormat == mls.WireFormatWelcome
}

// ConnectionKeyPackagesRequest is the connection_key_packages payload.
type ConnectionKeyPackagesRequest struct {
	Requester []byte // user URI of the requesting user
	UserID    []byte // user URI of the local user whose KeyPackages are wanted
}

// MarshalWire implements wire.Marshaler.
func (c *ConnectionKeyPackagesRequest) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, c.Requester)
	wire.AddOpaque(b, c.UserID)
}

// UnmarshalWire implements wire.Unmarshaler.
func (c *ConnectionKeyPackagesRequest) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadOpaqueMax(s, &c.Requester, MaxURILen) && len(c.Requester) > 0 &&
		wire.ReadOpaqueMax(s, &c.UserID, MaxURILen) && len(c.UserID) > 0
}

// GroupKeyPackagesRequest is the group_key_packages payload.
type GroupKeyPackagesRequest struct {
	Requester []byte   // user URI of the requesting user
	ClientIDs [][]byte // client URIs, at most MaxClientIDs
}

// MarshalWire implements wire.Marshaler.
func (g *GroupKeyPackagesRequest) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, g.Requester)
	addOpaqueList(b, g.ClientIDs)
}

// UnmarshalWire implements wire.Unmarshaler. A client id named twice is
// malformed, so that no client's KeyPackage is claimed twice by one
// request (docs/protocol.md §4.2).
func (g *GroupKeyPackagesRequest) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadOpaqueMax(s, &g.Requester, MaxURILen) && len(g.Requester) > 0 &&
		readOpaqueList(s, &g.ClientIDs, MaxClientIDs, MaxURILen) && len(g.ClientIDs) > 0 &&
		distinct(g.ClientIDs)
}

// distinct reports whether no two of ids are byte for byte equal. It
// compares every pair, which is cheap for lists of at most MaxClientIDs
// and allocates nothing.
func distinct(ids [][]byte) bool {
	for i := range ids {
		for j := range i {
			if bytes.Equal(ids[i], ids[j]) {
				return false
			}
		}
	}
	return true
}

// readGroupID reads a non-empty group_id<V> of at most MaxGroupIDLen bytes.
func readGroupID(s *cryptobyte.String, out *[]byte) bool {
	return wire.ReadOpaqueMax(s, out, MaxGroupIDLen) && len(*out) > 0
}
