package mls

import (
	"bytes"
	"crypto"
	"fmt"
	"testing"
)

// populatedLeaves returns n KeyPackage leaves of suite cs and their
// signers.
func populatedLeaves(tb testing.TB, cs CipherSuite, n int) ([]*LeafNode, []crypto.Signer) {
	leaves := make([]*LeafNode, n)
	signers := make([]crypto.Signer, n)
	for i := range leaves {
		leaves[i], signers[i] = newTestLeaf(tb, cs, fmt.Sprint("member ", i))
	}
	return leaves, signers
}

// TestNewPopulatedGroup checks that a populated group is a group its
// members can use: a joiner's full validation accepts its tree and
// GroupInfo, every parent node is set, and the returned members commit in
// turn, follow each other's commits (which decrypts path secrets with the
// keys they were given) and exchange messages.
func TestNewPopulatedGroup(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cs      CipherSuite
		n       int
		members []uint32
	}{
		{"suite1/one member", X25519AES128GCMSHA256Ed25519, 1, []uint32{0}},
		{"suite1/37 members", X25519AES128GCMSHA256Ed25519, 37, []uint32{0, 5, 36}},
		{"suite1/64 members", X25519AES128GCMSHA256Ed25519, 64, []uint32{63, 1, 32}},
		{"suite2/13 members", P256AES128GCMSHA256P256, 13, []uint32{12, 0, 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaves, signers := populatedLeaves(t, tc.cs, tc.n)
			g, ms, err := NewPopulatedGroup(PopulatedGroupOptions{CipherSuite: tc.cs, GroupID: []byte("populated"),
				Leaves: leaves, Signers: signers, Members: tc.members})
			if err != nil {
				t.Fatal(err)
			}
			if g.MemberCount() != uint32(tc.n) || g.Epoch() != uint64(tc.n)+1 || len(ms) != len(tc.members) {
				t.Fatalf("%d members at epoch %d, %d Members", g.MemberCount(), g.Epoch(), len(ms))
			}
			for x := uint32(1); x < g.tree.width(); x += 2 {
				if g.tree.node(x) == nil && !g.tree.subtreeBlank(right(x)) {
					t.Fatalf("parent node %d is blank", x)
				}
			}
			// A joiner validates the whole tree and the GroupInfo.
			gi, err := ms[0].GroupInfo()
			if err != nil {
				t.Fatal(err)
			}
			joined, err := NewGroupState(reencodeGroupInfo(t, gi), nil)
			if err != nil {
				t.Fatalf("the tree or GroupInfo does not validate: %v", err)
			}
			if !bytes.Equal(joined.TreeHash(), g.TreeHash()) {
				t.Fatal("the joiner's tree hash differs")
			}
			// Each member commits in turn; the others follow.
			for turn := range 2 * len(ms) {
				c := turn % len(ms)
				res, err := ms[c].Commit(nil, nil, nil)
				if err != nil {
					t.Fatalf("turn %d: commit: %v", turn, err)
				}
				if tc.n > 1 && len(res.Commit.PublicMessage.Content.Commit.Path.Nodes) == 0 {
					t.Fatalf("turn %d: the commit has no path nodes", turn)
				}
				next := make([]*Member, len(ms))
				for k, m := range ms {
					if k == c {
						next[k] = res.Next
						continue
					}
					if next[k], err = m.ApplyCommit(reencode(t, res.Commit), nil); err != nil {
						t.Fatalf("turn %d: member %d follows member %d: %v", turn, k, c, err)
					}
				}
				ms = next
			}
			// And they share the epoch's secrets.
			msg, err := ms[0].Protect([]byte("hello"), nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, m := range ms[1:] {
				if _, data, err := m.Unprotect(reencode(t, msg)); err != nil || string(data) != "hello" {
					t.Fatalf("member %d: %q, %v", k+1, data, err)
				}
			}
		})
	}
}

// reencodeGroupInfo round-trips gi through its wire encoding, as a
// joiner receives it.
func reencodeGroupInfo(tb testing.TB, gi *GroupInfo) *GroupInfo {
	return reencode(tb, &MLSMessage{Version: MLS10, WireFormat: WireFormatGroupInfo, GroupInfo: gi}).GroupInfo
}

// TestNewPopulatedGroupRefuses checks the options NewPopulatedGroup
// refuses.
func TestNewPopulatedGroupRefuses(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	leaves, signers := populatedLeaves(t, cs, 3)
	for _, tc := range []struct {
		name string
		edit func(*PopulatedGroupOptions)
	}{
		{"no leaves", func(o *PopulatedGroupOptions) { o.Leaves, o.Signers = nil, nil }},
		{"no group id", func(o *PopulatedGroupOptions) { o.GroupID = nil }},
		{"a signer missing", func(o *PopulatedGroupOptions) { o.Signers = o.Signers[:2] }},
		{"another leaf's signer", func(o *PopulatedGroupOptions) { o.Signers = []crypto.Signer{signers[1], signers[1], signers[2]} }},
		{"member past the leaves", func(o *PopulatedGroupOptions) { o.Members = []uint32{3} }},
		{"unsupported suite", func(o *PopulatedGroupOptions) { o.CipherSuite = 4 }},
		{"badly signed leaf", func(o *PopulatedGroupOptions) {
			l := leaves[1].clone()
			l.Signature[0] ^= 1
			o.Leaves = []*LeafNode{leaves[0], l, leaves[2]}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := PopulatedGroupOptions{CipherSuite: cs, GroupID: []byte("g"), Leaves: leaves, Signers: signers, Members: []uint32{0}}
			tc.edit(&opts)
			if _, _, err := NewPopulatedGroup(opts); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
