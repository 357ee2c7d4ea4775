package localapi

import (
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Field limits of the local API's bodies (docs/protocol.md §10.1); a field
// outside its limit makes the body malformed.
const (
	// MaxSignatureKeyLen bounds BindingRequest.signature_key: the
	// largest MLS signature public key (ML-DSA-87 keys are 2592 bytes).
	MaxSignatureKeyLen = store.MaxPublicKeySize
	// MaxPublish bounds the KeyPackages of one PublishRequest, and of one
	// KeyPackageList: the most a client may have available at once.
	MaxPublish = store.MaxKeyPackagesPerClient
	// MaxKeyPackageLen bounds one encoded KeyPackage.
	MaxKeyPackageLen = store.MaxKeyPackageSize
)

// BindingRequest asks for a client binding (POST /binding):
//
//	struct {
//	  uint16 protocol_version = 1;
//	  ClientURI client_uri;
//	  opaque signature_key<V>;
//	  uint64 not_after;
//	} BindingRequest;
type BindingRequest struct {
	// ClientURI is the client the binding is for.
	ClientURI []byte
	// SignatureKey is the client's MLS leaf signature key, 1..MaxSignatureKeyLen bytes.
	SignatureKey []byte
	// NotAfter is the requested end of validity in Unix seconds; 0 asks
	// for the longest the gateway grants.
	NotAfter uint64
}

// MarshalWire implements wire.Marshaler.
func (r *BindingRequest) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(moh.ProtocolVersion)
	wire.AddOpaque(b, r.ClientURI)
	wire.AddOpaque(b, r.SignatureKey)
	b.AddUint64(r.NotAfter)
}

// UnmarshalWire implements wire.Unmarshaler. The slices alias s.
func (r *BindingRequest) UnmarshalWire(s *cryptobyte.String) bool {
	return readVersion(s) && readURI(s, &r.ClientURI) &&
		wire.ReadOpaqueMax(s, &r.SignatureKey, MaxSignatureKeyLen) && len(r.SignatureKey) > 0 &&
		s.ReadUint64(&r.NotAfter)
}

// BindingAnswer is the answer to a BindingRequest: the protocol version,
// then exactly the ClientBinding to put into the client's leaves as the
// extension_data of extension type 0xF0A1.
//
//	struct { uint16 protocol_version = 1; ClientBinding binding; } BindingAnswer;
type BindingAnswer struct {
	// Binding is the issued binding, with the not_after it got.
	Binding binding.ClientBinding
}

// MarshalWire implements wire.Marshaler.
func (a *BindingAnswer) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(moh.ProtocolVersion)
	a.Binding.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler.
func (a *BindingAnswer) UnmarshalWire(s *cryptobyte.String) bool {
	return readVersion(s) && a.Binding.UnmarshalWire(s)
}

// KeyPackageEntry is one KeyPackage of a client with its last-resort flag:
//
//	struct { uint8 last_resort; opaque key_package<V>; } KeyPackageEntry;
//
// last_resort is 0 or 1; key_package is an encoded RFC 9420 KeyPackage,
// wrapped in a vector so that a caller without an MLS decoder can split a
// list.
type KeyPackageEntry struct {
	// LastResort marks the client's last-resort KeyPackage of its suite.
	// A published KeyPackage carrying the last_resort extension
	// (mls.ExtLastResort) is last-resort whatever this flag says.
	LastResort bool
	// KeyPackage is the encoded KeyPackage, 1..MaxKeyPackageLen bytes.
	KeyPackage []byte
}

// MarshalWire implements wire.Marshaler.
func (e *KeyPackageEntry) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOptional(b, e.LastResort)
	wire.AddOpaque(b, e.KeyPackage)
}

// UnmarshalWire implements wire.Unmarshaler.
func (e *KeyPackageEntry) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadBool(s, &e.LastResort) &&
		wire.ReadOpaqueMax(s, &e.KeyPackage, MaxKeyPackageLen) && len(e.KeyPackage) > 0
}

