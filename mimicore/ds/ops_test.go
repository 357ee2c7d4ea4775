package ds

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// wantEpoch fails unless the stored group gid is at epoch with members
// members.
func (h *harness) wantEpoch(t *testing.T, gid []byte, epoch uint64, members uint32) {
	t.Helper()
	st, err := h.st.LoadGroup(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	if st.Epoch() != epoch || st.MemberCount() != members {
		t.Fatalf("stored group at epoch %d with %d members, want epoch %d with %d", st.Epoch(), st.MemberCount(), epoch, members)
	}
}

// adopt makes the committer and every other member follow an accepted
// commit; members holds the clients to advance besides the committer.
func adopt(t *testing.T, res *mls.CommitResult, committer *tclient, members ...*tclient) {
	t.Helper()
	for _, c := range members {
		m, err := c.m.ApplyCommit(res.Commit, nil)
		if err != nil {
			t.Fatalf("%s follows the commit: %v", c.uri, err)
		}
		c.m = m
	}
	committer.m = res.Next
}

// TestGroupLifecycle runs every group operation on one group in a real
// store: create, add_users, update_client, add_clients, send_message,
// external_commit_info and an external join of a user's new device,
// self_remove committed by reference, remove_clients, remove_users (the
// removed member's next request is not_found), then delete_group.
// welcomeInfoBody returns a welcome_info request for epoch of gid, with
// the key_package_signature of ref signed by c's key, and with the
// signature's last byte flipped when tamper is set.
func welcomeInfoBody(t *testing.T, c *tclient, ref, gid []byte, epoch uint64, tamper bool) []byte {
	t.Helper()
	b, err := SignRequest(c.c.kp.CipherSuite, c.c.signer, moh.RequestBody{Type: moh.WelcomeInfo,
		WelcomeInfo: moh.WelcomeInfoRequest{GroupID: gid, Epoch: epoch}}, KeyPackageSignature(ref, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if tamper { // the signature is the request's last field
		b[len(b)-1] ^= 1
	}
	return b
}

// mustMarshal encodes v.
func mustMarshal(t *testing.T, v wire.Marshaler) []byte {
	t.Helper()
	b, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGroupLifecycle(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	bobLaptop := h.newTClient(t, "bob", "laptop", false)
	carol := h.newTClient(t, "carol", "phone", false)
	aliceTablet := h.newTClient(t, "alice", "tablet", false)
	gid := []byte("lifecycle group")

	h.mustDo(t, "create_group", createBody(t, alice, gid))
	h.wantEpoch(t, gid, 0, 1)
	if hub, err := h.st.GroupHub(t.Context(), gid); err != nil || hub != testProvider {
		t.Fatalf("hub = %q, %v", hub, err)
	}

	// add_users: bob and carol, one Welcome.
	res := commit(t, alice.m, addProps(bob, carol), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, alice, alice.m, res))
	adopt(t, res, alice)
	join(t, res, bob, carol)
	h.wantEpoch(t, gid, 1, 3)
	welcome := res.Welcome
	// welcome_info: bob and carol, each signing with their KeyPackage's
	// key, get the tree of the epoch their Welcome added them in, as the
	// store kept it; the joiners were recorded by the add_users commit.
	welcomeTree, err := h.st.WelcomeTree(t.Context(), gid, 1)
	if err != nil {
		t.Fatal(err)
	}
	wantTree, err := wire.Marshal(&welcomeTree)
	if err != nil {
		t.Fatal(err)
	}
	if rt := bob.m.State().Tree().RatchetTree(); !bytes.Equal(mustMarshal(t, &rt), wantTree) {
		t.Fatal("the kept Welcome tree is not the tree bob joined with")
	}
	wantWelcomeInfo := func(t *testing.T, joiners ...*tclient) {
		t.Helper()
		for _, c := range joiners {
			resp := h.mustDo(t, "welcome_info", welcomeInfoBody(t, c, c.kpRef, gid, 1, false))
			if resp.Type != moh.ResponseWelcomeInfo || !bytes.Equal(resp.RatchetTree, wantTree) {
				t.Fatalf("welcome_info of %s answered %+v, not the Welcome tree", c.uri, resp)
			}
		}
	}
	wantWelcomeInfo(t, bob, carol)
	for _, tc := range []struct {
		name string
		body []byte
		want moh.Code
	}{
		{"a ref no Welcome added", welcomeInfoBody(t, bob, randomBytes(t, 32), gid, 1, false), moh.CodeNotFound},
		{"the epoch before", welcomeInfoBody(t, bob, bob.kpRef, gid, 0, false), moh.CodeNotFound},
		{"an epoch not reached", welcomeInfoBody(t, bob, bob.kpRef, gid, 2, false), moh.CodeNotFound},
		{"another group", welcomeInfoBody(t, bob, bob.kpRef, []byte("no such group"), 1, false), moh.CodeNotFound},
		{"a tampered signature", welcomeInfoBody(t, bob, bob.kpRef, gid, 1, true), moh.CodeBadSignature},
		{"carol's key on bob's ref", welcomeInfoBody(t, carol, bob.kpRef, gid, 1, false), moh.CodeBadSignature},
	} {
		t.Run("welcome_info "+tc.name, func(t *testing.T) {
			if _, err := h.do(t, tc.body); codeOf(err) != tc.want {
				t.Fatalf("answer %v, want %s", err, tc.want)
			}
		})
	}

	// update_client by bob.
	res = commit(t, bob.m, nil, nil, nil)
	h.mustDo(t, "update_client", commitBody(t, moh.UpdateClient, bob, bob.m, res))
	adopt(t, res, bob, alice, carol)
	h.wantEpoch(t, gid, 2, 3)

	// add_clients: bob's laptop, added by bob.
	res = commit(t, bob.m, addProps(bobLaptop), nil, nil)
	h.mustDo(t, "add_clients", commitBody(t, moh.AddClients, bob, bob.m, res))
	adopt(t, res, bob, alice, carol)
	join(t, res, bobLaptop)
	h.wantEpoch(t, gid, 3, 4)
	// Two commits later bob still gets epoch 1's tree as it was, and the
	// laptop gets the tree of epoch 3, which its own Welcome started.
	wantWelcomeInfo(t, bob)
	laptopTree := bobLaptop.m.State().Tree().RatchetTree()
	if resp := h.mustDo(t, "welcome_info", welcomeInfoBody(t, bobLaptop, bobLaptop.kpRef, gid, 3, false)); !bytes.Equal(resp.RatchetTree, mustMarshal(t, &laptopTree)) {
		t.Fatal("welcome_info of epoch 3 is not the tree the laptop joined with")
	}

	// send_message: alice's message reaches the other three.
	msg, err := alice.m.Protect([]byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "send_message", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))
	// Each of the others finds it last in their queue, after the
	// commits they were sent; alice finds nothing of her own.
	for _, c := range []*tclient{bob, carol, bobLaptop} {
		q := h.queued(t, c)
		if len(q) == 0 || q[len(q)-1].Sender != alice.uri {
			t.Fatalf("%s's queue: %+v", c.uri, q)
		}
		if _, plain, err := c.m.Unprotect(mustDecode(t, q[len(q)-1].Message)); err != nil || string(plain) != "hello" {
			t.Fatalf("%s reads %q, %v", c.uri, plain, err)
		}
	}
	for _, m := range h.queued(t, alice) {
		if m.Sender == alice.uri {
			t.Fatal("alice was sent her own message")
		}
	}

	// external_commit_info for alice, then her tablet joins externally.
	resp := h.mustDo(t, "external_commit_info", signed(t, alice, alice.m.LeafIndex(),
		moh.RequestBody{Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}))
	gim := mustDecode(t, resp.GroupInfo)
	var rt mls.RatchetTree
	if err := wire.Unmarshal(resp.RatchetTree, &rt, "ratchet tree"); err != nil {
		t.Fatal(err)
	}
	ext, tablet, err := mls.JoinExternal(gim.GroupInfo, mls.ExternalJoinOptions{Leaf: aliceTablet.c.kp.LeafNode,
		Signer: aliceTablet.c.signer, RatchetTree: rt})
	if err != nil {
		t.Fatalf("joining from the served GroupInfo: %v", err)
	}
	body := moh.RequestBody{Type: moh.ExternalJoin, GroupUpdate: moh.MLSGroupUpdate{Commit: *ext}}
	tgi, err := tablet.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	body.GroupUpdate.PartialGroupInfo = moh.PartialGroupInfo{Extensions: tgi.Extensions, Signature: tgi.Signature}
	h.mustDo(t, "external_join", encode(t, &moh.DSRequest{Body: body}))
	aliceTablet.m = tablet
	for _, c := range []*tclient{alice, bob, carol, bobLaptop} {
		m, err := c.m.ApplyCommit(ext, nil)
		if err != nil {
			t.Fatalf("%s follows the external commit: %v", c.uri, err)
		}
		c.m = m
	}
	h.wantEpoch(t, gid, 4, 5)

	// self_remove by carol, committed by reference in alice's update.
	prop, err := carol.m.Propose(&mls.Proposal{Type: mls.ProposalRemove, Removed: carol.m.LeafIndex()})
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "self_remove_client", signed(t, carol, carol.m.LeafIndex(), moh.RequestBody{Type: moh.SelfRemoveClient, Message: *prop}))
	ac, ref, err := alice.m.VerifyProposal(prop)
	if err != nil {
		t.Fatal(err)
	}
	byRef := func([]byte) (*mls.AuthenticatedContent, error) { return ac, nil }
	// An update that leaves the pending proposal out is refused.
	res = commit(t, alice.m, nil, nil, nil)
	if _, err := h.do(t, commitBody(t, moh.UpdateClient, alice, alice.m, res)); codeOf(err) != moh.CodeForbidden {
		t.Fatalf("commit without the pending self-remove: %v", err)
	}
	res = commit(t, alice.m, nil, [][]byte{ref}, byRef)
	h.mustDo(t, "update_client covering the self-remove", commitBody(t, moh.UpdateClient, alice, alice.m, res))
	for _, c := range []*tclient{bob, bobLaptop, aliceTablet} {
		m, err := c.m.ApplyCommit(res.Commit, byRef)
		if err != nil {
			t.Fatalf("%s follows: %v", c.uri, err)
		}
		c.m = m
	}
	alice.m = res.Next
	h.wantEpoch(t, gid, 5, 4)

	// remove_clients: alice removes her tablet.
	res = commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: aliceTablet.m.LeafIndex()}}, nil, nil)
	h.mustDo(t, "remove_clients", commitBody(t, moh.RemoveClients, alice, alice.m, res))
	adopt(t, res, alice, bob, bobLaptop)
	h.wantEpoch(t, gid, 6, 3)

	// remove_users: bob, both devices.
	oldBob := bob.m
	res = commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: bob.m.LeafIndex()},
		{Type: mls.ProposalRemove, Removed: bobLaptop.m.LeafIndex()}}, nil, nil)
	h.mustDo(t, "remove_users", commitBody(t, moh.RemoveUsers, alice, alice.m, res))
	adopt(t, res, alice)
	h.wantEpoch(t, gid, 7, 1)

	// Bob is gone: his next request (a commit in his old epoch, signed as
	// his old leaf) is not_found, like any non-member's.
	res = commit(t, oldBob, nil, nil, nil)
	if _, err := h.do(t, commitBody(t, moh.UpdateClient, bob, oldBob, res)); codeOf(err) != moh.CodeNotFound {
		t.Fatalf("removed member's commit: %v, want not_found", err)
	}

	// delete_group: alice is alone, an empty-removal commit deletes it.
	res = commit(t, alice.m, nil, nil, nil)
	h.mustDo(t, "delete_group", commitBody(t, moh.DeleteGroup, alice, alice.m, res))
	if _, err := h.st.LoadGroup(t.Context(), gid); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted group loads: %v", err)
	}
	res = commit(t, res.Next, nil, nil, nil)
	if _, err := h.do(t, commitBody(t, moh.UpdateClient, alice, res.Next, res)); codeOf(err) != moh.CodeNotFound {
		t.Fatalf("request for a deleted group: %v, want not_found", err)
	}
	// Its id is never used again: not by a new group here, and not by a
	// group another provider claims to host.
	if _, err := h.do(t, createBody(t, alice, gid)); codeOf(err) != moh.CodeGroupExists {
		t.Fatalf("create_group with the deleted group's id: %v, want group_exists", err)
	}
	if _, err := h.deliver(t, "c.example", queueingPayload(t, gid, welcome, bob.uri)); codeOf(err) != moh.CodeForbidden {
		t.Fatalf("a Welcome for the deleted group's id from another provider: %v, want forbidden", err)
	}
}

