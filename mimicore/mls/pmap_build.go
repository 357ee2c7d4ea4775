package mls

// pmapBuilder builds a pmap from nothing by inserting in place, without
// the path copying of pmap.set: n inserts cost O(n) allocations instead of
// O(n log n) copies. The map it returns is an ordinary persistent pmap;
// the builder must not be used after build.
type pmapBuilder struct {
	m     pmap
	owner uint64
}

// set maps key to val.
func (b *pmapBuilder) set(key string, val uint32) {
	if b.owner == 0 {
		// A token of its own, which nobody uses after build.
		b.owner = treeGen.Add(1)
	}
	b.m = b.m.setOwned(key, val, b.owner)
}

// build returns the map.
func (b *pmapBuilder) build() pmap { return b.m }
