package mls

import (
	"fmt"
	"testing"
)

func TestPMap(t *testing.T) {
	var m pmap
	snapshots := []pmap{m}
	for i := range 5000 {
		m = m.set(fmt.Sprint("k", i), uint32(i))
		if i%1000 == 0 {
			snapshots = append(snapshots, m)
		}
	}
	if m.size != 5000 {
		t.Fatalf("size %d", m.size)
	}
	for i := range 5000 {
		if v, ok := m.get(fmt.Sprint("k", i)); !ok || v != uint32(i) {
			t.Fatalf("k%d: %d %v", i, v, ok)
		}
	}
	if _, ok := m.get("absent"); ok {
		t.Fatal("absent key found")
	}
	m2 := m
	for i := 0; i < 5000; i += 2 {
		m2 = m2.del(fmt.Sprint("k", i))
	}
	if m2.size != 2500 || m.size != 5000 {
		t.Fatalf("sizes %d %d", m2.size, m.size)
	}
	for i := range 5000 {
		_, ok := m2.get(fmt.Sprint("k", i))
		if ok != (i%2 == 1) {
			t.Fatalf("after delete k%d present=%v", i, ok)
		}
		if _, ok := m.get(fmt.Sprint("k", i)); !ok {
			t.Fatalf("original lost k%d", i)
		}
	}
	// Old snapshots are unchanged.
	for s, snap := range snapshots {
		want := 0
		if s > 0 {
			want = (s-1)*1000 + 1
		}
		if snap.size != want {
			t.Fatalf("snapshot %d size %d", s, snap.size)
		}
		if _, ok := snap.get("k4999"); ok {
			t.Fatalf("snapshot %d sees a later key", s)
		}
	}
	m3 := m.set("k1", 42)
	if v, _ := m3.get("k1"); v != 42 || m3.size != 5000 {
		t.Fatal("overwrite failed")
	}
	if v, _ := m.get("k1"); v != 1 {
		t.Fatal("overwrite leaked into the original")
	}
}

// TestPMapBuilder checks that a built map holds what pmap.set would, and
// stays persistent: later sets and deletes leave it as it was.
func TestPMapBuilder(t *testing.T) {
	var b pmapBuilder
	for i := range 5000 {
		b.set(fmt.Sprint("k", i), uint32(i))
	}
	b.set("k7", 77) // overwrite
	m := b.build()
	if m.size != 5000 {
		t.Fatalf("size %d", m.size)
	}
	check := func(what string, m pmap) {
		t.Helper()
		for i := range 5000 {
			want := uint32(i)
			if i == 7 {
				want = 77
			}
			if v, ok := m.get(fmt.Sprint("k", i)); !ok || v != want {
				t.Fatalf("%s: k%d = %d %v", what, i, v, ok)
			}
		}
	}
	check("built", m)
	m2 := m
	for i := range 5000 {
		if i%2 == 0 {
			m2 = m2.del(fmt.Sprint("k", i))
		} else {
			m2 = m2.set(fmt.Sprint("k", i), 0)
		}
		m2 = m2.set(fmt.Sprint("new", i), 1)
	}
	check("after changes to a copy", m)
	if m2.size != 7500 {
		t.Fatalf("copy size %d", m2.size)
	}
}

// TestPMapOwned checks setOwned and delOwned: the changes of one owner
// are seen by the map it returns, and a map handed on from one owner is
// left intact by the changes of another, or of none.
func TestPMapOwned(t *testing.T) {
	var b pmapBuilder
	for i := range 3000 {
		b.set(fmt.Sprint("k", i), uint32(i))
	}
	base := b.build()
	check := func(what string, m pmap, n int, has func(i int) bool) {
		t.Helper()
		if m.size != n {
			t.Fatalf("%s: size %d, want %d", what, m.size, n)
		}
		for i := range 4000 {
			v, ok := m.get(fmt.Sprint("k", i))
			if ok != has(i) || (ok && v != uint32(i)) {
				t.Fatalf("%s: k%d = %d, %v", what, i, v, ok)
			}
		}
	}
	for _, owner := range []uint64{0, treeGen.Add(1)} {
		m := base
		for i := 0; i < 3000; i += 3 {
			m = m.delOwned(fmt.Sprint("k", i), owner)
		}
		for i := 3000; i < 4000; i++ {
			m = m.setOwned(fmt.Sprint("k", i), uint32(i), owner)
		}
		check(fmt.Sprint("owner ", owner), m, 3000, func(i int) bool { return i >= 3000 || i%3 != 0 })
		check(fmt.Sprint("base after owner ", owner), base, 3000, func(i int) bool { return i < 3000 })
	}
}
