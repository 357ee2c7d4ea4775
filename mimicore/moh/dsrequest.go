package moh

import (
	"errors"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// RequestType is a DSRequestType (docs/protocol.md §5): DS -03 numbering
// 0..14 plus this profile's 15..20.
type RequestType uint8

// The DS request types.
const (
	RequestGroupID           RequestType = 0
	CreateGroup              RequestType = 1
	DeleteGroup              RequestType = 2
	AddUsers                 RequestType = 3
	RemoveUsers              RequestType = 4
	AddClients               RequestType = 5
	RemoveClients            RequestType = 6
	SelfRemoveClient         RequestType = 7
	UpdateClient             RequestType = 8
	ExternalJoin             RequestType = 9
	SendMessage              RequestType = 10
	SignaturePublicKey       RequestType = 11
	AddPackages              RequestType = 12
	ConnectionAddPackages    RequestType = 13
	ReInitializeGroup        RequestType = 14
	WelcomeInfo              RequestType = 15
	ExternalCommitInfo       RequestType = 16
	AttachmentUpload         RequestType = 17
	AttachmentDownload       RequestType = 18
	AttachmentDelete         RequestType = 19
	AttachmentCopy           RequestType = 20
	maxRequestType                       = AttachmentCopy
	firstMLSRequestType                  = CreateGroup
	lastMLSRequestType                   = ReInitializeGroup
	firstProviderOnlyRequest             = SignaturePublicKey
	lastProviderOnlyRequest              = ConnectionAddPackages
)

var requestTypeNames = [...]string{
	"request_group_id", "create_group", "delete_group", "add_users", "remove_users",
	"add_clients", "remove_clients", "self_remove_client", "update_client", "external_join",
	"send_message", "signature_public_key", "add_packages", "connection_add_packages",
	"re_initialize_group", "welcome_info", "external_commit_info", "attachment_upload",
	"attachment_download", "attachment_delete", "attachment_copy",
}

// String returns the profile name of t.
func (t RequestType) String() string {
	if t <= maxRequestType {
		return requestTypeNames[t]
	}
	return "unknown"
}

// Known reports whether t is a defined request type.
func (t RequestType) Known() bool { return t <= maxRequestType }

// CarriesMLS reports whether the body of t holds MLS messages (types 1..10
// and 14, docs/protocol.md §5.2), which the MLS codec decodes.
func (t RequestType) CarriesMLS() bool {
	return t >= firstMLSRequestType && t <= lastMLSRequestType && !t.ProviderOnly()
}

// ProviderOnly reports whether t is never accepted from clients (11..13:
// these are provider endpoints).
func (t RequestType) ProviderOnly() bool {
	return t >= firstProviderOnlyRequest && t <= lastProviderOnlyRequest
}

// errNoClientBody is set on a Builder asked to encode a request type that
// has no client body (11..13, or an unknown type).
var errNoClientBody = errors.New("moh: request type has no client body")

// AuthType is a DSAuthType.
type AuthType uint8

// The DS authentication variants.
const (
	AuthAnonymous           AuthType = 0
	AuthClientSignature     AuthType = 1
	AuthKeyPackageSignature AuthType = 2

	maxAuthType = AuthKeyPackageSignature
)

// DSRequestLabel is the SignWithLabel label of client-signed DS requests.
const DSRequestLabel = "MIMI DS request"

// AuthData is DSAuthData. SenderIndex is set for client_signature,
// KeyPackageRef for key_package_signature; Timestamp and Signature for both.
type AuthData struct {
	Type          AuthType
	SenderIndex   uint32
	KeyPackageRef []byte
	Timestamp     uint64
	Signature     []byte
}

// marshalTBS writes auth_type and the variant's fields before the signature.
func (a *AuthData) marshalTBS(b *cryptobyte.Builder) {
	b.AddUint8(uint8(a.Type))
	switch a.Type {
	case AuthAnonymous:
	case AuthClientSignature:
		b.AddUint32(a.SenderIndex)
		b.AddUint64(a.Timestamp)
	case AuthKeyPackageSignature:
		wire.AddOpaque(b, a.KeyPackageRef)
		b.AddUint64(a.Timestamp)
	default:
		b.SetError(errors.New("moh: unknown auth type"))
	}
}

// MarshalWire implements wire.Marshaler.
func (a *AuthData) MarshalWire(b *cryptobyte.Builder) {
	a.marshalTBS(b)
	if a.Type != AuthAnonymous {
		wire.AddOpaque(b, a.Signature)
	}
}

// unmarshalTBS reads what marshalTBS writes.
func (a *AuthData) unmarshalTBS(s *cryptobyte.String) bool {
	var typ uint8
	if !s.ReadUint8(&typ) || AuthType(typ) > maxAuthType {
		return false
	}
	a.Type = AuthType(typ)
	switch a.Type {
	case AuthClientSignature:
		return s.ReadUint32(&a.SenderIndex) && s.ReadUint64(&a.Timestamp)
	case AuthKeyPackageSignature:
		return wire.ReadOpaqueMax(s, &a.KeyPackageRef, MaxHashLen) && len(a.KeyPackageRef) > 0 &&
			s.ReadUint64(&a.Timestamp)
	}
	return true
}

// UnmarshalWire implements wire.Unmarshaler.
func (a *AuthData) UnmarshalWire(s *cryptobyte.String) bool {
	if !a.unmarshalTBS(s) {
		return false
	}
	if a.Type == AuthAnonymous {
		return true
	}
	return wire.ReadOpaqueMax(s, &a.Signature, MaxSignatureLen) && len(a.Signature) > 0
}

// WelcomeInfoRequest is the body of request type 15.
type WelcomeInfoRequest struct {
	GroupID []byte
	Epoch   uint64
}

// ExternalCommitInfoRequest is the body of request type 16.
type ExternalCommitInfoRequest struct {
	GroupID []byte
}

// UploadAttachmentHeader is the body of request type 17; exactly
// ContentLength raw bytes follow the DSRequest on the wire.
type UploadAttachmentHeader struct {
	GroupID       []byte
	ContentLength uint64
	ContentHash   []byte // the group suite's Hash of the ciphertext
}

// AttachmentRef is the body of request types 18 (download) and 19 (delete).
type AttachmentRef struct {
	GroupID []byte
	Token   []byte
}

// AttachmentCopyRequest is the body of request type 20.
type AttachmentCopyRequest struct {
	GroupID           []byte
	Token             []byte
	TargetGroupID     []byte
	TargetSenderIndex uint32
}

// RequestBody is DSRequestBody: Type selects which one field is used. The
// MLS values of types 1..10 and 14 are decoded by the MLS codec, with the
// checks of docs/protocol.md §5.2 (see CreateGroupRequest).
type RequestBody struct {
	Type RequestType
	// CreateGroup is the body of CreateGroup.
	CreateGroup CreateGroupRequest
	// GroupUpdate is the body of DeleteGroup, RemoveUsers, RemoveClients,
	// UpdateClient, ExternalJoin and ReInitializeGroup, and the first field
	// of AddUsers and AddClients.
	GroupUpdate MLSGroupUpdate
	// WelcomePackages is the second field of AddUsers and AddClients:
	// 1..MaxWelcomePackages Welcomes.
	WelcomePackages []WelcomePackage
	// Message is the proposal of SelfRemoveClient (a member's Remove
	// PublicMessage) or the application message of SendMessage (a
	// PrivateMessage).
	Message mls.MLSMessage

	WelcomeInfo        WelcomeInfoRequest        // WelcomeInfo
	ExternalCommitInfo ExternalCommitInfoRequest // ExternalCommitInfo
	Upload             UploadAttachmentHeader    // AttachmentUpload
	Attachment         AttachmentRef             // AttachmentDownload, AttachmentDelete
	Copy               AttachmentCopyRequest     // AttachmentCopy
}

// MarshalWire implements wire.Marshaler.
func (r *RequestBody) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint8(uint8(r.Type))
	switch r.Type {
	case RequestGroupID:
	case WelcomeInfo:
		wire.AddOpaque(b, r.WelcomeInfo.GroupID)
		b.AddUint64(r.WelcomeInfo.Epoch)
	case ExternalCommitInfo:
		wire.AddOpaque(b, r.ExternalCommitInfo.GroupID)
	case AttachmentUpload:
		wire.AddOpaque(b, r.Upload.GroupID)
		b.AddUint64(r.Upload.ContentLength)
		wire.AddOpaque(b, r.Upload.ContentHash)
	case AttachmentDownload, AttachmentDelete:
		wire.AddOpaque(b, r.Attachment.GroupID)
		wire.AddOpaque(b, r.Attachment.Token)
	case AttachmentCopy:
		wire.AddOpaque(b, r.Copy.GroupID)
		wire.AddOpaque(b, r.Copy.Token)
		wire.AddOpaque(b, r.Copy.TargetGroupID)
		b.AddUint32(r.Copy.TargetSenderIndex)
	default:
		if !r.marshalMLSBody(b) {
			b.SetError(errNoClientBody)
		}
	}
}

