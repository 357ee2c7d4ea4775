package mls

import (
	"crypto"
	"errors"
	"strings"
	"testing"
)

// Types the members of rulesGroup list in their capabilities: a group
// context extension, a required extension and a proposal type; the last
// member lacks extLacked, which another extension type names.
const (
	extInGroup   ExtensionType = 0xff00
	extRequired  ExtensionType = 0xff01
	extLacked    ExtensionType = 0xff02
	propListed   ProposalType  = 0xff10
	rulesMembers               = 3
)

// rulesGroup is a group of three whose GroupContext carries extInGroup,
// a required_capabilities naming extRequired, and an external sender,
// whose signer it also returns. Member 1 holds an X.509 credential; every
// member supports both credential types.
func rulesGroup(t *testing.T, cs CipherSuite) (*testGroup, crypto.Signer) {
	t.Helper()
	extSigner, extPub, err := cs.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	es := externalSenders{{SignatureKey: extPub, Credential: Credential{Type: CredentialBasic, Identity: []byte("external")}}}
	esData, err := marshal(&es)
	if err != nil {
		t.Fatal(err)
	}
	rc := RequiredCapabilities{ExtensionTypes: []ExtensionType{extRequired}}
	rcData, err := marshal(&rc)
	if err != nil {
		t.Fatal(err)
	}
	exts := Extensions{{Type: extInGroup, Data: []byte{1}}, {Type: ExtRequiredCapabilities, Data: rcData},
		{Type: ExtExternalSenders, Data: esData}}
	tg := buildTestGroupWith(t, cs, rulesMembers, exts, func(i uint32, l *LeafNode) {
		l.Capabilities.Extensions = []ExtensionType{extInGroup, extRequired}
		if i != rulesMembers-1 {
			l.Capabilities.Extensions = append(l.Capabilities.Extensions, extLacked)
		}
		l.Capabilities.Proposals = []ProposalType{propListed}
		l.Capabilities.Credentials = []CredentialType{CredentialBasic, CredentialX509}
		if i == 1 {
			l.Credential = Credential{Type: CredentialX509, Certificates: [][]byte{[]byte("certificate")}}
		}
	})
	return tg, extSigner
}

