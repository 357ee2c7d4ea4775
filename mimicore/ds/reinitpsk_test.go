package ds

import (
	"bytes"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// The reinit PSK of RFC 9420 §11.2 through the Delivery Service: a group
// closed by re_initialize_group, and the group its ReInit names, whose
// first add_users carries the old group's reinit PSK.

// reinitFixture is an old group reinitialized by alice, with bob, and the
// new group alice created (at epoch 0) to continue it.
type reinitFixture struct {
	h            *harness
	alice        *tclient // in the new group
	oldAlice     *mls.Member
	oldBob       *mls.Member
	newBob       *tclient // bob's KeyPackage for the new group
	carol        *tclient
	oldID, newID []byte
}

// newReInitFixture creates the old group of alice and bob, has alice
// commit a ReInit naming the new group (edited by editReInit when set)
// with re_initialize_group, and has alice create the new group with the
// GroupContext extensions exts, resolving the old group's reinit PSK to
// her own resumption_psk of it.
func newReInitFixture(t *testing.T, editReInit func(*mls.ReInit), exts mls.Extensions) *reinitFixture {
	t.Helper()
	h := newHarness(t)
	f := &reinitFixture{h: h, alice: h.newTClient(t, "alice", "phone", false),
		carol: h.newTClient(t, "carol", "phone", false),
		oldID: []byte("reinitialized group"), newID: []byte("successor group")}
	bob := h.newTClient(t, "bob", "phone", false)
	h.newGroup(t, f.oldID, f.alice, bob)
	reinit := &mls.ReInit{GroupID: f.newID, Version: mls.MLS10, CipherSuite: f.alice.c.kp.CipherSuite}
	if editReInit != nil {
		editReInit(reinit)
	}
	res := commit(t, f.alice.m, []*mls.Proposal{{Type: mls.ProposalReInit, ReInit: reinit}}, nil, nil)
	h.mustDo(t, "re_initialize_group", commitBody(t, moh.ReInitializeGroup, f.alice, f.alice.m, res))
	adopt(t, res, f.alice, bob)
	f.oldAlice, f.oldBob = f.alice.m, bob.m

	c := f.alice.c
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: c.kp.CipherSuite, GroupID: f.newID,
		Leaf: &c.kp.LeafNode, LeafKey: c.leafKey, Signer: c.signer, Extensions: exts, PSKs: reinitPSKOf(f.oldAlice)})
	if err != nil {
		t.Fatal(err)
	}
	f.alice.m = m
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "create_group", signed(t, f.alice, 0, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{
		GroupID: f.newID, LeafNode: c.kp.LeafNode,
		GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}}))
	f.newBob = h.newTClient(t, "bob", "phone", false)
	return f
}

// reinitPSKOf resolves every PSK to old's resumption_psk, the secret of
// the reinit PSK of old's group, so that a client makes the commits of
// the refusal cases too: the DS knows no PSK secret, and tells the PSKs
// apart by their ids alone.
func reinitPSKOf(old *mls.Member) mls.PSKLookup {
	return func(*mls.PreSharedKeyID) ([]byte, error) { return old.ResumptionPSK(), nil }
}

// forgePSK edits, with edit, the PreSharedKey proposals of the commit of
// res, which alice (member m) made, and signs it again, for the commits a
// client refuses to make: RFC 9420 validation checks the signature before
// the proposals, and then refuses them.
func forgePSK(t *testing.T, c *tclient, m *mls.Member, res *mls.CommitResult, edit func(*mls.Commit)) {
	t.Helper()
	pm := res.Commit.PublicMessage
	edit(pm.Content.Commit)
	gc := m.State().GroupContext()
	sig, err := gc.CipherSuite.SignFramedContent(c.c.signer, mls.WireFormatPublicMessage, &pm.Content, &gc)
	if err != nil {
		t.Fatal(err)
	}
	pm.Auth.Signature = sig
}