// TestReInitialize commits a ReInit proposal with re_initialize_group.
func TestReInitialize(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	gid := []byte("reinit group")
	h.mustDo(t, "create_group", createBody(t, alice, gid))
	res := commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalReInit, ReInit: &mls.ReInit{GroupID: []byte("successor"),
		Version: mls.MLS10, CipherSuite: alice.c.kp.CipherSuite}}}, nil, nil)
	h.mustDo(t, "re_initialize_group", commitBody(t, moh.ReInitializeGroup, alice, alice.m, res))
	h.wantEpoch(t, gid, 1, 1)
}

func mustDecode(t testing.TB, b []byte) *mls.MLSMessage {
	t.Helper()
	m, err := mls.DecodeMLSMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRacingCommits sends two commits built on one epoch at once, ten
// times over: exactly one is stored each time, and the other is answered
// commit_conflict or stale_epoch (409), depending on whether it lost in
// the store's conditional write or was authenticated after the winner was
// stored.
func TestRacingCommits(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	gid := []byte("racing group")
	h.newGroup(t, gid, alice, bob)
	for round := range 10 {
		ra := commit(t, alice.m, nil, nil, nil)
		rb := commit(t, bob.m, nil, nil, nil)
		bodies := [][]byte{commitBody(t, moh.UpdateClient, alice, alice.m, ra), commitBody(t, moh.UpdateClient, bob, bob.m, rb)}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range bodies {
			wg.Go(func() {
				<-start
				_, errs[i] = h.do(t, bodies[i])
			})
		}
		close(start)
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch codeOf(err) {
			case 0:
				winners++
			case moh.CodeCommitConflict, moh.CodeStaleEpoch:
			default:
				t.Fatalf("round %d: commit %d: %v", round, i, err)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d commits won (%v)", round, winners, errs)
		}
		h.wantEpoch(t, gid, uint64(2+round), 2)
		if errs[0] == nil {
			adopt(t, ra, alice, bob)
		} else {
			adopt(t, rb, bob, alice)
		}
	}
}

// TestRefusals sends requests that must be refused to a group of alice
// (phone and laptop) and bob at epoch 3, and checks each answer's code,
// that the stored group, its pending proposals included, is unchanged, and
// that no member was delivered anything.
func TestRefusals(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	laptop := h.newTClient(t, "alice", "laptop", false)
	bob := h.newTClient(t, "bob", "phone", false)
	gid := []byte("refusals group")
	h.newGroup(t, gid, alice, bob)
	res := commit(t, alice.m, addProps(laptop), nil, nil)
	h.mustDo(t, "add_clients", commitBody(t, moh.AddClients, alice, alice.m, res))
	adopt(t, res, alice, bob)
	join(t, res, laptop)
	oldAlice := alice.m // epoch 2's member, for a stale commit later
	res = commit(t, alice.m, nil, nil, nil)
	h.mustDo(t, "update_client", commitBody(t, moh.UpdateClient, alice, alice.m, res))
	adopt(t, res, alice, bob, laptop)
	h.wantEpoch(t, gid, 3, 3)

	dave := h.newTClient(t, "dave", "phone", false)
	unbound := h.newTClient(t, "erin", "phone", true)
	aliceWatch := h.newTClient(t, "alice", "watch", false)
	mallory := h.newTClient(t, "mallory", "phone", false)
	remove := func(i uint32) *mls.Proposal { return &mls.Proposal{Type: mls.ProposalRemove, Removed: i} }
	a, b, l := alice.m.LeafIndex(), bob.m.LeafIndex(), laptop.m.LeafIndex()

	tampered := commitBody(t, moh.UpdateClient, alice, alice.m, commit(t, alice.m, nil, nil, nil))
	tampered[len(tampered)-1] ^= 1
	stale, err := SignRequest(alice.c.kp.CipherSuite, alice.c.signer,
		moh.RequestBody{Type: moh.UpdateClient, GroupUpdate: update(commit(t, alice.m, nil, nil, nil))},
		ClientSignature(a, time.Now().Add(-2*MaxClockSkew)))
	if err != nil {
		t.Fatal(err)
	}
	badGI := commit(t, alice.m, nil, nil, nil)
	badGI.GroupInfo.GroupInfo.Signature = bytes.Clone(badGI.GroupInfo.GroupInfo.Signature)
	badGI.GroupInfo.GroupInfo.Signature[0] ^= 1
	noWelcome := commit(t, alice.m, addProps(dave), nil, nil)
	noWelcome.Welcome.Welcome.Secrets = nil
	otherSuite := commit(t, alice.m, addProps(dave), nil, nil)
	otherSuite.Welcome.Welcome.CipherSuite = mls.P256AES128GCMSHA256P256
	wrongSender := commit(t, bob.m, nil, nil, nil)
	hugeGI := commit(t, alice.m, nil, nil, nil)
	resignGroupInfo(t, hugeGI, alice, func(gi *mls.GroupInfo) {
		gi.Extensions = append(gi.Extensions, mls.Extension{Type: 0xff00, Data: make([]byte, MaxGroupInfoSize)})
	})
	otherGroup := h.newTClient(t, "alice", "desk", false)
	_ = l
	oldMsg, err := oldAlice.Protect([]byte("late"), nil)
	if err != nil {
		t.Fatal(err)
	}
	extStranger := func() []byte {
		gi, err := alice.m.GroupInfo()
		if err != nil {
			t.Fatal(err)
		}
		ext, m, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: mallory.c.kp.LeafNode, Signer: mallory.c.signer})
		if err != nil {
			t.Fatal(err)
		}
		mgi, err := m.GroupInfo()
		if err != nil {
			t.Fatal(err)
		}
		return encode(t, &moh.DSRequest{Body: moh.RequestBody{Type: moh.ExternalJoin, GroupUpdate: moh.MLSGroupUpdate{
			Commit: *ext, PartialGroupInfo: moh.PartialGroupInfo{Extensions: mgi.Extensions, Signature: mgi.Signature}}}})
	}
	selfRemoveOther, err := bob.m.Propose(remove(a))
	if err != nil {
		t.Fatal(err)
	}

	// What the set-up delivered is taken: a refusal delivers nothing.
	members := []*tclient{alice, laptop, bob}
	for _, c := range members {
		h.queued(t, c)
	}
	for _, tc := range []struct {
		name string
		body []byte
		want moh.Code
	}{
		{"tampered client signature", tampered, moh.CodeBadSignature},
		{"stale timestamp", stale, moh.CodeStaleTimestamp},
		{"commit of a stale epoch", commitBody(t, moh.UpdateClient, alice, oldAlice, commit(t, oldAlice, nil, nil, nil)), moh.CodeStaleEpoch},
		{"leaf without a binding", commitBody(t, moh.AddUsers, alice, alice.m, commit(t, alice.m, addProps(unbound), nil, nil)), moh.CodeForbidden},
		{"add_users of a present user's client", commitBody(t, moh.AddUsers, alice, alice.m, commit(t, alice.m, addProps(aliceWatch), nil, nil)), moh.CodeForbidden},
		{"add_clients of a new user", commitBody(t, moh.AddClients, alice, alice.m, commit(t, alice.m, addProps(dave), nil, nil)), moh.CodeForbidden},
		{"add_users with a remove", commitBody(t, moh.AddUsers, alice, alice.m, commit(t, alice.m, append(addProps(dave), remove(b)), nil, nil)), moh.CodeForbidden},
		{"add without a Welcome for the new member", commitBody(t, moh.AddUsers, alice, alice.m, noWelcome), moh.CodeInvalidMLS},
		{"add with a Welcome of another cipher suite", commitBody(t, moh.AddUsers, alice, alice.m, otherSuite), moh.CodeInvalidMLS},
		{"remove_users leaving a client of the user", commitBody(t, moh.RemoveUsers, bob, bob.m, commit(t, bob.m, []*mls.Proposal{remove(l)}, nil, nil)), moh.CodeForbidden},
		{"remove_clients of another user", commitBody(t, moh.RemoveClients, alice, alice.m, commit(t, alice.m, []*mls.Proposal{remove(b)}, nil, nil)), moh.CodeForbidden},
		{"update_client with a proposal", commitBody(t, moh.UpdateClient, alice, alice.m, commit(t, alice.m, []*mls.Proposal{remove(b)}, nil, nil)), moh.CodeForbidden},
		{"delete_group leaving members", commitBody(t, moh.DeleteGroup, alice, alice.m, commit(t, alice.m, []*mls.Proposal{remove(b)}, nil, nil)), moh.CodeForbidden},
		{"re_initialize_group without ReInit", commitBody(t, moh.ReInitializeGroup, alice, alice.m, commit(t, alice.m, nil, nil, nil)), moh.CodeForbidden},
		{"bad partial GroupInfo signature", commitBody(t, moh.UpdateClient, alice, alice.m, badGI), moh.CodeInvalidMLS},
		{"GroupInfo over MaxGroupInfoSize", commitBody(t, moh.UpdateClient, alice, alice.m, hugeGI), moh.CodeTooLarge},
		{"external join of a new user", extStranger(), moh.CodeForbidden},
		{"self-remove of another member", signed(t, bob, b, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *selfRemoveOther}), moh.CodeForbidden},
		{"create_group of a group id in use", createBody(t, otherGroup, gid), moh.CodeGroupExists},
		{"send_message of an old epoch", signed(t, alice, a, moh.RequestBody{Type: moh.SendMessage, Message: *oldMsg}), moh.CodeStaleEpoch},
		{"welcome_info without a known joiner", func() []byte {
			b, err := SignRequest(alice.c.kp.CipherSuite, dave.c.signer, moh.RequestBody{Type: moh.WelcomeInfo,
				WelcomeInfo: moh.WelcomeInfoRequest{GroupID: gid, Epoch: 1}}, KeyPackageSignature(dave.kpRef, time.Now()))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}(), moh.CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snapshot(t, gid)
			_, err := h.do(t, tc.body)
			t.Log(err)
			if codeOf(err) != tc.want {
				t.Fatalf("answer %v, want %s", err, tc.want)
			}
			if !h.snapshot(t, gid).equal(before) {
				t.Fatal("the refusal changed the stored group")
			}
			for _, c := range members {
				if q := h.queued(t, c); len(q) > 0 {
					t.Fatalf("the refusal delivered %d messages to %s", len(q), c.uri)
				}
			}
		})
	}

	t.Run("commit sender is not the signer", func(t *testing.T) {
		before := h.snapshot(t, gid)
		body := moh.RequestBody{Type: moh.UpdateClient, GroupUpdate: update(wrongSender)}
		if _, err := h.do(t, signed(t, alice, a, body)); codeOf(err) != moh.CodeForbidden {
			t.Fatalf("answer %v, want forbidden", err)
		}
		if !h.snapshot(t, gid).equal(before) {
			t.Fatal("the refusal changed the stored group")
		}
	})
	t.Run("create_group by another provider's client", func(t *testing.T) {
		svc := *h.svc
		svc.Providers = []string{"b.example"}
		g := []byte("foreign group")
		req, err := svc.Authenticate(t.Context(), createBody(t, h.newTClient(t, "alice", "foreign", false), g))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Handle(t.Context(), req); codeOf(err) != moh.CodeForbidden {
			t.Fatalf("answer %v, want forbidden", err)
		}
		if h.snapshot(t, g).exists {
			t.Fatal("the refused group was stored")
		}
	})
	t.Run("create_group with an unbound leaf", func(t *testing.T) {
		g := []byte("unbound group")
		if _, err := h.do(t, createBody(t, unbound, g)); codeOf(err) != moh.CodeForbidden {
			t.Fatalf("answer %v, want forbidden", err)
		}
		if h.snapshot(t, g).exists {
			t.Fatal("the refused group was stored")
		}
	})
	// Last, as it leaves a proposal pending: an external join while a
	// self-remove is pending is refused, so that the self-remove is not
	// dropped with the epoch.
	t.Run("external join while a self-remove is pending", func(t *testing.T) {
		prop, err := bob.m.Propose(remove(b))
		if err != nil {
			t.Fatal(err)
		}
		h.mustDo(t, "self_remove_client", signed(t, bob, b, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *prop}))
		gi, err := alice.m.GroupInfo()
		if err != nil {
			t.Fatal(err)
		}
		ext, m, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: aliceWatch.c.kp.LeafNode, Signer: aliceWatch.c.signer})
		if err != nil {
			t.Fatal(err)
		}
		mgi, err := m.GroupInfo()
		if err != nil {
			t.Fatal(err)
		}
		before := h.snapshot(t, gid)
		if len(before.pending) != 1 {
			t.Fatalf("%d pending, want the self-remove", len(before.pending))
		}
		_, err = h.do(t, encode(t, &moh.DSRequest{Body: moh.RequestBody{Type: moh.ExternalJoin, GroupUpdate: moh.MLSGroupUpdate{
			Commit: *ext, PartialGroupInfo: moh.PartialGroupInfo{Extensions: mgi.Extensions, Signature: mgi.Signature}}}}))
		if codeOf(err) != moh.CodeCommitConflict {
			t.Fatalf("answer %v, want commit_conflict", err)
		}
		if !h.snapshot(t, gid).equal(before) {
			t.Fatal("the refusal changed the stored group")
		}
	})
	t.Run("no binding checker", func(t *testing.T) {
		svc := *h.svc
		svc.Bindings = nil
		req, err := svc.Authenticate(t.Context(), createBody(t, h.newTClient(t, "alice", "other", false), []byte("no checker")))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Handle(t.Context(), req); codeOf(err) != moh.CodeUnknownKey {
			t.Fatalf("answer %v, want unknown_key", err)
		}
	})
}

