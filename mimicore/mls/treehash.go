package mls

import (
	"bytes"
	"fmt"
	"sync"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TreeHash returns a copy of the tree hash of the root (RFC 9420 §7.8).
// Hashes are cached per node, so after a change only the changed path is
// rehashed. The cache of a tree built by TreeFromRatchetTree is filled
// lazily by its first hash, so callers sharing such a Tree between
// goroutines call TreeHash once before sharing it; the tree of a
// GroupState is always fully hashed.
func (t *Tree) TreeHash() ([]byte, error) {
	h, err := t.rootHash()
	return cloneBytes(h), err
}

// rootHash returns the tree hash of the root, from the cache when it can.
// The result is shared with the cache and must not be modified.
func (t *Tree) rootHash() ([]byte, error) {
	return t.treeHash(root(t.leaves))
}

// treeHash returns the tree hash of node x, from the cache when it can.
func (t *Tree) treeHash(x uint32) ([]byte, error) {
	if s := t.get(x); s != nil && s.hash != nil {
		return s.hash, nil
	}
	h, err := t.computeHash(x, nil)
	if err != nil {
		return nil, err
	}
	t.mut(x).hash = h
	return h, nil
}

// computeHash hashes node x. When exclude is non-nil, the leaves it lists
// are treated as blank and dropped from unmerged_leaves lists (the
// "original sibling tree hash" of RFC 9420 §7.9.1); cached hashes are used
// only for subtrees holding none of them.
func (t *Tree) computeHash(x uint32, exclude []uint32) ([]byte, error) {
	bufp := hashInputs.Get().(*[]byte)
	defer hashInputs.Put(bufp)
	b := cryptobyte.NewBuilder((*bufp)[:0])
	n := t.node(x)
	if level(x) == 0 {
		leaf := x / 2
		if contains(exclude, leaf) {
			n = nil
		}
		b.AddUint8(uint8(NodeLeaf))
		b.AddUint32(leaf)
		wire.AddOptional(b, n != nil)
		if n != nil {
			n.Leaf.MarshalWire(b)
		}
	} else {
		var lh, rh []byte
		var err error
		if lh, err = t.hashExcluding(left(x), exclude); err != nil {
			return nil, err
		}
		if rh, err = t.hashExcluding(right(x), exclude); err != nil {
			return nil, err
		}
		b.AddUint8(uint8(NodeParent))
		wire.AddOptional(b, n != nil)
		if n != nil {
			p := n.Parent
			if len(exclude) > 0 {
				np := *p
				np.UnmergedLeaves = nil
				for _, l := range p.UnmergedLeaves {
					if !contains(exclude, l) {
						np.UnmergedLeaves = append(np.UnmergedLeaves, l)
					}
				}
				p = &np
			}
			p.MarshalWire(b)
		}
		wire.AddOpaque(b, lh)
		wire.AddOpaque(b, rh)
	}
	enc, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding tree hash input of node %d: %w", x, err)
	}
	if cap(enc) <= maxPooledHashInput {
		*bufp = enc[:0]
	}
	return t.s.hash(enc), nil
}

// hashInputs recycles the buffers tree hash inputs are encoded in: a cold
// hash of a large tree encodes every node once, and the buffers would
// otherwise dominate its allocations.
var hashInputs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooledHashInput bounds the buffers kept for reuse.
const maxPooledHashInput = 16 << 10

// hashExcluding returns the tree hash of x with the leaves in exclude
// blanked, using the cache when none of them lies under x.
func (t *Tree) hashExcluding(x uint32, exclude []uint32) ([]byte, error) {
	for _, l := range exclude {
		if isInSubtree(leafNode(l), x) {
			return t.computeHash(x, exclude)
		}
	}
	return t.treeHash(x)
}

// parentHash computes the parent hash of parent node p with copath child s
// (RFC 9420 §7.9): Hash(ParentHashInput{p.encryption_key, p.parent_hash,
// original sibling tree hash of s}).
func (t *Tree) parentHash(p *ParentNode, s uint32) ([]byte, error) {
	sh, err := t.hashExcluding(s, p.UnmergedLeaves)
	if err != nil {
		return nil, err
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, 256))
	wire.AddOpaque(b, p.EncryptionKey)
	wire.AddOpaque(b, p.ParentHash)
	wire.AddOpaque(b, sh)
	enc, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding parent hash input: %w", err)
	}
	return t.s.hash(enc), nil
}

// nodeParentHash returns the parent_hash field of a leaf or parent node
// (empty for leaves whose source is not commit).
func nodeParentHash(n *Node) []byte {
	if n.Parent != nil {
		return n.Parent.ParentHash
	}
	if n.Leaf.Source == SourceCommit {
		return n.Leaf.ParentHash
	}
	return nil
}

// verifyParentHashes checks that every non-blank parent node is parent-hash
// valid (RFC 9420 §7.9.2): for one of its children C, with S the other
// child, some node D in C's resolution carries the parent hash of P with
// copath child S, and P's unmerged leaves under C are exactly the rest of
// C's resolution.
func (t *Tree) verifyParentHashes() error {
	var res []uint32
	for x := uint32(1); x < t.width(); x += 2 {
		p := t.parentNode(x)
		if p == nil {
			continue
		}
		valid := false
		for _, pair := range [2][2]uint32{{left(x), right(x)}, {right(x), left(x)}} {
			c, s := pair[0], pair[1]
			ph, err := t.parentHash(p, s)
			if err != nil {
				return err
			}
			res = t.resolution(c, res[:0])
			for _, d := range res {
				if !bytes.Equal(nodeParentHash(t.node(d)), ph) {
					continue
				}
				if t.unmergedMatch(p, c, res, d) {
					valid = true
					break
				}
			}
			if valid {
				break
			}
		}
		if !valid {
			return fmt.Errorf("%w: parent node %d is not parent-hash valid", ErrInvalidTree, x)
		}
	}
	return nil
}

// unmergedMatch reports whether the unmerged leaves of p under c equal the
// resolution res of c without d.
func (t *Tree) unmergedMatch(p *ParentNode, c uint32, res []uint32, d uint32) bool {
	n := 0
	for _, l := range p.UnmergedLeaves {
		if isInSubtree(leafNode(l), c) {
			if !contains(res, leafNode(l)) || leafNode(l) == d {
				return false
			}
			n++
		}
	}
	return n == len(res)-1
}
