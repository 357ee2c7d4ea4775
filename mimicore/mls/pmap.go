package mls

import (
	"hash/maphash"
	"math/bits"
	"slices"
)

// pmap is a persistent map from byte strings to uint32, a hash array mapped
// trie with path copying: set and del return a new map and leave the old
// one intact, at O(log32 n) cost. GroupState uses it to index leaf keys so
// that uniqueness checks do not scan the tree.
type pmap struct {
	root *pnode
	size int
}

type pentry struct {
	child *pnode
	key   string
	val   uint32
}

type pnode struct {
	bitmap  uint32
	entries []pentry
	// coll holds entries whose 64-bit hashes collide fully (depth exhausted).
	coll []pentry
	// owner is the token of the run of changes that made the node, which
	// may change it in place (setOwned); 0 for none.
	owner uint64
}

var pmapSeed = maphash.MakeSeed()

const pmapBits = 5

func phash(key string) uint64 { return maphash.String(pmapSeed, key) }

func (m pmap) get(key string) (uint32, bool) {
	h := phash(key)
	n := m.root
	for shift := uint(0); n != nil; shift += pmapBits {
		if shift >= 64 {
			for _, e := range n.coll {
				if e.key == key {
					return e.val, true
				}
			}
			return 0, false
		}
		bit := uint32(1) << ((h >> shift) & 31)
		if n.bitmap&bit == 0 {
			return 0, false
		}
		e := &n.entries[bits.OnesCount32(n.bitmap&(bit-1))]
		if e.child == nil {
			if e.key == key {
				return e.val, true
			}
			return 0, false
		}
		n = e.child
	}
	return 0, false
}

// set returns m with key mapped to val.
func (m pmap) set(key string, val uint32) pmap { return m.setOwned(key, val, 0) }

// setOwned is set for a map being changed by owner, a nonzero token (a
// tree's generation): the nodes owner made are changed in place, the
// others copied and stamped with owner, so that a run of changes copies
// each node once. Once the map is handed to another owner (or read as a
// snapshot), owner must not change it again. Owner 0 copies every node.
func (m pmap) setOwned(key string, val uint32, owner uint64) pmap {
	root, added := pset(m.root, phash(key), 0, key, val, owner)
	if added {
		m.size++
	}
	m.root = root
	return m
}

// own returns n itself when owner made it, else a copy that owner makes.
func own(n *pnode, owner uint64) *pnode {
	if owner != 0 && n.owner == owner {
		return n
	}
	return &pnode{bitmap: n.bitmap, entries: slices.Clone(n.entries), coll: slices.Clone(n.coll), owner: owner}
}

func pset(n *pnode, h uint64, shift uint, key string, val uint32, owner uint64) (*pnode, bool) {
	if n == nil {
		n = &pnode{owner: owner}
	} else {
		n = own(n, owner)
	}
	if shift >= 64 {
		for i := range n.coll {
			if n.coll[i].key == key {
				n.coll[i].val = val
				return n, false
			}
		}
		n.coll = append(n.coll, pentry{key: key, val: val})
		return n, true
	}
	bit := uint32(1) << ((h >> shift) & 31)
	idx := bits.OnesCount32(n.bitmap & (bit - 1))
	if n.bitmap&bit == 0 {
		n.bitmap |= bit
		n.entries = slices.Insert(n.entries, idx, pentry{key: key, val: val})
		return n, true
	}
	e := &n.entries[idx]
	if e.child == nil {
		if e.key == key {
			e.val = val
			return n, false
		}
		// Push the existing entry one level down, then insert beside it.
		sub, _ := pset(nil, phash(e.key), shift+pmapBits, e.key, e.val, owner)
		sub, added := pset(sub, h, shift+pmapBits, key, val, owner)
		*e = pentry{child: sub}
		return n, added
	}
	sub, added := pset(e.child, h, shift+pmapBits, key, val, owner)
	e.child = sub
	return n, added
}

// del returns m without key.
func (m pmap) del(key string) pmap { return m.delOwned(key, 0) }

// delOwned is del for a map being changed by owner, as setOwned.
func (m pmap) delOwned(key string, owner uint64) pmap {
	root, removed := pdel(m.root, phash(key), 0, key, owner)
	if removed {
		m.size--
		m.root = root
	}
	return m
}

func pdel(n *pnode, h uint64, shift uint, key string, owner uint64) (*pnode, bool) {
	if n == nil {
		return nil, false
	}
	if shift >= 64 {
		for i, e := range n.coll {
			if e.key == key {
				c := own(n, owner)
				c.coll = slices.Delete(c.coll, i, i+1)
				return c, true
			}
		}
		return n, false
	}
	bit := uint32(1) << ((h >> shift) & 31)
	if n.bitmap&bit == 0 {
		return n, false
	}
	idx := bits.OnesCount32(n.bitmap & (bit - 1))
	e := n.entries[idx]
	if e.child == nil {
		if e.key != key {
			return n, false
		}
		c := own(n, owner)
		c.bitmap &^= bit
		c.entries = slices.Delete(c.entries, idx, idx+1)
		return c, true
	}
	sub, removed := pdel(e.child, h, shift+pmapBits, key, owner)
	if !removed {
		return n, false
	}
	c := own(n, owner)
	c.entries[idx].child = sub
	return c, true
}
