package mls

import (
	"bytes"
	"fmt"
	"testing"
)

// scribble overwrites b in place, as a careless caller would.
func scribble(b []byte) {
	for i := range b {
		b[i] ^= 0xa5
	}
}

// stateFingerprint records everything observable about g: its storage
// encoding and its cached tree hash.
type stateFingerprint struct {
	blob, treeHash []byte
}

func fingerprint(tb testing.TB, g *GroupState) stateFingerprint {
	tb.Helper()
	blob, err := g.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	th, err := g.tree.treeHash(root(g.tree.leaves))
	if err != nil {
		tb.Fatal(err)
	}
	return stateFingerprint{blob: blob, treeHash: bytes.Clone(th)}
}

// checkUnchanged fails when g no longer matches f, or when g's cached
// hashes no longer match its nodes (a node was changed behind the cache).
func checkUnchanged(tb testing.TB, what string, g *GroupState, f stateFingerprint) {
	tb.Helper()
	now := fingerprint(tb, g)
	if !bytes.Equal(now.blob, f.blob) || !bytes.Equal(now.treeHash, f.treeHash) {
		tb.Fatalf("%s: the shared group state changed", what)
	}
	fresh, err := DecodeGroupState(now.blob)
	if err != nil {
		tb.Fatalf("%s: the shared group state no longer decodes: %v", what, err)
	}
	if !bytes.Equal(fresh.ctx.TreeHash, now.treeHash) {
		tb.Fatalf("%s: cached tree hash differs from the nodes' hash", what)
	}
}

// TestGroupStateAccessorsReturnCopies changes everything the exported
// accessors of a shared GroupState hand out and checks that the state, its
// tree and its hashes are unchanged.
func TestGroupStateAccessorsReturnCopies(t *testing.T) {
	rc, err := marshal(&RequiredCapabilities{CredentialTypes: []CredentialType{CredentialBasic}})
	if err != nil {
		t.Fatal(err)
	}
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 5, Extensions{{Type: ExtRequiredCapabilities, Data: rc}})
	g := tg.g
	f := fingerprint(t, g)
	for name, b := range map[string]func() []byte{
		"GroupID":                 g.GroupID,
		"TreeHash":                g.TreeHash,
		"ConfirmedTranscriptHash": g.ConfirmedTranscriptHash,
		"InterimTranscriptHash":   g.InterimTranscriptHash,
		"ConfirmationTag":         g.ConfirmationTag,
		"Tree().TreeHash": func() []byte {
			th, err := g.Tree().TreeHash()
			if err != nil {
				t.Fatal(err)
			}
			return th
		},
	} {
		scribble(b())
		checkUnchanged(t, name, g, f)
	}
	gc := g.GroupContext()
	scribble(gc.GroupID)
	scribble(gc.TreeHash)
	scribble(gc.ConfirmedTranscriptHash)
	scribble(gc.Extensions[0].Data)
	checkUnchanged(t, "GroupContext", g, f)

	for _, n := range g.Tree().RatchetTree() {
		if n == nil {
			continue
		}
		if n.Leaf != nil {
			scribble(n.Leaf.EncryptionKey)
			scribble(n.Leaf.SignatureKey)
			scribble(n.Leaf.Credential.Identity)
			n.Leaf.Capabilities.CipherSuites[0] = 0
		}
		if n.Parent != nil {
			scribble(n.Parent.EncryptionKey)
			scribble(n.Parent.ParentHash)
		}
	}
	checkUnchanged(t, "Tree().RatchetTree", g, f)
}

// TestApplyCommitResultsDoNotAlias changes the commit message and the
// CommitInfo after ApplyCommit and checks that the new state is unchanged.
func TestApplyCommitResultsDoNotAlias(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 5, nil)
	kp, _ := newTestKeyPackage(t, tg.cs, "new")
	m := reencode(t, tg.commit(t, 1, []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}}, true, nil))
	n, info, err := tg.g.ApplyCommit(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := fingerprint(t, n)
	scribble(info.ConfirmationTag)
	scribble(info.ProvisionalContext.TreeHash)
	scribble(info.Path.LeafNode.EncryptionKey)
	scribble(info.Path.Nodes[0].EncryptionKey)
	pm := m.PublicMessage
	added := pm.Content.Commit.Proposals[0].Proposal.KeyPackage
	scribble(added.LeafNode.EncryptionKey)
	scribble(added.LeafNode.Credential.Identity)
	scribble(pm.Auth.ConfirmationTag)
	scribble(pm.Content.Commit.Path.LeafNode.Signature)
	checkUnchanged(t, "commit message and info", n, f)
}

