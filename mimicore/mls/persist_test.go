package mls

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"slices"
	"testing"
)

// applyStored is what a store does with its records: positions changed or
// added replace base's, and positions at or past Width are dropped.
func applyStored(base []StoredNode, ch *StoredState) []StoredNode {
	m := make(map[uint32]StoredNode, len(base)+len(ch.Nodes))
	for _, n := range base {
		if n.Index < ch.Width {
			m[n.Index] = n
		}
	}
	for _, n := range ch.Nodes {
		m[n.Index] = n
	}
	out := make([]StoredNode, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b StoredNode) int { return int(a.Index) - int(b.Index) })
	return out
}

// sameState fails unless a and b encode alike and have the same indexes.
func sameState(tb testing.TB, a, b *GroupState) {
	tb.Helper()
	ea, err := a.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	eb, err := b.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(ea, eb) {
		tb.Fatal("states differ")
	}
	ha, _ := a.tree.TreeHash()
	hb, _ := b.tree.TreeHash()
	if !bytes.Equal(ha, hb) || !bytes.Equal(ha, b.TreeHash()) {
		tb.Fatal("tree hashes differ")
	}
	if a.MemberCount() != b.MemberCount() || a.sigKeys.size != b.sigKeys.size || a.encKeys.size != b.encKeys.size {
		tb.Fatalf("indexes differ: %d/%d/%d members, %d/%d/%d", a.MemberCount(), a.sigKeys.size, a.encKeys.size,
			b.MemberCount(), b.sigKeys.size, b.encKeys.size)
	}
	if !maps.Equal(a.credUse, b.credUse) || !maps.Equal(a.credSup, b.credSup) {
		tb.Fatalf("credential counts differ: %v %v, want %v %v", b.credUse, b.credSup, a.credUse, a.credSup)
	}
	for _, i := range a.tree.Members() {
		l, _ := a.Member(i)
		if j, ok := b.LeafBySignatureKey(l.SignatureKey()); !ok || j != i {
			tb.Fatalf("leaf %d not indexed by its signature key", i)
		}
		if j, ok := b.encKeys.get(string(l.EncryptionKey())); !ok || j != i {
			tb.Fatalf("leaf %d not indexed by its encryption key", i)
		}
	}
	for x := range b.tree.width() {
		nb, nl := b.tree.counts(x)
		wb, wl := a.tree.counts(x)
		if nb != wb || nl != wl {
			tb.Fatalf("subtree counts of %d differ: %d/%d, want %d/%d", x, nb, nl, wb, wl)
		}
	}
}

func restore(tb testing.TB, st *StoredState) *GroupState {
	tb.Helper()
	g, err := RestoreGroupState(st)
	if err != nil {
		tb.Fatal(err)
	}
	return g
}

func TestStoredRoundTrip(t *testing.T) {
	for _, n := range []uint32{1, 2, 5, 100} {
		t.Run(fmt.Sprint("members=", n), func(t *testing.T) {
			tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, n, nil)
			st, err := tg.g.Stored()
			if err != nil {
				t.Fatal(err)
			}
			if st.Width != tg.g.tree.width() || len(st.Nodes) != int(st.Width) {
				t.Fatalf("%d positions, width %d, want %d", len(st.Nodes), st.Width, tg.g.tree.width())
			}
			slices.Reverse(st.Nodes) // any order
			g := restore(t, st)
			sameState(t, tg.g, g)
			// The restored state does not alias the records.
			for _, sn := range st.Nodes {
				clear(sn.Node)
				clear(sn.Hash)
			}
			clear(st.Context)
			sameState(t, tg.g, g)
			// And it works: a commit applies to it as to the original.
			if n > 1 {
				c := reencode(t, tg.commit(t, 0, nil, true, nil))
				want, _, err := tg.g.ApplyCommit(c, nil)
				if err != nil {
					t.Fatal(err)
				}
				got, _, err := g.ApplyCommit(c, nil)
				if err != nil {
					t.Fatal(err)
				}
				sameState(t, want, got)
			}
		})
	}
}

// TestStoredChangesPathCommit checks that a path commit in a large group
// changes O(log n) positions, and that applying them gives the new state.
func TestStoredChangesPathCommit(t *testing.T) {
	for _, n := range []uint32{100, 1000} {
		t.Run(fmt.Sprint("members=", n), func(t *testing.T) {
			tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, n, nil)
			base, err := tg.g.Stored()
			if err != nil {
				t.Fatal(err)
			}
			cur := base.Nodes
			for _, committer := range []uint32{0, n / 2, n - 1} {
				next, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, committer, nil, true, nil)), nil)
				if err != nil {
					t.Fatal(err)
				}
				ch, err := next.StoredChanges(tg.g)
				if err != nil {
					t.Fatal(err)
				}
				depth := bits.Len32(next.tree.leaves - 1)
				if len(ch.Nodes) > depth+1 {
					t.Fatalf("committer %d: %d positions changed, want at most %d (the direct path and the leaf)", committer, len(ch.Nodes), depth+1)
				}
				cur = applyStored(cur, ch)
				got := restore(t, &StoredState{Context: ch.Context, InterimTranscriptHash: ch.InterimTranscriptHash,
					ConfirmationTag: ch.ConfirmationTag, Width: ch.Width, Nodes: cur})
				sameState(t, next, got)
				tg.g = next
			}
		})
	}
}

