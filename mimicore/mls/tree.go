package mls

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
)

// ErrInvalidTree is wrapped by every ratchet tree shape or content error.
var ErrInvalidTree = errors.New("mls: invalid ratchet tree")

// chunkBits sets how many nodes share one copy-on-write chunk.
const (
	chunkBits = 6
	chunkSize = 1 << chunkBits
)

// slot is one tree node with its cached tree hash (nil when stale) and the
// number of non-blank nodes and of non-blank leaves in its subtree, which
// make blank-subtree tests and the search for a free leaf O(log n).
type slot struct {
	node       *Node
	hash       []byte
	nonBlank   uint32
	leafMember uint32
}

// chunk is a run of chunkSize slots owned by one tree generation.
type chunk struct {
	gen   uint64
	slots [chunkSize]slot
}

// treeGen hands out the generation tokens that say which tree may write a
// chunk in place.
var treeGen atomic.Uint64

// Tree is a public ratchet tree (RFC 9420 §7) with cached tree hashes.
//
// A Tree is persistent: once handed out it is never modified. Changes are
// made on a clone, which shares unchanged nodes and hashes with its source
// in copy-on-write chunks, so cloning and updating one path cost
// O(n/64 + log n) rather than O(n). Nodes (*Node and what it points to) are
// immutable once in a tree.
type Tree struct {
	s      *suite
	leaves uint32 // a power of two
	chunks []*chunk
	gen    uint64
	// parentKeys maps the encryption key of each non-blank parent node to
	// its node index, so that a commit's new keys are checked for
	// uniqueness without scanning the tree. set keeps it in step, changing
	// in place the index nodes of this generation as it does chunks.
	parentKeys pmap
}

// newTree returns an empty tree of n leaves (a power of two).
func newTree(s *suite, n uint32) *Tree {
	t := &Tree{s: s, leaves: n, gen: treeGen.Add(1)}
	t.chunks = make([]*chunk, (nodeWidth(n)+chunkSize-1)/chunkSize)
	return t
}

// clone returns a writable copy of t sharing its chunks.
func (t *Tree) clone() *Tree {
	return &Tree{s: t.s, leaves: t.leaves, chunks: slices.Clone(t.chunks), gen: treeGen.Add(1), parentKeys: t.parentKeys}
}

// LeafCount returns the number of leaves, blank or not (a power of two).
func (t *Tree) LeafCount() uint32 { return t.leaves }

func (t *Tree) width() uint32 { return nodeWidth(t.leaves) }

// get returns the slot of node x for reading, or nil when its chunk has
// never been written (all blank, hashes unknown).
func (t *Tree) get(x uint32) *slot {
	c := t.chunks[x>>chunkBits]
	if c == nil {
		return nil
	}
	return &c.slots[x&(chunkSize-1)]
}

// mut returns the slot of node x for writing, copying its chunk first if
// another tree generation owns it.
func (t *Tree) mut(x uint32) *slot {
	i := x >> chunkBits
	c := t.chunks[i]
	switch {
	case c == nil:
		c = &chunk{gen: t.gen}
		t.chunks[i] = c
	case c.gen != t.gen:
		cp := *c
		cp.gen = t.gen
		c = &cp
		t.chunks[i] = c
	}
	return &c.slots[x&(chunkSize-1)]
}

// node returns node x or nil when blank.
func (t *Tree) node(x uint32) *Node {
	if s := t.get(x); s != nil {
		return s.node
	}
	return nil
}

// Leaf returns a read-only view of the leaf at index i, and false when it
// is blank or out of range.
func (t *Tree) Leaf(i uint32) (LeafView, bool) {
	l := t.leaf(i)
	return LeafView{l}, l != nil
}

// leaf returns the leaf node at leaf index i, or nil when it is blank or out
// of range. The node is the tree's own and must not be modified.
func (t *Tree) leaf(i uint32) *LeafNode {
	if i >= t.leaves {
		return nil
	}
	if n := t.node(leafNode(i)); n != nil {
		return n.Leaf
	}
	return nil
}

// parentNode returns parent node x or nil when blank.
func (t *Tree) parentNode(x uint32) *ParentNode {
	if n := t.node(x); n != nil {
		return n.Parent
	}
	return nil
}