// TestCommitResultDoesNotAlias changes the messages Member.Commit returns
// and checks that the committer's next state is unchanged.
func TestCommitResultDoesNotAlias(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	a, b := newTestClient(t, cs, "A"), newTestClient(t, cs, "B")
	alice, err := NewGroup(a.groupOptions(cs, "alias"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := fingerprint(t, res.Next.State())
	pm := res.Commit.PublicMessage
	scribble(pm.Auth.ConfirmationTag)
	scribble(pm.Content.Commit.Path.LeafNode.EncryptionKey)
	scribble(pm.Content.Commit.Path.LeafNode.Signature)
	scribble(pm.Content.Commit.Path.LeafNode.Credential.Identity)
	for _, n := range pm.Content.Commit.Path.Nodes {
		scribble(n.EncryptionKey)
	}
	scribble(res.GroupInfo.GroupInfo.ConfirmationTag)
	scribble(res.GroupInfo.GroupInfo.GroupContext.TreeHash)
	checkUnchanged(t, "commit result", res.Next.State(), f)
}

// TestMemberViewIsReadOnly changes everything a LeafView hands out and
// checks that the state is unchanged.
func TestMemberViewIsReadOnly(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 5, nil)
	g := tg.g
	f := fingerprint(t, g)
	for i := range g.tree.leaves {
		for _, get := range []func(uint32) (LeafView, bool){g.Member, g.Tree().Leaf} {
			v, ok := get(i)
			if !ok {
				continue
			}
			scribble(v.EncryptionKey())
			scribble(v.SignatureKey())
			c := v.Credential()
			scribble(c.Identity)
			caps := v.Capabilities()
			caps.CipherSuites[0] = 0
			if exts := v.Extensions(); len(exts) > 0 {
				scribble(exts[0].Data)
			}
			l := v.LeafNode()
			scribble(l.EncryptionKey)
			scribble(l.Signature)
			scribble(l.Credential.Identity)
			l.Capabilities.Versions[0] = 0
			checkUnchanged(t, "LeafView", g, f)
		}
	}
	if v, ok := g.Member(g.tree.leaves); ok || !v.IsBlank() || v.EncryptionKey() != nil {
		t.Fatal("out of range member is not blank")
	}
}

// TestMemberViewAllocations keeps the per-request path of a Delivery
// Service (look up a member, check its key and credential) free of
// allocations.
func TestMemberViewAllocations(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 5, nil)
	v, _ := tg.g.Member(3)
	key, id := v.SignatureKey(), v.Credential().Identity
	allocs := testing.AllocsPerRun(100, func() {
		v, ok := tg.g.Member(3)
		if !ok || !v.HasSignatureKey(key) || !v.HasIdentity(id) || !v.IdentityHasPrefix(id[:3]) || v.CredentialType() != CredentialBasic {
			t.Fatal("member 3 does not match")
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per member lookup", allocs)
	}
}

// TestIdentityHasPrefix checks LeafView.IdentityHasPrefix on a member and
// on a blank leaf.
func TestIdentityHasPrefix(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 2, nil)
	v, _ := tg.g.Member(1) // identity "member 1"
	for _, tc := range []struct {
		name   string
		view   LeafView
		prefix string
		want   bool
	}{
		{"empty prefix", v, "", true},
		{"proper prefix", v, "member ", true},
		{"whole identity", v, "member 1", true},
		{"longer than the identity", v, "member 10", false},
		{"other prefix", v, "member 2", false},
		{"blank leaf", LeafView{}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.view.IdentityHasPrefix([]byte(tc.prefix)); got != tc.want {
				t.Fatalf("IdentityHasPrefix(%q) = %v", tc.prefix, got)
			}
		})
	}
}

