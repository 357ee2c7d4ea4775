package mls

import (
	"hash/maphash"
	"math/bits"
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
func (m pmap) set(key string, val uint32) pmap {
	root, added := pset(m.root, phash(key), 0, key, val)
	if added {
		m.size++
	}
	m.root = root
	return m
}

func pset(n *pnode, h uint64, shift uint, key string, val uint32) (*pnode, bool) {
	if n == nil {
		n = &pnode{}
	}
	c := &pnode{bitmap: n.bitmap, entries: n.entries, coll: n.coll}
	if shift >= 64 {
		c.coll = append([]pentry(nil), n.coll...)
		for i := range c.coll {
			if c.coll[i].key == key {
				c.coll[i].val = val
				return c, false
			}
		}
		c.coll = append(c.coll, pentry{key: key, val: val})
		return c, true
	}
	bit := uint32(1) << ((h >> shift) & 31)
	idx := bits.OnesCount32(n.bitmap & (bit - 1))
	if n.bitmap&bit == 0 {
		c.bitmap |= bit
		c.entries = make([]pentry, 0, len(n.entries)+1)
		c.entries = append(c.entries, n.entries[:idx]...)
		c.entries = append(c.entries, pentry{key: key, val: val})
		c.entries = append(c.entries, n.entries[idx:]...)
		return c, true
	}
	c.entries = append([]pentry(nil), n.entries...)
	e := &c.entries[idx]
	if e.child == nil {
		if e.key == key {
			e.val = val
			return c, false
		}
		// Push the existing entry one level down, then insert beside it.
		sub, _ := pset(nil, phash(e.key), shift+pmapBits, e.key, e.val)
		sub, added := pset(sub, h, shift+pmapBits, key, val)
		*e = pentry{child: sub}
		return c, added
	}
	sub, added := pset(e.child, h, shift+pmapBits, key, val)
	e.child = sub
	return c, added
}

// del returns m without key.
func (m pmap) del(key string) pmap {
	root, removed := pdel(m.root, phash(key), 0, key)
	if removed {
		m.size--
		m.root = root
	}
	return m
}

func pdel(n *pnode, h uint64, shift uint, key string) (*pnode, bool) {
	if n == nil {
		return nil, false
	}
	if shift >= 64 {
		for i, e := range n.coll {
			if e.key == key {
				c := &pnode{coll: append(append([]pentry(nil), n.coll[:i]...), n.coll[i+1:]...)}
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
	c := &pnode{bitmap: n.bitmap}
	if e.child == nil {
		if e.key != key {
			return n, false
		}
		c.bitmap &^= bit
		c.entries = append(append([]pentry(nil), n.entries[:idx]...), n.entries[idx+1:]...)
		return c, true
	}
	sub, removed := pdel(e.child, h, shift+pmapBits, key)
	if !removed {
		return n, false
	}
	c.entries = append([]pentry(nil), n.entries...)
	c.entries[idx].child = sub
	return c, true
}
