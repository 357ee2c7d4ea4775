package mls

import (
	"bytes"
	"crypto/hpke"
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func stateBytes(tb testing.TB, g *GroupState) []byte {
	enc, err := g.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return enc
}

func refsResolver(m map[string]*AuthenticatedContent) ProposalResolver {
	return func(ref []byte) (*AuthenticatedContent, error) {
		if ac, ok := m[string(ref)]; ok {
			return ac, nil
		}
		return nil, ErrUnknownProposal
	}
}

func TestGroupStateFromGroupInfo(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2} {
		tg := buildTestGroup(t, cs, 7, nil)
		if err := tg.g.tree.Validate(tg.g.GroupID()); err != nil {
			t.Fatalf("suite %d: synthetic tree: %v", cs, err)
		}
		gi := tg.groupInfo(t, 3)
		g, err := NewGroupState(gi, tg.g.tree.RatchetTree())
		if err != nil {
			t.Fatalf("suite %d: %v", cs, err)
		}
		if !bytes.Equal(stateBytes(t, g), stateBytes(t, tg.g)) {
			t.Fatalf("suite %d: state from group info differs", cs)
		}
		// Wrong signer, wrong tree.
		gi.Signer = 4
		if _, err := NewGroupState(gi, tg.g.tree.RatchetTree()); !errors.Is(err, ErrInvalidGroupInfo) {
			t.Errorf("suite %d: wrong signer: %v", cs, err)
		}
		gi.Signer = 3
		rt := tg.g.tree.RatchetTree()
		rt = rt[:len(rt)-2]
		if _, err := NewGroupState(gi, rt); err == nil {
			t.Errorf("suite %d: truncated tree accepted", cs)
		}
	}
}

func TestApplyCommitPathAndMembership(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 6, nil)
	before := stateBytes(t, tg.g)

	// A path-only commit from leaf 2.
	n, info, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 2, nil, true, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n.Epoch() != 2 || info.CommitterLeaf != 2 || info.Path == nil {
		t.Fatalf("epoch %d committer %d", n.Epoch(), info.CommitterLeaf)
	}
	if err := n.tree.Validate(n.GroupID()); err != nil {
		t.Fatalf("tree after commit: %v", err)
	}
	if !bytes.Equal(stateBytes(t, tg.g), before) {
		t.Fatal("applying a commit changed the old state")
	}

	// Remove leaf 1 and add two members, by value, from leaf 0.
	tg.g = n
	kp1, _ := newTestKeyPackage(t, tg.cs, "new 1")
	kp2, _ := newTestKeyPackage(t, tg.cs, "new 2")
	props := []ProposalOrRef{
		{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: 1}},
		{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp1}},
		{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp2}},
	}
	n, info, err = tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, props, true, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	ref1, _ := kp1.Ref()
	if len(info.Added) != 2 || info.Added[0].Leaf != 1 || info.Added[1].Leaf != 6 ||
		!bytes.Equal(info.Added[0].KeyPackageRef, ref1) || len(info.Removed) != 1 || info.Removed[0] != 1 {
		t.Fatalf("added %+v removed %v", info.Added, info.Removed)
	}
	if n.MemberCount() != 7 {
		t.Fatalf("%d members", n.MemberCount())
	}
	if err := n.tree.Validate(n.GroupID()); err != nil {
		t.Fatalf("tree after commit: %v", err)
	}
	// The same key package cannot be added twice.
	tg.g = n
	dup := []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp1}}}
	if _, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, nil, true, nil)), nil); err != nil {
		t.Fatal(err)
	}
	m := tg.frame(t, Sender{Type: SenderMember, Index: 0}, tg.signers[0], &Commit{Proposals: dup})
	if _, _, err := tg.g.ApplyCommit(reencode(t, m), nil); !errors.Is(err, ErrInvalidProposal) {
		t.Fatalf("duplicate member add: %v", err)
	}
}