// rulesKeyPackage returns a KeyPackage whose leaf would join rulesGroup,
// after mod (when set) changed the leaf; signer, when set, signs in place
// of a fresh key (mod then sets the matching signature key).
func rulesKeyPackage(t *testing.T, cs CipherSuite, signer crypto.Signer, mod func(*LeafNode)) *KeyPackage {
	t.Helper()
	leaf, fresh := newTestLeaf(t, cs, "joiner")
	if signer == nil {
		signer = fresh
	}
	leaf.Capabilities.Extensions = []ExtensionType{extInGroup, extRequired, extLacked}
	leaf.Capabilities.Proposals = []ProposalType{propListed}
	leaf.Capabilities.Credentials = []CredentialType{CredentialBasic, CredentialX509}
	if mod != nil {
		mod(leaf)
	}
	if err := leaf.Sign(cs, signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	kp := &KeyPackage{Version: MLS10, CipherSuite: cs, InitKey: randomHPKEPublicKey(t, cs), LeafNode: *leaf}
	if err := kp.Sign(signer); err != nil {
		t.Fatal(err)
	}
	return kp
}

// byValue wraps proposals as by-value entries of a commit.
func byValue(ps ...*Proposal) []ProposalOrRef {
	out := make([]ProposalOrRef, len(ps))
	for i, p := range ps {
		out[i] = ProposalOrRef{Type: ProposalByValue, Proposal: p}
	}
	return out
}

// addOf is an Add proposal of kp.
func addOf(kp *KeyPackage) *Proposal { return &Proposal{Type: ProposalAdd, KeyPackage: kp} }

// TestProposalRulesRefused checks, one case per rule, the RFC 9420 rules
// on proposals and proposal lists (§7.3, §10.1, §12.1, §12.2, §12.4.3.2)
// that no other test shows: each case breaks one rule in a commit or
// proposal that is otherwise valid (the control case shows the group
// accepts an Add), and must be refused for that rule. A member applying
// the commit refuses it, so a hub that accepted it would fork the group.
func TestProposalRulesRefused(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	s, err := cs.params()
	if err != nil {
		t.Fatal(err)
	}
	member := func(i uint32) Sender { return Sender{Type: SenderMember, Index: i} }
	// commit applies a commit of member 0 covering ps by value.
	commit := func(t *testing.T, tg *testGroup, withPath bool, ps ...*Proposal) error {
		_, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, byValue(ps...), withPath, nil)), nil)
		return err
	}
	// propose verifies p sent by sender, signed by signer.
	propose := func(t *testing.T, tg *testGroup, sender Sender, signer crypto.Signer, p *Proposal) error {
		_, _, err := tg.g.VerifyProposal(reencode(t, tg.proposal(t, sender, signer, p)))
		return err
	}
	// byRef applies a commit of member 0 covering by reference the
	// proposal ac, under ref, which resolve hands back as ac.
	byRef := func(t *testing.T, tg *testGroup, ref []byte, ac *AuthenticatedContent) error {
		resolve := func([]byte) (*AuthenticatedContent, error) { return ac, nil }
		c := &Commit{Proposals: []ProposalOrRef{{Type: ProposalByReference, Ref: ref}}}
		_, _, err := tg.g.ApplyCommit(reencode(t, tg.frame(t, member(0), tg.signers[0], c)), resolve)
		return err
	}
	// pskOf is a PSK proposal of usage u, or an external one when u is 0,
	// with a nonce of n bytes.
	pskOf := func(u ResumptionPSKUsage, n int) *Proposal {
		p := pskProposal([]byte("psk"), n).Proposal
		if u != 0 {
			p.PSK.Type, p.PSK.PSKID, p.PSK.Usage = PSKResumption, nil, u
			p.PSK.PSKGroupID, p.PSK.PSKEpoch = []byte("group"), 1
		}
		return p
	}

	cases := []struct {
		name string
		run  func(t *testing.T, tg *testGroup, extSigner crypto.Signer) error
		want error  // nil: accepted
		msg  string // what the refusal names
	}{
		{"control: a valid add", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			return commit(t, tg, false, addOf(rulesKeyPackage(t, cs, nil, nil)), pskOf(0, s.nh))
		}, nil, ""},
		{"add of another suite's key package", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			other := X25519ChaCha20Poly1305SHA256Ed25519
			kp := rulesKeyPackage(t, other, nil, func(l *LeafNode) { l.Capabilities.CipherSuites = []CipherSuite{cs, other} })
			return commit(t, tg, false, addOf(kp))
		}, ErrInvalidProposal, "key package suite"},
		{"add of a member's signature key", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			kp := rulesKeyPackage(t, cs, tg.signers[2], func(l *LeafNode) { l.SignatureKey = tg.g.tree.leaf(2).SignatureKey })
			return commit(t, tg, false, addOf(kp))
		}, ErrInvalidProposal, "signature key already used by leaf 2"},
		{"two adds of one signature key", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			signer, pub, err := cs.GenerateSignatureKey()
			if err != nil {
				t.Fatal(err)
			}
			same := func(l *LeafNode) { l.SignatureKey = pub }
			return commit(t, tg, false, addOf(rulesKeyPackage(t, cs, signer, same)), addOf(rulesKeyPackage(t, cs, signer, same)))
		}, ErrInvalidProposal, "signature key already used by leaf 3"},
		{"add of a member's encryption key", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			kp := rulesKeyPackage(t, cs, nil, func(l *LeafNode) { l.EncryptionKey = tg.g.tree.leaf(2).EncryptionKey })
			return commit(t, tg, false, addOf(kp))
		}, ErrInvalidProposal, "encryption key already used by leaf 2"},
		{"add whose init key is a parent node's key", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			signer, pub, err := cs.GenerateSignatureKey()
			if err != nil {
				t.Fatal(err)
			}
			kp := rulesKeyPackage(t, cs, signer, func(l *LeafNode) { l.SignatureKey = pub })
			kp.InitKey = tg.g.tree.parentNode(1).EncryptionKey
			if err := kp.Sign(signer); err != nil {
				t.Fatal(err)
			}
			return commit(t, tg, false, addOf(kp))
		}, ErrInvalidCommit, "init key is the encryption key of node 1"},
		{"add lacking a group context extension", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			kp := rulesKeyPackage(t, cs, nil, func(l *LeafNode) { l.Capabilities.Extensions = []ExtensionType{extRequired} })
			return commit(t, tg, false, addOf(kp))
		}, ErrInvalidProposal, "does not support group extension"},
		{"add lacking a required extension", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			kp := rulesKeyPackage(t, cs, nil, func(l *LeafNode) { l.Capabilities.Extensions = []ExtensionType{extInGroup} })
			return commit(t, tg, false, addOf(kp))
		}, ErrInvalidProposal, "lacks required extension"},
		{"add lacking a credential type in use", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			kp := rulesKeyPackage(t, cs, nil, func(l *LeafNode) { l.Capabilities.Credentials = []CredentialType{CredentialBasic} })
			return commit(t, tg, false, addOf(kp))
		}, ErrInvalidProposal, "does not support credential type 2 in use"},
		{"add of a credential type a member lacks", func(t *testing.T, _ *testGroup, _ crypto.Signer) error {
			tg := buildTestGroup(t, cs, 2, nil) // members support basic only
			kp := rulesKeyPackage(t, cs, nil, func(l *LeafNode) {
				l.Capabilities.Extensions = nil
				l.Credential = Credential{Type: CredentialX509, Certificates: [][]byte{[]byte("certificate")}}
			})
			return commit(t, tg, false, addOf(kp))
		}, ErrInvalidProposal, "is not supported by every member"},
		{"update whose leaf has the commit source", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			leaf := tg.g.tree.leaf(2).clone()
			leaf.Source, leaf.ParentHash = SourceCommit, []byte{}
			leaf.EncryptionKey = randomHPKEPublicKey(t, cs)
			if err := leaf.Sign(cs, tg.signers[2], tg.g.GroupID(), 2); err != nil {
				t.Fatal(err)
			}
			return propose(t, tg, member(2), tg.signers[2], &Proposal{Type: ProposalUpdate, LeafNode: leaf})
		}, ErrInvalidProposal, "leaf node source"},
		{"group context extension a member lacks", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			// Without a path, which the test helper could not build: the
			// DS accepts such commits (ApplyCommit).
			gce := &Proposal{Type: ProposalGroupContextExtensions, Extensions: Extensions{{Type: extLacked, Data: []byte{1}}}}
			return commit(t, tg, false, gce)
		}, ErrInvalidCommit, "member 2 does not support group extension"},
		{"two group context extensions proposals", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			gce := func() *Proposal { return &Proposal{Type: ProposalGroupContextExtensions, Extensions: Extensions{}} }
			return commit(t, tg, true, gce(), gce())
		}, ErrInvalidCommit, "several group context extensions"},
		{"psk of resumption for a reinit", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			return commit(t, tg, false, pskOf(ResumptionReInit, s.nh))
		}, ErrInvalidProposal, "resumption psk usage"},
		{"psk of resumption for a branch", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			return commit(t, tg, false, pskOf(ResumptionBranch, s.nh))
		}, ErrInvalidProposal, "resumption psk usage"},
		{"psk nonce shorter than Nh", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			return commit(t, tg, false, pskOf(0, s.nh-1))
		}, ErrInvalidProposal, "psk nonce"},
		{"external init in a member's commit", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			return commit(t, tg, true, &Proposal{Type: ProposalExternalInit, KEMOutput: randomHPKEPublicKey(t, cs)})
		}, ErrInvalidProposal, "external init outside"},
		{"external sender proposes a custom type", func(t *testing.T, tg *testGroup, extSigner crypto.Signer) error {
			return propose(t, tg, Sender{Type: SenderExternal, Index: 0}, extSigner, &Proposal{Type: propListed, Data: []byte{1}})
		}, ErrInvalidProposal, "external sender cannot propose"},
		{"reference to a proposal of another epoch", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			ac, _, err := tg.g.VerifyProposal(reencode(t, tg.proposal(t, member(1), tg.signers[1], pskOf(0, s.nh))))
			if err != nil {
				t.Fatal(err)
			}
			ac.Content.Epoch--
			ref, err := cs.ProposalRef(ac)
			if err != nil {
				t.Fatal(err)
			}
			return byRef(t, tg, ref, ac)
		}, ErrInvalidProposal, "another group or epoch"},
		{"resolver hands back another proposal", func(t *testing.T, tg *testGroup, _ crypto.Signer) error {
			ac, _, err := tg.g.VerifyProposal(reencode(t, tg.proposal(t, member(1), tg.signers[1], pskOf(0, s.nh))))
			if err != nil {
				t.Fatal(err)
			}
			return byRef(t, tg, randomBytes(t, s.nh), ac)
		}, ErrUnknownProposal, "another reference"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tg, extSigner := rulesGroup(t, cs)
			err := tc.run(t, tg, extSigner)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == nil:
			case err == nil:
				t.Fatal("accepted")
			case !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg):
				t.Fatalf("refused for another reason than %q: %v", tc.msg, err)
			}
		})
	}
}