// TestMemberMethodsReturnNewValues checks the package's convention for
// Member: ApplyCommit, Commit and ProposeUpdate return the next Member and
// leave the receiver as it was, and what accessors return is a copy.
func TestMemberMethodsReturnNewValues(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	a, b, c := newTestClient(t, cs, "A"), newTestClient(t, cs, "B"), newTestClient(t, cs, "C")
	alice, err := NewGroup(a.groupOptions(cs, "convention"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}, {Type: ProposalAdd, KeyPackage: c.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if alice.State().Epoch() != 0 {
		t.Fatal("Commit changed the committer")
	}
	alice, bob, carol := res.Next, b.join(t, res.Welcome), c.join(t, res.Welcome)

	scribble(bob.EpochAuthenticator())
	if !bytes.Equal(bob.EpochAuthenticator(), alice.EpochAuthenticator()) {
		t.Fatal("EpochAuthenticator returned the member's own secret")
	}

	// Bob proposes an update: the receiver keeps its keys, the result has
	// the new one.
	upd, bobUpdated, err := bob.ProposeUpdate()
	if err != nil {
		t.Fatal(err)
	}
	if len(bob.keys) == len(bobUpdated.keys) {
		t.Fatal("ProposeUpdate changed the receiver's keys or did not add one")
	}
	ac, ref, err := alice.VerifyProposal(reencode(t, upd))
	if err != nil {
		t.Fatal(err)
	}
	res, err = alice.Commit(nil, [][]byte{ref}, refsResolver(map[string]*AuthenticatedContent{string(ref): ac}))
	if err != nil {
		t.Fatal(err)
	}
	resolve := refsResolver(map[string]*AuthenticatedContent{string(ref): ac})

	before := fingerprint(t, carol.State())
	auth, exp := carol.EpochAuthenticator(), mustExport(t, carol)
	carolNext, err := carol.ApplyCommit(reencode(t, res.Commit), resolve)
	if err != nil {
		t.Fatal(err)
	}
	checkUnchanged(t, "Member.ApplyCommit receiver", carol.State(), before)
	if carol.State().Epoch() != 1 || carolNext.State().Epoch() != 2 ||
		!bytes.Equal(carol.EpochAuthenticator(), auth) || !bytes.Equal(mustExport(t, carol), exp) {
		t.Fatal("Member.ApplyCommit changed the receiver")
	}
	// The receiver can apply the same commit again, with the same result.
	again, err := carol.ApplyCommit(reencode(t, res.Commit), resolve)
	if err != nil || !bytes.Equal(again.EpochAuthenticator(), carolNext.EpochAuthenticator()) {
		t.Fatalf("applying the commit again from the old member: %v", err)
	}
	// Only the Member that holds the new key follows Bob's update.
	if _, err := bob.ApplyCommit(reencode(t, res.Commit), resolve); err == nil {
		t.Fatal("the member before ProposeUpdate followed a commit of its update")
	}
	bobNext, err := bobUpdated.ApplyCommit(reencode(t, res.Commit), resolve)
	if err != nil {
		t.Fatal(err)
	}
	sameEpoch(t, carolNext.State(), res.Next, bobNext, carolNext)
}

func mustExport(tb testing.TB, m *Member) []byte {
	tb.Helper()
	e, err := m.Export("test", nil, 32)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// TestMembersOfOneEpochShareRatchets protects messages from two Member
// values of the same epoch, concurrently: no key may be used twice, so
// every message opens exactly once.
func TestMembersOfOneEpochShareRatchets(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	a, b := newTestClient(t, cs, "A"), newTestClient(t, cs, "B")
	alice, err := NewGroup(a.groupOptions(cs, "ratchets"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := res.Next, b.join(t, res.Welcome)
	_, bob2, err := bob.ProposeUpdate()
	if err != nil {
		t.Fatal(err)
	}
	const each = 8
	msgs := make(chan *MLSMessage, 2*each)
	errs := make(chan error, 2)
	for _, m := range []*Member{bob, bob2} {
		go func() {
			for range each {
				msg, err := m.Protect([]byte("x"), nil)
				if err != nil {
					errs <- err
					return
				}
				msgs <- msg
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(msgs)
	for msg := range msgs {
		if _, _, err := alice.Unprotect(reencode(t, msg)); err != nil {
			t.Fatalf("message from a Member of the same epoch: %v", err)
		}
	}
}

// TestMembersAllocations checks that Tree.Members allocates its result
// once, in groups with and without blank leaves.
func TestMembersAllocations(t *testing.T) {
	for _, n := range []uint32{1, 5, 64, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			tree := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, n, nil).g.tree
			if got := tree.Members(); len(got) != int(n) || got[n-1] != n-1 {
				t.Fatalf("members %v", got)
			}
			if allocs := testing.AllocsPerRun(10, func() { tree.Members() }); allocs != 1 {
				t.Fatalf("%v allocations", allocs)
			}
		})
	}
}
