package mls

import (
	"bytes"
	"crypto"
	"crypto/hpke"
	"errors"
	"fmt"
	"testing"
)

type testClient struct {
	kp       *KeyPackage
	signer   crypto.Signer
	initPriv hpke.PrivateKey
	leafPriv hpke.PrivateKey
}

func newTestClient(tb testing.TB, cs CipherSuite, name string) *testClient {
	signer, pub, err := cs.GenerateSignatureKey()
	if err != nil {
		tb.Fatal(err)
	}
	leafPriv, leafPub, err := cs.DeriveKeyPair(randomBytes(tb, 32))
	if err != nil {
		tb.Fatal(err)
	}
	initPriv, initPub, err := cs.DeriveKeyPair(randomBytes(tb, 32))
	if err != nil {
		tb.Fatal(err)
	}
	kp := &KeyPackage{Version: MLS10, CipherSuite: cs, InitKey: initPub, LeafNode: LeafNode{
		EncryptionKey: leafPub, SignatureKey: pub,
		Credential: Credential{Type: CredentialBasic, Identity: []byte(name)},
		Capabilities: Capabilities{Versions: []ProtocolVersion{MLS10}, CipherSuites: []CipherSuite{cs},
			Credentials: []CredentialType{CredentialBasic}},
		Source: SourceKeyPackage, Lifetime: Lifetime{NotAfter: 1 << 62},
	}}
	if err := kp.LeafNode.Sign(cs, signer, nil, 0); err != nil {
		tb.Fatal(err)
	}
	if err := kp.Sign(signer); err != nil {
		tb.Fatal(err)
	}
	return &testClient{kp: kp, signer: signer, initPriv: initPriv, leafPriv: leafPriv}
}

func (c *testClient) join(tb testing.TB, w *MLSMessage) *Member {
	m, err := JoinFromWelcome(reencode(tb, w).Welcome, WelcomeOptions{KeyPackage: c.kp, InitKey: c.initPriv, LeafKey: c.leafPriv, Signer: c.signer})
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// follow has m apply a commit and returns m in the next epoch.
func follow(tb testing.TB, m *Member, commit *MLSMessage, resolve ProposalResolver) *Member {
	tb.Helper()
	next, err := m.ApplyCommit(reencode(tb, commit), resolve)
	if err != nil {
		tb.Fatal(err)
	}
	return next
}

// groupOptions returns the options for c to create a group.
func (c *testClient) groupOptions(cs CipherSuite, groupID string) GroupOptions {
	return GroupOptions{CipherSuite: cs, GroupID: []byte(groupID), Leaf: &c.kp.LeafNode, LeafKey: c.leafPriv, Signer: c.signer}
}

// sameEpoch checks that members and the Delivery Service agree.
func sameEpoch(tb testing.TB, ds *GroupState, members ...*Member) {
	tb.Helper()
	want, err := ds.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	for i, m := range members {
		got, err := m.State().MarshalBinary()
		if err != nil || !bytes.Equal(got, want) {
			tb.Fatalf("member %d: public state differs from the delivery service's", i)
		}
		if !bytes.Equal(m.EpochAuthenticator(), members[0].EpochAuthenticator()) {
			tb.Fatalf("member %d: epoch authenticator differs", i)
		}
	}
}

// TestClientsEndToEnd drives the Go client through a group's life with a
// Delivery Service following it, in every supported suite.
func TestClientsEndToEnd(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2, 3, 5, 7} {
		t.Run(fmt.Sprint("suite=", uint16(cs)), func(t *testing.T) { runEndToEnd(t, cs) })
	}
}

