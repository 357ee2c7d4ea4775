package mls

import (
	"errors"
	"strings"
	"testing"
)

// externalCommit frames an external commit covering props by value, from
// a fresh joiner whose UpdatePath leaf is unsigned: the checks under test
// come before the leaf's.
func externalCommit(tb testing.TB, tg *testGroup, props []ProposalOrRef) *MLSMessage {
	signer, pub, err := tg.cs.GenerateSignatureKey()
	if err != nil {
		tb.Fatal(err)
	}
	leaf, _ := newTestLeaf(tb, tg.cs, "joiner")
	leaf.SignatureKey = pub
	c := &Commit{Proposals: props, Path: &UpdatePath{LeafNode: *leaf}}
	return reencode(tb, tg.frame(tb, Sender{Type: SenderNewMemberCommit}, signer, c))
}

// invalidAdds returns n Adds of one KeyPackage whose signature is broken.
func invalidAdds(tb testing.TB, cs CipherSuite, n int) []ProposalOrRef {
	kp, _ := newTestKeyPackage(tb, cs, "someone")
	kp.Signature = append([]byte{}, kp.Signature...)
	kp.Signature[0] ^= 1
	props := make([]ProposalOrRef, n)
	for i := range props {
		props[i] = ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}
	}
	return props
}

// TestExternalCommitTypeRulesFirst checks that an external commit is
// refused for the proposal types and counts it covers (RFC 9420 §12.4.3.2)
// before any proposal is validated: the proposals' KeyPackages here are
// invalid, so a refusal that names the type rule shows that none was
// verified, and a large unauthenticated commit costs no signature check.
func TestExternalCommitTypeRulesFirst(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 4, nil)
	extInit := ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalExternalInit, KEMOutput: []byte{1}}}
	remove := func(i uint32) ProposalOrRef {
		return ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: i}}
	}
	cases := []struct {
		name  string
		props []ProposalOrRef
		want  string
	}{
		{"adds with invalid key packages", append(invalidAdds(t, tg.cs, 3), extInit), "covers proposal type 1"},
		{"an invalid add after the external init", append([]ProposalOrRef{extInit}, invalidAdds(t, tg.cs, 1)...), "covers proposal type 1"},
		{"no external init", append(invalidAdds(t, tg.cs, 1), remove(1)), "covers proposal type 1"},
		{"two external inits", []ProposalOrRef{extInit, extInit}, "exactly one external init"},
		{"two removes", []ProposalOrRef{extInit, remove(1), remove(2)}, "removes more than one leaf"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := tg.g.ApplyCommit(externalCommit(t, tg, c.props), nil)
			if !errors.Is(err, ErrInvalidCommit) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want the type rule %q, got %v", c.want, err)
			}
		})
	}
}

// pskProposal returns a by-value PSK proposal of external PSK id with a
// zero nonce of n bytes.
func pskProposal(id []byte, n int) ProposalOrRef {
	p := &Proposal{Type: ProposalPSK}
	p.PSK = alloc(p.PSK)
	p.PSK.Type, p.PSK.PSKID, p.PSK.Nonce = PSKExternal, id, make([]byte, n)
	return ProposalOrRef{Type: ProposalByValue, Proposal: p}
}

// alloc returns a new zero T, its type taken from the argument.
func alloc[T any](*T) *T { return new(T) }

// TestCommitPSKsUnique checks the rule that a commit lists each PSK once
// (RFC 9420 §12.2), among many.
func TestCommitPSKsUnique(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 4, nil)
	psks := func(n int, dup bool) []ProposalOrRef {
		props := make([]ProposalOrRef, n)
		for i := range props {
			id := []byte{byte(i >> 8), byte(i)}
			if dup && i == n-1 {
				id = []byte{0, 7}
			}
			props[i] = pskProposal(id, tg.g.s.nh)
		}
		return props
	}
	cases := []struct {
		name  string
		props []ProposalOrRef
		ok    bool
	}{
		{"distinct", psks(300, false), true},
		{"the last one repeats the eighth", psks(300, true), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], &Commit{Proposals: c.props})
			_, _, err := tg.g.ApplyCommit(reencode(t, m), nil)
			if c.ok != (err == nil) {
				t.Fatalf("accepted %v, want %v: %v", err == nil, c.ok, err)
			}
			if err != nil && !strings.Contains(err.Error(), "psk listed twice") {
				t.Fatalf("refused for another reason: %v", err)
			}
		})
	}
}

