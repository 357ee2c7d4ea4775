package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ExtensionType identifies an extension (RFC 9420 §17.3).
type ExtensionType uint16

// The extension types of RFC 9420 §17.3.
const (
	ExtApplicationID        ExtensionType = 1
	ExtRatchetTree          ExtensionType = 2
	ExtRequiredCapabilities ExtensionType = 3
	ExtExternalPub          ExtensionType = 4
	ExtExternalSenders      ExtensionType = 5
)

// ExtLastResort is the KeyPackage extension of draft-ietf-mls-extensions
// (-03, section "Last resort KeyPackages"; empty extension_data) that
// marks a KeyPackage as its client's last-resort one: a Delivery Service
// hands it out when no other is left and does not use it up. It is not a
// default extension, so a KeyPackage that carries it lists it in its
// leaf's capabilities.
const ExtLastResort ExtensionType = 0x000A

// isDefaultExtension reports whether t is one of the RFC 9420 extensions
// every client supports without listing it in its capabilities (§7.2).
func isDefaultExtension(t ExtensionType) bool {
	return t >= ExtApplicationID && t <= ExtExternalSenders
}

// extensionPlace is a kind of object that carries extensions, as RFC 9420
// §17.3's "Message(s)" column names them.
type extensionPlace uint8

const (
	inKeyPackage extensionPlace = iota
	inLeafNode
	inGroupContext
	inGroupInfo
)

// String names p as in error messages.
func (p extensionPlace) String() string {
	return [...]string{"KeyPackage", "leaf node", "GroupContext", "GroupInfo"}[p]
}

// allowedIn reports whether an extension of type t may appear in an
// object of the given kind: each RFC 9420 extension only where §17.3's
// registry lets it (application_id in leaf nodes, ratchet_tree and
// external_pub in GroupInfo, required_capabilities and external_senders in
// the GroupContext), other types anywhere, GREASE included (§13.5).
// OpenMLS refuses, when it decodes one, a KeyPackage, leaf node or
// GroupContext that carries an RFC 9420 extension elsewhere.
func (t ExtensionType) allowedIn(p extensionPlace) bool {
	switch t {
	case ExtApplicationID:
		return p == inLeafNode
	case ExtRatchetTree, ExtExternalPub:
		return p == inGroupInfo
	case ExtRequiredCapabilities, ExtExternalSenders:
		return p == inGroupContext
	}
	return true
}

// checkPlace refuses extensions that may not appear in an object of kind
// p (allowedIn).
func (l Extensions) checkPlace(p extensionPlace) error {
	for _, e := range l {
		if !e.Type.allowedIn(p) {
			return fmt.Errorf("extension %d is not allowed in a %s (RFC 9420 §17.3)", e.Type, p)
		}
	}
	return nil
}

// IsGREASE reports whether v is one of the GREASE values of RFC 9420 §13.5
// (0x0A0A, 0x1A1A, ..., 0xEAEA).
func IsGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>12 == (v>>4)&0x0f && v>>12 <= 0xe
}

// Extension is a typed opaque extension. Extensions of unknown types are
// carried unchanged.
type Extension struct {
	Type ExtensionType
	Data []byte
}

// MarshalWire implements wire.Marshaler.
func (e *Extension) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(uint16(e.Type))
	wire.AddOpaque(b, e.Data)
}

// UnmarshalWire implements wire.Unmarshaler.
func (e *Extension) UnmarshalWire(s *cryptobyte.String) bool {
	return s.ReadUint16((*uint16)(&e.Type)) && wire.ReadOpaque(s, &e.Data)
}

// Extensions is an extension list (Extension extensions<V>).
type Extensions []Extension

// MarshalWire implements wire.Marshaler.
func (l *Extensions) MarshalWire(b *cryptobyte.Builder) { addList(b, *l) }

// UnmarshalWire implements wire.Unmarshaler.
func (l *Extensions) UnmarshalWire(s *cryptobyte.String) bool {
	return readList(s, (*[]Extension)(l), maxListItems)
}

