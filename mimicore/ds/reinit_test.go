package ds

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// TestReInitializeCloses checks what follows an accepted
// re_initialize_group (RFC 9420 §11.2, §12.4.2: the members stop using
// the group and move to the one its ReInit names): every later commit,
// external join, proposal and application message of the old group is
// refused forbidden (a commit built on an earlier epoch stale_epoch, as
// before), stores nothing and delivers nothing, and its GroupInfo is no
// longer served; welcome_info still serves the tree of
// an earlier Welcome, and the successor group is created and joined as
// any other.
func TestReInitializeCloses(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	carol := h.newTClient(t, "carol", "phone", false)
	aliceTablet := h.newTClient(t, "alice", "tablet", false)
	gid, successor := []byte("reinitialized group"), []byte("successor group")
	h.newGroup(t, gid, alice, bob)
	welcomeTree := bob.m.State().Tree().RatchetTree()
	h.queued(t, bob) // the Welcome

	reinit := &mls.Proposal{Type: mls.ProposalReInit, ReInit: &mls.ReInit{GroupID: successor,
		Version: mls.MLS10, CipherSuite: alice.c.kp.CipherSuite}}
	res := commit(t, alice.m, []*mls.Proposal{reinit}, nil, nil)
	h.mustDo(t, "re_initialize_group", commitBody(t, moh.ReInitializeGroup, alice, alice.m, res))
	old := alice.m
	adopt(t, res, alice, bob)
	h.wantEpoch(t, gid, 2, 2)
	if q := h.queued(t, bob); len(q) != 1 || !bytes.Equal(q[0].Message, mustMarshal(t, res.Commit)) {
		t.Fatalf("bob's queue after the ReInit: %+v, want the ReInit commit", q)
	}
	h.queued(t, alice)

	stored := func(t *testing.T) []byte {
		t.Helper()
		st, err := h.st.LoadGroup(t.Context(), gid)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := st.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return enc
	}
	before := stored(t)

	msg, err := bob.m.Protect([]byte("still here?"), nil)
	if err != nil {
		t.Fatal(err)
	}
	self, err := bob.m.Propose(&mls.Proposal{Type: mls.ProposalRemove, Removed: bob.m.LeafIndex()})
	if err != nil {
		t.Fatal(err)
	}
	gi, err := alice.m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	ext, tablet, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: aliceTablet.c.kp.LeafNode,
		Signer: aliceTablet.c.signer, RatchetTree: alice.m.State().Tree().RatchetTree()})
	if err != nil {
		t.Fatal(err)
	}
	tgi, err := tablet.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	extBody := moh.RequestBody{Type: moh.ExternalJoin, GroupUpdate: moh.MLSGroupUpdate{Commit: *ext,
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: tgi.Extensions, Signature: tgi.Signature}}}
	remove := []*mls.Proposal{{Type: mls.ProposalRemove, Removed: bob.m.LeafIndex()}}
	for _, tc := range []struct {
		name string
		body []byte
		want moh.Code
	}{
		{"update_client", commitBody(t, moh.UpdateClient, alice, alice.m, commit(t, alice.m, nil, nil, nil)), moh.CodeForbidden},
		// The commit is checked against the group's epoch first, as
		// any other: its committer missed the ReInit commit, which its
		// queue holds.
		{"update_client of the epoch before", commitBody(t, moh.UpdateClient, alice, old, commit(t, old, nil, nil, nil)), moh.CodeStaleEpoch},
		{"add_users", commitBody(t, moh.AddUsers, alice, alice.m, commit(t, alice.m, addProps(carol), nil, nil)), moh.CodeForbidden},
		{"remove_users", commitBody(t, moh.RemoveUsers, alice, alice.m, commit(t, alice.m, remove, nil, nil)), moh.CodeForbidden},
		{"delete_group", commitBody(t, moh.DeleteGroup, alice, alice.m, commit(t, alice.m, remove, nil, nil)), moh.CodeForbidden},
		{"re_initialize_group again", commitBody(t, moh.ReInitializeGroup, alice, alice.m, commit(t, alice.m, []*mls.Proposal{reinit}, nil, nil)), moh.CodeForbidden},
		{"external_join", encode(t, &moh.DSRequest{Body: extBody}), moh.CodeForbidden},
		{"self_remove_client", signed(t, bob, bob.m.LeafIndex(), moh.RequestBody{Type: moh.SelfRemoveClient, Message: *self}), moh.CodeForbidden},
		{"send_message", signed(t, bob, bob.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}), moh.CodeForbidden},
		{"external_commit_info", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.ExternalCommitInfo,
			ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}), moh.CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if resp, err := h.do(t, tc.body); codeOf(err) != tc.want {
				t.Fatalf("answer %+v, %v; want %s", resp, err, tc.want)
			}
			if !bytes.Equal(stored(t), before) {
				t.Fatal("the refused request changed the stored group")
			}
			pending, err := h.st.PendingProposals(t.Context(), gid, 2)
			if err != nil || len(pending) != 0 {
				t.Fatalf("pending proposals after the refusal: %d, %v", len(pending), err)
			}
			for _, c := range []*tclient{alice, bob, carol, aliceTablet} {
				if q := h.queued(t, c); len(q) != 0 {
					t.Fatalf("%s was delivered %d messages by a refused request", c.uri, len(q))
				}
			}
		})
	}

	// Bob, added by the Welcome of epoch 1, still gets its tree.
	resp := h.mustDo(t, "welcome_info", welcomeInfoBody(t, bob, bob.kpRef, gid, 1, false))
	if !bytes.Equal(resp.RatchetTree, mustMarshal(t, &welcomeTree)) {
		t.Fatal("welcome_info after the ReInit is not the tree bob joined with")
	}

	// The successor group the ReInit names: created, and bob added to it
	// with a new KeyPackage and Welcome.
	newBob := h.newTClient(t, "bob", "phone", false)
	h.newGroup(t, successor, alice, newBob)
	h.wantEpoch(t, successor, 1, 2)
	if q := h.queued(t, bob); len(q) != 1 || q[0].Sender != alice.uri || !bytes.Equal(q[0].GroupID, successor) {
		t.Fatalf("bob's queue after the successor's add_users: %+v, want its Welcome", q)
	}
}
