package mls

import (
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// NodeType says whether a tree node is a leaf or a parent (RFC 9420 §7.8).
type NodeType uint8

// The node types of RFC 9420 §7.8.
const (
	NodeLeaf   NodeType = 1
	NodeParent NodeType = 2
)

// ParentNode is a non-blank intermediate node of the ratchet tree (RFC 9420
// §7.1).
type ParentNode struct {
	EncryptionKey  []byte
	ParentHash     []byte
	UnmergedLeaves []uint32
}

// MarshalWire implements wire.Marshaler.
func (p *ParentNode) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, p.EncryptionKey)
	wire.AddOpaque(b, p.ParentHash)
	addUint32List(b, p.UnmergedLeaves)
}

// UnmarshalWire implements wire.Unmarshaler.
func (p *ParentNode) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadOpaque(s, &p.EncryptionKey) && wire.ReadOpaque(s, &p.ParentHash) &&
		readUint32List(s, &p.UnmergedLeaves)
}

// Node is a non-blank node of the ratchet tree: Leaf is set for NodeLeaf,
// Parent for NodeParent.
type Node struct {
	Type   NodeType
	Leaf   *LeafNode
	Parent *ParentNode
}

// MarshalWire implements wire.Marshaler.
func (n *Node) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint8(uint8(n.Type))
	switch {
	case n.Type == NodeLeaf && n.Leaf != nil:
		n.Leaf.MarshalWire(b)
	case n.Type == NodeParent && n.Parent != nil:
		n.Parent.MarshalWire(b)
	default:
		b.SetError(errEncoding)
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (n *Node) UnmarshalWire(s *cryptobyte.String) bool {
	*n = Node{}
	if !s.ReadUint8((*uint8)(&n.Type)) {
		return false
	}
	switch n.Type {
	case NodeLeaf:
		n.Leaf = new(LeafNode)
		return n.Leaf.UnmarshalWire(s)
	case NodeParent:
		n.Parent = new(ParentNode)
		return n.Parent.UnmarshalWire(s)
	default:
		return false
	}
}

// RatchetTree is the wire form of a ratchet tree, optional<Node>
// ratchet_tree<V> (RFC 9420 §12.4.3.3): nodes in array order, nil for a
// blank node. Its shape is checked when it is turned into a Tree.
type RatchetTree []*Node

// MarshalWire implements wire.Marshaler.
func (t *RatchetTree) MarshalWire(b *cryptobyte.Builder) {
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, n := range *t {
			wire.AddOptional(b, n != nil)
			if n != nil {
				n.MarshalWire(b)
			}
		}
	})
}

// UnmarshalWire implements wire.Unmarshaler. At most 2*MaxLeaves-1 nodes
// are accepted.
func (t *RatchetTree) UnmarshalWire(s *cryptobyte.String) bool {
	var body cryptobyte.String
	if !wire.ReadVector(s, &body) {
		return false
	}
	var nodes RatchetTree
	for !body.Empty() {
		if len(nodes) >= maxTreeNodes {
			return false
		}
		var present bool
		if !wire.ReadOptional(&body, &present) {
			return false
		}
		var n *Node
		if present {
			n = new(Node)
			if !n.UnmarshalWire(&body) {
				return false
			}
		}
		nodes = append(nodes, n)
	}
	*t = nodes
	return true
}

// clone returns a deep copy of n.
func (n *Node) clone() *Node {
	c := &Node{Type: n.Type}
	if n.Leaf != nil {
		c.Leaf = n.Leaf.clone()
	}
	if n.Parent != nil {
		c.Parent = &ParentNode{
			EncryptionKey:  cloneBytes(n.Parent.EncryptionKey),
			ParentHash:     cloneBytes(n.Parent.ParentHash),
			UnmergedLeaves: append([]uint32(nil), n.Parent.UnmergedLeaves...),
		}
	}
	return c
}