// TestSelfRemoveTwice checks that one member cannot freeze a group with
// two self-removes of its leaf under different ProposalRefs (the same
// Remove with other authenticated_data): no commit may remove a leaf twice
// (RFC 9420 §12.2), and every pending proposal must be covered. The
// second is answered ok and keeps and delivers nothing; and when two
// racing ones were both kept, a commit that covers one of them covers the
// leaf's removal.
func TestSelfRemoveTwice(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	carol := h.newTClient(t, "carol", "phone", false)
	gid := []byte("self-remove twice group")
	h.newGroup(t, gid, alice, bob, carol)
	b := bob.m.LeafIndex()
	remove := &mls.Proposal{Type: mls.ProposalRemove, Removed: b}
	first, err := bob.m.Propose(remove)
	if err != nil {
		t.Fatal(err)
	}
	second, err := bob.m.ProposeWithData(remove, []byte("once more"))
	if err != nil {
		t.Fatal(err)
	}
	ac1, ref1, err := alice.m.VerifyProposal(first)
	if err != nil {
		t.Fatal(err)
	}
	_, ref2, err := alice.m.VerifyProposal(second)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ref1, ref2) {
		t.Fatal("the two self-removes have one ProposalRef")
	}
	for _, c := range []*tclient{alice, carol} {
		h.queued(t, c)
	}
	h.mustDo(t, "self_remove_client", signed(t, bob, b, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *first}))
	for _, c := range []*tclient{alice, carol} {
		if n := len(h.queued(t, c)); n != 1 {
			t.Fatalf("%s got %d messages for the first self-remove, want 1", c.uri, n)
		}
	}
	h.mustDo(t, "self_remove_client again", signed(t, bob, b, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *second}))
	if p := h.snapshot(t, gid).pending; len(p) != 1 || !bytes.Equal(p[0].Ref, ref1) {
		t.Fatalf("%d proposals pending after the second self-remove, want the first alone", len(p))
	}
	for _, c := range []*tclient{alice, carol} {
		if n := len(h.queued(t, c)); n != 0 {
			t.Fatalf("%s got %d messages for the second self-remove, want none", c.uri, n)
		}
	}

	// Two racing self-removes may both be kept: a commit covering either
	// one is taken.
	enc, err := wire.Marshal(second)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.st.AddProposal(t.Context(), gid, alice.m.State().Epoch(), store.PendingProposal{Ref: ref2, Message: enc}); err != nil {
		t.Fatal(err)
	}
	if p := h.snapshot(t, gid).pending; len(p) != 2 {
		t.Fatalf("%d proposals pending, want both", len(p))
	}
	byRef := func([]byte) (*mls.AuthenticatedContent, error) { return ac1, nil }
	res := commit(t, alice.m, nil, [][]byte{ref1}, byRef)
	h.mustDo(t, "update_client covering one of the two", commitBody(t, moh.UpdateClient, alice, alice.m, res))
	if p := h.snapshot(t, gid).pending; len(p) != 0 {
		t.Fatalf("%d proposals pending after the commit", len(p))
	}
	h.wantEpoch(t, gid, 2, 2)
}