// UnmarshalWire implements wire.Unmarshaler. It refuses unknown types and
// the provider-only types 11..13, which have no client body.
func (r *RequestBody) UnmarshalWire(s *cryptobyte.String) bool {
	var typ uint8
	if !s.ReadUint8(&typ) {
		return false
	}
	r.Type = RequestType(typ)
	switch r.Type {
	case RequestGroupID:
		return true
	case WelcomeInfo:
		return readGroupID(s, &r.WelcomeInfo.GroupID) && s.ReadUint64(&r.WelcomeInfo.Epoch)
	case ExternalCommitInfo:
		return readGroupID(s, &r.ExternalCommitInfo.GroupID)
	case AttachmentUpload:
		return readGroupID(s, &r.Upload.GroupID) && s.ReadUint64(&r.Upload.ContentLength) &&
			r.Upload.ContentLength <= MaxAttachmentLen &&
			wire.ReadOpaqueMax(s, &r.Upload.ContentHash, MaxHashLen) && len(r.Upload.ContentHash) >= 32
	case AttachmentDownload, AttachmentDelete:
		return readGroupID(s, &r.Attachment.GroupID) && readToken(s, &r.Attachment.Token)
	case AttachmentCopy:
		return readGroupID(s, &r.Copy.GroupID) && readToken(s, &r.Copy.Token) &&
			readGroupID(s, &r.Copy.TargetGroupID) && s.ReadUint32(&r.Copy.TargetSenderIndex)
	}
	return r.unmarshalMLSBody(s)
}

