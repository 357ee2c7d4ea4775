package ds

import (
	"context"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// remoteClient makes a client of another provider, whose leaf carries no
// binding (the delivery tests run with the binding check off, so that no
// peer's keys need fetching).
func remoteClient(t *testing.T, provider, user string) *tclient {
	t.Helper()
	uri := moh.ClientURI(provider, user, "phone")
	c := newKeyPackageClient(t, mls.X25519AES128GCMSHA256Ed25519, user, uri, nil)
	ref, err := c.kp.Ref()
	if err != nil {
		t.Fatal(err)
	}
	return &tclient{uri: uri, c: c, kpRef: ref, initKey: c.initKey}
}

// outbox returns destination's pending messages after the cursor *after,
// and moves the cursor past them.
func (h *harness) outbox(t *testing.T, destination string, after *uint64) []store.OutboxEntry {
	t.Helper()
	got, err := h.st.OutboxPending(t.Context(), destination, *after, store.MaxOutboxList)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) > 0 {
		*after = got[len(got)-1].ID
	}
	return got
}

// wantOne checks that msgs is exactly one message, sent by sender, and
// returns it decoded.
func wantOne(t *testing.T, what string, msgs []store.QueuedMessage, sender string) *mls.MLSMessage {
	t.Helper()
	if len(msgs) != 1 || msgs[0].Sender != sender {
		t.Fatalf("%s: got %d messages %+v, want one from %s", what, len(msgs), msgs, sender)
	}
	return mustDecode(t, msgs[0].Message)
}

// wantOutboxOne checks that entries is exactly one message for the given
// recipients, sent by the group's hub, and returns it decoded.
func wantOutboxOne(t *testing.T, what string, entries []store.OutboxEntry, recipients ...*tclient) *mls.MLSMessage {
	t.Helper()
	var want []string
	for _, c := range recipients {
		want = append(want, c.uri)
	}
	if len(entries) != 1 || !slices.Equal(entries[0].Recipients, want) || entries[0].Sender != testProvider {
		t.Fatalf("%s: outbox %+v, want one message for %s", what, entries, strings.Join(want, ", "))
	}
	return mustDecode(t, entries[0].Message)
}

// joinFrom has c join from a delivered Welcome.
func joinFrom(t *testing.T, c *tclient, welcome *mls.MLSMessage) {
	t.Helper()
	m, err := mls.JoinFromWelcome(welcome.Welcome, mls.WelcomeOptions{KeyPackage: c.c.kp,
		InitKey: c.initKey, LeafKey: c.c.leafKey, Signer: c.c.signer})
	if err != nil {
		t.Fatalf("%s joins from the delivered Welcome: %v", c.uri, err)
	}
	c.m = m
}

// follow has c process a delivered commit.
func follow(t *testing.T, c *tclient, commit *mls.MLSMessage) {
	t.Helper()
	m, err := c.m.ApplyCommit(commit, nil)
	if err != nil {
		t.Fatalf("%s follows the delivered commit: %v", c.uri, err)
	}
	c.m = m
}

// read has c decrypt a delivered application message.
func read(t *testing.T, c *tclient, msg *mls.MLSMessage, want string) {
	t.Helper()
	if _, plain, err := c.m.Unprotect(msg); err != nil || string(plain) != want {
		t.Fatalf("%s reads %q, %v; want %q", c.uri, plain, err, want)
	}
}

