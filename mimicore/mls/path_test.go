package mls

import (
	"errors"
	"strings"
	"testing"
)

// craftPath builds an UpdatePath for committer on tg's group by hand: the
// given parent node keys (fresh ones when keys is nil), leaf encryption key
// leafKey, valid parent hashes and a valid leaf signature. Each path node
// carries one placeholder ciphertext per member of its copath node's
// resolution unless noCiphertexts is set; a Delivery Service cannot tell
// them from real ones.
func craftPath(t testing.TB, tg *testGroup, committer uint32, keys [][]byte, leafKey []byte, noCiphertexts bool) *UpdatePath {
	t.Helper()
	g := tg.g
	n := g.next()
	fdp, copath := n.tree.filteredDirectPath(committer)
	if keys == nil {
		keys = make([][]byte, len(fdp))
		for i := range keys {
			keys[i] = randomHPKEPublicKey(t, tg.cs)
		}
	}
	ph, err := n.tree.setPathNodes(committer, fdp, copath, keys)
	if err != nil {
		t.Fatal(err)
	}
	leaf := *g.tree.leaf(committer)
	leaf.EncryptionKey = leafKey
	leaf.Source, leaf.ParentHash = SourceCommit, ph
	if err := leaf.Sign(tg.cs, tg.signers[committer], g.ctx.GroupID, committer); err != nil {
		t.Fatal(err)
	}
	p := &UpdatePath{LeafNode: leaf, Nodes: make([]UpdatePathNode, len(fdp))}
	for i := range fdp {
		p.Nodes[i].EncryptionKey = keys[i]
		if noCiphertexts {
			continue
		}
		for range n.tree.resolution(copath[i], nil) {
			p.Nodes[i].EncryptedPathSecrets = append(p.Nodes[i].EncryptedPathSecrets,
				HPKECiphertext{KEMOutput: randomBytes(t, 32), Ciphertext: randomBytes(t, 48)})
		}
	}
	return p
}

// applyCrafted frames path in a commit from member committer and applies
// it to tg's group as a Delivery Service receives it.
func applyCrafted(t *testing.T, tg *testGroup, committer uint32, path *UpdatePath) (*GroupState, error) {
	t.Helper()
	m := tg.frame(t, Sender{Type: SenderMember, Index: committer}, tg.signers[committer], &Commit{Path: path})
	next, _, err := tg.g.ApplyCommit(reencode(t, m), nil)
	return next, err
}

// TestUpdatePathKeysUnique checks that a commit whose UpdatePath would
// leave two nodes of the tree with one encryption key is refused (RFC 9420
// §12.4.3.1, §16.7): members and joiners reject such a tree, so a Delivery
// Service that kept it would serve a tree nobody can join.
func TestUpdatePathKeysUnique(t *testing.T) {
	const committer = 1 // direct path 1, 3, 7 in a tree of 8 leaves
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 8, nil)
	fdp, _ := tg.g.tree.filteredDirectPath(committer)
	fresh := func() [][]byte {
		keys := make([][]byte, len(fdp))
		for i := range keys {
			keys[i] = randomHPKEPublicKey(t, tg.cs)
		}
		return keys
	}
	leafKey := randomHPKEPublicKey(t, tg.cs)
	cases := []struct {
		name    string
		keys    func() [][]byte
		refused bool
	}{
		{"fresh keys", fresh, false},
		{"the committer's old path keys on the same nodes", func() [][]byte {
			keys := make([][]byte, len(fdp))
			for i, x := range fdp {
				keys[i] = tg.g.tree.parentNode(x).EncryptionKey
			}
			return keys
		}, false},
		{"another member's leaf key", func() [][]byte {
			keys := fresh()
			keys[len(keys)-1] = tg.g.tree.leaf(3).EncryptionKey
			return keys
		}, true},
		{"the committer's current leaf key", func() [][]byte {
			keys := fresh()
			keys[0] = tg.g.tree.leaf(committer).EncryptionKey
			return keys
		}, true},
		{"a parent key outside the direct path", func() [][]byte {
			keys := fresh()
			keys[1] = tg.g.tree.parentNode(5).EncryptionKey
			return keys
		}, true},
		{"one key on every node", func() [][]byte {
			keys := fresh()
			for i := range keys {
				keys[i] = keys[0]
			}
			return keys
		}, true},
		{"the path's new leaf key", func() [][]byte {
			keys := fresh()
			keys[0] = leafKey
			return keys
		}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			next, err := applyCrafted(t, tg, committer, craftPath(t, tg, committer, c.keys(), leafKey, false))
			if !c.refused {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if err := next.Tree().Validate(next.GroupID()); err != nil {
					t.Fatalf("the new tree fails validation: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalidCommit) || !strings.Contains(err.Error(), "encryption key") {
				t.Fatalf("refused for another reason: %v", err)
			}
		})
	}
}

