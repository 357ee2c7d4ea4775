package mls

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// reinitGroups runs RFC 9420 §11.2 up to the new group's first commit: A
// creates a group and adds B, A commits a ReInit naming "successor" and
// both follow it. It returns A and B in the old group's last epoch and
// the new group, created by A with a PSKLookup that resolves the old
// group's reinit PSK, at epoch 0, and the KeyPackage client B joins it
// with.
func reinitGroups(t *testing.T, cs CipherSuite) (oldA, oldB, creator *Member, b2 *testClient) {
	t.Helper()
	return reinitGroupsWith(t, cs, nil, nil)
}

// reinitGroupsWith is reinitGroups with the ReInit the old group commits
// edited by editReInit when set, and the new group created, in suite cs
// as "successor" whatever the ReInit names, with the GroupContext
// extensions exts.
func reinitGroupsWith(t *testing.T, cs CipherSuite, editReInit func(*ReInit), exts Extensions) (oldA, oldB, creator *Member, b2 *testClient) {
	t.Helper()
	a, b := newTestClient(t, cs, "A"), newTestClient(t, cs, "B")
	alice, err := NewGroup(a.groupOptions(cs, "old group"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := res.Next, b.join(t, res.Welcome)
	reinit := &ReInit{GroupID: []byte("successor"), Version: MLS10, CipherSuite: cs}
	if editReInit != nil {
		editReInit(reinit)
	}
	res, err = alice.Commit([]*Proposal{{Type: ProposalReInit, ReInit: reinit}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob = res.Next, follow(t, bob, res.Commit, nil)
	opts := a.groupOptions(cs, "successor")
	opts.PSKs, opts.Extensions = reinitLookup(alice), exts
	creator, err = NewGroup(opts)
	if err != nil {
		t.Fatal(err)
	}
	return alice, bob, creator, newTestClient(t, cs, "B")
}

// reinitLookup resolves the reinit PSK of old's group and epoch to old's
// resumption_psk, and no other PSK.
func reinitLookup(old *Member) PSKLookup {
	return func(id *PreSharedKeyID) ([]byte, error) {
		if id.Type != PSKResumption || id.Usage != ResumptionReInit ||
			!bytes.Equal(id.PSKGroupID, old.State().GroupID()) || id.PSKEpoch != old.State().Epoch() {
			return nil, errors.New("unknown psk")
		}
		return old.ResumptionPSK(), nil
	}
}

// TestReInitPSK follows a reinitialization to its end (RFC 9420 §11.2): the
// new group's first commit adds B with the reinit PSK of the old group
// (Member.ReInitPSK, CommitOptions.ReInitialization), a validator accepts
// it with ApplyOptions.ReInitialization, and B, resolving the PSK to its
// own resumption_psk of the old group, joins at the creator's epoch
// secrets; with any other secret for the PSK it cannot join. In every
// suite.
func TestReInitPSK(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2, 3, 5, 7} {
		t.Run(fmt.Sprint("suite=", uint16(cs)), func(t *testing.T) {
			oldA, oldB, creator, b2 := reinitGroups(t, cs)
			if !bytes.Equal(oldA.ResumptionPSK(), oldB.ResumptionPSK()) || len(oldA.ResumptionPSK()) == 0 {
				t.Fatal("the old group's members disagree on its resumption_psk")
			}
			psk, err := oldA.ReInitPSK(cs)
			if err != nil {
				t.Fatal(err)
			}
			if psk.PSK.PSKEpoch != 2 || !bytes.Equal(psk.PSK.PSKGroupID, []byte("old group")) {
				t.Fatalf("reinit psk names group %q epoch %d, want the old group's epoch 2", psk.PSK.PSKGroupID, psk.PSK.PSKEpoch)
			}
			res, err := creator.CommitWith(CommitOptions{ByValue: []*Proposal{{Type: ProposalAdd, KeyPackage: b2.kp}, psk},
				ReInitialization: true})
			if err != nil {
				t.Fatal(err)
			}
			ds, info, err := creator.State().ApplyCommitWith(reencode(t, res.Commit), ApplyOptions{ReInitialization: true})
			if err != nil {
				t.Fatalf("validating the first commit of the new group: %v", err)
			}
			if len(info.PSKs) != 1 || info.PSKs[0].Usage != ResumptionReInit {
				t.Fatalf("commit info PSKs %+v, want the reinit psk", info.PSKs)
			}
			if _, _, err := creator.State().ApplyCommit(reencode(t, res.Commit), nil); err == nil ||
				!errors.Is(err, ErrInvalidProposal) || !strings.Contains(err.Error(), "resumption psk usage") {
				t.Fatalf("the same commit outside a reinitialization: %v, want the usage refused", err)
			}
			joined, err := JoinFromWelcome(reencode(t, res.Welcome).Welcome, WelcomeOptions{KeyPackage: b2.kp,
				InitKey: b2.initPriv, LeafKey: b2.leafPriv, Signer: b2.signer, PSKs: reinitLookup(oldB), ReInit: oldB.ReInit()})
			if err != nil {
				t.Fatalf("joining with the old group's resumption_psk: %v", err)
			}
			sameEpoch(t, ds, res.Next, joined)

			wrong := func(*PreSharedKeyID) ([]byte, error) { return randomBytes(t, len(oldB.ResumptionPSK())), nil }
			if _, err := JoinFromWelcome(reencode(t, res.Welcome).Welcome, WelcomeOptions{KeyPackage: b2.kp,
				InitKey: b2.initPriv, LeafKey: b2.leafPriv, Signer: b2.signer, PSKs: wrong, ReInit: oldB.ReInit()}); err == nil {
				t.Fatal("joined with another secret for the reinit psk")
			}
		})
	}
}

// TestReInitPSKUsages checks which PSKs ReInitialization admits: a
// resumption PSK of usage reinit only; one of usage branch stays invalid,
// and the nonce must still be KDF.Nh bytes. Without the option the client
// refuses to commit the reinit PSK at all.
func TestReInitPSKUsages(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	oldA, _, creator, b2 := reinitGroups(t, cs)
	psk := func(edit func(*PreSharedKeyID)) *Proposal {
		p, err := oldA.ReInitPSK(cs)
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(p.PSK)
		}
		return p
	}
	for _, tc := range []struct {
		name   string
		p      *Proposal
		reinit bool
		msg    string // what the refusal names; "" for accepted
	}{
		{"reinit usage in a reinitialization", psk(nil), true, ""},
		{"reinit usage outside one", psk(nil), false, "resumption psk usage 2"},
		{"branch usage in a reinitialization", psk(func(id *PreSharedKeyID) { id.Usage = ResumptionBranch }), true, "resumption psk usage 3"},
		{"short nonce in a reinitialization", psk(func(id *PreSharedKeyID) { id.Nonce = id.Nonce[1:] }), true, "psk nonce of 31 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := creator.CommitWith(CommitOptions{ByValue: []*Proposal{{Type: ProposalAdd, KeyPackage: b2.kp}, tc.p},
				ReInitialization: tc.reinit})
			switch {
			case tc.msg == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.msg == "":
			case err == nil:
				t.Fatal("accepted")
			case !errors.Is(err, ErrInvalidProposal) || !strings.Contains(err.Error(), tc.msg):
				t.Fatalf("refused for another reason than %q: %v", tc.msg, err)
			}
		})
	}
}