func TestApplyCommitRejections(t *testing.T) {
	tg := buildTestGroup(t, P256AES128GCMSHA256P256, 5, nil)
	before := stateBytes(t, tg.g)
	valid := tg.commit(t, 1, nil, true, nil)
	remove := func(i uint32) ProposalOrRef {
		return ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: i}}
	}
	cases := []struct {
		name string
		msg  func() *MLSMessage
		want error
	}{
		{"bad signature", func() *MLSMessage {
			m := reencode(t, valid)
			m.PublicMessage.Auth.Signature[8] ^= 1
			return m
		}, ErrInvalidMessage},
		{"stale epoch", func() *MLSMessage {
			m := reencode(t, valid)
			m.PublicMessage.Content.Epoch--
			return m
		}, ErrStaleEpoch},
		{"wrong group", func() *MLSMessage {
			m := reencode(t, valid)
			m.PublicMessage.Content.GroupID = []byte("other")
			return m
		}, ErrWrongGroup},
		{"private", func() *MLSMessage {
			return &MLSMessage{Version: MLS10, WireFormat: WireFormatPrivateMessage, PrivateMessage: &PrivateMessage{}}
		}, ErrPrivateHandshake},
		{"empty commit without path", func() *MLSMessage {
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], &Commit{})
		}, ErrInvalidCommit},
		{"remove without path", func() *MLSMessage {
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], &Commit{Proposals: []ProposalOrRef{remove(2)}})
		}, ErrInvalidCommit},
		{"committer removes itself", func() *MLSMessage {
			c := reencode(t, tg.commit(t, 1, []ProposalOrRef{remove(2)}, true, nil)).PublicMessage.Content.Commit
			c.Proposals = []ProposalOrRef{remove(1)}
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], c)
		}, ErrInvalidCommit},
		{"double remove", func() *MLSMessage {
			c := reencode(t, tg.commit(t, 1, []ProposalOrRef{remove(2)}, true, nil)).PublicMessage.Content.Commit
			c.Proposals = append(c.Proposals, remove(2))
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], c)
		}, ErrInvalidCommit},
		{"remove of blank leaf", func() *MLSMessage {
			c := reencode(t, valid).PublicMessage.Content.Commit
			c.Proposals = []ProposalOrRef{remove(7)}
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], c)
		}, ErrInvalidProposal},
		{"unknown reference", func() *MLSMessage {
			c := reencode(t, valid).PublicMessage.Content.Commit
			c.Proposals = []ProposalOrRef{{Type: ProposalByReference, Ref: make([]byte, 32)}}
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], c)
		}, ErrUnknownProposal},
		{"wrong parent hash", func() *MLSMessage {
			c := reencode(t, valid).PublicMessage.Content.Commit
			c.Path.LeafNode.ParentHash[0] ^= 1
			if err := c.Path.LeafNode.Sign(tg.cs, tg.signers[1], tg.g.GroupID(), 1); err != nil {
				t.Fatal(err)
			}
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], c)
		}, ErrInvalidCommit},
		{"leaf signed for another index", func() *MLSMessage {
			c := reencode(t, valid).PublicMessage.Content.Commit
			if err := c.Path.LeafNode.Sign(tg.cs, tg.signers[1], tg.g.GroupID(), 2); err != nil {
				t.Fatal(err)
			}
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], c)
		}, ErrInvalidCommit},
		{"path too short", func() *MLSMessage {
			c := reencode(t, valid).PublicMessage.Content.Commit
			c.Path.Nodes = c.Path.Nodes[1:]
			return tg.frame(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], c)
		}, ErrInvalidCommit},
		{"sender is blank leaf", func() *MLSMessage {
			return tg.frame(t, Sender{Type: SenderMember, Index: 6}, tg.signers[1], reencode(t, valid).PublicMessage.Content.Commit)
		}, ErrInvalidMessage},
		{"external sender commits", func() *MLSMessage {
			m := reencode(t, valid)
			m.PublicMessage.Content.Sender = Sender{Type: SenderExternal}
			return m
		}, ErrInvalidCommit},
	}
	for _, tc := range cases {
		_, _, err := tg.g.ApplyCommit(tc.msg(), nil)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
		if !bytes.Equal(stateBytes(t, tg.g), before) {
			t.Fatalf("%s: rejected commit changed the state", tc.name)
		}
	}
	if _, _, err := tg.g.ApplyCommit(reencode(t, valid), nil); err != nil {
		t.Fatalf("valid commit after rejections: %v", err)
	}
}