// TestCommitLeafKeyChanges checks that a new leaf node from an UpdatePath
// or an Update proposal must not keep the leaf's current encryption key
// (RFC 9420 §12.4.2, §12.1.2).
func TestCommitLeafKeyChanges(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 4, nil)
	t.Run("update path", func(t *testing.T) {
		old := tg.g.tree.leaf(1).EncryptionKey
		if _, err := applyCrafted(t, tg, 1, craftPath(t, tg, 1, nil, old, false)); err == nil {
			t.Fatal("an UpdatePath leaf keeping the committer's encryption key was accepted")
		} else if !strings.Contains(err.Error(), "encryption key") {
			t.Fatalf("refused for another reason: %v", err)
		}
		if _, err := applyCrafted(t, tg, 1, craftPath(t, tg, 1, nil, randomHPKEPublicKey(t, tg.cs), false)); err != nil {
			t.Fatalf("a fresh leaf key was refused: %v", err)
		}
	})
	update := func(key []byte) *MLSMessage {
		leaf := *tg.g.tree.leaf(2)
		leaf.EncryptionKey = key
		leaf.Source, leaf.ParentHash = SourceUpdate, nil
		if err := leaf.Sign(tg.cs, tg.signers[2], tg.g.ctx.GroupID, 2); err != nil {
			t.Fatal(err)
		}
		m := tg.proposal(t, Sender{Type: SenderMember, Index: 2}, tg.signers[2], &Proposal{Type: ProposalUpdate, LeafNode: &leaf})
		return reencode(t, m)
	}
	t.Run("update proposal", func(t *testing.T) {
		if _, _, err := tg.g.VerifyProposal(update(tg.g.tree.leaf(2).EncryptionKey)); err == nil {
			t.Fatal("an Update keeping the leaf's encryption key was accepted")
		} else if !strings.Contains(err.Error(), "encryption key") {
			t.Fatalf("refused for another reason: %v", err)
		}
		if _, _, err := tg.g.VerifyProposal(update(randomHPKEPublicKey(t, tg.cs))); err != nil {
			t.Fatalf("an Update with a fresh key was refused: %v", err)
		}
	})
}

// TestUpdatePathCiphertextCount checks RFC 9420 §7.6: each UpdatePathNode
// carries one encrypted path secret per node of its copath node's
// resolution, leaves added by the same commit excluded.
func TestUpdatePathCiphertextCount(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 6, nil)
	leafKey := func() []byte { return randomHPKEPublicKey(t, tg.cs) }
	t.Run("no ciphertexts", func(t *testing.T) {
		_, err := applyCrafted(t, tg, 1, craftPath(t, tg, 1, nil, leafKey(), true))
		if err == nil || !strings.Contains(err.Error(), "ciphertexts") {
			t.Fatalf("want a refusal for the ciphertext count, got %v", err)
		}
	})
	t.Run("one ciphertext too many", func(t *testing.T) {
		p := craftPath(t, tg, 1, nil, leafKey(), false)
		last := &p.Nodes[len(p.Nodes)-1]
		last.EncryptedPathSecrets = append(last.EncryptedPathSecrets, last.EncryptedPathSecrets[0])
		_, err := applyCrafted(t, tg, 1, p)
		if err == nil || !strings.Contains(err.Error(), "ciphertexts") {
			t.Fatalf("want a refusal for the ciphertext count, got %v", err)
		}
	})
	t.Run("one per resolution member", func(t *testing.T) {
		if _, err := applyCrafted(t, tg, 1, craftPath(t, tg, 1, nil, leafKey(), false)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("adds in the same commit get none", func(t *testing.T) {
		// Leaves 6 and 7 are blank: the adds land in leaf 1's copath
		// (under node 11) and in unmerged lists, and get no ciphertext.
		var props []ProposalOrRef
		for _, name := range []string{"new 1", "new 2"} {
			kp, _ := newTestKeyPackage(t, tg.cs, name)
			props = append(props, ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}})
		}
		m := tg.commit(t, 1, props, true, nil)
		_, info, err := tg.g.ApplyCommit(reencode(t, m), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Added) != 2 {
			t.Fatalf("added %v", info.Added)
		}
	})
}