// selfRemovePending makes group gid of alice, bob and carol, and bob's
// Remove proposal of his own leaf b (self), not yet sent to the DS.
func (h *harness) selfRemovePending(t *testing.T, gid string) (alice, bob *tclient, id []byte, b uint32, self *mls.MLSMessage) {
	t.Helper()
	alice = h.newTClient(t, "alice", "phone", false)
	bob = h.newTClient(t, "bob", "phone", false)
	carol := h.newTClient(t, "carol", "phone", false)
	id = []byte(gid)
	h.newGroup(t, id, alice, bob, carol)
	b = bob.m.LeafIndex()
	self, err := bob.m.Propose(&mls.Proposal{Type: mls.ProposalRemove, Removed: b})
	if err != nil {
		t.Fatal(err)
	}
	return alice, bob, id, b, self
}

// newGroup creates the group gid with creator and adds joiners, clients
// of this provider, in one add_users commit that every member follows.
func (h *harness) newGroup(t *testing.T, gid []byte, creator *tclient, joiners ...*tclient) {
	t.Helper()
	h.mustDo(t, "create_group", createBody(t, creator, gid))
	res := commit(t, creator.m, addProps(joiners...), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, creator, creator.m, res))
	adopt(t, res, creator)
	join(t, res, joiners...)
}