// Find returns the data of the extension of type t and whether it is there.
func (l Extensions) Find(t ExtensionType) ([]byte, bool) {
	for _, e := range l {
		if e.Type == t {
			return e.Data, true
		}
	}
	return nil, false
}

// checkUnique returns an error if an extension type appears twice (RFC 9420
// §13.4).
func (l Extensions) checkUnique() error {
	seen := make(map[ExtensionType]struct{}, len(l))
	for _, e := range l {
		if _, dup := seen[e.Type]; dup {
			return fmt.Errorf("duplicate extension type %d", e.Type)
		}
		seen[e.Type] = struct{}{}
	}
	return nil
}

func (l Extensions) clone() Extensions {
	if l == nil {
		return nil
	}
	out := make(Extensions, len(l))
	for i, e := range l {
		out[i] = Extension{Type: e.Type, Data: cloneBytes(e.Data)}
	}
	return out
}

// RequiredCapabilities is the body of the required_capabilities extension
// (RFC 9420 §11.1).
type RequiredCapabilities struct {
	ExtensionTypes  []ExtensionType
	ProposalTypes   []ProposalType
	CredentialTypes []CredentialType
}

// MarshalWire implements wire.Marshaler.
func (r *RequiredCapabilities) MarshalWire(b *cryptobyte.Builder) {
	addUint16List(b, r.ExtensionTypes)
	addUint16List(b, r.ProposalTypes)
	addUint16List(b, r.CredentialTypes)
}

// UnmarshalWire implements wire.Unmarshaler.
func (r *RequiredCapabilities) UnmarshalWire(s *cryptobyte.String) bool {
	return readUint16List(s, &r.ExtensionTypes) && readUint16List(s, &r.ProposalTypes) &&
		readUint16List(s, &r.CredentialTypes)
}

// ExternalSender is one entry of the external_senders extension (RFC 9420
// §12.1.8.1).
type ExternalSender struct {
	SignatureKey []byte
	Credential   Credential
}

// MarshalWire implements wire.Marshaler.
func (e *ExternalSender) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, e.SignatureKey)
	e.Credential.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler.
func (e *ExternalSender) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadOpaque(s, &e.SignatureKey) && e.Credential.UnmarshalWire(s)
}

// externalSenders is the body of the external_senders extension.
type externalSenders []ExternalSender

func (l *externalSenders) MarshalWire(b *cryptobyte.Builder) { addList(b, *l) }
func (l *externalSenders) UnmarshalWire(s *cryptobyte.String) bool {
	return readList(s, (*[]ExternalSender)(l), maxListItems)
}

// ExternalSenders decodes the external_senders extension of l, if any.
func (l Extensions) ExternalSenders() ([]ExternalSender, error) {
	data, ok := l.Find(ExtExternalSenders)
	if !ok {
		return nil, nil
	}
	var es externalSenders
	if err := wire.Unmarshal(data, &es, "external_senders extension"); err != nil {
		return nil, err
	}
	return es, nil
}

// RequiredCapabilities decodes the required_capabilities extension of l, if
// any.
func (l Extensions) RequiredCapabilities() (*RequiredCapabilities, error) {
	data, ok := l.Find(ExtRequiredCapabilities)
	if !ok {
		return nil, nil
	}
	var rc RequiredCapabilities
	if err := wire.Unmarshal(data, &rc, "required_capabilities extension"); err != nil {
		return nil, err
	}
	return &rc, nil
}

// externalPub is the body of the external_pub extension (RFC 9420 §12.4.3.2).
type externalPub struct{ key []byte }

func (e *externalPub) MarshalWire(b *cryptobyte.Builder)       { wire.AddOpaque(b, e.key) }
func (e *externalPub) UnmarshalWire(s *cryptobyte.String) bool { return wire.ReadOpaque(s, &e.key) }

// ExternalPub decodes the external_pub extension of l, if any.
func (l Extensions) ExternalPub() ([]byte, error) {
	data, ok := l.Find(ExtExternalPub)
	if !ok {
		return nil, nil
	}
	var e externalPub
	if err := wire.Unmarshal(data, &e, "external_pub extension"); err != nil {
		return nil, err
	}
	return e.key, nil
}