// set replaces node x, updates the subtree counts and the parent key
// index and invalidates the cached hashes of x and its ancestors.
func (t *Tree) set(x uint32, n *Node) { t.setNode(x, n, true) }

// setNode is set, leaving the parent key index alone unless index is set
// (for a tree being built, whose index is built once at the end).
func (t *Tree) setNode(x uint32, n *Node, index bool) {
	sl := t.mut(x)
	if index && level(x) > 0 {
		t.reindexParent(x, sl.node, n)
	}
	var dNode, dLeaf int32
	if sl.node != nil {
		dNode--
	}
	if n != nil {
		dNode++
	}
	if level(x) == 0 {
		dLeaf = dNode
	}
	sl.node = n
	r := root(t.leaves)
	for y := x; ; y = parent(y) {
		s := t.mut(y)
		s.hash = nil
		s.nonBlank = uint32(int32(s.nonBlank) + dNode)
		s.leafMember = uint32(int32(s.leafMember) + dLeaf)
		if y == r {
			return
		}
	}
}

// reindexParent updates the parent key index for parent node x going
// from old to n (either may be nil). A key that maps to another node (two
// nodes with one key, in a tree that Validate refuses) is left alone.
func (t *Tree) reindexParent(x uint32, old, n *Node) {
	var oldKey, newKey []byte
	if old != nil && old.Parent != nil {
		oldKey = old.Parent.EncryptionKey
	}
	if n != nil && n.Parent != nil {
		newKey = n.Parent.EncryptionKey
	}
	if oldKey != nil && newKey != nil && string(oldKey) == string(newKey) {
		return // an unmerged leaf added or the like: the key stays
	}
	if oldKey != nil {
		if y, ok := t.parentKeys.get(string(oldKey)); ok && y == x {
			t.parentKeys = t.parentKeys.delOwned(string(oldKey), t.gen)
		}
	}
	if newKey != nil {
		t.parentKeys = t.parentKeys.setOwned(string(newKey), x, t.gen)
	}
}

// parentWithKey returns the parent node that holds encryption key key.
func (t *Tree) parentWithKey(key []byte) (uint32, bool) {
	return t.parentKeys.get(string(key))
}

// buildParentKeys rebuilds the parent key index of a tree whose nodes
// were put in place without set, in one pass.
func (t *Tree) buildParentKeys() {
	var b pmapBuilder
	for x := uint32(1); x < t.width(); x += 2 {
		if p := t.parentNode(x); p != nil {
			b.set(string(p.EncryptionKey), x)
		}
	}
	t.parentKeys = b.build()
}

// counts returns the non-blank node and leaf counts of x's subtree.
func (t *Tree) counts(x uint32) (nodes, leaves uint32) {
	if s := t.get(x); s != nil {
		return s.nonBlank, s.leafMember
	}
	return 0, 0
}

// setLeaf replaces leaf i.
func (t *Tree) setLeaf(i uint32, l *LeafNode) {
	if l == nil {
		t.set(leafNode(i), nil)
		return
	}
	t.set(leafNode(i), &Node{Type: NodeLeaf, Leaf: l})
}

// blankPath blanks leaf i's direct path.
func (t *Tree) blankPath(i uint32) {
	for _, x := range directPath(leafNode(i), t.leaves) {
		if t.node(x) != nil {
			t.set(x, nil)
		}
	}
}

// extend doubles the tree, keeping the old tree as the left subtree.
func (t *Tree) extend() error {
	if t.leaves >= MaxLeaves {
		return fmt.Errorf("%w: more than %d leaves", ErrInvalidTree, MaxLeaves)
	}
	oldRoot := root(t.leaves)
	t.leaves *= 2
	need := int((t.width() + chunkSize - 1) / chunkSize)
	for len(t.chunks) < need {
		t.chunks = append(t.chunks, nil)
	}
	// The old root's hash is still valid; the new, blank root has none yet
	// and counts what the old root does.
	nb, nl := t.counts(oldRoot)
	s := t.mut(parent(oldRoot))
	*s = slot{nonBlank: nb, leafMember: nl}
	return nil
}

