package mls

import (
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"fmt"
	"testing"
)

// testGroup is a synthetic group for Delivery Service tests and
// benchmarks: real signatures and parent hashes, random HPKE keys for the
// members (the DS never decrypts).
type testGroup struct {
	cs      CipherSuite
	g       *GroupState
	signers map[uint32]crypto.Signer
}

func randomBytes(tb testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// newTestLeaf returns a signed key_package leaf and its signer.
func newTestLeaf(tb testing.TB, cs CipherSuite, name string) (*LeafNode, crypto.Signer) {
	signer, pub, err := cs.GenerateSignatureKey()
	if err != nil {
		tb.Fatal(err)
	}
	_, encPub, err := cs.DeriveKeyPair(randomBytes(tb, 32))
	if err != nil {
		tb.Fatal(err)
	}
	l := &LeafNode{
		EncryptionKey: encPub,
		SignatureKey:  pub,
		Credential:    Credential{Type: CredentialBasic, Identity: []byte(name)},
		Capabilities: Capabilities{Versions: []ProtocolVersion{MLS10}, CipherSuites: []CipherSuite{cs},
			Credentials: []CredentialType{CredentialBasic}},
		Source:   SourceKeyPackage,
		Lifetime: Lifetime{NotBefore: 0, NotAfter: 1 << 62},
	}
	if err := l.Sign(cs, signer, nil, 0); err != nil {
		tb.Fatal(err)
	}
	return l, signer
}

// newTestKeyPackage returns a signed KeyPackage and its leaf's signer.
func newTestKeyPackage(tb testing.TB, cs CipherSuite, name string) (*KeyPackage, crypto.Signer) {
	leaf, signer := newTestLeaf(tb, cs, name)
	_, initPub, err := cs.DeriveKeyPair(randomBytes(tb, 32))
	if err != nil {
		tb.Fatal(err)
	}
	kp := &KeyPackage{Version: MLS10, CipherSuite: cs, InitKey: initPub, LeafNode: *leaf}
	if err := kp.Sign(signer); err != nil {
		tb.Fatal(err)
	}
	return kp, signer
}

// buildTestGroup makes a group of n members whose parent nodes are all
// filled, as if every member had committed once in leaf order (which keeps
// every parent hash valid).
func buildTestGroup(tb testing.TB, cs CipherSuite, n uint32, exts Extensions) *testGroup {
	return buildTestGroupWith(tb, cs, n, exts, nil)
}

// buildTestGroupWith is buildTestGroup with mod, when set, changing each
// member's leaf (its capabilities, its credential) before it is signed.
func buildTestGroupWith(tb testing.TB, cs CipherSuite, n uint32, exts Extensions, mod func(i uint32, l *LeafNode)) *testGroup {
	s, err := cs.params()
	if err != nil {
		tb.Fatal(err)
	}
	groupID := []byte("test group")
	size := uint32(1)
	for size < n {
		size *= 2
	}
	tree := newTree(s, size)
	tg := &testGroup{cs: cs, signers: make(map[uint32]crypto.Signer)}
	for i := range n {
		l, signer := newTestLeaf(tb, cs, fmt.Sprint("member ", i))
		if mod != nil {
			mod(i, l)
		}
		tree.setLeaf(i, l)
		tg.signers[i] = signer
	}
	for i := range n {
		fdp, copath := tree.filteredDirectPath(i)
		keys := make([][]byte, len(fdp))
		for k := range keys {
			keys[k] = randomHPKEPublicKey(tb, cs)
		}
		ph, err := tree.setPathNodes(i, fdp, copath, keys)
		if err != nil {
			tb.Fatal(err)
		}
		l := *tree.leaf(i)
		l.Source, l.ParentHash = SourceCommit, ph
		if err := l.Sign(cs, tg.signers[i], groupID, i); err != nil {
			tb.Fatal(err)
		}
		tree.setLeaf(i, &l)
	}
	th, err := tree.TreeHash()
	if err != nil {
		tb.Fatal(err)
	}
	ctx := GroupContext{Version: MLS10, CipherSuite: cs, GroupID: groupID, Epoch: 1, TreeHash: th,
		ConfirmedTranscriptHash: randomBytes(tb, s.nh), Extensions: exts}
	confTag := randomBytes(tb, s.nh)
	interim, err := s.interimTranscriptHash(ctx.ConfirmedTranscriptHash, confTag)
	if err != nil {
		tb.Fatal(err)
	}
	if tg.g, err = newStateFromParts(s, ctx, tree, interim, confTag); err != nil {
		tb.Fatal(err)
	}
	return tg
}

// groupInfo returns a GroupInfo of the current epoch signed by leaf signer.
func (tg *testGroup) groupInfo(tb testing.TB, signer uint32) *GroupInfo {
	gi := &GroupInfo{GroupContext: tg.g.GroupContext(), ConfirmationTag: tg.g.ConfirmationTag(), Signer: signer}
	if err := gi.Sign(tg.signers[signer]); err != nil {
		tb.Fatal(err)
	}
	return gi
}

// commit builds a PublicMessage commit from committer covering proposals,
// with an UpdatePath when withPath is set. The confirmation and membership
// tags are random: the Delivery Service cannot check them.
func (tg *testGroup) commit(tb testing.TB, committer uint32, proposals []ProposalOrRef, withPath bool, resolve ProposalResolver) *MLSMessage {
	g := tg.g
	sender := Sender{Type: SenderMember, Index: committer}
	c := &Commit{Proposals: proposals}
	if withPath {
		list, err := g.resolveProposals(c, sender, resolve)
		if err != nil {
			tb.Fatal(err)
		}
		n := g.next()
		info := &CommitInfo{}
		if err := n.applyProposals(list, info); err != nil {
			tb.Fatal(err)
		}
		var excluded []uint32
		for _, a := range info.Added {
			excluded = append(excluded, a.Leaf)
		}
		leaf := *n.tree.leaf(committer)
		np, err := n.tree.generateUpdatePath(committer, leaf, tg.signers[committer], g.ctx.GroupID, excluded,
			n.provisionalContext)
		if err != nil {
			tb.Fatal(err)
		}
		c.Path = np.path
	}
	return tg.frame(tb, sender, tg.signers[committer], c)
}

// frame signs a commit from sender and wraps it in an MLSMessage.
func (tg *testGroup) frame(tb testing.TB, sender Sender, signer crypto.Signer, c *Commit) *MLSMessage {
	g := tg.g
	pm := &PublicMessage{Content: FramedContent{GroupID: g.ctx.GroupID, Epoch: g.ctx.Epoch, Sender: sender,
		ContentType: ContentCommit, Commit: c}}
	sig, err := g.ctx.CipherSuite.SignFramedContent(signer, WireFormatPublicMessage, &pm.Content, &g.ctx)
	if err != nil {
		tb.Fatal(err)
	}
	pm.Auth = FramedContentAuthData{Signature: sig, ConfirmationTag: randomBytes(tb, g.s.nh)}
	if sender.Type == SenderMember {
		pm.MembershipTag = randomBytes(tb, g.s.nh)
	}
	return &MLSMessage{Version: MLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}
}

// proposal signs a proposal from sender and wraps it in an MLSMessage.
func (tg *testGroup) proposal(tb testing.TB, sender Sender, signer crypto.Signer, p *Proposal) *MLSMessage {
	g := tg.g
	pm := &PublicMessage{Content: FramedContent{GroupID: g.ctx.GroupID, Epoch: g.ctx.Epoch, Sender: sender,
		ContentType: ContentProposal, Proposal: p}}
	sig, err := g.ctx.CipherSuite.SignFramedContent(signer, WireFormatPublicMessage, &pm.Content, &g.ctx)
	if err != nil {
		tb.Fatal(err)
	}
	pm.Auth.Signature = sig
	if sender.Type == SenderMember {
		pm.MembershipTag = randomBytes(tb, g.s.nh)
	}
	return &MLSMessage{Version: MLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}
}

// reencode round-trips m through its wire encoding, as a DS receives it.
func reencode(tb testing.TB, m *MLSMessage) *MLSMessage {
	enc, err := marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := DecodeMLSMessage(enc)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// randomHPKEPublicKey returns a valid HPKE public key nobody needs the
// private key of: 32 random bytes for X25519, a derived point otherwise.
func randomHPKEPublicKey(tb testing.TB, cs CipherSuite) []byte {
	s, err := cs.params()
	if err != nil {
		tb.Fatal(err)
	}
	if s.curve == ecdh.X25519() {
		return randomBytes(tb, 32)
	}
	_, pub, err := cs.DeriveKeyPair(randomBytes(tb, 32))
	if err != nil {
		tb.Fatal(err)
	}
	return pub
}