// pskOf returns the first PreSharedKey proposal of c.
func pskOf(c *mls.Commit) *mls.PreSharedKeyID {
	for _, p := range c.Proposals {
		if p.Proposal != nil && p.Proposal.Type == mls.ProposalPSK {
			return p.Proposal.PSK
		}
	}
	return nil
}

// reinitPSK is the reinit PSK of the old group, edited by edit when set.
func (f *reinitFixture) reinitPSK(t *testing.T, edit func(*mls.PreSharedKeyID)) *mls.Proposal {
	t.Helper()
	p, err := f.oldAlice.ReInitPSK(f.alice.m.State().CipherSuite())
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(p.PSK)
	}
	return p
}

// addWithPSKs is the add_users request of alice adding newBob to the new
// group with the PSK proposals psks, and the commit's result.
func (f *reinitFixture) addWithPSKs(t *testing.T, psks ...*mls.Proposal) ([]byte, *mls.CommitResult) {
	t.Helper()
	return f.addForged(t, nil, psks...)
}

// addForged is addWithPSKs with the commit edited by forge (forgePSK)
// when set.
func (f *reinitFixture) addForged(t *testing.T, forge func(*mls.Commit), psks ...*mls.Proposal) ([]byte, *mls.CommitResult) {
	t.Helper()
	props := append(addProps(f.newBob), psks...)
	res, err := f.alice.m.CommitWith(mls.CommitOptions{ByValue: props, ReInitialization: true})
	if err != nil {
		t.Fatal(err)
	}
	if forge != nil {
		forgePSK(t, f.alice, f.alice.m, res, forge)
	}
	return commitBody(t, moh.AddUsers, f.alice, f.alice.m, res), res
}

// TestReInitPSKAccepted follows RFC 9420 §11.2 through the DS: the new
// group's first add_users carries the reinit PSK of the group that
// re_initialize_group closed, and is accepted; bob joins from its Welcome,
// resolving the PSK to his own resumption_psk of the old group and
// checking the new group against the old group's ReInit, and reaches
// alice's epoch secrets, so the PSK is bound into the new group.
func TestReInitPSKAccepted(t *testing.T) {
	f := newReInitFixture(t, nil, nil)
	body, res := f.addWithPSKs(t, f.reinitPSK(t, nil))
	f.h.mustDo(t, "add_users with the reinit PSK", body)
	f.h.wantEpoch(t, f.newID, 1, 2)
	bob, err := mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: f.newBob.c.kp,
		InitKey: f.newBob.initKey, LeafKey: f.newBob.c.leafKey, Signer: f.newBob.c.signer, PSKs: reinitPSKOf(f.oldBob),
		ReInit: f.oldBob.ReInit()})
	if err != nil {
		t.Fatalf("bob joins with the old group's resumption_psk: %v", err)
	}
	if !bytes.Equal(bob.EpochAuthenticator(), res.Next.EpochAuthenticator()) {
		t.Fatal("bob's epoch secrets differ from alice's")
	}
	if _, err := mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: f.newBob.c.kp,
		InitKey: f.newBob.initKey, LeafKey: f.newBob.c.leafKey, Signer: f.newBob.c.signer,
		PSKs:   func(*mls.PreSharedKeyID) ([]byte, error) { return f.oldBob.EpochAuthenticator(), nil },
		ReInit: f.oldBob.ReInit()}); err == nil {
		t.Fatal("bob joined with another secret for the reinit PSK")
	}
	// The group has left epoch 0: the reinit PSK has had its commit.
	body, _ = f.addWithPSKs(t, f.reinitPSK(t, nil))
	if _, err := f.h.do(t, body); err == nil {
		t.Fatal("a second commit with the reinit PSK was accepted")
	}
}