// TestDelivery runs a group of two local clients (alice, bob) and two
// clients of c.example (carol, dave) in which every client learns of every
// step only from what the Delivery Service delivered: local clients from
// their queues, remote ones from c.example's outbox. Each commit reaches
// every member of its base epoch but the committer (a removed member
// included), each Welcome exactly its joiners, each message and each
// self-remove proposal every member but its sender, one outbox message
// per destination and in the order of acceptance.
func TestDelivery(t *testing.T) {
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	core, logs := observer.New(zapcore.WarnLevel)
	h.svc.Logger = zap.New(core)
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	carol := remoteClient(t, "c.example", "carol")
	dave := remoteClient(t, "c.example", "dave")
	gid := []byte("delivery group")
	var cursor uint64 // of c.example's outbox
	var woken []string
	h.svc.Outbound = func(d string) { woken = append(woken, d) }

	h.mustDo(t, "create_group", createBody(t, alice, gid))
	res := commit(t, alice.m, addProps(bob, carol, dave), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, alice, alice.m, res))
	alice.m = res.Next
	if q := h.queued(t, alice); len(q) != 0 {
		t.Fatalf("the committer was delivered %+v", q)
	}
	joinFrom(t, bob, wantOne(t, "bob's Welcome", h.queued(t, bob), alice.uri))
	w := wantOutboxOne(t, "the Welcome for c.example", h.outbox(t, "c.example", &cursor), carol, dave)
	joinFrom(t, carol, w)
	joinFrom(t, dave, w)
	if !slices.Equal(woken, []string{"c.example"}) {
		t.Fatalf("the sender was woken for %q, want c.example once", woken)
	}

	// bob updates: alice hears of it from her queue, carol and dave from
	// one outbox message.
	res = commit(t, bob.m, nil, nil, nil)
	h.mustDo(t, "update_client", commitBody(t, moh.UpdateClient, bob, bob.m, res))
	bob.m = res.Next
	follow(t, alice, wantOne(t, "alice's commit", h.queued(t, alice), bob.uri))
	c := wantOutboxOne(t, "the commit for c.example", h.outbox(t, "c.example", &cursor), carol, dave)
	follow(t, carol, c)
	follow(t, dave, c)
	if q := h.queued(t, bob); len(q) != 0 {
		t.Fatalf("the committer was delivered %+v", q)
	}

	// carol sends: alice and bob read it from their queues, dave from the
	// outbox message that names him alone.
	msg, err := carol.m.Protect([]byte("hello from carol"), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "send_message", signed(t, carol, carol.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))
	read(t, alice, wantOne(t, "alice's message", h.queued(t, alice), carol.uri), "hello from carol")
	read(t, bob, wantOne(t, "bob's message", h.queued(t, bob), carol.uri), "hello from carol")
	read(t, dave, wantOutboxOne(t, "the message for c.example", h.outbox(t, "c.example", &cursor), dave), "hello from carol")

	// alice removes carol: carol hears of her removal with the others.
	res = commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: carol.m.LeafIndex()}}, nil, nil)
	h.mustDo(t, "remove_users", commitBody(t, moh.RemoveUsers, alice, alice.m, res))
	alice.m = res.Next
	follow(t, bob, wantOne(t, "bob's commit", h.queued(t, bob), alice.uri))
	c = wantOutboxOne(t, "the remove for c.example", h.outbox(t, "c.example", &cursor), carol, dave)
	follow(t, dave, c)
	if _, err := carol.m.ApplyCommit(c, nil); err == nil {
		// A removed member cannot enter the new epoch; it learns that
		// it was removed by processing the commit.
		t.Fatal("carol entered the epoch that removed her")
	}

	// dave leaves: his self-remove proposal reaches alice and bob, and
	// alice covers it, by reference, from what she was delivered.
	prop, err := dave.m.Propose(&mls.Proposal{Type: mls.ProposalRemove, Removed: dave.m.LeafIndex()})
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "self_remove_client", signed(t, dave, dave.m.LeafIndex(), moh.RequestBody{Type: moh.SelfRemoveClient, Message: *prop}))
	ac, ref, err := alice.m.VerifyProposal(wantOne(t, "alice's proposal", h.queued(t, alice), dave.uri))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := bob.m.VerifyProposal(wantOne(t, "bob's proposal", h.queued(t, bob), dave.uri)); err != nil {
		t.Fatal(err)
	}
	if got := h.outbox(t, "c.example", &cursor); len(got) != 0 {
		t.Fatalf("the proposal went to c.example, whose only member sent it: %+v", got)
	}
	byRef := func([]byte) (*mls.AuthenticatedContent, error) { return ac, nil }
	res = commit(t, alice.m, nil, [][]byte{ref}, byRef)
	h.mustDo(t, "update_client covering the self-remove", commitBody(t, moh.UpdateClient, alice, alice.m, res))
	alice.m = res.Next
	m, err := bob.m.ApplyCommit(wantOne(t, "bob's commit", h.queued(t, bob), alice.uri), byRef)
	if err != nil {
		t.Fatal(err)
	}
	bob.m = m
	wantOutboxOne(t, "the commit removing dave", h.outbox(t, "c.example", &cursor), dave)

	// A group's messages go to its log, which queue limits do not bound
	// (it is bounded by expiry): a member whose personal queue holds at
	// most one message still gets both, and no queue is full.
	h.svc.QueueLimits = store.QueueLimits{MaxMessages: 1}
	for _, text := range []string{"one", "two"} {
		msg, err := alice.m.Protect([]byte(text), nil)
		if err != nil {
			t.Fatal(err)
		}
		h.mustDo(t, "send_message", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))
	}
	if n := logs.FilterMessageSnippet("queue is full").Len(); n != 0 {
		t.Fatalf("%d full-queue warnings for group messages", n)
	}
	got := h.queued(t, bob)
	if len(got) != 2 {
		t.Fatalf("bob got %d messages, want both", len(got))
	}
	for i, text := range []string{"one", "two"} {
		if got[i].Sender != alice.uri {
			t.Fatalf("bob's message %d is from %s, want %s", i, got[i].Sender, alice.uri)
		}
		read(t, bob, mustDecode(t, got[i].Message), text)
	}
	if got := h.outbox(t, "c.example", &cursor); len(got) != 0 {
		t.Fatalf("c.example, with no member left, got %d messages", len(got))
	}
}