// PublishRequest publishes KeyPackages of one client (POST /key_packages):
//
//	struct {
//	  uint16 protocol_version = 1;
//	  ClientURI client_uri;
//	  KeyPackageEntry key_packages<V>;   /* 1..256 entries */
//	} PublishRequest;
type PublishRequest struct {
	// ClientURI is the client whose KeyPackages these are.
	ClientURI []byte
	// KeyPackages are the packages to publish, 1..MaxPublish of them.
	KeyPackages []KeyPackageEntry
}

// MarshalWire implements wire.Marshaler.
func (r *PublishRequest) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(moh.ProtocolVersion)
	wire.AddOpaque(b, r.ClientURI)
	addEntries(b, r.KeyPackages)
}

// UnmarshalWire implements wire.Unmarshaler.
func (r *PublishRequest) UnmarshalWire(s *cryptobyte.String) bool {
	return readVersion(s) && readURI(s, &r.ClientURI) &&
		readEntries(s, &r.KeyPackages) && len(r.KeyPackages) > 0
}

// KeyPackageList is the answer of GET and POST /key_packages: the client's
// available KeyPackages, ordered by cipher suite, then end of lifetime,
// then KeyPackageRef.
//
//	struct { uint16 protocol_version = 1; KeyPackageEntry key_packages<V>; } KeyPackageList;
type KeyPackageList struct {
	// KeyPackages are the client's available packages.
	KeyPackages []KeyPackageEntry
}

// MarshalWire implements wire.Marshaler.
func (l *KeyPackageList) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(moh.ProtocolVersion)
	addEntries(b, l.KeyPackages)
}

// UnmarshalWire implements wire.Unmarshaler.
func (l *KeyPackageList) UnmarshalWire(s *cryptobyte.String) bool {
	return readVersion(s) && readEntries(s, &l.KeyPackages)
}

// Message is one queued message in a MessageList:
//
//	struct {
//	  uint64 seq;
//	  uint64 arrived;
//	  uint64 expires;
//	  opaque group_id<V>;
//	  opaque sender<V>;
//	  opaque message<V>;
//	} QueuedMessage;
type Message struct {
	// Seq is the message's sequence number: strictly increasing in the
	// client's queue, with gaps (one sequence is shared by every client,
	// docs/protocol.md §10.4).
	Seq uint64
	// Arrived is when it was queued, in Unix seconds.
	Arrived uint64
	// Expires is when it stops being delivered, in Unix seconds.
	Expires uint64
	// GroupID is its MLS group, empty for a message of no group.
	GroupID []byte
	// Sender is a provider domain or a client URI.
	Sender []byte
	// Message is the message as delivered.
	Message []byte
}

// MarshalWire implements wire.Marshaler.
func (m *Message) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint64(m.Seq)
	b.AddUint64(m.Arrived)
	b.AddUint64(m.Expires)
	wire.AddOpaque(b, m.GroupID)
	wire.AddOpaque(b, m.Sender)
	wire.AddOpaque(b, m.Message)
}

// UnmarshalWire implements wire.Unmarshaler.
func (m *Message) UnmarshalWire(s *cryptobyte.String) bool {
	return s.ReadUint64(&m.Seq) && s.ReadUint64(&m.Arrived) && s.ReadUint64(&m.Expires) &&
		wire.ReadOpaqueMax(s, &m.GroupID, store.MaxIDSize) &&
		wire.ReadOpaqueMax(s, &m.Sender, store.MaxClientURISize) &&
		wire.ReadOpaqueMax(s, &m.Message, store.MaxQueuedMessageSize) && len(m.Message) > 0
}

// MessageList is the answer of GET /messages:
//
//	struct { uint16 protocol_version = 1; QueuedMessage messages<V>; } MessageList;
type MessageList struct {
	// Messages are the fetched messages, oldest first.
	Messages []Message
}

// MarshalWire implements wire.Marshaler.
func (l *MessageList) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(moh.ProtocolVersion)
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for i := range l.Messages {
			l.Messages[i].MarshalWire(b)
		}
	})
}

// UnmarshalWire implements wire.Unmarshaler.
func (l *MessageList) UnmarshalWire(s *cryptobyte.String) bool {
	var list cryptobyte.String
	if !readVersion(s) || !wire.ReadVector(s, &list) {
		return false
	}
	l.Messages = l.Messages[:0]
	for !list.Empty() {
		var m Message
		if !m.UnmarshalWire(&list) {
			return false
		}
		l.Messages = append(l.Messages, m)
	}
	return true
}

