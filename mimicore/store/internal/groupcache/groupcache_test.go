package groupcache

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

func TestCache(t *testing.T) {
	g1 := storetest.NewGroup(t, []byte("g1"), 1) // 1 leaf: weight 1
	g3 := storetest.NewGroup(t, []byte("g3"), 3) // 4 leaves: weight 7
	head := func(row int64, epoch uint64) Head {
		return Head{RowID: row, Epoch: epoch, Context: []byte{byte(epoch)}, Interim: []byte("i"), ConfTag: []byte("c")}
	}
	c := New(8)
	h := head(1, 0)
	c.Put([]byte("a"), h, g1.State)
	if c.Get([]byte("a"), &h) != g1.State {
		t.Fatal("miss after Put")
	}
	for name, other := range map[string]Head{
		"row": head(2, 0), "epoch": head(1, 1),
		"interim": {RowID: 1, Context: []byte{0}, Interim: []byte("x"), ConfTag: []byte("c")},
	} {
		t.Run(name, func(t *testing.T) {
			if c.Get([]byte("a"), &other) != nil {
				t.Fatal("hit with another head")
			}
		})
	}
	// An older state does not replace a newer one.
	newer := head(1, 5)
	c.Put([]byte("a"), newer, g3.State)
	c.Put([]byte("a"), h, g1.State)
	if c.Get([]byte("a"), &newer) != g3.State || c.Get([]byte("a"), &h) != nil {
		t.Fatal("an older state replaced a newer one")
	}
	// A later row (the group created again) does, at any epoch.
	again := head(2, 0)
	c.Put([]byte("a"), again, g1.State)
	if c.Get([]byte("a"), &again) != g1.State {
		t.Fatal("the group created again was not cached")
	}
	// The weight bound evicts the least recently used.
	hb := head(3, 0)
	c.Put([]byte("b"), hb, g3.State) // 1 + 7 = 8
	c.Get([]byte("a"), &again)
	hc := head(4, 0)
	c.Put([]byte("c"), hc, g1.State) // 9 > 8: b goes
	if c.Len() != 2 || c.Get([]byte("b"), &hb) != nil || c.Get([]byte("a"), &again) == nil {
		t.Fatalf("eviction kept %d entries, b present %t", c.Len(), c.Get([]byte("b"), &hb) != nil)
	}
	c.Delete([]byte("a"))
	if c.Get([]byte("a"), &again) != nil {
		t.Fatal("hit after Delete")
	}
	var off *Cache = New(0)
	off.Put([]byte("a"), h, g1.State)
	if off.Get([]byte("a"), &h) != nil || off.Len() != 0 {
		t.Fatal("a disabled cache holds states")
	}
}