// TestCommitCustomProposalsUnsupported checks that a commit covering
// proposals of a type no member lists in its capabilities is refused, the
// second of a type too (the support of a type is looked up once per list).
func TestCommitCustomProposalsUnsupported(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 4, nil)
	custom := ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: 0xff01, Data: []byte{1}}}
	for _, n := range []int{1, 2} {
		props := make([]ProposalOrRef, n)
		for i := range props {
			props[i] = custom
		}
		m := tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], &Commit{Proposals: props})
		_, _, err := tg.g.ApplyCommit(reencode(t, m), nil)
		if err == nil || !strings.Contains(err.Error(), "does not support proposal type 65281") {
			t.Fatalf("%d custom proposals: want a refusal for support, got %v", n, err)
		}
	}
}

// TestExternalResyncNewEncryptionKey checks the resync rule of RFC 9420
// §12.2: the leaf of an external commit that removes the joiner's old leaf
// must meet the criteria of an Update of that leaf, among them an
// encryption_key other than the removed leaf's (§7.3). A resync that keeps
// the old key refreshes nothing for whoever holds its private key.
func TestExternalResyncNewEncryptionKey(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	tg := buildTestGroup(t, cs, 3, nil)
	g := tg.g
	const resynced = 1
	oldKey := g.tree.leaf(resynced).EncryptionKey
	for _, tc := range []struct {
		name  string
		reuse bool
	}{
		{"fresh encryption key", false},
		{"the removed leaf's encryption key", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			props := []ProposalOrRef{
				{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalExternalInit, KEMOutput: randomHPKEPublicKey(t, cs)}},
				{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: resynced}},
			}
			list, err := g.resolveProposals(&Commit{Proposals: props}, Sender{Type: SenderNewMemberCommit}, nil)
			if err != nil {
				t.Fatal(err)
			}
			n := g.next()
			if err := n.applyProposals(list, &CommitInfo{}); err != nil {
				t.Fatal(err)
			}
			idx := n.tree.leftmostBlankLeaf()
			leaf, signer := newTestLeaf(t, cs, "member 1")
			n.tree.setLeaf(idx, leaf)
			np, err := n.tree.generateUpdatePath(idx, *leaf, signer, g.GroupID(), nil, n.provisionalContext)
			if err != nil {
				t.Fatal(err)
			}
			if tc.reuse {
				np.path.LeafNode.EncryptionKey = oldKey
				if err := np.path.LeafNode.Sign(cs, signer, g.GroupID(), idx); err != nil {
					t.Fatal(err)
				}
			}
			m := tg.frame(t, Sender{Type: SenderNewMemberCommit}, signer, &Commit{Proposals: props, Path: np.path})
			_, info, err := g.ApplyCommit(reencode(t, m), nil)
			switch {
			case !tc.reuse && err != nil:
				t.Fatalf("resync refused: %v", err)
			case !tc.reuse && info.CommitterLeaf != resynced:
				t.Fatalf("joiner at leaf %d, want %d", info.CommitterLeaf, resynced)
			case tc.reuse && !errors.Is(err, ErrInvalidCommit):
				t.Fatalf("error %v, want %v", err, ErrInvalidCommit)
			}
		})
	}
}

