package mls

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
)

// ErrInvalidPath is wrapped by every UpdatePath rejection.
var ErrInvalidPath = errors.New("mls: invalid update path")

// mergeUpdatePath merges the public part of sender's UpdatePath into t (RFC
// 9420 §7.5, §7.9): the direct path is blanked, the filtered direct path
// gets the new keys with freshly computed parent hashes, and the new leaf,
// whose parent_hash must chain to them, replaces the sender's. The leaf
// node itself is validated by the caller. t must be writable.
//
// Before merging it checks that each node carries one encrypted path
// secret per member of its copath node's resolution, the leaves in added
// (sorted; those the same commit added) left out (§7.6), and that the
// path's keys stay unique in the tree (§12.4.3.1, §16.7): no key twice in
// the path or equal to its leaf's, and none held by a leaf (leafKeys, the
// committer's current leaf included) or by a parent node outside the
// sender's direct path, which the path replaces.
func (t *Tree) mergeUpdatePath(sender uint32, path *UpdatePath, added []uint32, leafKeys pmap) error {
	if sender >= t.leaves || t.leaf(sender) == nil {
		return fmt.Errorf("%w: sender leaf %d is blank", ErrInvalidPath, sender)
	}
	if path.LeafNode.Source != SourceCommit {
		return fmt.Errorf("%w: leaf node source %d, want commit", ErrInvalidPath, path.LeafNode.Source)
	}
	fdp, copath := t.filteredDirectPath(sender)
	if len(path.Nodes) != len(fdp) {
		return fmt.Errorf("%w: %d nodes for a filtered direct path of %d", ErrInvalidPath, len(path.Nodes), len(fdp))
	}
	for i := range path.Nodes {
		got := len(path.Nodes[i].EncryptedPathSecrets)
		if want := t.resolutionSize(copath[i], added, got+1); got != want {
			return fmt.Errorf("%w: node %d has %d ciphertexts for a resolution of %s", ErrInvalidPath,
				fdp[i], got, atLeast(want, got+1))
		}
	}
	seen := make(map[string]struct{}, len(path.Nodes)+1)
	seen[string(path.LeafNode.EncryptionKey)] = struct{}{}
	for i := range path.Nodes {
		key := path.Nodes[i].EncryptionKey
		if err := t.s.checkHPKEPublicKey(key); err != nil {
			return fmt.Errorf("%w: node %d: encryption key: %v", ErrInvalidPath, fdp[i], err)
		}
		if _, dup := seen[string(key)]; dup {
			return fmt.Errorf("%w: node %d: encryption key used twice in the path", ErrInvalidPath, fdp[i])
		}
		seen[string(key)] = struct{}{}
		if j, ok := leafKeys.get(string(key)); ok {
			return fmt.Errorf("%w: node %d: encryption key already used by leaf %d", ErrInvalidPath, fdp[i], j)
		}
		if x, ok := t.parentWithKey(key); ok && !isInSubtree(leafNode(sender), x) {
			return fmt.Errorf("%w: node %d: encryption key already used by node %d", ErrInvalidPath, fdp[i], x)
		}
	}
	keys := make([][]byte, len(path.Nodes))
	for i := range path.Nodes {
		keys[i] = path.Nodes[i].EncryptionKey
	}
	above, err := t.setPathNodes(sender, fdp, copath, keys)
	if err != nil {
		return err
	}
	if !bytes.Equal(path.LeafNode.ParentHash, above) {
		return fmt.Errorf("%w: leaf parent_hash does not match the path", ErrInvalidPath)
	}
	t.setLeaf(sender, &path.LeafNode)
	return nil
}

// setPathNodes blanks leaf sender's direct path and puts new parent nodes
// with the given keys on its filtered direct path fdp (copath holds their
// copath children), computing their parent hashes from the root down. It
// returns the parent hash the sender's leaf must carry.
func (t *Tree) setPathNodes(sender uint32, fdp, copath []uint32, keys [][]byte) ([]byte, error) {
	t.blankPath(sender)
	// Each node's parent_hash is the parent hash of the next node up, whose
	// copath child is the sibling that hash covers.
	var above []byte
	for i := len(fdp) - 1; i >= 0; i-- {
		p := &ParentNode{EncryptionKey: keys[i], ParentHash: above}
		t.set(fdp[i], &Node{Type: NodeParent, Parent: p})
		ph, err := t.parentHash(p, copath[i])
		if err != nil {
			return nil, err
		}
		above = ph
	}
	return above, nil
}

// resolutionSize returns the size of the resolution of node x (RFC 9420
// §4.1.1) without the leaves in excluded (sorted), skipping blank
// subtrees. It stops counting past limit, so that the cost follows the
// ciphertexts a path carries rather than the size of the group.
func (t *Tree) resolutionSize(x uint32, excluded []uint32, limit int) int {
	if t.subtreeBlank(x) {
		return 0
	}
	if n := t.node(x); n != nil {
		c := 0
		if level(x) > 0 || !sortedContains(excluded, x/2) {
			c++
		}
		switch {
		case n.Parent == nil:
		case len(excluded) == 0:
			c += len(n.Parent.UnmergedLeaves)
		default:
			for _, l := range n.Parent.UnmergedLeaves {
				if !sortedContains(excluded, l) {
					c++
				}
			}
		}
		return c
	}
	c := t.resolutionSize(left(x), excluded, limit)
	if c > limit {
		return c
	}
	return c + t.resolutionSize(right(x), excluded, limit-c)
}

// sortedContains reports whether the sorted list s holds v.
func sortedContains(s []uint32, v uint32) bool {
	_, found := slices.BinarySearch(s, v)
	return found
}

// atLeast formats a count that stopped at limit as "at least limit".
func atLeast(n, limit int) string {
	if n >= limit {
		return fmt.Sprintf("at least %d", limit)
	}
	return fmt.Sprint(n)
}