// TestGroupLogMembership checks the local members' side of the group log:
// a local client added by a commit gets its Welcome and the group's
// messages after the commit, not the commit; a local client removed gets
// the commit that removes it and nothing after; the committer and a
// message's sender get neither their commit nor their message.
func TestGroupLogMembership(t *testing.T) {
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	carl := h.newTClient(t, "carl", "phone", false)
	dan := h.newTClient(t, "dan", "phone", false)
	gid := []byte("membership group")
	send := func(from *tclient, text string) {
		t.Helper()
		msg, err := from.m.Protect([]byte(text), nil)
		if err != nil {
			t.Fatal(err)
		}
		h.mustDo(t, "send_message", signed(t, from, from.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))
	}

	h.mustDo(t, "create_group", createBody(t, alice, gid))
	res := commit(t, alice.m, addProps(bob, carl), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, alice, alice.m, res))
	alice.m = res.Next
	joinFrom(t, bob, wantOne(t, "bob's Welcome", h.queued(t, bob), alice.uri))
	joinFrom(t, carl, wantOne(t, "carl's Welcome", h.queued(t, carl), alice.uri))
	send(alice, "before")
	read(t, bob, wantOne(t, "bob's first message", h.queued(t, bob), alice.uri), "before")
	read(t, carl, wantOne(t, "carl's first message", h.queued(t, carl), alice.uri), "before")

	// alice removes bob, then adds dan.
	res = commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: bob.m.LeafIndex()}}, nil, nil)
	h.mustDo(t, "remove_users", commitBody(t, moh.RemoveUsers, alice, alice.m, res))
	alice.m = res.Next
	if _, err := bob.m.ApplyCommit(wantOne(t, "bob's removal", h.queued(t, bob), alice.uri), nil); err == nil {
		t.Fatal("bob entered the epoch that removed him")
	}
	follow(t, carl, wantOne(t, "carl's removal commit", h.queued(t, carl), alice.uri))
	res = commit(t, alice.m, addProps(dan), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, alice, alice.m, res))
	alice.m = res.Next
	follow(t, carl, wantOne(t, "carl's add commit", h.queued(t, carl), alice.uri))
	joinFrom(t, dan, wantOne(t, "dan's Welcome alone", h.queued(t, dan), alice.uri))

	send(carl, "after")
	read(t, alice, wantOne(t, "alice's message", h.queued(t, alice), carl.uri), "after")
	read(t, dan, wantOne(t, "dan's message", h.queued(t, dan), carl.uri), "after")
	for _, c := range []*tclient{bob, carl} {
		if q := h.queued(t, c); len(q) != 0 {
			t.Fatalf("%s got %d messages after its removal or its own message", c.uri, len(q))
		}
	}
}

