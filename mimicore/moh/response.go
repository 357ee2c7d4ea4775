package moh

import (
	"errors"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ProtocolVersion is the only protocol_version this profile speaks.
const ProtocolVersion uint16 = 1

// Field size limits enforced by the decoders.
const (
	MaxMessageLen    = 256           // DSError.message
	MaxGroupIDLen    = 255           // group_id
	MaxTokenLen      = 64            // attachment tokens (32 bytes are issued)
	MaxKeyIDLen      = 64            // key_id
	MaxPublicKeyLen  = 133           // an uncompressed P-521 point is the largest key any scheme here uses
	MaxSignatureLen  = 256           // DER ECDSA P-256 is at most 72 bytes; room for future schemes
	MaxRequestIDLen  = 64            // request_id (16 random bytes are sent)
	MaxURILen        = 255           // a MIMI URI
	MaxFQDNLen       = 253           // a DNS name
	MaxVerifyKeys    = 16            // verification_keys in one answer
	MaxClientIDs     = 64            // client ids in one KeyPackage or queueing request
	MaxHashLen       = 64            // content_hash (SHA-512 is the largest suite hash)
	MaxPayloadLen    = 1 << 20       // a provider request payload
	MaxAttachmentLen = 1<<30 - 1 - 8 // an attachment body; the real limit is configured
)

// ResponseType selects the body of a DSResponse.
type ResponseType uint8

// The DSResponse types of docs/protocol.md §3.
const (
	ResponseOK                 ResponseType = 0
	ResponseError              ResponseType = 1
	ResponseGroupID            ResponseType = 2
	ResponseWelcomeInfo        ResponseType = 3
	ResponseExternalCommitInfo ResponseType = 4
	ResponseVerificationKeys   ResponseType = 5
	ResponseKeyPackages        ResponseType = 6
	ResponseAttachmentToken    ResponseType = 7
	ResponseAttachmentContent  ResponseType = 8
	ResponseQueueing           ResponseType = 9
)

// DSError is the body of an error answer.
type DSError struct {
	Code    Code
	Message []byte // UTF-8, for humans, at most MaxMessageLen bytes
}

// MarshalWire implements wire.Marshaler.
func (e *DSError) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(uint16(e.Code))
	msg := e.Message
	if len(msg) > MaxMessageLen {
		msg = truncateUTF8(msg, MaxMessageLen)
	}
	wire.AddOpaque(b, msg)
}

// UnmarshalWire implements wire.Unmarshaler. Unknown codes are accepted (a
// newer peer may send them); callers treat them as generic failures.
func (e *DSError) UnmarshalWire(s *cryptobyte.String) bool {
	var code uint16
	if !s.ReadUint16(&code) || !wire.ReadOpaqueMax(s, &e.Message, MaxMessageLen) {
		return false
	}
	e.Code = Code(code)
	return true
}

// Error implements error, so a decoded DSError can be returned as one.
func (e *DSError) Error() string {
	return "peer answered " + e.Code.String() + ": " + string(e.Message)
}

// truncateUTF8 cuts b to at most n bytes without splitting a UTF-8 sequence.
func truncateUTF8(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	for n > 0 && b[n]&0xc0 == 0x80 {
		n--
	}
	return b[:n]
}

// SignatureScheme is a TLS 1.3 SignatureScheme (RFC 8446 §4.2.3).
type SignatureScheme uint16

// The signature schemes accepted for provider keys.
const (
	SchemeEd25519         SignatureScheme = 0x0807
	SchemeECDSAP256SHA256 SignatureScheme = 0x0403
)

// Known reports whether s is accepted by this profile.
func (s SignatureScheme) Known() bool {
	return s == SchemeEd25519 || s == SchemeECDSAP256SHA256
}

// VerificationKey is one provider signing key as published on
// /verification_key.
type VerificationKey struct {
	KeyID     []byte
	Scheme    SignatureScheme
	PublicKey []byte
	NotBefore uint64 // unix seconds
	NotAfter  uint64 // unix seconds
}

// MarshalWire implements wire.Marshaler.
func (k *VerificationKey) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, k.KeyID)
	b.AddUint16(uint16(k.Scheme))
	wire.AddOpaque(b, k.PublicKey)
	b.AddUint64(k.NotBefore)
	b.AddUint64(k.NotAfter)
}

