package mls

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// groupInfoWithTree returns a GroupInfo of tg's current epoch, signed by
// leaf 0, whose ratchet_tree extension holds rt.
func groupInfoWithTree(tb testing.TB, tg *testGroup, rt RatchetTree) *GroupInfo {
	enc, err := marshal(&rt)
	if err != nil {
		tb.Fatal(err)
	}
	gi := &GroupInfo{GroupContext: tg.g.GroupContext(), ConfirmationTag: tg.g.ConfirmationTag(),
		Extensions: Extensions{{Type: ExtRatchetTree, Data: enc}}}
	if err := gi.Sign(tg.signers[0]); err != nil {
		tb.Fatal(err)
	}
	return gi
}

// TestVerifyGroupInfoRatchetTree checks VerifyGroupInfo's comparison of a
// ratchet_tree extension with the group's tree: equal (trailing blank
// nodes aside) passes; a tree of another node count is refused on the
// count, before the group's tree is encoded; one of the same count with
// another node is refused on the content.
func TestVerifyGroupInfoRatchetTree(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 5, nil)
	rt := tg.g.tree.RatchetTree()
	other := tg.g.tree.RatchetTree()
	p := *other[1].Parent
	p.EncryptionKey = randomHPKEPublicKey(t, tg.cs)
	other[1] = &Node{Type: NodeParent, Parent: &p}
	cases := []struct {
		name string
		rt   RatchetTree
		want string // "" when accepted
	}{
		{"the group's tree", rt, ""},
		{"with trailing blank nodes", append(tg.g.tree.RatchetTree(), nil, nil), ""},
		{"one node short", rt[:len(rt)-2], fmt.Sprintf("has %d nodes, the group's tree %d", len(rt)-2, len(rt))},
		{"a single leaf", rt[:1], fmt.Sprintf("has 1 nodes, the group's tree %d", len(rt))},
		{"another parent key", other, "differs from the group's tree"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := tg.g.VerifyGroupInfo(groupInfoWithTree(t, tg, c.rt))
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidGroupInfo) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want %q, got %v", c.want, err)
			}
		})
	}
}

// TestTrimmedWidth checks trimmedWidth against a scan from the right.
func TestTrimmedWidth(t *testing.T) {
	for _, n := range []uint32{1, 2, 3, 5, 8, 9, 17} {
		tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, n, nil)
		tree := tg.g.tree.clone()
		for i := n; i > 0; i-- {
			w := tree.width()
			for w > 0 && tree.node(w-1) == nil {
				w--
			}
			if got := tree.trimmedWidth(); got != w {
				t.Fatalf("%d leaves, %d left: trimmedWidth %d, want %d", n, i, got, w)
			}
			// Blank the rightmost leaves one by one, without truncating.
			tree.setLeaf(i-1, nil)
			tree.blankPath(i - 1)
		}
		if got := tree.trimmedWidth(); got != 0 {
			t.Fatalf("%d leaves, all blank: trimmedWidth %d", n, got)
		}
	}
}

// BenchmarkVerifyGroupInfoForeignTree verifies, in a group of 10,000, a
// GroupInfo whose ratchet_tree extension holds a one-leaf tree: its
// refusal must not cost an encoding of the group's tree.
func BenchmarkVerifyGroupInfoForeignTree(b *testing.B) {
	tg := buildTestGroup(b, X25519AES128GCMSHA256Ed25519, 10000, nil)
	gi := groupInfoWithTree(b, tg, tg.g.tree.RatchetTree()[:1])
	b.ReportAllocs()
	for b.Loop() {
		if err := tg.g.VerifyGroupInfo(gi); !errors.Is(err, ErrInvalidGroupInfo) {
			b.Fatal(err)
		}
	}
}
