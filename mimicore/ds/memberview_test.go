package ds

import (
	"slices"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// wantViewFresh checks that the view the Service holds for the group's
// stored state, derived commit by commit, equals a pass over its members.
func (h *harness) wantViewFresh(t *testing.T, gid []byte) {
	t.Helper()
	g, err := h.st.LoadGroup(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	held := h.svc.Members.get(g)
	if held == nil {
		t.Fatal("no view is held for the stored state: the commit's view was not derived")
	}
	fresh := (&Service{Providers: h.svc.Providers}).memberView(g)
	same := held.local == fresh.local && slices.EqualFunc(held.remote, fresh.remote, func(a, b remoteLeaf) bool {
		return a.leaf == b.leaf && string(a.id) == string(b.id)
	})
	if !same {
		t.Fatalf("derived view %d local, %v remote; a pass over the members gives %d local, %v remote",
			held.local, held.remote, fresh.local, fresh.remote)
	}
}

// TestMemberViews runs commits that add and remove local and remote
// clients, and an external join, and checks after each that the member
// view derived from the previous one equals a pass over the new state.
func TestMemberViews(t *testing.T) {
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	carol := remoteClient(t, "c.example", "carol")
	dave := remoteClient(t, "c.example", "dave")
	erin := remoteClient(t, "e.example", "erin")
	tablet := h.newTClient(t, "alice", "tablet", false)
	gid := []byte("member views")
	h.mustDo(t, "create_group", createBody(t, alice, gid))
	// The first post passes over the members and holds the view.
	msg, err := alice.m.Protect([]byte("warm"), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "send_message", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))

	step := func(what string, typ moh.RequestType, props []*mls.Proposal, joiners ...*tclient) {
		t.Helper()
		res := commit(t, alice.m, props, nil, nil)
		h.mustDo(t, what, commitBody(t, typ, alice, alice.m, res))
		alice.m = res.Next
		join(t, res, joiners...)
		h.wantViewFresh(t, gid)
	}
	step("add bob, carol, dave", moh.AddUsers, addProps(bob, carol, dave), bob, carol, dave)
	step("update", moh.UpdateClient, nil)
	step("remove carol", moh.RemoveUsers, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: carol.m.LeafIndex()}})
	step("add erin into carol's blank leaf", moh.AddUsers, addProps(erin), erin)
	step("remove bob", moh.RemoveUsers, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: bob.m.LeafIndex()}})

	// An external join of alice's tablet.
	gi, err := alice.m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	ext, tm, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: tablet.c.kp.LeafNode, Signer: tablet.c.signer})
	if err != nil {
		t.Fatal(err)
	}
	tgi, err := tm.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "external_join", encode(t, &moh.DSRequest{Body: moh.RequestBody{Type: moh.ExternalJoin,
		GroupUpdate: moh.MLSGroupUpdate{Commit: *ext, PartialGroupInfo: moh.PartialGroupInfo{Extensions: tgi.Extensions, Signature: tgi.Signature}}}}))
	h.wantViewFresh(t, gid)
}