// groupOfThree makes, in suite X25519AES128GCMSHA256Ed25519, the group
// groupID of A (its creator), B and C (at leaf 2), A's and B's leaves
// with the capabilities that with sets, C's with the defaults. It returns
// A's and B's members and the group's public state (a DS's).
func groupOfThree(t *testing.T, groupID string, with func(*Capabilities)) (alice, bob *Member, ds *GroupState) {
	t.Helper()
	cs := X25519AES128GCMSHA256Ed25519
	capable := func(name string) *testClient {
		c := newTestClient(t, cs, name)
		with(&c.kp.LeafNode.Capabilities)
		if err := c.kp.LeafNode.Sign(cs, c.signer, nil, 0); err != nil {
			t.Fatal(err)
		}
		if err := c.kp.Sign(c.signer); err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b, c := capable("A"), capable("B"), newTestClient(t, cs, "C")
	alice, err := NewGroup(a.groupOptions(cs, groupID))
	if err != nil {
		t.Fatal(err)
	}
	res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}, {Type: ProposalAdd, KeyPackage: c.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res.Next, b.join(t, res.Welcome), res.Next.State()
}

// TestGroupContextExtensionsWithRemove checks the rule of RFC 9420
// §12.1.7: a GroupContextExtensions proposal whose required_capabilities
// some members do not support is invalid, counting the members the same
// commit adds and not those it removes. A commit that removes the only
// member lacking a capability and requires it is valid, and one that keeps
// that member is not.
func TestGroupContextExtensionsWithRemove(t *testing.T) {
	const needed ExtensionType = 0xF0F0
	alice, bob, ds := groupOfThree(t, "gce group", func(c *Capabilities) { c.Extensions = []ExtensionType{needed} })
	rc, err := marshal(&RequiredCapabilities{ExtensionTypes: []ExtensionType{needed}})
	if err != nil {
		t.Fatal(err)
	}
	gce := &Proposal{Type: ProposalGroupContextExtensions, Extensions: Extensions{{Type: ExtRequiredCapabilities, Data: rc}}}
	const carol = 2
	if _, err := alice.Commit([]*Proposal{gce}, nil, nil); !errors.Is(err, ErrInvalidProposal) && !errors.Is(err, ErrInvalidCommit) {
		t.Fatalf("requiring a capability a remaining member lacks: %v", err)
	}
	res, err := alice.Commit([]*Proposal{gce, {Type: ProposalRemove, Removed: carol}}, nil, nil)
	if err != nil {
		t.Fatalf("requiring a capability only a removed member lacks: %v", err)
	}
	if _, _, err := ds.ApplyCommit(reencode(t, res.Commit), nil); err != nil {
		t.Fatalf("delivery service: %v", err)
	}
	follow(t, bob, res.Commit, nil)
}

// TestCustomProposalSupportWithRemove checks the rule of RFC 9420 §12.2
// that a non-default proposal type must be supported by the members that
// process the commit, which leaves out those the commit removes: a commit
// that removes the one member lacking support is valid, one that keeps it
// is not.
func TestCustomProposalSupportWithRemove(t *testing.T) {
	const custom ProposalType = 0xff01
	alice, bob, ds := groupOfThree(t, "custom group", func(c *Capabilities) { c.Proposals = []ProposalType{custom} })
	p := &Proposal{Type: custom, Data: []byte{1}}
	const carol = 2
	if _, err := alice.Commit([]*Proposal{p}, nil, nil); !errors.Is(err, ErrInvalidProposal) {
		t.Fatalf("a proposal type a remaining member does not support: %v", err)
	}
	res, err := alice.Commit([]*Proposal{p, {Type: ProposalRemove, Removed: carol}}, nil, nil)
	if err != nil {
		t.Fatalf("a proposal type only a removed member does not support: %v", err)
	}
	if _, _, err := ds.ApplyCommit(reencode(t, res.Commit), nil); err != nil {
		t.Fatalf("delivery service: %v", err)
	}
	follow(t, bob, res.Commit, nil)
}