// truncate halves the tree while its right half is entirely blank (RFC 9420
// §12.1.3), keeping at least one leaf.
func (t *Tree) truncate() {
	for t.leaves > 1 {
		r := root(t.leaves)
		if !t.subtreeBlank(right(r)) {
			return
		}
		t.leaves /= 2
		w := t.width()
		t.chunks = t.chunks[:(w+chunkSize-1)/chunkSize]
		// Clear the slots past the new width in the last chunk so a later
		// extension finds them blank.
		if rem := w % chunkSize; rem != 0 {
			last := (w - 1) >> chunkBits
			if c := t.chunks[last]; c != nil {
				for x := w; x < (last+1)*chunkSize; x++ {
					if s := t.get(x); s != nil && (s.node != nil || s.hash != nil || s.nonBlank != 0 || s.leafMember != 0) {
						if level(x) > 0 {
							t.reindexParent(x, s.node, nil)
						}
						*t.mut(x) = slot{}
					}
				}
			}
		}
	}
}

// subtreeBlank reports whether every node under x (inclusive) is blank.
func (t *Tree) subtreeBlank(x uint32) bool {
	nb, _ := t.counts(x)
	return nb == 0
}

// resolution appends the resolution of node x (RFC 9420 §4.1.1) to out.
func (t *Tree) resolution(x uint32, out []uint32) []uint32 {
	if n := t.node(x); n != nil {
		out = append(out, x)
		if n.Parent != nil {
			for _, l := range n.Parent.UnmergedLeaves {
				out = append(out, leafNode(l))
			}
		}
		return out
	}
	if level(x) == 0 {
		return out
	}
	return t.resolution(right(x), t.resolution(left(x), out))
}

// filteredDirectPath returns the nodes of leaf i's direct path whose copath
// child has a non-empty resolution (RFC 9420 §4.1.2), with those copath
// children.
func (t *Tree) filteredDirectPath(i uint32) (path, copath []uint32) {
	x := leafNode(i)
	for _, p := range directPath(x, t.leaves) {
		s := sibling(x)
		if !t.subtreeBlank(s) {
			path = append(path, p)
			copath = append(copath, s)
		}
		x = p
	}
	return path, copath
}

// leftmostBlankLeaf returns the first blank leaf index, or t.leaves.
func (t *Tree) leftmostBlankLeaf() uint32 {
	x := root(t.leaves)
	if _, nl := t.counts(x); nl == t.leaves {
		return t.leaves
	}
	for level(x) > 0 {
		l := left(x)
		if _, nl := t.counts(l); nl < 1<<level(l) {
			x = l
		} else {
			x = right(x)
		}
	}
	return x / 2
}

// addLeaf puts l in the leftmost blank leaf, extending the tree if needed,
// and records it as unmerged in every non-blank ancestor (RFC 9420
// §12.1.1). It returns the new leaf index. A commit's many Adds use
// placeLeaf and one markUnmerged instead.
func (t *Tree) addLeaf(l *LeafNode) (uint32, error) {
	i, err := t.placeLeaf(l)
	if err != nil {
		return 0, err
	}
	t.markUnmerged([]uint32{i})
	return i, nil
}

// placeLeaf puts l in the leftmost blank leaf, extending the tree if
// needed, and returns its index. The caller records it as unmerged with
// markUnmerged.
func (t *Tree) placeLeaf(l *LeafNode) (uint32, error) {
	i := t.leftmostBlankLeaf()
	if i == t.leaves {
		if err := t.extend(); err != nil {
			return 0, err
		}
	}
	t.setLeaf(i, l)
	return i, nil
}

// markUnmerged records the leaves added, in the order given, as unmerged
// in each of their non-blank ancestors (RFC 9420 §12.1.1). Each ancestor
// is rewritten once with all of its new leaves, so that n Adds under one
// parent cost O(n) rather than the O(n²) of copying its list n times.
func (t *Tree) markUnmerged(added []uint32) {
	fresh := make(map[uint32][]uint32)
	var order []uint32
	for _, i := range added {
		for _, x := range directPath(leafNode(i), t.leaves) {
			if t.parentNode(x) == nil {
				continue
			}
			if _, ok := fresh[x]; !ok {
				order = append(order, x)
			}
			fresh[x] = append(fresh[x], i)
		}
	}
	for _, x := range order {
		p := t.parentNode(x)
		np := *p
		np.UnmergedLeaves = append(slices.Clip(p.UnmergedLeaves), fresh[x]...)
		t.set(x, &Node{Type: NodeParent, Parent: &np})
	}
}