// TestReInitPSKJoiner checks the joiner's rules of RFC 9420 §12.4.3.1 for a
// Welcome naming a resumption PSK of usage reinit: it must be the only
// PSK of usage reinit or branch, and the GroupInfo's epoch must be 1 (the
// new group's first commit). A Welcome breaking either is refused even
// when the joiner resolves the PSKs; the control case joins.
func TestReInitPSKJoiner(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	for _, tc := range []struct {
		name    string
		earlier bool // the new group has a commit before the one with the PSK
		psks    int  // reinit PSKs in the commit (each its own nonce)
		msg     string
	}{
		{"control: one reinit PSK at epoch 1", false, 1, ""},
		{"the reinit PSK at epoch 2", true, 1, "epoch 2"},
		{"two reinit PSKs", false, 2, "2 PSKs of usage reinit or branch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oldA, oldB, creator, b2 := reinitGroups(t, cs)
			if tc.earlier {
				c := newTestClient(t, cs, "C")
				res, err := creator.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: c.kp}}, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				creator = res.Next
			}
			props := []*Proposal{{Type: ProposalAdd, KeyPackage: b2.kp}}
			for range tc.psks {
				psk, err := oldA.ReInitPSK(cs)
				if err != nil {
					t.Fatal(err)
				}
				props = append(props, psk)
			}
			res, err := creator.CommitWith(CommitOptions{ByValue: props, ReInitialization: true})
			if err != nil {
				t.Fatal(err)
			}
			_, err = JoinFromWelcome(reencode(t, res.Welcome).Welcome, WelcomeOptions{KeyPackage: b2.kp,
				InitKey: b2.initPriv, LeafKey: b2.leafPriv, Signer: b2.signer,
				PSKs: reinitLookup(oldB), ReInit: oldB.ReInit()})
			switch {
			case tc.msg == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.msg == "":
			case err == nil:
				t.Fatal("joined")
			case !strings.Contains(err.Error(), tc.msg):
				t.Fatalf("refused for another reason than %q: %v", tc.msg, err)
			}
		})
	}
}