// UnmarshalWire implements wire.Unmarshaler. Unknown schemes decode (a peer
// may publish keys we cannot use); Known tells which ones are usable.
func (k *VerificationKey) UnmarshalWire(s *cryptobyte.String) bool {
	var scheme uint16
	if !wire.ReadOpaqueMax(s, &k.KeyID, MaxKeyIDLen) || len(k.KeyID) == 0 ||
		!s.ReadUint16(&scheme) ||
		!wire.ReadOpaqueMax(s, &k.PublicKey, MaxPublicKeyLen) ||
		!s.ReadUint64(&k.NotBefore) || !s.ReadUint64(&k.NotAfter) {
		return false
	}
	k.Scheme = SignatureScheme(scheme)
	return true
}

// VerificationKeyRequest is the optional body of a /verification_key
// request. An empty body means the same.
type VerificationKeyRequest struct {
	ProtocolVersion uint16
}

// MarshalWire implements wire.Marshaler.
func (r *VerificationKeyRequest) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(r.ProtocolVersion)
}

// UnmarshalWire implements wire.Unmarshaler.
func (r *VerificationKeyRequest) UnmarshalWire(s *cryptobyte.String) bool {
	return s.ReadUint16(&r.ProtocolVersion)
}

// QueueingStatus is the status of a QueueingServiceResponse.
type QueueingStatus uint8

// The QueueingServiceResponse statuses.
const (
	QueueingOK                     QueueingStatus = 0
	QueueingInvalidClientQueueInfo QueueingStatus = 1

	maxQueueingStatus = QueueingInvalidClientQueueInfo
)

// QueueingServiceResponse answers deliver_message.
type QueueingServiceResponse struct {
	Status  QueueingStatus
	Unknown [][]byte // client URIs that are not known here
}

// MarshalWire implements wire.Marshaler.
func (q *QueueingServiceResponse) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint8(uint8(q.Status))
	addOpaqueList(b, q.Unknown)
}

// UnmarshalWire implements wire.Unmarshaler.
func (q *QueueingServiceResponse) UnmarshalWire(s *cryptobyte.String) bool {
	var st uint8
	if !s.ReadUint8(&st) || QueueingStatus(st) > maxQueueingStatus {
		return false
	}
	q.Status = QueueingStatus(st)
	return readOpaqueList(s, &q.Unknown, MaxClientIDs, MaxURILen)
}

// DSResponse is every answer of the gateway. Exactly the fields that belong to
// Type are encoded.
type DSResponse struct {
	Type ResponseType

	Error            DSError                 // ResponseError
	GroupID          []byte                  // ResponseGroupID
	RatchetTree      []byte                  // ResponseWelcomeInfo, ResponseExternalCommitInfo: the encoded optional<Node> ratchet_tree<V>, vector body included
	GroupInfo        []byte                  // ResponseExternalCommitInfo: an encoded MLSMessage
	VerificationKeys []VerificationKey       // ResponseVerificationKeys
	KeyPackages      [][]byte                // ResponseKeyPackages: encoded KeyPackages, in request order
	Missing          [][]byte                // ResponseKeyPackages: client URIs with no KeyPackage
	Token            []byte                  // ResponseAttachmentToken
	Content          []byte                  // ResponseAttachmentContent (small bodies; large ones are streamed, see ContentHeader)
	Queueing         QueueingServiceResponse // ResponseQueueing
}

// MarshalWire implements wire.Marshaler. Fields already holding MLS encodings
// (RatchetTree, GroupInfo, KeyPackages) are written as they are.
func (r *DSResponse) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(ProtocolVersion)
	b.AddUint8(uint8(r.Type))
	switch r.Type {
	case ResponseOK:
	case ResponseError:
		r.Error.MarshalWire(b)
	case ResponseGroupID:
		wire.AddOpaque(b, r.GroupID)
	case ResponseWelcomeInfo:
		b.AddBytes(r.RatchetTree)
	case ResponseExternalCommitInfo:
		b.AddBytes(r.GroupInfo)
		b.AddBytes(r.RatchetTree)
	case ResponseVerificationKeys:
		wire.AddVector(b, func(b *cryptobyte.Builder) {
			for i := range r.VerificationKeys {
				r.VerificationKeys[i].MarshalWire(b)
			}
		})
	case ResponseKeyPackages:
		wire.AddVector(b, func(b *cryptobyte.Builder) {
			for _, kp := range r.KeyPackages {
				b.AddBytes(kp)
			}
		})
		addOpaqueList(b, r.Missing)
	case ResponseAttachmentToken:
		wire.AddOpaque(b, r.Token)
	case ResponseAttachmentContent:
		wire.AddOpaque(b, r.Content)
	case ResponseQueueing:
		r.Queueing.MarshalWire(b)
	default:
		b.SetError(errors.New("moh: unknown response type"))
	}
}