// TestNewLeafKeyNotAParentKey checks that a leaf entering the tree (here
// by an Add) may not carry the encryption key of a parent node.
func TestNewLeafKeyNotAParentKey(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 6, nil)
	cases := []struct {
		name    string
		key     []byte
		refused bool
	}{
		{"fresh key", randomHPKEPublicKey(t, tg.cs), false},
		{"a parent node's key", tg.g.tree.parentNode(3).EncryptionKey, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kp, signer := newTestKeyPackage(t, tg.cs, "joiner")
			kp.LeafNode.EncryptionKey = c.key
			if err := kp.LeafNode.Sign(tg.cs, signer, nil, 0); err != nil {
				t.Fatal(err)
			}
			if err := kp.Sign(signer); err != nil {
				t.Fatal(err)
			}
			m := tg.proposal(t, Sender{Type: SenderMember, Index: 0}, tg.signers[0], &Proposal{Type: ProposalAdd, KeyPackage: kp})
			_, _, err := tg.g.VerifyProposal(reencode(t, m))
			if c.refused != (err != nil) {
				t.Fatalf("refused %v, want %v: %v", err != nil, c.refused, err)
			}
			if err != nil && !strings.Contains(err.Error(), "encryption key already used by node 3") {
				t.Fatalf("refused for another reason: %v", err)
			}
		})
	}
}

// TestParentKeyIndex checks that the parent key index of the tree stays
// equal to a scan of its parent nodes through commits that add, remove,
// update and truncate, and after a restore and a decode.
func TestParentKeyIndex(t *testing.T) {
	check := func(t *testing.T, what string, tree *Tree) {
		t.Helper()
		want := make(map[string]uint32)
		for x := uint32(1); x < tree.width(); x += 2 {
			if p := tree.parentNode(x); p != nil {
				want[string(p.EncryptionKey)] = x
			}
		}
		if tree.parentKeys.size != len(want) {
			t.Fatalf("%s: index holds %d keys, the tree %d", what, tree.parentKeys.size, len(want))
		}
		for k, x := range want {
			if y, ok := tree.parentKeys.get(k); !ok || y != x {
				t.Fatalf("%s: key of node %d indexed at %d (%v)", what, x, y, ok)
			}
		}
	}
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 7, nil)
	check(t, "built", tg.g.tree)
	step := func(what string, committer uint32, props []ProposalOrRef) {
		next, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, committer, props, true, nil)), nil)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		tg.g = next
		check(t, what, next.tree)
	}
	kp, signer := newTestKeyPackage(t, tg.cs, "new")
	step("add", 2, []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}})
	tg.signers[7] = signer
	step("path", 5, nil)
	step("remove", 0, []ProposalOrRef{
		{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: 7}},
		{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: 6}},
		{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: 5}},
		{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: 4}},
	})
	if tg.g.tree.leaves != 4 {
		t.Fatalf("not truncated: %d leaves", tg.g.tree.leaves)
	}
	decoded, err := TreeFromRatchetTree(tg.cs, tg.g.tree.RatchetTree())
	if err != nil {
		t.Fatal(err)
	}
	check(t, "decoded", decoded)
	st, err := tg.g.Stored()
	if err != nil {
		t.Fatal(err)
	}
	restored, err := RestoreGroupState(st)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "restored", restored.tree)
}
