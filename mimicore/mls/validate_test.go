package mls

import (
	"errors"
	"strings"
	"testing"
)

// TestTreeValidationRejects corrupts a valid tree in the ways RFC 9420
// §7.9.2 and §12.4.3.1 forbid and checks that Validate notices each.
func TestTreeValidationRejects(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 6, nil)
	groupID := tg.g.GroupID()
	if err := tg.g.tree.Validate(groupID); err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(tr *Tree)) *Tree {
		tr := tg.g.tree.clone()
		f(tr)
		return tr
	}
	leafCopy := func(tr *Tree, i uint32) *LeafNode {
		l := *tr.leaf(i)
		return &l
	}
	parentCopy := func(tr *Tree, x uint32) *ParentNode {
		p := *tr.parentNode(x)
		return &p
	}
	// Each case breaks one rule and names the message of the check that
	// must catch it: Validate stops at the first check that fails, so a
	// corruption that also broke an earlier check (a leaf's signature,
	// say) would pass whether or not its own check existed.
	cases := []struct {
		name string
		tree *Tree
		want string
	}{
		{"leaf signature", mutate(func(tr *Tree) {
			l := leafCopy(tr, 2)
			l.Signature = append([]byte{}, l.Signature...)
			l.Signature[0] ^= 1
			tr.setLeaf(2, l)
		}), "leaf 2: "},
		{"leaf signed for another group", mutate(func(tr *Tree) {
			l := leafCopy(tr, 2)
			if err := l.Sign(tg.cs, tg.signers[2], []byte("other"), 2); err != nil {
				t.Fatal(err)
			}
			tr.setLeaf(2, l)
		}), "leaf 2: "},
		{"parent hash", mutate(func(tr *Tree) {
			p := parentCopy(tr, 3)
			p.EncryptionKey = randomHPKEPublicKey(t, tg.cs)
			tr.set(3, &Node{Type: NodeParent, Parent: p})
		}), "node 3 is not parent-hash valid"},
		// Signed anew by the key it now names, so that its signature
		// stays valid and only the duplicate is wrong.
		{"duplicate signature key", mutate(func(tr *Tree) {
			l := leafCopy(tr, 4)
			l.SignatureKey = tr.leaf(0).SignatureKey
			if err := l.Sign(tg.cs, tg.signers[0], groupID, 4); err != nil {
				t.Fatal(err)
			}
			tr.setLeaf(4, l)
		}), "leaves 0 and 4 share a signature key"},
		{"duplicate encryption key", mutate(func(tr *Tree) {
			p := parentCopy(tr, 1)
			p.EncryptionKey = tr.leaf(5).EncryptionKey
			tr.set(1, &Node{Type: NodeParent, Parent: p})
		}), "share an encryption key"},
		{"unmerged leaf not below", mutate(func(tr *Tree) {
			p := parentCopy(tr, 1)
			p.UnmergedLeaves = []uint32{3}
			tr.set(1, &Node{Type: NodeParent, Parent: p})
		}), "node 1: unmerged leaf 3"},
		{"blank unmerged leaf", mutate(func(tr *Tree) {
			p := parentCopy(tr, 7)
			p.UnmergedLeaves = []uint32{7}
			tr.set(7, &Node{Type: NodeParent, Parent: p})
		}), "node 7: unmerged leaf 7"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.tree.Validate(groupID)
			if !errors.Is(err, ErrInvalidTree) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want ErrInvalidTree naming %q", err, tc.want)
			}
		})
	}
	if err := tg.g.tree.Validate(groupID); err != nil {
		t.Fatalf("corrupting clones changed the original: %v", err)
	}
}
