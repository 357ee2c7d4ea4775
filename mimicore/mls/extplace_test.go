package mls

import (
	"testing"
)

// placeCases are extensions of each RFC 9420 type, of a GREASE type and of
// a private type, with where RFC 9420 §17.3 allows them.
var placeCases = []struct {
	name                 string
	typ                  ExtensionType
	inLeaf, inKP, gc, gi bool
}{
	{"application_id", ExtApplicationID, true, false, false, false},
	{"ratchet_tree", ExtRatchetTree, false, false, false, true},
	{"required_capabilities", ExtRequiredCapabilities, false, false, true, false},
	{"external_pub", ExtExternalPub, false, false, false, true},
	{"external_senders", ExtExternalSenders, false, false, true, false},
	{"GREASE", 0x0a0a, true, true, true, true},
	{"private", 0xff00, true, true, true, true},
}

// withExtension returns a modifier of a leaf that gives it an extension of
// type typ in its own extensions (inLeaf) or lists it in its capabilities
// only, for its KeyPackage to carry; non-default types are listed in the
// capabilities, as RFC 9420 §7.2 requires.
func withExtension(typ ExtensionType, inLeaf bool) func(*LeafNode) {
	return func(l *LeafNode) {
		if !isDefaultExtension(typ) {
			l.Capabilities.Extensions = append(l.Capabilities.Extensions, typ)
		}
		if inLeaf {
			l.Extensions = append(l.Extensions, Extension{Type: typ, Data: []byte{0}})
		}
	}
}

// TestLeafAndKeyPackageExtensionPlace checks that no leaf node carrying an
// RFC 9420 extension that §17.3 does not allow in a leaf node enters the
// tree (by an Add, an Update or an UpdatePath), and that no KeyPackage
// carrying one not allowed in a KeyPackage is added. OpenMLS members
// refuse such a leaf node or KeyPackage when they decode it, so a hub
// that fanned the commit out would fork them off; GREASE and private
// types stay allowed.
func TestLeafAndKeyPackageExtensionPlace(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	for _, tc := range placeCases {
		t.Run("add leaf/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			kp := joinerKeyPackage(t, cs, withExtension(tc.typ, true), nil)
			add := []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}}
			_, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, add, false, nil)), nil)
			checkRefusal(t, err, tc.inLeaf, ErrInvalidProposal)
		})
		t.Run("key package/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			kp := joinerKeyPackage(t, cs, withExtension(tc.typ, false), Extensions{{Type: tc.typ, Data: []byte{0}}})
			add := []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}}
			_, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, add, false, nil)), nil)
			checkRefusal(t, err, tc.inKP, ErrInvalidProposal)
		})
		t.Run("update/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			leaf := tg.g.tree.leaf(1).clone()
			leaf.Source = SourceUpdate
			leaf.Lifetime = Lifetime{}
			leaf.EncryptionKey = randomHPKEPublicKey(t, cs)
			withExtension(tc.typ, true)(leaf)
			if err := leaf.Sign(cs, tg.signers[1], tg.g.GroupID(), 1); err != nil {
				t.Fatal(err)
			}
			_, _, err := tg.g.VerifyProposal(reencode(t, tg.proposal(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1],
				&Proposal{Type: ProposalUpdate, LeafNode: leaf})))
			checkRefusal(t, err, tc.inLeaf, ErrInvalidProposal)
		})
		t.Run("commit path/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			_, _, err := tg.g.ApplyCommit(commitWithLeaf(t, tg, 0, withExtension(tc.typ, true)), nil)
			checkRefusal(t, err, tc.inLeaf, ErrInvalidCommit)
		})
	}
}

// gcExtension returns an extension of type typ that is valid in content
// when the type is allowed in a GroupContext: an empty
// required_capabilities or external_senders.
func gcExtension(typ ExtensionType) Extension {
	switch typ {
	case ExtRequiredCapabilities:
		return Extension{Type: typ, Data: []byte{0, 0, 0}}
	case ExtExternalSenders:
		return Extension{Type: typ, Data: []byte{0}}
	}
	return Extension{Type: typ, Data: []byte{0}}
}

// TestGroupContextExtensionPlace checks that a GroupContextExtensions
// proposal, alone or in a commit, and a new group's GroupInfo cannot put
// in the GroupContext an RFC 9420 extension that §17.3 does not allow
// there (application_id, ratchet_tree, external_pub). OpenMLS members
// refuse such a GroupContext when they decode it, so a hub that fanned the
// commit out would fork them off, and none could join such a new group.
// The GREASE and private types are left out: no member supports them, a
// refusal of its own. A state stored before the check was made still
// loads.
func TestGroupContextExtensionPlace(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	for _, tc := range placeCases {
		if !isDefaultExtension(tc.typ) {
			continue
		}
		exts := Extensions{gcExtension(tc.typ)}
		t.Run("proposal/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			gce := &Proposal{Type: ProposalGroupContextExtensions, Extensions: exts}
			_, _, err := tg.g.VerifyProposal(reencode(t, tg.proposal(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], gce)))
			checkRefusal(t, err, tc.gc, ErrInvalidProposal)
		})
		t.Run("commit/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			gce := []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalGroupContextExtensions, Extensions: exts}}}
			_, _, err := tg.g.ApplyCommit(reencode(t, tg.commit(t, 0, gce, true, nil)), nil)
			checkRefusal(t, err, tc.gc, ErrInvalidProposal)
		})
		t.Run("new group/"+tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 1, exts)
			gi := reencodeGroupInfo(t, tg.groupInfo(t, 0))
			_, err := NewGroupState(gi, tg.g.Tree().RatchetTree())
			checkRefusal(t, err, tc.gc, ErrInvalidGroupInfo)
		})
		t.Run("stored/"+tc.name, func(t *testing.T) {
			// A state stored before the check still loads.
			enc, err := buildTestGroup(t, cs, 1, exts).g.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := DecodeGroupState(enc); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestGroupInfoExtensionPlace checks that VerifyGroupInfo, which the
// Delivery Service runs on the GroupInfo of create_group and on the one it
// assembles from a commit's PartialGroupInfo, refuses a GroupInfo carrying
// an RFC 9420 extension that §17.3 does not allow there (application_id,
// required_capabilities, external_senders). OpenMLS clients refuse such a
// GroupInfo when they decode it, so none could join from the one the hub
// serves; GREASE and private types stay allowed.
func TestGroupInfoExtensionPlace(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	for _, tc := range placeCases {
		t.Run(tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			ext := Extension{Type: tc.typ, Data: []byte{0}}
			if tc.typ == ExtRatchetTree {
				rt := tg.g.Tree().RatchetTree()
				data, err := marshal(&rt)
				if err != nil {
					t.Fatal(err)
				}
				ext.Data = data
			}
			gi := &GroupInfo{GroupContext: tg.g.GroupContext(), Extensions: Extensions{ext},
				ConfirmationTag: tg.g.ConfirmationTag(), Signer: 1}
			if err := gi.Sign(tg.signers[1]); err != nil {
				t.Fatal(err)
			}
			checkRefusal(t, tg.g.VerifyGroupInfo(reencodeGroupInfo(t, gi)), tc.gi, ErrInvalidGroupInfo)
		})
	}
}