// removeLeaf blanks leaf i and its direct path, then truncates.
func (t *Tree) removeLeaf(i uint32) {
	t.setLeaf(i, nil)
	t.blankPath(i)
	t.truncate()
}

// updateLeaf replaces leaf i and blanks its direct path (RFC 9420 §12.1.2).
func (t *Tree) updateLeaf(i uint32, l *LeafNode) {
	t.setLeaf(i, l)
	t.blankPath(i)
}

// Members returns the indices of the non-blank leaves, in one allocation
// (the root's count of member leaves sizes it).
func (t *Tree) Members() []uint32 {
	_, n := t.counts(root(t.leaves))
	out := make([]uint32, 0, n)
	for i := range t.leaves {
		if t.node(leafNode(i)) != nil {
			out = append(out, i)
		}
	}
	return out
}

// TreeFromRatchetTree builds a Tree for suite cs from its wire form,
// checking its shape: a non-empty node list whose last node is not blank,
// leaves at even and parents at odd positions, at most MaxLeaves leaves and
// unmerged leaves that lie below their parent. Leaf signatures and parent
// hashes are checked by Validate. The nodes are copied, so rt may be
// reused.
func TreeFromRatchetTree(cs CipherSuite, rt RatchetTree) (*Tree, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	if len(rt) == 0 || rt[len(rt)-1] == nil {
		return nil, fmt.Errorf("%w: empty or ends with a blank node", ErrInvalidTree)
	}
	if len(rt) > maxTreeNodes {
		return nil, fmt.Errorf("%w: %d nodes", ErrInvalidTree, len(rt))
	}
	n := uint32(1)
	for nodeWidth(n) < uint32(len(rt)) {
		n *= 2
	}
	t := newTree(s, n)
	for x, node := range rt {
		if node == nil {
			continue
		}
		isLeaf := x%2 == 0
		if isLeaf != (node.Type == NodeLeaf) || (isLeaf && node.Leaf == nil) || (!isLeaf && node.Parent == nil) {
			return nil, fmt.Errorf("%w: node %d has the wrong type", ErrInvalidTree, x)
		}
		if !isLeaf {
			for _, l := range node.Parent.UnmergedLeaves {
				if l >= n || !isInSubtree(leafNode(l), uint32(x)) {
					return nil, fmt.Errorf("%w: node %d lists unmerged leaf %d outside its subtree", ErrInvalidTree, x, l)
				}
			}
		}
		t.setNode(uint32(x), node.clone(), false)
	}
	t.buildParentKeys()
	return t, nil
}

// RatchetTree returns the wire form of t with trailing blank nodes removed.
// The nodes are deep copies, which the caller may keep and modify.
func (t *Tree) RatchetTree() RatchetTree {
	rt := t.ratchetTree()
	for x, n := range rt {
		if n != nil {
			rt[x] = n.clone()
		}
	}
	return rt
}

// trimmedWidth returns the number of nodes of t's wire form: up to its
// last non-blank node, found from the subtree counts in O(log n).
func (t *Tree) trimmedWidth() uint32 {
	x := root(t.leaves)
	if t.subtreeBlank(x) {
		return 0
	}
	for {
		switch {
		case level(x) > 0 && !t.subtreeBlank(right(x)):
			x = right(x)
		case t.node(x) != nil:
			return x + 1
		default:
			x = left(x)
		}
	}
}

// ratchetTree is RatchetTree without copying the nodes, for encoding: the
// nodes are the tree's own and must not be modified.
func (t *Tree) ratchetTree() RatchetTree {
	w := t.trimmedWidth()
	rt := make(RatchetTree, w)
	for x := range w {
		rt[x] = t.node(x)
	}
	return rt
}