// TestSelfRemoveCovered checks which commits cover a pending self-remove
// of leaf L (step 4 of docs/protocol.md §5.4.1): one that references it,
// and one that removes L by value (RFC 9420 §12.4 lets the committer pick
// one of several proposals for a leaf); one that does neither is refused.
func TestSelfRemoveCovered(t *testing.T) {
	cases := []struct {
		name   string
		typ    moh.RequestType
		byRef  bool
		remove bool     // a by-value Remove of the self-removing leaf
		want   moh.Code // 0: accepted
	}{
		{"by reference", moh.UpdateClient, true, false, 0},
		{"by a Remove by value in remove_users", moh.RemoveUsers, false, true, 0},
		{"not covered", moh.UpdateClient, false, false, moh.CodeForbidden},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			alice, bob, gid, b, self := h.selfRemovePending(t, "self-remove covered "+c.name)
			ac, ref, err := alice.m.VerifyProposal(self)
			if err != nil {
				t.Fatal(err)
			}
			h.mustDo(t, "self_remove_client", signed(t, bob, b, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *self}))
			var props []*mls.Proposal
			var refs [][]byte
			if c.remove {
				props = append(props, &mls.Proposal{Type: mls.ProposalRemove, Removed: b})
			}
			if c.byRef {
				refs = append(refs, ref)
			}
			res := commit(t, alice.m, props, refs, func([]byte) (*mls.AuthenticatedContent, error) { return ac, nil })
			_, err = h.do(t, commitBody(t, c.typ, alice, alice.m, res))
			wantCode(t, c.name, err, c.want)
			if c.want != 0 {
				h.wantEpoch(t, gid, 1, 3)
				return
			}
			if p := h.snapshot(t, gid).pending; len(p) != 0 {
				t.Fatalf("%d proposals pending after the commit", len(p))
			}
			h.wantEpoch(t, gid, 2, 2)
		})
	}
}
