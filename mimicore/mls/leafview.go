package mls

import (
	"bytes"

	"golang.org/x/crypto/cryptobyte"
)

// LeafView is a read-only view of a leaf node held in a shared Tree, as
// returned by GroupState.Member and Tree.Leaf. It is a single pointer, so
// taking and passing one costs no allocation; the scalar getters and the
// comparisons allocate nothing either. Getters that return slices return
// copies, and LeafNode returns a deep copy, so nothing a caller does with
// a result can change the tree. The zero LeafView stands for a blank leaf:
// its getters return zero values.
type LeafView struct{ l *LeafNode }

// IsBlank reports whether v is the zero view.
func (v LeafView) IsBlank() bool { return v.l == nil }

// LeafNode returns a deep copy of the leaf node, or nil for a blank leaf.
func (v LeafView) LeafNode() *LeafNode {
	if v.l == nil {
		return nil
	}
	return v.l.clone()
}

// EncryptionKey returns a copy of the leaf's HPKE public key.
func (v LeafView) EncryptionKey() []byte {
	if v.l == nil {
		return nil
	}
	return cloneBytes(v.l.EncryptionKey)
}

// SignatureKey returns a copy of the leaf's signature public key.
func (v LeafView) SignatureKey() []byte {
	if v.l == nil {
		return nil
	}
	return cloneBytes(v.l.SignatureKey)
}

// HasSignatureKey reports whether the leaf's signature key is key, without
// copying it.
func (v LeafView) HasSignatureKey(key []byte) bool {
	return v.l != nil && bytes.Equal(v.l.SignatureKey, key)
}

// HasEncryptionKey reports whether the leaf's encryption key is key,
// without copying it.
func (v LeafView) HasEncryptionKey(key []byte) bool {
	return v.l != nil && bytes.Equal(v.l.EncryptionKey, key)
}

// CredentialType returns the type of the leaf's credential.
func (v LeafView) CredentialType() CredentialType {
	if v.l == nil {
		return 0
	}
	return v.l.Credential.Type
}

// Credential returns a deep copy of the leaf's credential.
func (v LeafView) Credential() Credential {
	if v.l == nil {
		return Credential{}
	}
	return v.l.Credential.clone()
}

// HasIdentity reports whether the leaf holds a basic credential with the
// given identity, without copying it.
func (v LeafView) HasIdentity(identity []byte) bool {
	return v.l != nil && v.l.Credential.Type == CredentialBasic && bytes.Equal(v.l.Credential.Identity, identity)
}

// IdentityHasPrefix reports whether the leaf holds a basic credential whose
// identity begins with prefix, without copying it: how a caller finds the
// leaves of one user among client identities that share a user part.
func (v LeafView) IdentityHasPrefix(prefix []byte) bool {
	return v.l != nil && v.l.Credential.Type == CredentialBasic && bytes.HasPrefix(v.l.Credential.Identity, prefix)
}

// Capabilities returns a copy of the leaf's capabilities.
func (v LeafView) Capabilities() Capabilities {
	if v.l == nil {
		return Capabilities{}
	}
	return v.l.Capabilities.clone()
}

// Source returns how the leaf node was made.
func (v LeafView) Source() LeafNodeSource {
	if v.l == nil {
		return 0
	}
	return v.l.Source
}

// Lifetime returns the leaf's lifetime (meaningful for SourceKeyPackage).
func (v LeafView) Lifetime() Lifetime {
	if v.l == nil {
		return Lifetime{}
	}
	return v.l.Lifetime
}

// Extensions returns a copy of the leaf's extensions.
func (v LeafView) Extensions() Extensions {
	if v.l == nil {
		return nil
	}
	return v.l.Extensions.clone()
}

// MarshalWire implements wire.Marshaler: it encodes the leaf node without
// copying it. A blank leaf is an encoding error.
func (v LeafView) MarshalWire(b *cryptobyte.Builder) {
	if v.l == nil {
		b.SetError(errEncoding)
		return
	}
	v.l.MarshalWire(b)
}
