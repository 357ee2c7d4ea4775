package mls

import (
	"bytes"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Persistence in parts. MarshalBinary and DecodeGroupState move a whole
// state, which costs O(n) bytes and a full rehash of the tree on every
// decode. A store that keeps a large group instead keeps the state in
// parts: the GroupContext and transcript values, and one record per tree
// position holding the encoded node and its cached tree hash. After a
// commit it writes only the positions that changed (StoredChanges, O(log
// n) for a commit with a path), and it rebuilds the state from its records
// without rehashing or re-verifying anything (RestoreGroupState).

// StoredNode is one position of a GroupState's ratchet tree as a store
// keeps it.
type StoredNode struct {
	// Index is the node's position in array order (RFC 9420 §4.1).
	Index uint32
	// Node is the wire encoding of the node (struct Node of RFC 9420
	// §7.8), nil when the position is blank.
	Node []byte
	// Hash is the tree hash of the subtree rooted at the position (RFC
	// 9420 §7.8), which blank positions have too.
	Hash []byte
}

// StoredState is a GroupState in the parts a store keeps. None of its byte
// slices aliases the GroupState it came from or the one built from it.
type StoredState struct {
	// Context is the wire encoding of the GroupContext.
	Context []byte
	// InterimTranscriptHash and ConfirmationTag are those of the epoch.
	InterimTranscriptHash []byte
	ConfirmationTag       []byte
	// Width is the number of positions of the tree (2*leaves - 1, leaves a
	// power of two): a stored position at or past Width no longer exists.
	Width uint32
	// Nodes are the tree's positions in index order: every position from
	// 0 to Width-1 for GroupState.Stored, only those that changed for
	// GroupState.StoredChanges.
	Nodes []StoredNode
}

// Stored returns g in parts, with every position of its tree.
func (g *GroupState) Stored() (*StoredState, error) {
	return g.StoredChanges(nil)
}

// StoredChanges returns g in parts with only the tree positions that differ
// from prev's (prev's positions past Width are gone): a store that holds
// prev's positions and applies these, then drops those at or past Width,
// holds g's. With prev nil, every position is returned.
//
// The cost is that of what changed, not of the group: the tree is shared
// copy-on-write in chunks of 64 positions, so unchanged chunks are skipped
// by comparing pointers and only the positions of changed chunks are
// compared. For a state that ApplyCommit derived from prev, that is the
// committer's path and the leaves the commit touched. prev may be any
// state, of this group or not; the result is then larger but still exact.
func (g *GroupState) StoredChanges(prev *GroupState) (*StoredState, error) {
	ctx, err := marshal(&g.ctx)
	if err != nil {
		return nil, fmt.Errorf("storing group state: %w", err)
	}
	st := &StoredState{Context: ctx, InterimTranscriptHash: cloneBytes(g.interim),
		ConfirmationTag: cloneBytes(g.confTag), Width: g.tree.width()}
	var old *Tree
	var oldWidth uint32
	if prev != nil {
		old, oldWidth = prev.tree, prev.tree.width()
	}
	t := g.tree
	for ci, c := range t.chunks {
		var oc *chunk
		if old != nil && ci < len(old.chunks) {
			oc = old.chunks[ci]
		}
		lo := uint32(ci) * chunkSize
		hi := min(lo+chunkSize, st.Width)
		if oc == c && hi <= oldWidth {
			continue // shared chunk, every position of it already stored
		}
		for x := lo; x < hi; x++ {
			var cur slot
			if c != nil {
				cur = c.slots[x-lo]
			}
			if x < oldWidth && oc != nil {
				if was := &oc.slots[x-lo]; cur.node == was.node && bytes.Equal(cur.hash, was.hash) {
					continue // nodes are immutable: the same pointer is the same node
				}
			}
			if cur.hash == nil {
				return nil, fmt.Errorf("storing group state: tree position %d has no cached hash", x)
			}
			sn := StoredNode{Index: x, Hash: cloneBytes(cur.hash)}
			if cur.node != nil {
				if sn.Node, err = marshal(cur.node); err != nil {
					return nil, fmt.Errorf("storing group state: encoding tree position %d: %w", x, err)
				}
			}
			st.Nodes = append(st.Nodes, sn)
		}
	}
	return st, nil
}

// RestoreGroupState rebuilds a GroupState from parts that GroupState.Stored
// produced (or a store assembled from Stored and StoredChanges records):
// st.Nodes must hold every position from 0 to st.Width-1 once, in any
// order. The parts are trusted to come from this package through the
// caller's own store: nothing is rehashed or re-verified (no leaf
// signature, parent hash or capability check), which is what makes a load
// cost O(n) decoding rather than O(n) hashing. Only the shape is checked:
// the width, the node types at their positions, hash lengths, unmerged
// leaves below their parent, and that the root's stored hash is the
// context's tree hash. The result does not alias st.
func RestoreGroupState(st *StoredState) (*GroupState, error) {
	fail := func(format string, args ...any) (*GroupState, error) {
		return nil, fmt.Errorf("%w: %s", ErrStateEncoding, fmt.Sprintf(format, args...))
	}
	var ctx GroupContext
	if err := wire.Unmarshal(cloneBytes(st.Context), &ctx, "group context"); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	s, err := ctx.CipherSuite.params()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	w := st.Width
	leaves := (w + 1) / 2
	if w == 0 || w%2 == 0 || leaves&(leaves-1) != 0 || leaves > MaxLeaves {
		return fail("tree width %d is not that of a power-of-two leaf count", w)
	}
	if len(st.Nodes) != int(w) {
		return fail("%d tree positions stored, want %d", len(st.Nodes), w)
	}
	t := newTree(s, leaves)
	seen := make([]bool, w)
	for _, sn := range st.Nodes {
		x := sn.Index
		if x >= w || seen[x] {
			return fail("tree position %d is out of range or stored twice", x)
		}
		seen[x] = true
		if len(sn.Hash) != s.nh {
			return fail("tree position %d has a %d-byte hash", x, len(sn.Hash))
		}
		sl := t.mut(x)
		sl.hash = cloneBytes(sn.Hash)
		if sn.Node == nil {
			continue
		}
		n := new(Node)
		in := cryptobyte.String(cloneBytes(sn.Node))
		if !n.UnmarshalWire(&in) || !in.Empty() {
			return fail("tree position %d: %v", x, wire.ErrMalformed)
		}
		isLeaf := x%2 == 0
		if isLeaf != (n.Type == NodeLeaf) {
			return fail("tree position %d holds a node of the wrong type", x)
		}
		if !isLeaf {
			for _, l := range n.Parent.UnmergedLeaves {
				if l >= leaves || !isInSubtree(leafNode(l), x) {
					return fail("tree position %d lists unmerged leaf %d outside its subtree", x, l)
				}
			}
		}
		sl.node = n
	}
	t.fillCounts(root(leaves))
	t.buildParentKeys()
	if rh := t.get(root(leaves)).hash; !bytes.Equal(rh, ctx.TreeHash) {
		return fail("the root's stored hash is not the context's tree hash")
	}
	g := &GroupState{s: s, ctx: ctx, tree: t, interim: cloneBytes(st.InterimTranscriptHash),
		confTag: cloneBytes(st.ConfirmationTag),
		credUse: make(map[CredentialType]uint32), credSup: make(map[CredentialType]uint32)}
	// The indexes as GroupState.index builds them, but built in place.
	var sig, enc pmapBuilder
	for i := range leaves {
		l := t.leaf(i)
		if l == nil {
			continue
		}
		sig.set(string(l.SignatureKey), i)
		enc.set(string(l.EncryptionKey), i)
		g.credUse[l.Credential.Type]++
		var seen []CredentialType
		for _, ct := range l.Capabilities.Credentials {
			if !contains(seen, ct) {
				seen = append(seen, ct)
				g.credSup[ct]++
			}
		}
		g.members++
	}
	g.sigKeys, g.encKeys = sig.build(), enc.build()
	return g, nil
}

// fillCounts sets the subtree counts of x and every node below it from the
// nodes, in one pass, on a tree being built.
func (t *Tree) fillCounts(x uint32) (nodes, leaves uint32) {
	if level(x) == 0 {
		if t.node(x) != nil {
			nodes, leaves = 1, 1
		}
	} else {
		ln, ll := t.fillCounts(left(x))
		rn, rl := t.fillCounts(right(x))
		nodes, leaves = ln+rn, ll+rl
		if t.node(x) != nil {
			nodes++
		}
	}
	sl := t.mut(x)
	sl.nonBlank, sl.leafMember = nodes, leaves
	return nodes, leaves
}
