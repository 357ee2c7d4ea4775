package mls

import (
	"crypto"
	"errors"
	"testing"
)

// signedLeafWith returns a key_package leaf with the given credential and
// supported credential types, signed, and its signer.
func signedLeafWith(tb testing.TB, cs CipherSuite, cred Credential, supported []CredentialType) (*LeafNode, crypto.Signer) {
	tb.Helper()
	l, signer := newTestLeaf(tb, cs, "leaf")
	l.Credential = cred
	l.Capabilities.Credentials = supported
	if err := l.Sign(cs, signer, nil, 0); err != nil {
		tb.Fatal(err)
	}
	return l, signer
}

// TestAddedLeafSupportsOwnCredentialType checks that a commit cannot add a
// leaf whose capabilities do not list its own credential type (RFC 9420
// §7.3: the credential type must be supported by every member, the new
// one included). Accepted, it would leave a tree that every joiner
// refuses (Tree.Validate here, OpenMLS's valn0113).
func TestAddedLeafSupportsOwnCredentialType(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	s, err := cs.params()
	if err != nil {
		t.Fatal(err)
	}
	both := []CredentialType{CredentialBasic, CredentialX509}
	creator, creatorSigner := signedLeafWith(t, cs, Credential{Type: CredentialBasic, Identity: []byte("creator")}, both)
	tree := newTree(s, 1)
	tree.setLeaf(0, creator)
	th, err := tree.rootHash()
	if err != nil {
		t.Fatal(err)
	}
	ctx := GroupContext{Version: MLS10, CipherSuite: cs, GroupID: []byte("caps group"), TreeHash: th,
		ConfirmedTranscriptHash: []byte{}}
	g, err := newStateFromParts(s, ctx, tree, randomBytes(t, s.nh), randomBytes(t, s.nh))
	if err != nil {
		t.Fatal(err)
	}
	tg := &testGroup{cs: cs, g: g, signers: map[uint32]crypto.Signer{0: creatorSigner}}
	x509 := Credential{Type: CredentialX509, Certificates: [][]byte{[]byte("certificate")}}

	cases := []struct {
		name      string
		cred      Credential
		supported []CredentialType
		ok        bool
	}{
		{"x509 leaf listing both types", x509, both, true},
		{"x509 leaf listing basic only", x509, []CredentialType{CredentialBasic}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			leaf, signer := signedLeafWith(t, cs, tc.cred, tc.supported)
			kp := &KeyPackage{Version: MLS10, CipherSuite: cs, InitKey: randomHPKEPublicKey(t, cs), LeafNode: *leaf}
			if err := kp.Sign(signer); err != nil {
				t.Fatal(err)
			}
			add := []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}}
			m := tg.frame(t, Sender{Type: SenderMember, Index: 0}, creatorSigner, &Commit{Proposals: add})
			next, _, err := tg.g.ApplyCommit(reencode(t, m), nil)
			if !tc.ok {
				if err == nil {
					t.Fatalf("commit accepted; joiners refuse its tree: %v", next.Tree().Validate(next.GroupID()))
				}
				if !errors.Is(err, ErrInvalidProposal) {
					t.Fatalf("commit accepted or refused for another reason: %v", err)
				}
				if err := kp.Verify(); err == nil {
					t.Fatal("KeyPackage.Verify accepts the key package")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := next.Tree().Validate(next.GroupID()); err != nil {
				t.Fatalf("the accepted commit's tree is invalid: %v", err)
			}
		})
	}
}

// TestResyncLeafSupportsOwnCredentialType is the case the Delivery
// Service's client bindings (basic credentials only) leave open: the only
// member of a group resyncs with an external commit whose new leaf does
// not list basic among its credential types. Accepted, the group could
// never grow again: no Add passes the check that every member supports
// the new leaf's credential type.
func TestResyncLeafSupportsOwnCredentialType(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	for _, tc := range []struct {
		name      string
		supported []CredentialType
		ok        bool
	}{
		{"leaf listing basic", []CredentialType{CredentialBasic}, true},
		{"leaf listing x509 only", []CredentialType{CredentialX509}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 1, nil)
			g := tg.g
			_, extPub, err := cs.DeriveKeyPair(randomBytes(t, 32))
			if err != nil {
				t.Fatal(err)
			}
			leaf, signer := signedLeafWith(t, cs, Credential{Type: CredentialBasic, Identity: []byte("member 0")}, tc.supported)
			n := g.next()
			n.tree.removeLeaf(0)
			n.tree.setLeaf(0, leaf)
			np, err := n.tree.generateUpdatePath(0, *leaf, signer, g.GroupID(), nil, n.provisionalContext)
			if err != nil {
				t.Fatal(err)
			}
			c := &Commit{Proposals: []ProposalOrRef{
				{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: 0}},
				{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalExternalInit, KEMOutput: extPub}},
			}, Path: np.path}
			next, _, err := g.ApplyCommit(reencode(t, tg.frame(t, Sender{Type: SenderNewMemberCommit}, signer, c)), nil)
			if !tc.ok {
				if err == nil {
					t.Fatalf("resync accepted; joiners refuse its tree: %v", next.Tree().Validate(next.GroupID()))
				}
				if !errors.Is(err, ErrInvalidCommit) {
					t.Fatalf("resync refused for another reason: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := next.Tree().Validate(next.GroupID()); err != nil {
				t.Fatalf("the accepted commit's tree is invalid: %v", err)
			}
		})
	}
}
