package mls

import (
	"errors"
	"testing"
)

func TestKeyPackageVerify(t *testing.T) {
	cs := P256AES128GCMSHA256P256
	kp, signer := newTestKeyPackage(t, cs, "kp")
	if err := kp.VerifyAt(1_700_000_000); err != nil {
		t.Fatal(err)
	}
	if err := kp.VerifyAt(1 << 63); err == nil {
		t.Error("expired key package accepted")
	}
	resign := func(k *KeyPackage) *KeyPackage {
		if err := k.Sign(signer); err != nil {
			t.Fatal(err)
		}
		return k
	}
	bad := map[string]*KeyPackage{}
	k := *kp
	k.Signature = append([]byte{}, kp.Signature...)
	k.Signature[10] ^= 1
	bad["signature"] = &k
	k2 := *kp
	k2.InitKey = kp.LeafNode.EncryptionKey
	bad["init key equals encryption key"] = resign(&k2)
	k3 := *kp
	k3.Version = 2
	bad["version"] = resign(&k3)
	k4 := *kp
	k4.CipherSuite = X448AES256GCMSHA512Ed448
	bad["unsupported suite"] = &k4
	k5 := *kp
	k5.Extensions = Extensions{{Type: 9, Data: nil}, {Type: 9, Data: []byte{1}}}
	bad["duplicate extensions"] = resign(&k5)
	k6 := *kp
	k6.LeafNode.Extensions = Extensions{{Type: 0x1234}}
	if err := k6.LeafNode.Sign(cs, signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	bad["leaf extension outside capabilities"] = resign(&k6)
	for name, k := range bad {
		if err := k.Verify(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := bad["unsupported suite"].Verify(); !errors.Is(err, ErrUnsupportedCipherSuite) {
		t.Errorf("unsupported suite: %v", err)
	}
}

// TestKeyPackageExtensionsInCapabilities checks the rule of RFC 9420 §10
// that the extensions of a KeyPackage, like those of its leaf, are listed
// in the leaf's capabilities: a KeyPackage that breaks it is invalid, and
// so is an Add of it (§12.1.1), which OpenMLS members refuse. A Delivery
// Service that accepted such a commit would move the group to an epoch its
// members cannot follow.
func TestKeyPackageExtensionsInCapabilities(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	tg := buildTestGroup(t, cs, 3, nil)
	for _, tc := range []struct {
		name   string
		ext    ExtensionType
		listed bool
	}{
		{"unlisted private extension", 0xF0F0, false},
		{"unlisted GREASE extension", 0x0A0A, false},
		{"listed private extension", 0xF0F0, true},
		{"listed GREASE extension", 0x0A0A, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf, signer := newTestLeaf(t, cs, "joiner")
			if tc.listed {
				leaf.Capabilities.Extensions = []ExtensionType{tc.ext}
				if err := leaf.Sign(cs, signer, nil, 0); err != nil {
					t.Fatal(err)
				}
			}
			_, initPub, err := cs.DeriveKeyPair(randomBytes(t, 32))
			if err != nil {
				t.Fatal(err)
			}
			kp := &KeyPackage{Version: MLS10, CipherSuite: cs, InitKey: initPub, LeafNode: *leaf,
				Extensions: Extensions{{Type: tc.ext, Data: []byte{1}}}}
			if err := kp.Sign(signer); err != nil {
				t.Fatal(err)
			}
			err = kp.Verify()
			if tc.listed && err != nil {
				t.Fatalf("verify: %v", err)
			}
			if !tc.listed && err == nil {
				t.Fatal("verify accepted a KeyPackage extension its leaf does not list")
			}
			add := ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}
			m := tg.frame(t, Sender{Type: SenderMember, Index: 0}, tg.signers[0], &Commit{Proposals: []ProposalOrRef{add}})
			_, _, err = tg.g.ApplyCommit(reencode(t, m), nil)
			if tc.listed && err != nil {
				t.Fatalf("commit: %v", err)
			}
			if !tc.listed && !errors.Is(err, ErrInvalidProposal) {
				t.Fatalf("commit: error %v, want %v", err, ErrInvalidProposal)
			}
		})
	}
}

// keyPackageWithInitKey returns a KeyPackage of a new client whose
// init_key is initKey.
func keyPackageWithInitKey(tb testing.TB, cs CipherSuite, name string, initKey []byte) *KeyPackage {
	leaf, signer := newTestLeaf(tb, cs, name)
	kp := &KeyPackage{Version: MLS10, CipherSuite: cs, InitKey: initKey, LeafNode: *leaf}
	if err := kp.Sign(signer); err != nil {
		tb.Fatal(err)
	}
	return kp
}

// TestAddInitKeysUnique checks that a commit whose Adds carry an init_key
// that another Add of the commit carries too, or that is an encryption key
// of the new tree, is refused, as OpenMLS members refuse it (its checks
// ValSem102 and ValSem104): a Delivery Service that accepted it would move
// the group to an epoch those members cannot follow. Any client can
// publish a KeyPackage with such an init_key, since the tree's keys are
// public to the group.
func TestAddInitKeysUnique(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	tg := buildTestGroup(t, cs, 3, nil)
	add := func(kp *KeyPackage) ProposalOrRef {
		return ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}
	}
	fresh := func() *KeyPackage { return keyPackageWithInitKey(t, cs, "fresh", randomHPKEPublicKey(t, cs)) }
	shared := randomHPKEPublicKey(t, cs)
	other, _ := newTestKeyPackage(t, cs, "other")
	for _, tc := range []struct {
		name  string
		props []ProposalOrRef
		path  bool
		ok    bool
	}{
		{"distinct init keys", []ProposalOrRef{add(fresh()), add(fresh())}, false, true},
		{"distinct init keys, with a path", []ProposalOrRef{add(fresh()), add(fresh())}, true, true},
		{"two adds with one init key", []ProposalOrRef{add(keyPackageWithInitKey(t, cs, "a", shared)),
			add(keyPackageWithInitKey(t, cs, "b", shared))}, false, false},
		{"init key of a member's leaf", []ProposalOrRef{add(keyPackageWithInitKey(t, cs, "a", tg.g.tree.leaf(1).EncryptionKey))}, false, false},
		{"init key of the committer's leaf, replaced by its path", []ProposalOrRef{
			add(keyPackageWithInitKey(t, cs, "a", tg.g.tree.leaf(0).EncryptionKey))}, true, false},
		{"init key of another add's leaf", []ProposalOrRef{add(other),
			add(keyPackageWithInitKey(t, cs, "a", other.LeafNode.EncryptionKey))}, false, false},
		{"init key of an earlier add's leaf, listed first", []ProposalOrRef{
			add(keyPackageWithInitKey(t, cs, "a", other.LeafNode.EncryptionKey)), add(other)}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m *MLSMessage
			if tc.path {
				m = tg.commit(t, 0, tc.props, true, nil)
			} else {
				m = tg.frame(t, Sender{Type: SenderMember, Index: 0}, tg.signers[0], &Commit{Proposals: tc.props})
			}
			_, _, err := tg.g.ApplyCommit(reencode(t, m), nil)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidCommit) {
				t.Fatalf("error %v, want %v", err, ErrInvalidCommit)
			}
		})
	}
}