// TestReInitPSKRefused checks, one case per rule, that an add_users
// carrying a PreSharedKey proposal other than the new group's reinit PSK
// is refused and changes nothing: forbidden where the commit is valid MLS
// and the DS rules refuse it, invalid_mls where RFC 9420 validation does
// (the nonce's length; usage reinit outside a group's first commit; one
// PSK listed twice). The control case is accepted.
func TestReInitPSKRefused(t *testing.T) {
	reinitOnly := func(t *testing.T, f *reinitFixture) []*mls.Proposal { return []*mls.Proposal{f.reinitPSK(t, nil)} }
	otherExts := mls.Extensions{{Type: mls.ExtRequiredCapabilities, Data: mustMarshal(t, &mls.RequiredCapabilities{})}}
	cases := []struct {
		name       string
		editReInit func(*mls.ReInit)
		exts       mls.Extensions
		psks       func(t *testing.T, f *reinitFixture) []*mls.Proposal
		forge      func(*mls.Commit) // edits the commit after the client made it
		want       moh.Code          // 0: accepted
		msg        string            // what the refusal says
	}{
		{"control: the reinit PSK", nil, nil, reinitOnly, nil, 0, ""},
		{"usage application", nil, nil, func(t *testing.T, f *reinitFixture) []*mls.Proposal {
			return []*mls.Proposal{f.reinitPSK(t, func(id *mls.PreSharedKeyID) { id.Usage = mls.ResumptionApplication })}
		}, nil, moh.CodeForbidden, "not a reinit PSK"},
		{"usage branch", nil, nil, reinitOnly, func(c *mls.Commit) { pskOf(c).Usage = mls.ResumptionBranch }, moh.CodeInvalidMLS, "resumption psk usage 3"},
		{"external PSK", nil, nil, func(t *testing.T, f *reinitFixture) []*mls.Proposal {
			return []*mls.Proposal{f.reinitPSK(t, func(id *mls.PreSharedKeyID) {
				*id = mls.PreSharedKeyID{Type: mls.PSKExternal, PSKID: []byte("an external psk"), Nonce: id.Nonce}
			})}
		}, nil, moh.CodeForbidden, "not a reinit PSK"},
		{"a group not reinitialized", nil, nil, func(t *testing.T, f *reinitFixture) []*mls.Proposal {
			other := f.h.newTClient(t, "alice", "laptop", false)
			f.h.mustDo(t, "create_group", createBody(t, other, []byte("a group still open")))
			return []*mls.Proposal{f.reinitPSK(t, func(id *mls.PreSharedKeyID) { id.PSKGroupID, id.PSKEpoch = []byte("a group still open"), 0 })}
		}, nil, moh.CodeForbidden, "names no group"},
		{"a group not hosted here", nil, nil, func(t *testing.T, f *reinitFixture) []*mls.Proposal {
			return []*mls.Proposal{f.reinitPSK(t, func(id *mls.PreSharedKeyID) { id.PSKGroupID = []byte("no such group") })}
		}, nil, moh.CodeForbidden, "names no group"},
		{"a ReInit naming another group", func(r *mls.ReInit) { r.GroupID = []byte("another successor") }, nil,
			reinitOnly, nil, moh.CodeForbidden, "reinitialized into another group"},
		{"the epoch before the ReInit", nil, nil, func(t *testing.T, f *reinitFixture) []*mls.Proposal {
			return []*mls.Proposal{f.reinitPSK(t, func(id *mls.PreSharedKeyID) { id.PSKEpoch-- })}
		}, nil, moh.CodeForbidden, "names epoch 1 of its group, whose ReInit started epoch 2"},
		{"a nonce shorter than KDF.Nh", nil, nil, reinitOnly, func(c *mls.Commit) { pskOf(c).Nonce = pskOf(c).Nonce[1:] }, moh.CodeInvalidMLS, "psk nonce of 31 bytes"},
		{"the new group past epoch 0", nil, nil, func(t *testing.T, f *reinitFixture) []*mls.Proposal {
			res := commit(t, f.alice.m, addProps(f.carol), nil, nil)
			f.h.mustDo(t, "add_users of carol", commitBody(t, moh.AddUsers, f.alice, f.alice.m, res))
			f.alice.m = res.Next
			return []*mls.Proposal{f.reinitPSK(t, nil)}
		}, nil, moh.CodeInvalidMLS, "resumption psk usage 2"},
		{"a ReInit of another cipher suite", func(r *mls.ReInit) { r.CipherSuite = mls.X25519ChaCha20Poly1305SHA256Ed25519 }, nil,
			reinitOnly, nil, moh.CodeForbidden, "the ReInit names version 1 and cipher suite 3"},
		{"a ReInit of another version", func(r *mls.ReInit) { r.Version = mls.MLS10 + 1 }, nil,
			reinitOnly, nil, moh.CodeForbidden, "the ReInit names version 2 and cipher suite 1"},
		{"a ReInit with extensions the group lacks", func(r *mls.ReInit) { r.Extensions = otherExts }, nil,
			reinitOnly, nil, moh.CodeForbidden, "extensions are not those the ReInit names"},
		{"a group with extensions the ReInit lacks", nil, otherExts,
			reinitOnly, nil, moh.CodeForbidden, "extensions are not those the ReInit names"},
		{"two reinit PSKs", nil, nil, func(t *testing.T, f *reinitFixture) []*mls.Proposal {
			return []*mls.Proposal{f.reinitPSK(t, nil), f.reinitPSK(t, nil)}
		}, nil, moh.CodeForbidden, "2 PreSharedKey proposals"},
		{"one reinit PSK twice", nil, nil, reinitOnly, func(c *mls.Commit) {
			c.Proposals = append(c.Proposals, c.Proposals[len(c.Proposals)-1])
		}, moh.CodeInvalidMLS, "psk listed twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newReInitFixture(t, tc.editReInit, tc.exts)
			psks := tc.psks(t, f)
			before := f.h.snapshot(t, f.newID)
			body, _ := f.addForged(t, tc.forge, psks...)
			_, err := f.h.do(t, body)
			if codeOf(err) != tc.want || err != nil && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("add_users: %v; want code %d saying %q", err, tc.want, tc.msg)
			}
			if tc.want != 0 && !f.h.snapshot(t, f.newID).equal(before) {
				t.Fatal("the refused add_users changed the stored group")
			}
		})
	}
}

