// Package keyfilter is a probabilistic set of keys that expire: it answers
// "certainly absent" or "maybe present", never "absent" for a key it holds
// that has not expired. A store in front of a table of expiring records uses
// it to answer most lookups of keys it never wrote without reading the
// table.
//
// Keys are kept in generations by expiry time: a generation holds the keys
// that expire within one span, and is dropped whole once all of them have
// expired. Each generation is a chain of blocked Bloom filters (all the bits
// of one key in one 64-byte cache line, so a probe costs one cache miss),
// each twice the capacity of the one before, so that memory follows the
// number of keys and the false-positive rate stays near 1% however many keys
// arrive. A filter that would outgrow its memory budget stops answering
// "absent" (it saturates) until the generations holding the excess expire.
package keyfilter

import (
	"encoding/binary"
	"hash/maphash"
	"math/bits"
	"sync"
)

const (
	// blockBits is the size of a block: one cache line.
	blockBits = 512
	// probes is the number of bits set per key, all in one block: seven
	// probes of nine bits use 63 bits of one mixed hash.
	probes = 7
	// bitsPerKey sizes each Bloom filter for its capacity: with probes in
	// one block, a few in a thousand false positives at full capacity, so
	// that a chain of them stays near 1%.
	bitsPerKey = 16
	// firstCapacity is the capacity of a generation's first Bloom filter.
	firstCapacity = 1 << 12
)

// Filter is a set of expiring keys. Add and MayContain are safe for
// concurrent use. The zero value is not usable: call New.
type Filter struct {
	seed    maphash.Seed
	spanMS  int64
	graceMS int64 // how long a generation outlives its keys
	maxBits int64 // memory budget, in bits of all generations together

	mu        sync.RWMutex
	gens      map[int64]*generation // by expiry / span
	usedBits  int64
	saturated map[int64]bool // generations that could not take a key
}

// generation holds the keys that expire within one span.
type generation struct {
	blooms []*bloom // each twice the capacity of the one before
}

// bloom is one blocked Bloom filter.
type bloom struct {
	blocks   [][blockBits / 64]uint64
	capacity int
	keys     int
}

// New returns an empty filter whose generations each cover spanMS
// milliseconds of expiry times and whose Bloom filters together use at
// most maxBytes of memory. Lookups check every live generation, so span
// should be a fair fraction of the usual lifetime of a key (a quarter of
// it gives four or five generations). A generation is kept graceMS after
// its last key expired, so that a lookup with a clock that stepped back by
// less than that still finds the keys a table would call alive.
func New(spanMS, graceMS, maxBytes int64) *Filter {
	if spanMS < 1 {
		spanMS = 1
	}
	return &Filter{
		seed:      maphash.MakeSeed(),
		spanMS:    spanMS,
		graceMS:   max(graceMS, 0),
		maxBits:   maxBytes * 8,
		gens:      make(map[int64]*generation),
		saturated: make(map[int64]bool),
	}
}

// Key returns the filter's hash of the key made of s and b. The boundary
// counts: ("ab", "c") and ("a", "bc") are different keys. The hash is
// seeded per filter, so keys an outsider chooses cannot be aimed at one
// block.
func (f *Filter) Key(s string, b []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(f.seed)
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
	h.WriteString(s)
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	h.Write(b)
	return h.Sum64()
}

// Add records the key with hash h (from Key) as alive until expiresMS
// (exclusive), in milliseconds since the Unix epoch; nowMS is the present
// time, used to drop generations whose keys have all expired. A key that
// expired less than the grace period before nowMS is recorded too, as its
// generation would have kept it: a clock that steps back finds it alive
// in a table again, and must find it in the filter.
func (f *Filter) Add(h uint64, expiresMS, nowMS int64) {
	if expiresMS <= nowMS-f.graceMS {
		return // expired beyond the grace: no lookup may find it alive
	}
	g := f.gen(expiresMS)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropExpired(nowMS)
	if f.saturated[g] {
		return
	}
	gen := f.gens[g]
	if gen == nil {
		gen = &generation{}
		f.gens[g] = gen
	}
	var last *bloom
	if n := len(gen.blooms); n > 0 {
		last = gen.blooms[n-1]
	}
	if last == nil || last.keys >= last.capacity {
		capacity := firstCapacity
		if last != nil {
			capacity = 2 * last.capacity
		}
		b := newBloom(capacity)
		size := int64(len(b.blocks)) * blockBits
		if f.usedBits+size > f.maxBits {
			// Over budget: this generation can no longer say "absent".
			f.saturated[g] = true
			return
		}
		f.usedBits += size
		gen.blooms = append(gen.blooms, b)
		last = b
	}
	last.add(h)
}

// MayContain reports whether the key with hash h may be alive at nowMS:
// false means that no Add of it with an expiry after nowMS happened.
func (f *Filter) MayContain(h uint64, nowMS int64) bool {
	first := f.gen(nowMS + 1) // the generation of the earliest alive expiry
	f.mu.RLock()
	defer f.mu.RUnlock()
	for g, gen := range f.gens {
		if g < first {
			continue // all of its keys have expired
		}
		for _, b := range gen.blooms {
			if b.has(h) {
				return true
			}
		}
	}
	for g := range f.saturated {
		if g >= first {
			return true
		}
	}
	return false
}

// Stats reports the live generations, the Bloom filters' memory in bytes
// and whether any live generation is saturated.
func (f *Filter) Stats() (generations int, bytes int64, saturated bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.gens), f.usedBits / 8, len(f.saturated) > 0
}

// gen returns the generation of an expiry time.
func (f *Filter) gen(expiresMS int64) int64 {
	g := expiresMS / f.spanMS
	if expiresMS%f.spanMS != 0 && expiresMS < 0 {
		g-- // floor, for times before the epoch
	}
	return g
}

// dropExpired forgets the generations whose keys had all expired grace
// before nowMS. f.mu is held for writing.
func (f *Filter) dropExpired(nowMS int64) {
	first := f.gen(nowMS - f.graceMS + 1)
	for g, gen := range f.gens {
		if g < first {
			for _, b := range gen.blooms {
				f.usedBits -= int64(len(b.blocks)) * blockBits
			}
			delete(f.gens, g)
		}
	}
	for g := range f.saturated {
		if g < first {
			delete(f.saturated, g)
		}
	}
}

// newBloom returns an empty Bloom filter for capacity keys.
func newBloom(capacity int) *bloom {
	n := (capacity*bitsPerKey + blockBits - 1) / blockBits
	return &bloom{blocks: make([][blockBits / 64]uint64, n), capacity: capacity}
}

// add sets the key's bits.
func (b *bloom) add(h uint64) {
	blk := &b.blocks[b.block(h)]
	x := mix(h)
	for range probes {
		bit := x & (blockBits - 1)
		blk[bit/64] |= 1 << (bit % 64)
		x >>= 9
	}
	b.keys++
}

// has reports whether all of the key's bits are set.
func (b *bloom) has(h uint64) bool {
	blk := &b.blocks[b.block(h)]
	x := mix(h)
	for range probes {
		bit := x & (blockBits - 1)
		if blk[bit/64]&(1<<(bit%64)) == 0 {
			return false
		}
		x >>= 9
	}
	return true
}

// block maps h to a block index (Lemire's multiply-shift reduction of the
// high bits).
func (b *bloom) block(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(b.blocks)))
	return int(hi)
}

// mix derives the probe bits from h, independent of the bits that chose
// the block (the SplitMix64 finaliser).
func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
