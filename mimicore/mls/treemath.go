package mls

import "math/bits"

// Array-based tree math of RFC 9420 §4.1 and Appendix C. Nodes are numbered
// left to right, leaves at even indices; the tree always has a power-of-two
// number of leaves. Callers check indices against the tree width first.

// nodeWidth returns the number of nodes of a tree with n leaves.
func nodeWidth(n uint32) uint32 {
	if n == 0 {
		return 0
	}
	return 2*(n-1) + 1
}

// level returns the height of node x above the leaves.
func level(x uint32) uint32 {
	return uint32(bits.TrailingZeros32(^x))
}

// root returns the root of a tree with n leaves.
func root(n uint32) uint32 {
	w := nodeWidth(n)
	return (1 << (bits.Len32(w) - 1)) - 1
}

// left returns the left child of parent node x.
func left(x uint32) uint32 {
	k := level(x)
	return x ^ (1 << (k - 1))
}

// right returns the right child of parent node x.
func right(x uint32) uint32 {
	k := level(x)
	return x ^ (3 << (k - 1))
}

// parent returns the parent of non-root node x.
func parent(x uint32) uint32 {
	k := level(x)
	b := (x >> (k + 1)) & 1
	return (x | (1 << k)) ^ (b << (k + 1))
}

// sibling returns the other child of x's parent.
func sibling(x uint32) uint32 {
	p := parent(x)
	if x < p {
		return right(p)
	}
	return left(p)
}

// leafNode returns the node index of leaf i.
func leafNode(i uint32) uint32 { return 2 * i }

// directPath returns the parents of x from its parent up to the root of a
// tree with n leaves.
func directPath(x, n uint32) []uint32 {
	r := root(n)
	if x == r {
		return nil
	}
	path := make([]uint32, 0, level(r))
	for x != r {
		x = parent(x)
		path = append(path, x)
	}
	return path
}

// isInSubtree reports whether node x lies in the subtree rooted at y.
func isInSubtree(x, y uint32) bool {
	k := level(y)
	return x>>(k+1) == y>>(k+1)
}
