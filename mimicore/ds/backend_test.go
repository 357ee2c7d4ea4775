package ds

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// wantBackend checks that entries are, in order, one backend message each
// for the given recipients, sent by sender, and returns them decoded.
func wantBackend(t *testing.T, what string, entries []store.OutboxEntry, sender string, recipients ...[]*tclient) []*mls.MLSMessage {
	t.Helper()
	if len(entries) != len(recipients) {
		t.Fatalf("%s: %d backend messages %+v, want %d", what, len(entries), entries, len(recipients))
	}
	var out []*mls.MLSMessage
	for i, e := range entries {
		var want []string
		for _, c := range recipients[i] {
			want = append(want, c.uri)
		}
		if e.Destination != store.BackendDestination || e.Sender != sender || !slices.Equal(e.Recipients, want) {
			t.Fatalf("%s: backend message %d is %+v, want one from %s for %q", what, i, e, sender, want)
		}
		out = append(out, mustDecode(t, e.Message))
	}
	return out
}

// TestDeliverToBackend runs both sources of the legacy backend target
// (docs/protocol.md §11) on a real store: a group hosted here whose local
// members' copies go to the backend's outbox (with its remote members'
// copies still to their provider's), and a peer's deliver_message, whose
// message goes there too, once however often the peer retries. Nothing
// reaches a local queue.
func TestDeliverToBackend(t *testing.T) {
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	h.svc.Hubs = new(HubCache)
	h.svc.DeliverToBackend = true
	var woken []string
	h.svc.Outbound = func(d string) { woken = append(woken, d) }
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	dave := h.newTClient(t, "dave", "phone", false)
	carol := remoteClient(t, "c.example", "carol")
	var backend, remote uint64 // outbox cursors

	// A group hosted here: alice adds bob, dave and carol.
	gid := []byte("a group with a backend")
	h.mustDo(t, "create_group", createBody(t, alice, gid))
	res := commit(t, alice.m, addProps(bob, dave, carol), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, alice, alice.m, res))
	alice.m = res.Next
	w := wantBackend(t, "the Welcome", h.outbox(t, store.BackendDestination, &backend), testProvider, []*tclient{bob, dave})
	joinFrom(t, bob, w[0])
	joinFrom(t, dave, w[0])
	joinFrom(t, carol, wantOutboxOne(t, "carol's Welcome", h.outbox(t, "c.example", &remote), carol))
	if !slices.Contains(woken, store.BackendDestination) {
		t.Fatalf("woken %q, want the backend's worker too", woken)
	}

	// bob updates: alice and dave get the commit through the backend,
	// bob does not; carol through c.example.
	res = commit(t, bob.m, nil, nil, nil)
	h.mustDo(t, "update_client", commitBody(t, moh.UpdateClient, bob, bob.m, res))
	bob.m = res.Next
	c := wantBackend(t, "bob's commit", h.outbox(t, store.BackendDestination, &backend), testProvider, []*tclient{alice, dave})
	follow(t, alice, c[0])
	follow(t, dave, c[0])
	follow(t, carol, wantOutboxOne(t, "carol's commit", h.outbox(t, "c.example", &remote), carol))

	// carol sends: every local member gets it through the backend.
	msg, err := carol.m.Protect([]byte("hello from carol"), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "send_message", signed(t, carol, carol.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))
	m := wantBackend(t, "carol's message", h.outbox(t, store.BackendDestination, &backend), testProvider, []*tclient{alice, bob, dave})
	read(t, dave, m[0], "hello from carol")

	// alice removes dave: he learns it with the others; then alice's
	// message reaches bob alone.
	res = commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: dave.m.LeafIndex()}}, nil, nil)
	h.mustDo(t, "remove_users", commitBody(t, moh.RemoveUsers, alice, alice.m, res))
	alice.m = res.Next
	follow(t, bob, wantBackend(t, "the remove", h.outbox(t, store.BackendDestination, &backend), testProvider, []*tclient{bob, dave})[0])
	h.outbox(t, "c.example", &remote)
	msg, err = alice.m.Protect([]byte("dave is gone"), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "send_message", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg}))
	read(t, bob, wantBackend(t, "alice's message", h.outbox(t, store.BackendDestination, &backend), testProvider, []*tclient{bob})[0], "dave is gone")

	// A peer's group: its Welcome and message go to the backend, once.
	erin := remoteClient(t, "e.example", "erin")
	pgid := []byte("a group of e.example")
	erin.m = erin.c.create(t, pgid)
	res = commit(t, erin.m, addProps(alice), nil, nil)
	erin.m = res.Next
	welcome := queueingPayload(t, pgid, res.Welcome, alice.uri, carol.uri)
	for range 2 { // the second is a retry under a new request id
		resp, err := h.deliver(t, "e.example", welcome)
		if err != nil || resp.Queueing.Status != moh.QueueingInvalidClientQueueInfo || len(resp.Queueing.Unknown) != 1 {
			t.Fatalf("answer %+v, %v; want queueing with carol unknown", resp, err)
		}
	}
	peerAlice := &tclient{uri: alice.uri, c: alice.c, initKey: alice.initKey}
	joinFrom(t, peerAlice, wantBackend(t, "the peer's Welcome", h.outbox(t, store.BackendDestination, &backend), "e.example", []*tclient{alice})[0])
	app, err := erin.m.Protect([]byte("hello from e.example"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.deliver(t, "e.example", queueingPayload(t, pgid, app, alice.uri)); err != nil {
		t.Fatal(err)
	}
	read(t, peerAlice, wantBackend(t, "the peer's message", h.outbox(t, store.BackendDestination, &backend), "e.example", []*tclient{alice})[0], "hello from e.example")

	for _, cl := range []*tclient{alice, bob, dave} {
		if q := h.queued(t, cl); len(q) != 0 {
			t.Fatalf("%s's queue holds %d messages with the backend target", cl.uri, len(q))
		}
	}
}

// TestConnectionRequestBackendFull runs a connection_request, whose
// answer is recorded in its own write (unlike deliver_message's), through
// provider.Inbound on a real store while the legacy backend's backlog is
// at its bound (docs/protocol.md §11): it is refused 503
// backend_unavailable with the cause kept for the log (not an empty
// refusal), nothing is recorded, and the same bytes are accepted once the
// backlog has room.
func TestConnectionRequestBackendFull(t *testing.T) {
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	h.svc.Hubs = new(HubCache)
	h.svc.DeliverToBackend = true
	phone := h.newTClient(t, "bob", "phone", false)
	h.publish(t, phone, false)
	bobURI := moh.UserURI(testProvider, "bob")
	if claimed, err := h.peerAsk(t, moh.ConnectionKeyPackages, "c.example",
		mustMarshal(t, &moh.ConnectionKeyPackagesRequest{Requester: []byte(moh.UserURI("c.example", "carol")), UserID: []byte(bobURI)})); err != nil || len(claimed.KeyPackages) != 1 {
		t.Fatalf("connection_key_packages: %+v, %v; want bob's package", claimed, err)
	}
	carol := remoteClient(t, "c.example", "carol")
	gid := []byte("a connection group of c.example")
	carol.m = carol.c.create(t, gid)
	res := commit(t, carol.m, addProps(phone), nil, nil)
	payload := mustMarshal(t, &moh.ConnectionRequestPayload{UserID: []byte(bobURI), GroupID: gid, Welcome: *res.Welcome})

	// The backend's backlog holds one message, its bound.
	h.st.SetOutboxLimits(store.OutboxLimits{MaxMessages: 1})
	erin := remoteClient(t, "e.example", "erin")
	egid := []byte("a group of e.example")
	erin.m = erin.c.create(t, egid)
	eres := commit(t, erin.m, addProps(phone), nil, nil)
	if _, err := h.deliver(t, "e.example", queueingPayload(t, egid, eres.Welcome, phone.uri)); err != nil {
		t.Fatal(err)
	}

	in := &provider.Inbound{Verifier: &provider.Verifier{}, Replay: h.st}
	v := func() *provider.Verified {
		return &provider.Verified{Request: &moh.ProviderRequest{RequestType: moh.ConnectionRequest, Sender: []byte("c.example"),
			Recipient: []byte(testProvider), Timestamp: 1, RequestID: []byte("0123456789abcdef"), Payload: payload},
			Digest: [32]byte{1}}
	}
	answer, err := in.Handle(t.Context(), v(), h.svc.ProcessProvider)
	if answer != nil || codeOf(err) != moh.CodeBackendUnavailable || !errors.Is(err, store.ErrOutboxFull) {
		t.Fatalf("with the backlog full: answer %x, %v; want backend_unavailable carrying the cause", answer, err)
	}
	if msg := string(moh.DSErrorOf(err).Message); !strings.HasPrefix(msg, "connection_request: ") {
		t.Fatalf("the refusal says %q, want it to name the connection_request", msg)
	}

	// Room again: the same bytes are processed afresh and accepted.
	var after uint64
	pending := h.outbox(t, store.BackendDestination, &after)
	if _, err := h.st.OutboxDelivered(t.Context(), store.BackendDestination, []uint64{pending[0].ID}); err != nil {
		t.Fatal(err)
	}
	answer, err = in.Handle(t.Context(), v(), h.svc.ProcessProvider)
	if err != nil || answer == nil {
		t.Fatalf("with room: answer %x, %v; want the Welcome accepted", answer, err)
	}
	wantBackend(t, "the connection Welcome", h.outbox(t, store.BackendDestination, &after), "c.example", []*tclient{phone})
}
