package mls

import (
	"bytes"
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
	alice, err := NewGroup(cs, []byte("alias"), &a.kp.LeafNode, a.leafPriv, a.signer, nil, nil)
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
		if !ok || !v.HasSignatureKey(key) || !v.HasIdentity(id) || v.CredentialType() != CredentialBasic {
			t.Fatal("member 3 does not match")
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per member lookup", allocs)
	}
}