func TestProposalsByReference(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	extSigner, extPub, err := cs.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	es := externalSenders{{SignatureKey: extPub, Credential: Credential{Type: CredentialBasic, Identity: []byte("ds")}}}
	esData, err := wire.Marshal(&es)
	if err != nil {
		t.Fatal(err)
	}
	tg := buildTestGroup(t, cs, 4, Extensions{{Type: ExtExternalSenders, Data: esData}})
	store := map[string]*AuthenticatedContent{}
	var refs []ProposalOrRef
	add := func(m *MLSMessage) {
		ac, ref, err := tg.g.VerifyProposal(reencode(t, m))
		if err != nil {
			t.Fatal(err)
		}
		store[string(ref)] = ac
		refs = append(refs, ProposalOrRef{Type: ProposalByReference, Ref: ref})
	}
	// An external sender removes leaf 3, member 2 updates its leaf, a new
	// member proposes its own Add.
	add(tg.proposal(t, Sender{Type: SenderExternal, Index: 0}, extSigner, &Proposal{Type: ProposalRemove, Removed: 3}))
	mv, _ := tg.g.Member(2)
	upd := *mv.LeafNode()
	_, upd.EncryptionKey, _ = cs.DeriveKeyPair(randomBytes(t, 32))
	upd.Source, upd.ParentHash = SourceUpdate, nil
	if err := upd.Sign(cs, tg.signers[2], tg.g.GroupID(), 2); err != nil {
		t.Fatal(err)
	}
	add(tg.proposal(t, Sender{Type: SenderMember, Index: 2}, tg.signers[2], &Proposal{Type: ProposalUpdate, LeafNode: &upd}))
	kp, kpSigner := newTestKeyPackage(t, cs, "joiner")
	add(tg.proposal(t, Sender{Type: SenderNewMemberProposal}, kpSigner, &Proposal{Type: ProposalAdd, KeyPackage: kp}))

	// Refused proposals: an update from an external sender, a bad signature.
	bad := tg.proposal(t, Sender{Type: SenderExternal, Index: 0}, extSigner, &Proposal{Type: ProposalUpdate, LeafNode: &upd})
	if _, _, err := tg.g.VerifyProposal(reencode(t, bad)); !errors.Is(err, ErrInvalidProposal) {
		t.Errorf("external update: %v", err)
	}
	bad = tg.proposal(t, Sender{Type: SenderMember, Index: 1}, tg.signers[0], &Proposal{Type: ProposalRemove, Removed: 3})
	if _, _, err := tg.g.VerifyProposal(reencode(t, bad)); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("proposal signed by another member: %v", err)
	}

	n, info, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, refs, true, refsResolver(store))), refsResolver(store))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Proposals) != 3 || len(info.Added) != 1 || info.Added[0].Leaf != 3 || n.MemberCount() != 4 {
		t.Fatalf("proposals %d added %+v members %d", len(info.Proposals), info.Added, n.MemberCount())
	}
	if nv, _ := n.Member(2); !nv.HasEncryptionKey(upd.EncryptionKey) {
		t.Fatal("update not applied")
	}
	if err := n.tree.Validate(n.GroupID()); err != nil {
		t.Fatal(err)
	}
	// The committer cannot cover its own update.
	ov, _ := tg.g.Member(0)
	own := *ov.LeafNode()
	own.Source, own.ParentHash = SourceUpdate, nil
	_, own.EncryptionKey, _ = cs.DeriveKeyPair(randomBytes(t, 32))
	if err := own.Sign(cs, tg.signers[0], tg.g.GroupID(), 0); err != nil {
		t.Fatal(err)
	}
	store = map[string]*AuthenticatedContent{}
	refs = nil
	add(tg.proposal(t, Sender{Type: SenderMember, Index: 0}, tg.signers[0], &Proposal{Type: ProposalUpdate, LeafNode: &own}))
	m := tg.frame(t, Sender{Type: SenderMember, Index: 0}, tg.signers[0],
		&Commit{Proposals: refs, Path: reencode(t, tg.commit(t, 0, nil, true, nil)).PublicMessage.Content.Commit.Path})
	if _, _, err := tg.g.ApplyCommit(reencode(t, m), refsResolver(store)); !errors.Is(err, ErrInvalidCommit) {
		t.Errorf("committer's own update: %v", err)
	}
}