// UnmarshalWire implements wire.Unmarshaler. MLS values are decoded strictly
// by package mls and kept as their encodings.
func (r *DSResponse) UnmarshalWire(s *cryptobyte.String) bool {
	var version uint16
	var typ uint8
	if !s.ReadUint16(&version) || version != ProtocolVersion || !s.ReadUint8(&typ) {
		return false
	}
	r.Type = ResponseType(typ)
	switch r.Type {
	case ResponseOK:
		return true
	case ResponseError:
		return r.Error.UnmarshalWire(s)
	case ResponseGroupID:
		return wire.ReadOpaqueMax(s, &r.GroupID, MaxGroupIDLen)
	case ResponseWelcomeInfo:
		return readSpan(s, &r.RatchetTree, new(mls.RatchetTree))
	case ResponseExternalCommitInfo:
		var gi mls.MLSMessage
		return readSpan(s, &r.GroupInfo, &gi) && gi.WireFormat == mls.WireFormatGroupInfo &&
			readSpan(s, &r.RatchetTree, new(mls.RatchetTree))
	case ResponseKeyPackages:
		var list cryptobyte.String
		if !wire.ReadVector(s, &list) {
			return false
		}
		r.KeyPackages = r.KeyPackages[:0]
		for !list.Empty() {
			if len(r.KeyPackages) == MaxClientIDs {
				return false
			}
			var kp []byte
			if !readSpan(&list, &kp, new(mls.KeyPackage)) {
				return false
			}
			r.KeyPackages = append(r.KeyPackages, kp)
		}
		return readOpaqueList(s, &r.Missing, MaxClientIDs, MaxURILen)
	case ResponseVerificationKeys:
		var list cryptobyte.String
		if !wire.ReadVector(s, &list) {
			return false
		}
		r.VerificationKeys = r.VerificationKeys[:0]
		for !list.Empty() {
			if len(r.VerificationKeys) == MaxVerifyKeys {
				return false
			}
			var k VerificationKey
			if !k.UnmarshalWire(&list) {
				return false
			}
			r.VerificationKeys = append(r.VerificationKeys, k)
		}
		return true
	case ResponseAttachmentToken:
		return wire.ReadOpaqueMax(s, &r.Token, MaxTokenLen)
	case ResponseAttachmentContent:
		return wire.ReadOpaque(s, &r.Content)
	case ResponseQueueing:
		return r.Queueing.UnmarshalWire(s)
	default:
		return false
	}
}

// readSpan decodes one v from s and stores the bytes it took in out
// (aliasing s).
func readSpan(s *cryptobyte.String, out *[]byte, v wire.Unmarshaler) bool {
	start := *s
	if !v.UnmarshalWire(s) {
		return false
	}
	*out = start[:len(start)-len(*s)]
	return true
}

// addOpaqueList writes a vector of opaque<V> values.
func addOpaqueList(b *cryptobyte.Builder, list [][]byte) {
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, v := range list {
			wire.AddOpaque(b, v)
		}
	})
}

// readOpaqueList reads a vector of at most maxItems opaque<V> values of at
// most maxLen bytes each, none of them empty.
func readOpaqueList(s *cryptobyte.String, out *[][]byte, maxItems, maxLen int) bool {
	var list cryptobyte.String
	if !wire.ReadVector(s, &list) {
		return false
	}
	*out = (*out)[:0]
	for !list.Empty() {
		if len(*out) == maxItems {
			return false
		}
		var v []byte
		if !wire.ReadOpaqueMax(&list, &v, maxLen) || len(v) == 0 {
			return false
		}
		*out = append(*out, v)
	}
	return true
}