// TestReInitJoinChecksGroup checks that a joiner of a reinitialized group
// joins only the group the old group's ReInit named (RFC 9420 §11.2,
// WelcomeOptions.ReInit): the control case, given the old group's
// Member.ReInit, joins; a Welcome with the reinit PSK is refused without
// a ReInit, and when the new group's group_id, version, cipher suite or
// GroupContext extensions are not the ReInit's; a ReInit given for a
// Welcome naming no reinit PSK is refused. In every case B resolves the
// PSK, so only the ReInit check stands between the Welcome and a join.
func TestReInitJoinChecksGroup(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	rc, err := marshal(&RequiredCapabilities{})
	if err != nil {
		t.Fatal(err)
	}
	exts := Extensions{{Type: ExtRequiredCapabilities, Data: rc}}
	for _, tc := range []struct {
		name       string
		editReInit func(*ReInit)              // the ReInit the old group commits
		newExts    Extensions                 // the new group's GroupContext extensions
		given      func(oldB *Member) *ReInit // WelcomeOptions.ReInit
		msg        string                     // what the refusal names; "" for joined
	}{
		{name: "control: the old group's ReInit"},
		{name: "control: the ReInit names extensions the new group has",
			editReInit: func(r *ReInit) { r.Extensions = exts.clone() }, newExts: exts},
		{name: "no ReInit given", given: func(*Member) *ReInit { return nil },
			msg: `the reinit psk of group 6f6c642067726f7570 epoch 2 but no ReInit was given`},
		{name: "the ReInit names another group id", editReInit: func(r *ReInit) { r.GroupID = []byte("elsewhere") },
			msg: "group_id 737563636573736f72, not 656c73657768657265"},
		{name: "the ReInit given names the old group's id, the PSK's psk_group_id",
			given: func(oldB *Member) *ReInit { r := oldB.ReInit(); r.GroupID = []byte("old group"); return r },
			msg:   "group_id 737563636573736f72, not 6f6c642067726f7570"},
		{name: "the ReInit names another cipher suite", editReInit: func(r *ReInit) { r.CipherSuite = P256AES128GCMSHA256P256 },
			msg: "cipher suite 1, not 2"},
		{name: "the ReInit names another version", editReInit: func(r *ReInit) { r.Version = MLS10 + 1 },
			msg: "version 1, not 2"},
		{name: "the new group has extensions the ReInit does not name", newExts: exts,
			msg: "other group context extensions (of types [3]) than the ReInit's (of types [])"},
		{name: "the ReInit names extensions the new group lacks", editReInit: func(r *ReInit) { r.Extensions = exts.clone() },
			msg: "other group context extensions (of types []) than the ReInit's (of types [3])"},
		{name: "every parameter differs", editReInit: func(r *ReInit) {
			r.GroupID, r.Version, r.CipherSuite, r.Extensions = []byte("elsewhere"), MLS10+1, P256AES128GCMSHA256P256, exts.clone()
		}, msg: "group_id 737563636573736f72, not 656c73657768657265; version 1, not 2; cipher suite 1, not 2; other group context extensions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oldA, oldB, creator, b2 := reinitGroupsWith(t, cs, tc.editReInit, tc.newExts)
			psk, err := oldA.ReInitPSK(cs)
			if err != nil {
				t.Fatal(err)
			}
			res, err := creator.CommitWith(CommitOptions{ByValue: []*Proposal{{Type: ProposalAdd, KeyPackage: b2.kp}, psk},
				ReInitialization: true})
			if err != nil {
				t.Fatal(err)
			}
			given := oldB.ReInit()
			if tc.given != nil {
				given = tc.given(oldB)
			}
			joined, err := JoinFromWelcome(reencode(t, res.Welcome).Welcome, WelcomeOptions{KeyPackage: b2.kp,
				InitKey: b2.initPriv, LeafKey: b2.leafPriv, Signer: b2.signer, PSKs: reinitLookup(oldB), ReInit: given})
			switch {
			case tc.msg == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.msg == "":
				sameEpoch(t, res.Next.State(), res.Next, joined)
			case err == nil:
				t.Fatal("joined")
			case !errors.Is(err, ErrReInitMismatch) || !strings.Contains(err.Error(), tc.msg):
				t.Fatalf("refused for another reason than %q: %v", tc.msg, err)
			}
		})
	}
	t.Run("a ReInit given for a Welcome without a reinit PSK", func(t *testing.T) {
		_, oldB, _, _ := reinitGroups(t, cs)
		a, c := newTestClient(t, cs, "A"), newTestClient(t, cs, "C")
		opts := a.groupOptions(cs, "successor")
		alice, err := NewGroup(opts)
		if err != nil {
			t.Fatal(err)
		}
		res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: c.kp}}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		w := reencode(t, res.Welcome).Welcome
		_, err = JoinFromWelcome(w, WelcomeOptions{KeyPackage: c.kp, InitKey: c.initPriv, LeafKey: c.leafPriv,
			Signer: c.signer, ReInit: oldB.ReInit()})
		if !errors.Is(err, ErrReInitMismatch) || !strings.Contains(err.Error(), "a ReInit was given but the welcome names no reinit psk") {
			t.Fatalf("joined or refused for another reason: %v", err)
		}
		if _, err := JoinFromWelcome(w, WelcomeOptions{KeyPackage: c.kp, InitKey: c.initPriv, LeafKey: c.leafPriv,
			Signer: c.signer}); err != nil {
			t.Fatalf("the same Welcome without the ReInit: %v", err)
		}
	})
}

