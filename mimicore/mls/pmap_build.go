package mls

import (
	"math/bits"
	"slices"
)

// pmapBuilder builds a pmap from nothing by inserting in place, without
// the path copying of pmap.set: n inserts cost O(n) allocations instead of
// O(n log n) copies. The map it returns is an ordinary persistent pmap;
// the builder must not be used after build.
type pmapBuilder struct{ m pmap }

// set maps key to val.
func (b *pmapBuilder) set(key string, val uint32) {
	root, added := psetOwned(b.m.root, phash(key), 0, key, val)
	b.m.root = root
	if added {
		b.m.size++
	}
}

// build returns the map.
func (b *pmapBuilder) build() pmap { return b.m }

// psetOwned is pset on nodes that only the builder holds: it changes them
// in place. pset and pdel never change a node they were given, so the map
// stays persistent once built.
func psetOwned(n *pnode, h uint64, shift uint, key string, val uint32) (*pnode, bool) {
	if n == nil {
		n = &pnode{}
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
		sub, _ := psetOwned(nil, phash(e.key), shift+pmapBits, e.key, e.val)
		sub, added := psetOwned(sub, h, shift+pmapBits, key, val)
		*e = pentry{child: sub}
		return n, added
	}
	sub, added := psetOwned(e.child, h, shift+pmapBits, key, val)
	e.child = sub
	return n, added
}
