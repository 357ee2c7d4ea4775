package mls

import (
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Commit applies proposals to a group and optionally refreshes the
// committer's path (RFC 9420 §12.4).
type Commit struct {
	Proposals []ProposalOrRef
	Path      *UpdatePath
}

// MarshalWire implements wire.Marshaler.
func (c *Commit) MarshalWire(b *cryptobyte.Builder) {
	addList(b, c.Proposals)
	wire.AddOptional(b, c.Path != nil)
	if c.Path != nil {
		c.Path.MarshalWire(b)
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (c *Commit) UnmarshalWire(s *cryptobyte.String) bool {
	*c = Commit{}
	var present bool
	if !readList(s, &c.Proposals, maxListItems) || !wire.ReadOptional(s, &present) {
		return false
	}
	if present {
		c.Path = new(UpdatePath)
		return c.Path.UnmarshalWire(s)
	}
	return true
}

// UpdatePathNode is a new public key on the committer's filtered direct path
// and the path secret encrypted to each node of the copath resolution (RFC
// 9420 §7.6).
type UpdatePathNode struct {
	EncryptionKey        []byte
	EncryptedPathSecrets []HPKECiphertext
}

// MarshalWire implements wire.Marshaler.
func (n *UpdatePathNode) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, n.EncryptionKey)
	addList(b, n.EncryptedPathSecrets)
}

// UnmarshalWire implements wire.Unmarshaler.
func (n *UpdatePathNode) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadOpaque(s, &n.EncryptionKey) && readList(s, &n.EncryptedPathSecrets, maxTreeNodes)
}

// UpdatePath is the committer's new leaf and path (RFC 9420 §7.6).
type UpdatePath struct {
	LeafNode LeafNode
	Nodes    []UpdatePathNode
}

// MarshalWire implements wire.Marshaler.
func (u *UpdatePath) MarshalWire(b *cryptobyte.Builder) {
	u.LeafNode.MarshalWire(b)
	addList(b, u.Nodes)
}

// UnmarshalWire implements wire.Unmarshaler.
func (u *UpdatePath) UnmarshalWire(s *cryptobyte.String) bool {
	return u.LeafNode.UnmarshalWire(s) && readList(s, &u.Nodes, 32)
}