func runEndToEnd(t *testing.T, cs CipherSuite) {
	a, b, c := newTestClient(t, cs, "A"), newTestClient(t, cs, "B"), newTestClient(t, cs, "C")
	alice, err := NewGroup(a.groupOptions(cs, "e2e group"))
	if err != nil {
		t.Fatal(err)
	}
	gi, err := alice.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	ds, err := NewGroupState(gi, nil)
	if err != nil {
		t.Fatal(err)
	}

	// Epoch 1: A adds B and C.
	res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}, {Type: ProposalAdd, KeyPackage: c.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ds, info, err := ds.ApplyCommit(reencode(t, res.Commit), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Added) != 2 {
		t.Fatalf("%d added", len(info.Added))
	}
	if err := ds.VerifyGroupInfo(reencode(t, res.GroupInfo).GroupInfo); err != nil {
		t.Fatal(err)
	}
	refs := res.Welcome.Welcome.NewMembers()
	if len(refs) != 2 || !bytes.Equal(refs[0], info.Added[0].KeyPackageRef) {
		t.Fatal("welcome not addressed to the added key packages")
	}
	alice = res.Next
	bob, carol := b.join(t, res.Welcome), c.join(t, res.Welcome)
	sameEpoch(t, ds, alice, bob, carol)

	// B talks; A and C read; the DS only checks framing.
	msg, err := bob.Protect([]byte("hello"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.CheckMessage(reencode(t, msg)); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Member{alice, carol} {
		from, data, err := r.Unprotect(reencode(t, msg))
		if err != nil || from != bob.LeafIndex() || string(data) != "hello" {
			t.Fatalf("unprotect: %d %q %v", from, data, err)
		}
	}
	if _, _, err := alice.Unprotect(reencode(t, msg)); err == nil {
		t.Fatal("a message decrypted twice")
	}

	// Epoch 2: B updates its leaf; C commits it by reference.
	upd, bob, err := bob.ProposeUpdate()
	if err != nil {
		t.Fatal(err)
	}
	ustore := map[string]*AuthenticatedContent{}
	var uref []byte
	for _, view := range []interface {
		VerifyProposal(*MLSMessage) (*AuthenticatedContent, []byte, error)
	}{ds, carol, alice} {
		ac, ref, err := view.VerifyProposal(reencode(t, upd))
		if err != nil {
			t.Fatal(err)
		}
		ustore[string(ref)], uref = ac, ref
	}
	res, err = carol.Commit(nil, [][]byte{uref}, refsResolver(ustore))
	if err != nil {
		t.Fatal(err)
	}
	if ds, _, err = ds.ApplyCommit(reencode(t, res.Commit), refsResolver(ustore)); err != nil {
		t.Fatal(err)
	}
	alice = follow(t, alice, res.Commit, refsResolver(ustore))
	bob = follow(t, bob, res.Commit, refsResolver(ustore))
	carol = res.Next
	sameEpoch(t, ds, alice, bob, carol)

	// Epoch 3: C proposes to remove B; A commits it by reference.
	prop, err := carol.Propose(&Proposal{Type: ProposalRemove, Removed: bob.LeafIndex()})
	if err != nil {
		t.Fatal(err)
	}
	store := map[string]*AuthenticatedContent{}
	for _, view := range []interface {
		VerifyProposal(*MLSMessage) (*AuthenticatedContent, []byte, error)
	}{ds, alice} {
		ac, ref, err := view.VerifyProposal(reencode(t, prop))
		if err != nil {
			t.Fatal(err)
		}
		store[string(ref)] = ac
	}
	var ref []byte
	for k := range store {
		ref = []byte(k)
	}
	res, err = alice.Commit(nil, [][]byte{ref}, refsResolver(store))
	if err != nil {
		t.Fatal(err)
	}
	if ds, _, err = ds.ApplyCommit(reencode(t, res.Commit), refsResolver(store)); err != nil {
		t.Fatal(err)
	}
	carol = follow(t, carol, res.Commit, refsResolver(store))
	if _, err := bob.ApplyCommit(reencode(t, res.Commit), refsResolver(store)); !errors.Is(err, ErrRemoved) {
		t.Fatalf("removed member: %v", err)
	}
	alice = res.Next
	sameEpoch(t, ds, alice, carol)

	// Epoch 4: C commits with only a path; A follows.
	res, err = carol.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ds, _, err = ds.ApplyCommit(reencode(t, res.Commit), nil); err != nil {
		t.Fatal(err)
	}
	// A tampered membership tag is refused by members (not by the DS).
	bad := reencode(t, res.Commit)
	bad.PublicMessage.MembershipTag[0] ^= 1
	if _, err := alice.ApplyCommit(bad, nil); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("bad membership tag: %v", err)
	}
	alice = follow(t, alice, res.Commit, nil)
	carol = res.Next
	sameEpoch(t, ds, alice, carol)
	ea, err := alice.Export("MIMI attachment", []byte("ctx"), 32)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := carol.Export("MIMI attachment", []byte("ctx"), 32)
	if err != nil || !bytes.Equal(ea, ec) {
		t.Fatal("exporters differ")
	}
}

// TestExternalJoin has a client join through an external commit built from
// a member's GroupInfo; the members and the DS follow.
func TestExternalJoin(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2} {
		a, b, d := newTestClient(t, cs, "A"), newTestClient(t, cs, "B"), newTestClient(t, cs, "D")
		alice, err := NewGroup(a.groupOptions(cs, "external"))
		if err != nil {
			t.Fatal(err)
		}
		res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := NewGroupState(reencode(t, res.GroupInfo).GroupInfo, nil)
		if err != nil {
			t.Fatal(err)
		}
		alice, bob := res.Next, b.join(t, res.Welcome)

		gi, err := bob.GroupInfo()
		if err != nil {
			t.Fatal(err)
		}
		tmpl := d.kp.LeafNode
		tmpl.Lifetime = Lifetime{}
		commit, dave, err := JoinExternal(reencode(t, &MLSMessage{Version: MLS10, WireFormat: WireFormatGroupInfo, GroupInfo: gi}).GroupInfo, ExternalJoinOptions{Leaf: tmpl, Signer: d.signer})
		if err != nil {
			t.Fatal(err)
		}
		ds, info, err := ds.ApplyCommit(reencode(t, commit), nil)
		if err != nil {
			t.Fatal(err)
		}
		if info.Committer.Type != SenderNewMemberCommit || info.CommitterLeaf != dave.LeafIndex() {
			t.Fatalf("committer %+v leaf %d", info.Committer, info.CommitterLeaf)
		}
		alice, bob = follow(t, alice, commit, nil), follow(t, bob, commit, nil)
		sameEpoch(t, ds, dave, alice, bob)
		msg, err := dave.Protect([]byte("hi from D"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, data, err := alice.Unprotect(reencode(t, msg)); err != nil || string(data) != "hi from D" {
			t.Fatalf("%q %v", data, err)
		}
	}
}

// TestCommitOmitRatchetTree checks CommitWith's OmitRatchetTree: the
// GroupInfo and the Welcome leave the tree out, so a joiner needs it out
// of band, and with it joins the same epoch as the committer.
func TestCommitOmitRatchetTree(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	a, b := newTestClient(t, cs, "A"), newTestClient(t, cs, "B")
	alice, err := NewGroup(a.groupOptions(cs, "no tree"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		omit      bool
		outOfBand bool // the joiner is given the tree
		wantJoin  bool
	}{
		{"tree in the Welcome", false, false, true},
		{"tree omitted, given out of band", true, true, true},
		{"tree omitted, not given", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := alice.CommitWith(CommitOptions{ByValue: []*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}},
				OmitRatchetTree: tc.omit})
			if err != nil {
				t.Fatal(err)
			}
			if _, has := res.GroupInfo.GroupInfo.Extensions.Find(ExtRatchetTree); has == tc.omit {
				t.Fatalf("GroupInfo has a ratchet tree: %v", has)
			}
			if err := res.Next.State().VerifyGroupInfo(res.GroupInfo.GroupInfo); err != nil {
				t.Fatal(err)
			}
			opts := WelcomeOptions{KeyPackage: b.kp, InitKey: b.initPriv, LeafKey: b.leafPriv, Signer: b.signer}
			if tc.outOfBand {
				opts.RatchetTree = res.Next.State().Tree().RatchetTree()
			}
			bob, err := JoinFromWelcome(reencode(t, res.Welcome).Welcome, opts)
			if (err == nil) != tc.wantJoin {
				t.Fatalf("join: %v", err)
			}
			if err == nil {
				sameEpoch(t, res.Next.State(), res.Next, bob)
			}
		})
	}
}