// TestReInitTooLarge checks that a re_initialize_group whose ReInit
// proposal encodes to more than the store keeps (store.MaxReInitSize) is
// refused too_large and changes nothing, rather than failing in the
// store's write.
func TestReInitTooLarge(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	gid := []byte("group of a large ReInit")
	h.mustDo(t, "create_group", createBody(t, alice, gid))
	for _, tc := range []struct {
		name string
		data int // bytes of the ReInit's extension
		want moh.Code
	}{
		{"over the limit", store.MaxReInitSize, moh.CodeTooLarge},
		{"control: within it", 100, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snapshot(t, gid)
			res := commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalReInit, ReInit: &mls.ReInit{GroupID: []byte("successor"),
				Version: mls.MLS10, CipherSuite: alice.c.kp.CipherSuite,
				Extensions: mls.Extensions{{Type: 0xff0a, Data: make([]byte, tc.data)}}}}}, nil, nil)
			_, err := h.do(t, commitBody(t, moh.ReInitializeGroup, alice, alice.m, res))
			if codeOf(err) != tc.want {
				t.Fatalf("re_initialize_group: %v; want code %d", err, tc.want)
			}
			if tc.want != 0 && !h.snapshot(t, gid).equal(before) {
				t.Fatal("the refused re_initialize_group changed the stored group")
			}
		})
	}
}

