package ds

import (
	"fmt"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestDeadPeerPastItsBound runs a group whose members are two local
// clients, a client of dead.example, a peer that never answers, and one of
// live.example, whose outbox is drained as it fills. Once dead.example's
// backlog is at its bound, the group goes on: every message and commit is
// accepted, reaches the local member and live.example, and what
// dead.example would have got is dropped and counted, its backlog staying
// at the bound.
func TestDeadPeerPastItsBound(t *testing.T) {
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	h.st.SetOutboxLimits(store.OutboxLimits{MaxMessages: 3})
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	dan := remoteClient(t, "dead.example", "dan")
	lee := remoteClient(t, "live.example", "lee")
	var cursor uint64 // of live.example's outbox
	drainLive := func(t *testing.T, what string) {
		t.Helper()
		got := h.outbox(t, "live.example", &cursor)
		if len(got) != 1 {
			t.Fatalf("%s: live.example got %d messages, want 1", what, len(got))
		}
		if _, err := h.st.OutboxDelivered(t.Context(), "live.example", []uint64{got[0].ID}); err != nil {
			t.Fatal(err)
		}
	}

	woken := map[string]int{}
	h.svc.Outbound = func(d string) { woken[d]++ }
	h.mustDo(t, "create_group", createBody(t, alice, []byte("dead peer group")))
	res := commit(t, alice.m, addProps(bob, dan, lee), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, alice, alice.m, res))
	alice.m = res.Next
	joinFrom(t, bob, wantOne(t, "bob's Welcome", h.queued(t, bob), alice.uri))
	drainLive(t, "the Welcome")

	// dead.example holds its Welcome and fills to its bound of 3; then
	// its copies are dropped, and nothing else changes.
	const sends = 6
	for i := range sends {
		msg, err := alice.m.Protect(fmt.Appendf(nil, "message %d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		h.mustDo(t, "send_message", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))
		read(t, bob, wantOne(t, "bob's message", h.queued(t, bob), alice.uri), fmt.Sprintf("message %d", i))
		drainLive(t, "a message")
	}
	res = commit(t, alice.m, nil, nil, nil)
	h.mustDo(t, "update_client past dead.example's bound", commitBody(t, moh.UpdateClient, alice, alice.m, res))
	alice.m = res.Next
	follow(t, bob, wantOne(t, "bob's commit", h.queued(t, bob), alice.uri))
	drainLive(t, "the commit")

	b, err := h.st.OutboxDestinationBacklog(t.Context(), "dead.example")
	if err != nil {
		t.Fatal(err)
	}
	// The Welcome and two messages fit; four messages and the commit not.
	if b.Messages != 3 || b.Dropped.BacklogFull != sends-2+1 {
		t.Fatalf("dead.example's backlog %+v, want 3 messages and %d dropped", b, sends-2+1)
	}
	// Its sender was woken for what was written, not for what was
	// dropped; the live peer for everything.
	if woken["dead.example"] != 3 || woken["live.example"] != 1+sends+1 {
		t.Fatalf("wake-ups %v, want dead.example 3 (the Welcome and two messages) and live.example %d", woken, 1+sends+1)
	}
}

// TestBackendPastItsBound checks a peer's deliver_message for the legacy
// backend whose copy would pass @backend's bound: it is refused with
// backend_unavailable and nothing is recorded, so the peer's retry, once
// the backend took what waited, goes through, once.
func TestBackendPastItsBound(t *testing.T) {
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	h.svc.Hubs = new(HubCache)
	h.svc.DeliverToBackend = true
	h.st.SetOutboxLimits(store.OutboxLimits{MaxMessages: 1})
	alice := h.newTClient(t, "alice", "phone", false)
	erin := remoteClient(t, "e.example", "erin")
	pgid := []byte("a group of e.example")
	erin.m = erin.c.create(t, pgid)
	res := commit(t, erin.m, addProps(alice), nil, nil)
	erin.m = res.Next
	if _, err := h.deliver(t, "e.example", queueingPayload(t, pgid, res.Welcome, alice.uri)); err != nil {
		t.Fatalf("the Welcome, within the bound: %v", err)
	}
	app, err := erin.m.Protect([]byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	payload := queueingPayload(t, pgid, app, alice.uri)
	if _, err := h.deliver(t, "e.example", payload); moh.DSErrorOf(err).Code != moh.CodeBackendUnavailable {
		t.Fatalf("a message past @backend's bound: %v, want backend_unavailable", err)
	}
	var cursor uint64
	waiting := h.outbox(t, store.BackendDestination, &cursor)
	if len(waiting) != 1 {
		t.Fatalf("@backend holds %d messages, want the Welcome alone", len(waiting))
	}
	if _, err := h.st.OutboxDelivered(t.Context(), store.BackendDestination, []uint64{waiting[0].ID}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the peer's retry, then a duplicate of it
		if _, err := h.deliver(t, "e.example", payload); err != nil {
			t.Fatalf("delivery %d once there is room: %v", i, err)
		}
	}
	if got := h.outbox(t, store.BackendDestination, &cursor); len(got) != 1 || string(got[0].Message) != string(mustMarshal(t, app)) {
		t.Fatalf("@backend holds %d messages after the retry, want the message once", len(got))
	}
	b, err := h.st.OutboxDestinationBacklog(t.Context(), store.BackendDestination)
	if err != nil || b.Dropped != (store.Dropped{}) {
		t.Fatalf("@backend's drops %+v, %v: a refused delivery is not a drop", b, err)
	}
}