// TestStoredChangesGrowAndShrink follows a group built with the client
// through adds that extend the tree and removes that truncate it.
func TestStoredChangesGrowAndShrink(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	a := newTestClient(t, cs, "A")
	m, err := NewGroup(a.groupOptions(cs, "grow and shrink"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := m.State().Stored()
	if err != nil {
		t.Fatal(err)
	}
	cur := st.Nodes
	sameState(t, m.State(), restore(t, st))
	steps := []struct {
		name  string
		props func() []*Proposal
		width uint32
	}{
		{"add 4", func() []*Proposal {
			var ps []*Proposal
			for i := range 4 {
				ps = append(ps, &Proposal{Type: ProposalAdd, KeyPackage: newTestClient(t, cs, fmt.Sprint("m", i)).kp})
			}
			return ps
		}, 15},
		{"remove 3 and 4", func() []*Proposal {
			return []*Proposal{{Type: ProposalRemove, Removed: 3}, {Type: ProposalRemove, Removed: 4}}
		}, 7},
		{"update", func() []*Proposal { return nil }, 7},
		{"remove 1 and 2", func() []*Proposal {
			return []*Proposal{{Type: ProposalRemove, Removed: 1}, {Type: ProposalRemove, Removed: 2}}
		}, 1},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			prev := m.State()
			res, err := m.Commit(step.props(), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			m = res.Next
			ch, err := m.State().StoredChanges(prev)
			if err != nil {
				t.Fatal(err)
			}
			if ch.Width != step.width {
				t.Fatalf("width %d, want %d", ch.Width, step.width)
			}
			cur = applyStored(cur, ch)
			sameState(t, m.State(), restore(t, &StoredState{Context: ch.Context,
				InterimTranscriptHash: ch.InterimTranscriptHash, ConfirmationTag: ch.ConfirmationTag,
				Width: ch.Width, Nodes: cur}))
		})
	}
}

func TestStoredChangesUnrelated(t *testing.T) {
	a := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 9, nil)
	b := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 3, nil)
	sa, err := a.g.Stored()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := b.g.StoredChanges(a.g)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, b.g, restore(t, &StoredState{Context: ch.Context, InterimTranscriptHash: ch.InterimTranscriptHash,
		ConfirmationTag: ch.ConfirmationTag, Width: ch.Width, Nodes: applyStored(sa.Nodes, ch)}))
}

func TestRestoreRejects(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 5, nil)
	good, err := tg.g.Stored()
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(st *StoredState)) *StoredState {
		st := *good
		st.Nodes = slices.Clone(good.Nodes)
		f(&st)
		return &st
	}
	for _, tc := range []struct {
		name string
		st   *StoredState
	}{
		{"bad context", edit(func(st *StoredState) { st.Context = st.Context[:3] })},
		{"even width", edit(func(st *StoredState) { st.Width = 14 })},
		{"width not a power of two", edit(func(st *StoredState) { st.Width = 11; st.Nodes = st.Nodes[:11] })},
		{"missing position", edit(func(st *StoredState) { st.Nodes = st.Nodes[1:] })},
		{"duplicate position", edit(func(st *StoredState) { st.Nodes[1] = st.Nodes[0] })},
		{"position out of range", edit(func(st *StoredState) { st.Nodes[0].Index = 99 })},
		{"short hash", edit(func(st *StoredState) { st.Nodes[2].Hash = st.Nodes[2].Hash[:5] })},
		{"wrong root hash", edit(func(st *StoredState) {
			st.Nodes[7].Hash = bytes.Repeat([]byte{1}, 32)
		})},
		{"leaf at a parent position", edit(func(st *StoredState) { st.Nodes[1].Node = st.Nodes[0].Node })},
		{"trailing bytes", edit(func(st *StoredState) { st.Nodes[0].Node = append(slices.Clone(st.Nodes[0].Node), 0) })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := RestoreGroupState(tc.st); !errors.Is(err, ErrStateEncoding) {
				t.Fatalf("got %v, want ErrStateEncoding", err)
			}
		})
	}
}

// BenchmarkRestore measures a load from stored parts against a decode of
// the whole-state encoding, which rehashes the tree.
func BenchmarkRestore(b *testing.B) {
	for _, n := range []uint32{1000, 10000} {
		tg := buildTestGroup(b, X25519AES128GCMSHA256Ed25519, n, nil)
		st, err := tg.g.Stored()
		if err != nil {
			b.Fatal(err)
		}
		enc, err := tg.g.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint("parts/members=", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := RestoreGroupState(st); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprint("whole/members=", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeGroupState(enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestStoredPartsDoNotAlias changes everything Stored and StoredChanges
// hand out and checks that the states they came from are unchanged.
func TestStoredPartsDoNotAlias(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 9, nil)
	next, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 3, nil, true, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	fg, fn := fingerprint(t, tg.g), fingerprint(t, next)
	all, err := tg.g.Stored()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := next.StoredChanges(tg.g)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*StoredState{all, ch} {
		scribble(st.Context)
		scribble(st.InterimTranscriptHash)
		scribble(st.ConfirmationTag)
		for _, sn := range st.Nodes {
			scribble(sn.Node)
			scribble(sn.Hash)
		}
	}
	checkUnchanged(t, "Stored", tg.g, fg)
	checkUnchanged(t, "StoredChanges", next, fn)
}
