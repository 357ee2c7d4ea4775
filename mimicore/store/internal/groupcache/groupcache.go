// Package groupcache keeps recently used MLS group states in memory, so
// that a store backend loads a group's tree from its database once per
// epoch rather than once per request.
//
// An entry is keyed by group id and tagged with the backend's row id of
// the group (never reused, so a group deleted and created again is another
// group) and the epoch's stored head: its encoded GroupContext, interim
// transcript hash and confirmation tag. A backend reads the head from its
// database, which is cheap, and uses the cached state only when the tags
// match. So the cache needs no invalidation across processes sharing a
// database: a state another process committed has another head, and the
// lookup misses.
package groupcache

import (
	"bytes"
	"container/list"
	"sync"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// Head identifies one stored state of one group.
type Head struct {
	// RowID is the backend's id of the group's row, never reused.
	RowID int64
	// Epoch is the state's epoch.
	Epoch uint64
	// Context, Interim and ConfTag are the state's stored head.
	Context, Interim, ConfTag []byte
}

// same reports whether h and o name the same state.
func (h *Head) same(o *Head) bool {
	return h.RowID == o.RowID && h.Epoch == o.Epoch && bytes.Equal(h.Context, o.Context) &&
		bytes.Equal(h.Interim, o.Interim) && bytes.Equal(h.ConfTag, o.ConfTag)
}

// newer reports whether h is a later state than o of the same group id:
// a later row, or a later epoch of the same row.
func (h *Head) newer(o *Head) bool {
	return h.RowID > o.RowID || (h.RowID == o.RowID && h.Epoch >= o.Epoch)
}

type entry struct {
	key    string
	head   Head
	state  *mls.GroupState
	weight int
}

// Cache is a least-recently-used cache of group states bounded by the sum
// of their tree widths (the number of tree positions held). It is safe for
// concurrent use. The zero Cache is not usable: call New.
type Cache struct {
	mu     sync.Mutex
	max    int
	weight int
	lru    *list.List // of *entry, most recent first
	byKey  map[string]*list.Element
}

// New returns a cache that holds states of at most maxNodes tree positions
// in all; maxNodes < 1 returns nil, a cache that holds nothing (its
// methods are safe to call).
func New(maxNodes int) *Cache {
	if maxNodes < 1 {
		return nil
	}
	return &Cache{max: maxNodes, lru: list.New(), byKey: make(map[string]*list.Element)}
}

// Get returns the cached state of group id whose head is h, or nil.
func (c *Cache) Get(id []byte, h *Head) *mls.GroupState {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[string(id)]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if !e.head.same(h) {
		return nil
	}
	c.lru.MoveToFront(el)
	return e.state
}

// Put caches state as the state of group id with head h, unless the cache
// holds a newer state of the group (a slow loader must not replace the
// state a commit just put). The cache keeps h's slices: the caller must
// not modify them.
func (c *Cache) Put(id []byte, h Head, state *mls.GroupState) {
	if c == nil {
		return
	}
	w := int(2*state.Tree().LeafCount() - 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[string(id)]; ok {
		e := el.Value.(*entry)
		if !h.newer(&e.head) {
			return
		}
		c.remove(el)
	}
	if w > c.max {
		return
	}
	e := &entry{key: string(id), head: h, state: state, weight: w}
	c.byKey[e.key] = c.lru.PushFront(e)
	c.weight += w
	for c.weight > c.max {
		c.remove(c.lru.Back())
	}
}

// Delete drops group id.
func (c *Cache) Delete(id []byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[string(id)]; ok {
		c.remove(el)
	}
}

// Len returns the number of cached states.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

func (c *Cache) remove(el *list.Element) {
	e := c.lru.Remove(el).(*entry)
	delete(c.byKey, e.key)
	c.weight -= e.weight
}