func TestExternalCommit(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	tg := buildTestGroup(t, cs, 3, nil)
	g := tg.g
	// The joiner encapsulates to an external_pub; the DS cannot check it.
	extPriv, _, err := cs.DeriveKeyPair(randomBytes(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := cs.params()
	kemOutput, _, err := hpke.NewSender(extPriv.PublicKey(), s.kdf, s.aead, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, signer := newTestLeaf(t, cs, "joiner")
	n := g.next()
	idx := n.tree.leftmostBlankLeaf()
	n.tree.setLeaf(idx, leaf)
	np, err := n.tree.generateUpdatePath(idx, *leaf, signer, g.GroupID(), nil, n.provisionalContext)
	if err != nil {
		t.Fatal(err)
	}
	c := &Commit{Proposals: []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalExternalInit, KEMOutput: kemOutput}}}, Path: np.path}
	m := tg.frame(t, Sender{Type: SenderNewMemberCommit}, signer, c)
	next, info, err := g.ApplyCommit(reencode(t, m), nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.CommitterLeaf != 3 || next.MemberCount() != 4 || !bytes.Equal(info.ExternalInit, kemOutput) {
		t.Fatalf("committer leaf %d members %d", info.CommitterLeaf, next.MemberCount())
	}
	if err := next.tree.Validate(next.GroupID()); err != nil {
		t.Fatal(err)
	}
	// Without ExternalInit, or signed by someone else, it is refused.
	c2 := *c
	c2.Proposals = nil
	if _, _, err := g.ApplyCommit(reencode(t, tg.frame(t, Sender{Type: SenderNewMemberCommit}, signer, &c2)), nil); !errors.Is(err, ErrInvalidCommit) {
		t.Errorf("external commit without external init: %v", err)
	}
	if _, _, err := g.ApplyCommit(reencode(t, tg.frame(t, Sender{Type: SenderNewMemberCommit}, tg.signers[0], c)), nil); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("external commit signed by another key: %v", err)
	}
}

// TestPublicApplicationRefused feeds the application PublicMessages of
// messages.json: well formed, but refused by the group state.
func TestPublicApplicationRefused(t *testing.T) {
	var cases []map[string]hexb
	if err := vectors.Load("messages.json", &cases); err != nil {
		t.Fatal(err)
	}
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 2, nil)
	for i, tc := range cases {
		m, err := DecodeMLSMessage(tc["public_message_application"])
		if err != nil {
			t.Fatal(err)
		}
		if err := tg.g.CheckMessage(m); !errors.Is(err, ErrInvalidMessage) {
			t.Fatalf("case %d: %v", i, err)
		}
		m.PublicMessage.Content.GroupID, m.PublicMessage.Content.Epoch = tg.g.GroupID(), tg.g.Epoch()
		if _, _, err := tg.g.ApplyCommit(m, nil); !errors.Is(err, ErrInvalidMessage) {
			t.Fatalf("case %d: as commit: %v", i, err)
		}
		if _, _, err := tg.g.VerifyProposal(m); !errors.Is(err, ErrInvalidMessage) {
			t.Fatalf("case %d: as proposal: %v", i, err)
		}
	}
}

// TestGroupStateConcurrentUse applies competing commits to one shared state
// from several goroutines (run it with -race): the state is immutable, so
// every commit succeeds against it and the results agree with a sequential
// run.
func TestGroupStateConcurrentUse(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 16, nil)
	var msgs []*MLSMessage
	var want [][]byte
	for i := range uint32(8) {
		m := reencode(t, tg.commit(t, 2*i, nil, true, nil))
		n, _, err := tg.g.ApplyCommit(m, nil)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
		want = append(want, stateBytes(t, n))
	}
	base := stateBytes(t, tg.g)
	errs := make(chan error, len(msgs))
	for i, m := range msgs {
		go func() {
			for range 3 {
				n, _, err := tg.g.ApplyCommit(m, nil)
				if err != nil {
					errs <- err
					return
				}
				got, err := n.MarshalBinary()
				if err != nil || !bytes.Equal(got, want[i]) {
					errs <- errors.New("concurrent result differs")
					return
				}
				if _, err := tg.g.Tree().TreeHash(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range msgs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(stateBytes(t, tg.g), base) {
		t.Fatal("shared state changed")
	}
}

// TestVerifyProposalDoesNotAlias reuses the message buffer after
// VerifyProposal: the stored proposal must survive.
func TestVerifyProposalDoesNotAlias(t *testing.T) {
	tg := buildTestGroup(t, X25519AES128GCMSHA256Ed25519, 4, nil)
	buf, err := marshal(tg.proposal(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], &Proposal{Type: ProposalRemove, Removed: 2}))
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeMLSMessage(buf)
	if err != nil {
		t.Fatal(err)
	}
	ac, ref, err := tg.g.VerifyProposal(m)
	if err != nil {
		t.Fatal(err)
	}
	clear(buf)
	store := map[string]*AuthenticatedContent{string(ref): ac}
	c := tg.commit(t, 0, []ProposalOrRef{{Type: ProposalByReference, Ref: ref}}, true, refsResolver(store))
	if _, _, err := tg.g.ApplyCommit(reencode(t, c), refsResolver(store)); err != nil {
		t.Fatal(err)
	}
}