// externalJoinWithPSK is the external_join request of joiner into the
// group of member m, whose commit carries psk after its ExternalInit (the
// Go client makes no such commit: it is signed again, and so is the
// GroupInfo of the epoch it makes).
func externalJoinWithPSK(t *testing.T, m *mls.Member, joiner *tclient, psk *mls.PreSharedKeyID) []byte {
	t.Helper()
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	ext, joined, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: joiner.c.kp.LeafNode, Signer: joiner.c.signer})
	if err != nil {
		t.Fatal(err)
	}
	pm := ext.PublicMessage
	pm.Content.Commit.Proposals = append(pm.Content.Commit.Proposals,
		mls.ProposalOrRef{Type: mls.ProposalByValue, Proposal: &mls.Proposal{Type: mls.ProposalPSK, PSK: psk}})
	base := m.State()
	gc := base.GroupContext()
	if pm.Auth.Signature, err = gc.CipherSuite.SignFramedContent(joiner.c.signer, mls.WireFormatPublicMessage, &pm.Content, &gc); err != nil {
		t.Fatal(err)
	}
	// Applied here only for the GroupInfo of its epoch, with usage
	// reinit admitted: the DS, not this helper, is to refuse it.
	next, info, err := base.ApplyCommitWith(ext, mls.ApplyOptions{ReInitialization: true})
	if err != nil {
		t.Fatal(err)
	}
	jgi, err := joined.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	ngi := mls.GroupInfo{GroupContext: next.GroupContext(), Extensions: jgi.Extensions,
		ConfirmationTag: next.ConfirmationTag(), Signer: info.CommitterLeaf}
	if err := ngi.Sign(joiner.c.signer); err != nil {
		t.Fatal(err)
	}
	return encode(t, &moh.DSRequest{Body: moh.RequestBody{Type: moh.ExternalJoin, GroupUpdate: moh.MLSGroupUpdate{
		Commit: *ext, PartialGroupInfo: moh.PartialGroupInfo{Extensions: ngi.Extensions, Signature: ngi.Signature}}}})
}

// TestExternalJoinPSK checks that an external_join may carry PreSharedKey
// proposals (RFC 9420 §12.4.3.2; docs/protocol.md §5.4.1 step 3, whose
// table allows them), in a group at epoch 0 as past it: the reinit PSK's
// checks are those of an add_users or add_clients, and a resumption PSK
// of usage reinit stays invalid_mls there.
func TestExternalJoinPSK(t *testing.T) {
	nonce := make([]byte, 32)
	for _, tc := range []struct {
		name  string
		epoch uint64 // the group's epoch at the join
		psk   mls.PreSharedKeyID
		want  moh.Code // 0: accepted
	}{
		{"external PSK at epoch 0", 0, mls.PreSharedKeyID{Type: mls.PSKExternal, PSKID: []byte("an external psk"), Nonce: nonce}, 0},
		{"application resumption PSK past epoch 0", 1, mls.PreSharedKeyID{Type: mls.PSKResumption, Usage: mls.ResumptionApplication,
			PSKGroupID: []byte("joined group"), PSKEpoch: 0, Nonce: nonce}, 0},
		{"reinit resumption PSK at epoch 0", 0, mls.PreSharedKeyID{Type: mls.PSKResumption, Usage: mls.ResumptionReInit,
			PSKGroupID: []byte("joined group"), PSKEpoch: 0, Nonce: nonce}, moh.CodeInvalidMLS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			alice := h.newTClient(t, "alice", "phone", false)
			tablet := h.newTClient(t, "alice", "tablet", false)
			gid := []byte("joined group")
			h.mustDo(t, "create_group", createBody(t, alice, gid))
			for alice.m.State().Epoch() < tc.epoch {
				res := commit(t, alice.m, nil, nil, nil)
				h.mustDo(t, "update_client", commitBody(t, moh.UpdateClient, alice, alice.m, res))
				alice.m = res.Next
			}
			before := h.snapshot(t, gid)
			_, err := h.do(t, externalJoinWithPSK(t, alice.m, tablet, &tc.psk))
			if codeOf(err) != tc.want {
				t.Fatalf("external_join: %v; want code %d", err, tc.want)
			}
			if tc.want != 0 {
				if !h.snapshot(t, gid).equal(before) {
					t.Fatal("the refused external_join changed the stored group")
				}
				return
			}
			h.wantEpoch(t, gid, tc.epoch+1, 2)
		})
	}
}
