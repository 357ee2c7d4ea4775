package mls

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func decodeTree(t *testing.T, cs CipherSuite, data []byte) *Tree {
	t.Helper()
	var rt RatchetTree
	if err := wire.Unmarshal(data, &rt, "ratchet tree"); err != nil {
		t.Fatal(err)
	}
	tree, err := TreeFromRatchetTree(cs, rt)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func encodeTree(t *testing.T, tree *Tree) []byte {
	t.Helper()
	rt := tree.RatchetTree()
	out, err := wire.Marshal(&rt)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestTreeValidationVectors(t *testing.T) {
	var cases []struct {
		suiteField
		Tree        hexb       `json:"tree"`
		GroupID     hexb       `json:"group_id"`
		TreeHashes  []hexb     `json:"tree_hashes"`
		Resolutions [][]uint32 `json:"resolutions"`
	}
	if err := vectors.Load("tree-validation.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		tree := decodeTree(t, tc.CipherSuite, tc.Tree)
		if int(tree.width()) != len(tc.TreeHashes) {
			t.Fatalf("case %d: width %d, want %d", i, tree.width(), len(tc.TreeHashes))
		}
		for x := range tree.width() {
			h, err := tree.treeHash(x)
			if err != nil || !bytes.Equal(h, tc.TreeHashes[x]) {
				t.Errorf("case %d node %d: tree hash %x, %v", i, x, h, err)
			}
			res := tree.resolution(x, nil)
			if len(res) != len(tc.Resolutions[x]) || (len(res) > 0 && !equalU32(res, tc.Resolutions[x])) {
				t.Errorf("case %d node %d: resolution %v, want %v", i, x, res, tc.Resolutions[x])
			}
		}
		if err := tree.Validate(tc.GroupID); err != nil {
			t.Errorf("case %d (suite %d): %v", i, tc.CipherSuite, err)
		}
		if !bytes.Equal(encodeTree(t, tree), tc.Tree) {
			t.Errorf("case %d: tree does not re-encode", i)
		}
	}
	c.Report(t, "tree-validation.json")
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestTreeOperationsVectors(t *testing.T) {
	var cases []struct {
		suiteField
		Proposal       hexb   `json:"proposal"`
		ProposalSender uint32 `json:"proposal_sender"`
		TreeBefore     hexb   `json:"tree_before"`
		TreeAfter      hexb   `json:"tree_after"`
		TreeHashBefore hexb   `json:"tree_hash_before"`
		TreeHashAfter  hexb   `json:"tree_hash_after"`
	}
	if err := vectors.Load("tree-operations.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		before := decodeTree(t, tc.CipherSuite, tc.TreeBefore)
		h, err := before.TreeHash()
		if err != nil || !bytes.Equal(h, tc.TreeHashBefore) {
			t.Errorf("case %d: tree hash before %x, %v", i, h, err)
		}
		var p Proposal
		if err := wire.Unmarshal(tc.Proposal, &p, "proposal"); err != nil {
			t.Fatal(err)
		}
		after := before.clone()
		switch p.Type {
		case ProposalAdd:
			if _, err := after.addLeaf(&p.KeyPackage.LeafNode); err != nil {
				t.Fatal(err)
			}
		case ProposalUpdate:
			after.updateLeaf(tc.ProposalSender, p.LeafNode)
		case ProposalRemove:
			after.removeLeaf(p.Removed)
		default:
			t.Fatalf("case %d: unexpected proposal type %d", i, p.Type)
		}
		if got := encodeTree(t, after); !bytes.Equal(got, tc.TreeAfter) {
			t.Errorf("case %d (%d): tree after\n got %x\nwant %x", i, p.Type, got, []byte(tc.TreeAfter))
		}
		h, err = after.TreeHash()
		if err != nil || !bytes.Equal(h, tc.TreeHashAfter) {
			t.Errorf("case %d: tree hash after %x, %v", i, h, err)
		}
		// The source tree must be untouched.
		if got := encodeTree(t, before); !bytes.Equal(got, tc.TreeBefore) {
			t.Errorf("case %d: operating on a clone changed the original", i)
		}
		if h, _ := before.TreeHash(); !bytes.Equal(h, tc.TreeHashBefore) {
			t.Errorf("case %d: original tree hash changed", i)
		}
	}
	c.Report(t, "tree-operations.json")
}

// TestTreeCountsInvariant runs random adds and removes on a tree and checks
// the O(log n) blank-subtree and free-leaf lookups against a full scan.
func TestTreeCountsInvariant(t *testing.T) {
	s, _ := X25519AES128GCMSHA256Ed25519.params()
	tree := newTree(s, 1)
	leaf, _ := newTestLeaf(t, X25519AES128GCMSHA256Ed25519, "x")
	tree.setLeaf(0, leaf)
	naiveBlank := func(tr *Tree, x uint32) bool {
		for y := range tr.width() {
			if isInSubtree(y, x) && tr.node(y) != nil {
				return false
			}
		}
		return true
	}
	state := uint32(7)
	next := func() uint32 { state = state*1103515245 + 12345; return state >> 8 }
	for step := range 400 {
		tr := tree.clone()
		if members := tr.Members(); next()%3 != 0 || len(members) < 2 {
			if _, err := tr.addLeaf(leaf); err != nil {
				t.Fatal(err)
			}
		} else {
			tr.removeLeaf(members[next()%uint32(len(members))])
		}
		for x := range tr.width() {
			if tr.subtreeBlank(x) != naiveBlank(tr, x) {
				t.Fatalf("step %d node %d: subtreeBlank wrong", step, x)
			}
		}
		want := tr.leaves
		for i := range tr.leaves {
			if tr.leaf(i) == nil {
				want = i
				break
			}
		}
		if got := tr.leftmostBlankLeaf(); got != want {
			t.Fatalf("step %d: leftmost blank leaf %d, want %d", step, got, want)
		}
		tree = tr
	}
}

// treeWithBlankLeaves returns a tree of 2n leaves whose root is a
// non-blank parent and whose leaves 0 and n are members, the others blank,
// and n leaf nodes to add.
func treeWithBlankLeaves(tb testing.TB, n uint32) (*Tree, []*LeafNode) {
	s, err := X25519AES128GCMSHA256Ed25519.params()
	if err != nil {
		tb.Fatal(err)
	}
	tree := newTree(s, 2*n)
	base, _ := newTestLeaf(tb, X25519AES128GCMSHA256Ed25519, "member")
	leaves := make([]*LeafNode, n+2)
	for i := range leaves {
		l := *base
		l.EncryptionKey = []byte{byte(i >> 16), byte(i >> 8), byte(i)}
		leaves[i] = &l
	}
	tree.setLeaf(0, leaves[n])
	tree.setLeaf(n, leaves[n+1])
	tree.set(root(2*n), &Node{Type: NodeParent, Parent: &ParentNode{EncryptionKey: []byte("root")}})
	return tree, leaves[:n]
}

// TestAddLeavesUnmergedOrder checks that adding many leaves in one commit
// records each, in order, as unmerged in its non-blank ancestors, as
// adding them one by one does (RFC 9420 §12.1.1).
func TestAddLeavesUnmergedOrder(t *testing.T) {
	tree, leaves := treeWithBlankLeaves(t, 64)
	one := tree.clone()
	for _, l := range leaves {
		if _, err := one.addLeaf(l); err != nil {
			t.Fatal(err)
		}
	}
	batch := tree.clone()
	var added []uint32
	for _, l := range leaves {
		i, err := batch.placeLeaf(l)
		if err != nil {
			t.Fatal(err)
		}
		added = append(added, i)
	}
	batch.markUnmerged(added)
	a, err := marshal(new(one.ratchetTree()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := marshal(new(batch.ratchetTree()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("the trees differ")
	}
	if got := len(batch.parentNode(root(batch.leaves)).UnmergedLeaves); got != len(leaves) {
		t.Fatalf("the root lists %d unmerged leaves, want %d", got, len(leaves))
	}
}

// BenchmarkAddLeaves adds 16,382 leaves under one non-blank root, as a
// commit of that many Adds does: one by one (addLeaf, which rewrites the
// root's unmerged list each time) and in one batch (placeLeaf, then
// markUnmerged, as applyProposals does), which is linear in the adds.
func BenchmarkAddLeaves(b *testing.B) {
	tree, leaves := treeWithBlankLeaves(b, 1<<14)
	leaves = leaves[:len(leaves)-2]
	b.Run("one-by-one", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			t := tree.clone()
			for _, l := range leaves {
				if _, err := t.addLeaf(l); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("batch", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			t := tree.clone()
			added := make([]uint32, 0, len(leaves))
			for _, l := range leaves {
				i, err := t.placeLeaf(l)
				if err != nil {
					b.Fatal(err)
				}
				added = append(added, i)
			}
			t.markUnmerged(added)
		}
	})
}