// TestMalformedKeysRefused checks, one case per check, that a commit or
// proposal cannot bring into the group an HPKE public key its suite's KEM
// cannot use (RFC 9420 §7.3, §10.1, §12.4.2; here an X25519 key one byte
// short), nor a leaf node that lists one extension type twice (§13.4).
// Members could encrypt nothing to such a key: the group could not go on.
func TestMalformedKeysRefused(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	short := func(t *testing.T) []byte { return randomHPKEPublicKey(t, cs)[:31] }
	add := func(t *testing.T, tg *testGroup, mod func(*LeafNode), kpMod func(*KeyPackage)) error {
		leaf, signer := newTestLeaf(t, cs, "joiner")
		if mod != nil {
			mod(leaf)
		}
		if err := leaf.Sign(cs, signer, nil, 0); err != nil {
			t.Fatal(err)
		}
		kp := &KeyPackage{Version: MLS10, CipherSuite: cs, InitKey: randomHPKEPublicKey(t, cs), LeafNode: *leaf}
		if kpMod != nil {
			kpMod(kp)
		}
		if err := kp.Sign(signer); err != nil {
			t.Fatal(err)
		}
		_, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, byValue(addOf(kp)), false, nil)), nil)
		return err
	}
	cases := []struct {
		name string
		run  func(t *testing.T, tg *testGroup) error
		want error
		msg  string
	}{
		{"added leaf's encryption key", func(t *testing.T, tg *testGroup) error {
			return add(t, tg, func(l *LeafNode) { l.EncryptionKey = short(t) }, nil)
		}, ErrInvalidProposal, "leaf node: encryption key"},
		{"added key package's init key", func(t *testing.T, tg *testGroup) error {
			return add(t, tg, nil, func(kp *KeyPackage) { kp.InitKey = short(t) })
		}, ErrInvalidProposal, "init key"},
		{"added leaf listing an extension twice", func(t *testing.T, tg *testGroup) error {
			return add(t, tg, func(l *LeafNode) {
				l.Capabilities.Extensions = []ExtensionType{0xff00}
				l.Extensions = Extensions{{Type: 0xff00, Data: []byte{1}}, {Type: 0xff00, Data: []byte{2}}}
			}, nil)
		}, ErrInvalidProposal, "duplicate extension type"},
		{"updated leaf's encryption key", func(t *testing.T, tg *testGroup) error {
			leaf := tg.g.tree.leaf(1).clone()
			leaf.Source, leaf.ParentHash, leaf.EncryptionKey = SourceUpdate, nil, short(t)
			if err := leaf.Sign(cs, tg.signers[1], tg.g.GroupID(), 1); err != nil {
				t.Fatal(err)
			}
			_, _, err := tg.g.VerifyProposal(reencode(t, tg.proposal(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1],
				&Proposal{Type: ProposalUpdate, LeafNode: leaf})))
			return err
		}, ErrInvalidProposal, "leaf node: encryption key"},
		{"UpdatePath node's encryption key", func(t *testing.T, tg *testGroup) error {
			m := tg.commit(t, 0, nil, true, nil)
			path := m.PublicMessage.Content.Commit.Path
			path.Nodes[0].EncryptionKey = short(t)
			m = tg.frame(t, Sender{Type: SenderMember, Index: 0}, tg.signers[0], &Commit{Path: path})
			_, _, err := tg.g.ApplyCommit(reencode(t, m), nil)
			return err
		}, ErrInvalidCommit, "invalid update path: node 1: encryption key:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 3, nil)
			err := tc.run(t, tg)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("refused for another reason than %q: %v", tc.msg, err)
			}
		})
	}
}
