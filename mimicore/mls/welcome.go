package mls

import (
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// EncryptedGroupSecrets is the GroupSecrets of one new member, encrypted to
// its KeyPackage init key (RFC 9420 §12.4.3.1).
type EncryptedGroupSecrets struct {
	NewMember             []byte
	EncryptedGroupSecrets HPKECiphertext
}

// MarshalWire implements wire.Marshaler.
func (e *EncryptedGroupSecrets) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, e.NewMember)
	e.EncryptedGroupSecrets.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler.
func (e *EncryptedGroupSecrets) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadOpaque(s, &e.NewMember) && e.EncryptedGroupSecrets.UnmarshalWire(s)
}

// Welcome brings new members into a group (RFC 9420 §12.4.3.1).
type Welcome struct {
	CipherSuite        CipherSuite
	Secrets            []EncryptedGroupSecrets
	EncryptedGroupInfo []byte
}

// MarshalWire implements wire.Marshaler.
func (w *Welcome) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(uint16(w.CipherSuite))
	addList(b, w.Secrets)
	wire.AddOpaque(b, w.EncryptedGroupInfo)
}

// UnmarshalWire implements wire.Unmarshaler.
func (w *Welcome) UnmarshalWire(s *cryptobyte.String) bool {
	return s.ReadUint16((*uint16)(&w.CipherSuite)) && readList(s, &w.Secrets, maxListItems) &&
		wire.ReadOpaque(s, &w.EncryptedGroupInfo)
}

// NewMembers returns the KeyPackageRefs the Welcome is addressed to.
func (w *Welcome) NewMembers() [][]byte {
	refs := make([][]byte, len(w.Secrets))
	for i := range w.Secrets {
		refs[i] = w.Secrets[i].NewMember
	}
	return refs
}

// GroupSecrets is what a Welcome gives each new member (RFC 9420
// §12.4.3.1). PathSecret is nil when absent.
type GroupSecrets struct {
	JoinerSecret []byte
	PathSecret   []byte
	PSKs         []PreSharedKeyID
}

// MarshalWire implements wire.Marshaler.
func (g *GroupSecrets) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, g.JoinerSecret)
	wire.AddOptional(b, g.PathSecret != nil)
	if g.PathSecret != nil {
		wire.AddOpaque(b, g.PathSecret)
	}
	addList(b, g.PSKs)
}

// UnmarshalWire implements wire.Unmarshaler.
func (g *GroupSecrets) UnmarshalWire(s *cryptobyte.String) bool {
	*g = GroupSecrets{}
	var present bool
	if !wire.ReadOpaque(s, &g.JoinerSecret) || !wire.ReadOptional(s, &present) {
		return false
	}
	if present {
		if !wire.ReadOpaque(s, &g.PathSecret) {
			return false
		}
		if g.PathSecret == nil {
			g.PathSecret = []byte{}
		}
	}
	return readList(s, &g.PSKs, maxListItems)
}
