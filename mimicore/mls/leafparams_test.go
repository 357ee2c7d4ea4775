package mls

import (
	"errors"
	"testing"
)

// withoutGroupParams returns a modifier of a leaf's capabilities: with
// suite set, they list another cipher suite instead of the group's; with
// version set, another protocol version instead of the group's.
func withoutGroupParams(cs CipherSuite, suite, version bool) func(*Capabilities) {
	return func(c *Capabilities) {
		c.CipherSuites = []CipherSuite{cs}
		c.Versions = []ProtocolVersion{MLS10}
		if suite {
			c.CipherSuites = []CipherSuite{X448AES256GCMSHA512Ed448}
		}
		if version {
			c.Versions = []ProtocolVersion{MLS10 + 1}
		}
	}
}

// commitWithLeaf builds a commit from committer with an UpdatePath whose
// leaf mod changes, signed as the committer.
func commitWithLeaf(tb testing.TB, tg *testGroup, committer uint32, mod func(*LeafNode)) *MLSMessage {
	tb.Helper()
	g := tg.g
	n := g.next()
	leaf := *n.tree.leaf(committer).clone()
	mod(&leaf)
	np, err := n.tree.generateUpdatePath(committer, leaf, tg.signers[committer], g.ctx.GroupID, nil, n.provisionalContext)
	if err != nil {
		tb.Fatal(err)
	}
	return reencode(tb, tg.frame(tb, Sender{Type: SenderMember, Index: committer}, tg.signers[committer], &Commit{Path: np.path}))
}

// TestLeafListsGroupParameters checks that no leaf enters the tree, by an
// Add, an Update or a commit's UpdatePath, unless its capabilities list
// the group's cipher suite and protocol version (RFC 9420 §7.3: the leaf
// must be compatible with the group's parameters). OpenMLS members refuse
// such a leaf: a hub that fanned the commit out would fork them off.
func TestLeafListsGroupParameters(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	cases := []struct {
		name           string
		suite, version bool
	}{
		{"both listed", false, false},
		{"suite missing", true, false},
		{"version missing", false, true},
	}
	for _, tc := range cases {
		ok := !tc.suite && !tc.version
		mod := withoutGroupParams(cs, tc.suite, tc.version)
		t.Run("add/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			kp := joinerKeyPackage(t, cs, func(l *LeafNode) { mod(&l.Capabilities) }, nil)
			add := []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}}
			_, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, add, false, nil)), nil)
			checkRefusal(t, err, ok, ErrInvalidProposal)
			_, _, err = tg.g.VerifyProposal(reencode(t, tg.proposal(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1],
				&Proposal{Type: ProposalAdd, KeyPackage: kp})))
			checkRefusal(t, err, ok, ErrInvalidProposal)
		})
		t.Run("update/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			leaf := tg.g.tree.leaf(1).clone()
			leaf.Source = SourceUpdate
			leaf.Lifetime = Lifetime{}
			leaf.EncryptionKey = randomHPKEPublicKey(t, cs)
			mod(&leaf.Capabilities)
			if err := leaf.Sign(cs, tg.signers[1], tg.g.GroupID(), 1); err != nil {
				t.Fatal(err)
			}
			_, _, err := tg.g.VerifyProposal(reencode(t, tg.proposal(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1],
				&Proposal{Type: ProposalUpdate, LeafNode: leaf})))
			checkRefusal(t, err, ok, ErrInvalidProposal)
		})
		t.Run("commit path/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			_, _, err := tg.g.ApplyCommit(commitWithLeaf(t, tg, 0, func(l *LeafNode) { mod(&l.Capabilities) }), nil)
			checkRefusal(t, err, ok, ErrInvalidCommit)
		})
	}
}

// checkRefusal fails t unless err is nil when ok, or wraps want otherwise.
func checkRefusal(t *testing.T, err error, ok bool, want error) {
	t.Helper()
	switch {
	case ok && err != nil:
		t.Fatalf("refused: %v", err)
	case !ok && err == nil:
		t.Fatal("accepted; OpenMLS members refuse it")
	case !ok && !errors.Is(err, want):
		t.Fatalf("refused for another reason: %v", err)
	}
}

// TestNewGroupLeafListsGroupParameters checks that NewGroupState, which
// the Delivery Service runs on create_group and joiners on the tree they
// receive, refuses a tree with a leaf whose capabilities lack the group's
// cipher suite or protocol version: OpenMLS joiners refuse such a tree,
// so no one could join the group.
func TestNewGroupLeafListsGroupParameters(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	for _, tc := range []struct {
		name           string
		suite, version bool
	}{
		{"both listed", false, false},
		{"suite missing", true, false},
		{"version missing", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 1, nil)
			leaf := tg.g.tree.leaf(0).clone()
			withoutGroupParams(cs, tc.suite, tc.version)(&leaf.Capabilities)
			leaf.Source, leaf.ParentHash, leaf.Lifetime = SourceKeyPackage, nil, Lifetime{NotAfter: 1 << 62}
			if err := leaf.Sign(cs, tg.signers[0], nil, 0); err != nil {
				t.Fatal(err)
			}
			s, err := cs.params()
			if err != nil {
				t.Fatal(err)
			}
			tree := newTree(s, 1)
			tree.setLeaf(0, leaf)
			th, err := tree.rootHash()
			if err != nil {
				t.Fatal(err)
			}
			gi := &GroupInfo{GroupContext: GroupContext{Version: MLS10, CipherSuite: cs, GroupID: []byte("new group"),
				TreeHash: th, ConfirmedTranscriptHash: []byte{}}, ConfirmationTag: randomBytes(t, s.nh)}
			if err := gi.Sign(tg.signers[0]); err != nil {
				t.Fatal(err)
			}
			_, err = NewGroupState(reencodeGroupInfo(t, gi), tree.RatchetTree())
			checkRefusal(t, err, !tc.suite && !tc.version, ErrInvalidTree)
		})
	}
}

// joinerKeyPackage returns the KeyPackage, with extensions exts, of a new
// joiner whose leaf mod changed before the leaf and the KeyPackage were
// signed.
func joinerKeyPackage(t *testing.T, cs CipherSuite, mod func(*LeafNode), exts Extensions) *KeyPackage {
	t.Helper()
	leaf, signer := newTestLeaf(t, cs, "joiner")
	mod(leaf)
	if err := leaf.Sign(cs, signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	kp := &KeyPackage{Version: MLS10, CipherSuite: cs, InitKey: randomHPKEPublicKey(t, cs), LeafNode: *leaf, Extensions: exts}
	if err := kp.Sign(signer); err != nil {
		t.Fatal(err)
	}
	return kp
}