// readToken reads a non-empty attachment token.
func readToken(s *cryptobyte.String, out *[]byte) bool {
	return wire.ReadOpaqueMax(s, out, MaxTokenLen) && len(*out) > 0
}

// DSRequest is the client-to-DS framing of docs/protocol.md §5.
type DSRequest struct {
	Body RequestBody
	Auth AuthData

	// signed holds, after decoding, the exact DSRequestTBS bytes.
	signed []byte
}

// MarshalTBS writes DSRequestTBS: protocol_version, request_body, auth_type
// and the auth variant's fields before the signature.
func (r *DSRequest) MarshalTBS(b *cryptobyte.Builder) {
	b.AddUint16(ProtocolVersion)
	r.Body.MarshalWire(b)
	r.Auth.marshalTBS(b)
}

// MarshalWire implements wire.Marshaler.
func (r *DSRequest) MarshalWire(b *cryptobyte.Builder) {
	r.MarshalTBS(b)
	if r.Auth.Type != AuthAnonymous {
		wire.AddOpaque(b, r.Auth.Signature)
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (r *DSRequest) UnmarshalWire(s *cryptobyte.String) bool {
	start := *s
	var version uint16
	if !s.ReadUint16(&version) || version != ProtocolVersion ||
		!r.Body.UnmarshalWire(s) || !r.Auth.unmarshalTBS(s) {
		return false
	}
	r.signed = start[:len(start)-len(*s)]
	if r.Auth.Type == AuthAnonymous {
		return true
	}
	return wire.ReadOpaqueMax(s, &r.Auth.Signature, MaxSignatureLen) && len(r.Auth.Signature) > 0
}

// SignedBytes returns DSRequestTBS: the exact input bytes for a decoded
// request, a fresh encoding otherwise.
func (r *DSRequest) SignedBytes() ([]byte, error) {
	if r.signed != nil {
		return r.signed, nil
	}
	return wire.Marshal(dsTBS{r})
}

type dsTBS struct{ r *DSRequest }

func (t dsTBS) MarshalWire(b *cryptobyte.Builder) { t.r.MarshalTBS(b) }