// AckRequest acknowledges a client's messages up to a sequence number
// (POST /messages/ack):
//
//	struct { uint16 protocol_version = 1; ClientURI client_uri; uint64 up_to; } AckRequest;
type AckRequest struct {
	// ClientURI is the client whose queue is acknowledged.
	ClientURI []byte
	// UpTo is the last sequence number acknowledged, inclusive.
	UpTo uint64
}

// MarshalWire implements wire.Marshaler.
func (r *AckRequest) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(moh.ProtocolVersion)
	wire.AddOpaque(b, r.ClientURI)
	b.AddUint64(r.UpTo)
}

// UnmarshalWire implements wire.Unmarshaler.
func (r *AckRequest) UnmarshalWire(s *cryptobyte.String) bool {
	return readVersion(s) && readURI(s, &r.ClientURI) && s.ReadUint64(&r.UpTo)
}

// AckAnswer is the answer to an AckRequest: how many messages it
// acknowledged.
//
//	struct { uint16 protocol_version = 1; uint64 deleted; } AckAnswer;
type AckAnswer struct {
	// Deleted is how many messages the acknowledgement acknowledged (the
	// personal ones are deleted; a group log's stay for its other members).
	Deleted uint64
}

// MarshalWire implements wire.Marshaler.
func (a *AckAnswer) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(moh.ProtocolVersion)
	b.AddUint64(a.Deleted)
}

// UnmarshalWire implements wire.Unmarshaler.
func (a *AckAnswer) UnmarshalWire(s *cryptobyte.String) bool {
	return readVersion(s) && s.ReadUint64(&a.Deleted)
}

// ClaimRequest claims KeyPackages of another client or of every client of a
// user of this provider, to add them to a group (POST /claim_key_packages):
//
//	struct {
//	  uint16 protocol_version = 1;
//	  uint16 cipher_suite;
//	  opaque target<V>;   /* a user URI (every client of the user) or a client URI */
//	} ClaimRequest;
//
// The answer is a KeyPackageList of the claimed packages, one per client,
// ordered by client URI.
type ClaimRequest struct {
	// CipherSuite is the suite of the group the packages are for.
	CipherSuite uint16
	// Target is a user URI or a client URI, 1..moh.MaxURILen bytes.
	Target []byte
}

// MarshalWire implements wire.Marshaler.
func (r *ClaimRequest) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(moh.ProtocolVersion)
	b.AddUint16(r.CipherSuite)
	wire.AddOpaque(b, r.Target)
}

// UnmarshalWire implements wire.Unmarshaler.
func (r *ClaimRequest) UnmarshalWire(s *cryptobyte.String) bool {
	return readVersion(s) && s.ReadUint16(&r.CipherSuite) && readURI(s, &r.Target)
}

// readVersion reads protocol_version, which must be moh.ProtocolVersion
// (the HTTP layer checks it first with moh.CheckVersion, so that another
// version is unsupported_version rather than malformed).
func readVersion(s *cryptobyte.String) bool {
	var v uint16
	return s.ReadUint16(&v) && v == moh.ProtocolVersion
}

// readURI reads a ClientURI: 1..moh.MaxURILen bytes (its form is checked
// when the request is authorised).
func readURI(s *cryptobyte.String, out *[]byte) bool {
	return wire.ReadOpaqueMax(s, out, moh.MaxURILen) && len(*out) > 0
}

func addEntries(b *cryptobyte.Builder, list []KeyPackageEntry) {
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for i := range list {
			list[i].MarshalWire(b)
		}
	})
}

func readEntries(s *cryptobyte.String, out *[]KeyPackageEntry) bool {
	var list cryptobyte.String
	if !wire.ReadVector(s, &list) {
		return false
	}
	*out = (*out)[:0]
	for !list.Empty() {
		if len(*out) == MaxPublish {
			return false
		}
		var e KeyPackageEntry
		if !e.UnmarshalWire(&list) {
			return false
		}
		*out = append(*out, e)
	}
	return true
}