// TestMemberReInit checks Member.ReInit: nil in a new group and after an
// ordinary commit, the ReInit after the commit covering it, for the
// committer (CommitResult.Next) and for a member that applied it, a copy
// each time, and kept through a save and restore.
func TestMemberReInit(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2, 3, 5, 7} {
		t.Run(fmt.Sprint("suite=", uint16(cs)), func(t *testing.T) {
			alice, bob := pair(t, cs)
			if alice.ReInit() != nil || bob.ReInit() != nil {
				t.Fatal("a ReInit after an Add")
			}
			res, err := alice.Commit(nil, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			alice, bob = res.Next, follow(t, bob, res.Commit, nil)
			if alice.ReInit() != nil || bob.ReInit() != nil {
				t.Fatal("a ReInit after an empty commit")
			}
			rc, err := marshal(&RequiredCapabilities{})
			if err != nil {
				t.Fatal(err)
			}
			want := &ReInit{GroupID: []byte("successor"), Version: MLS10, CipherSuite: cs,
				Extensions: Extensions{{Type: ExtRequiredCapabilities, Data: rc}}}
			proposed := want.clone()
			res, err = alice.Commit([]*Proposal{{Type: ProposalReInit, ReInit: proposed}}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			newAlice, newBob := res.Next, follow(t, bob, res.Commit, nil)
			proposed.GroupID[0] = 'X' // the committer's ReInit is a copy of its own
			for name, m := range map[string]*Member{"committer": newAlice, "follower": newBob,
				"committer restored": reload(t, newAlice), "follower restored": reload(t, newBob)} {
				got := m.ReInit()
				if got == nil || !reflect.DeepEqual(got, want) {
					t.Fatalf("%s: ReInit %+v, want %+v", name, got, want)
				}
				got.GroupID[0], got.Extensions[0].Data = 'Y', nil
				if again := m.ReInit(); !reflect.DeepEqual(again, want) {
					t.Fatalf("%s: ReInit changed through the copy it returned: %+v", name, again)
				}
			}
			if alice.ReInit() != nil || bob.ReInit() != nil {
				t.Fatal("the ReInit commit changed the members of the epoch before it")
			}
		})
	}
}
