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