// unknownMembers is a store whose groups' local members are unknown, as
// for a group created before the store recorded them: a post without
// GroupPost.Members is refused once per group with
// store.ErrGroupMembersUnknown, and the members it was given are kept.
type unknownMembers struct {
	store.Store
	seeded map[string][]string
}

func (u *unknownMembers) refuse(f store.Fanout) error {
	p := f.Group
	if p == nil {
		return nil
	}
	if _, ok := u.seeded[string(p.GroupID)]; ok {
		return nil
	}
	if p.Members == nil {
		return store.ErrGroupMembersUnknown
	}
	u.seeded[string(p.GroupID)] = p.Members
	return nil
}

func (u *unknownMembers) Deliver(ctx context.Context, gid []byte, epoch uint64, f store.Fanout) (store.Delivered, error) {
	if err := u.refuse(f); err != nil {
		return store.Delivered{}, err
	}
	return u.Store.Deliver(ctx, gid, epoch, f)
}

func (u *unknownMembers) CommitEpoch(ctx context.Context, c store.EpochCommit) (store.Delivered, error) {
	if err := u.refuse(c.Fanout); err != nil {
		return store.Delivered{}, err
	}
	return u.Store.CommitEpoch(ctx, c)
}

// TestGroupMembersSeeded checks that the DS completes a post the store
// refuses for want of the group's local members (a group created before
// the store recorded them) with the local members of the epoch it is
// delivered in, and writes it again.
func TestGroupMembersSeeded(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(t *testing.T, h *harness, alice, bob *tclient)
	}{
		{"send_message", func(t *testing.T, h *harness, alice, bob *tclient) {
			msg, err := alice.m.Protect([]byte("hello"), nil)
			if err != nil {
				t.Fatal(err)
			}
			h.mustDo(t, "send_message", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))
			read(t, bob, wantOne(t, "bob's message", h.queued(t, bob), alice.uri), "hello")
		}},
		{"update_client", func(t *testing.T, h *harness, alice, bob *tclient) {
			res := commit(t, alice.m, nil, nil, nil)
			h.mustDo(t, "update_client", commitBody(t, moh.UpdateClient, alice, alice.m, res))
			alice.m = res.Next
			follow(t, bob, wantOne(t, "bob's commit", h.queued(t, bob), alice.uri))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.svc.Bindings = &binding.Checker{Unchecked: true}
			alice := h.newTClient(t, "alice", "phone", false)
			bob := h.newTClient(t, "bob", "phone", false)
			gid := []byte("old group")
			h.mustDo(t, "create_group", createBody(t, alice, gid))
			res := commit(t, alice.m, addProps(bob), nil, nil)
			h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, alice, alice.m, res))
			alice.m = res.Next
			joinFrom(t, bob, wantOne(t, "bob's Welcome", h.queued(t, bob), alice.uri))
			u := &unknownMembers{Store: h.st, seeded: map[string][]string{}}
			h.svc.Store = u
			tc.op(t, h, alice, bob)
			if got := u.seeded[string(gid)]; !slices.Equal(got, []string{alice.uri, bob.uri}) {
				t.Fatalf("members given to the store %q, want alice and bob", got)
			}
		})
	}
}
