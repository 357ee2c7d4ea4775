package ds

import (
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// sendGroup is a group hosted by the harness with alice and bob, local
// clients, and carol, a client of c.example; the outbox cursors have
// passed the Welcomes.
type sendGroup struct {
	h                 *harness
	alice, bob, carol *tclient
	backend, remote   uint64 // outbox cursors
	toBackend         bool
}

func newSendGroup(t *testing.T, toBackend bool) *sendGroup {
	t.Helper()
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	h.svc.DeliverToBackend = toBackend
	g := &sendGroup{h: h, toBackend: toBackend, alice: h.newTClient(t, "alice", "phone", false),
		bob: h.newTClient(t, "bob", "phone", false), carol: remoteClient(t, "c.example", "carol")}
	h.mustDo(t, "create_group", createBody(t, g.alice, []byte("a group whose messages are resent")))
	res := commit(t, g.alice.m, addProps(g.bob, g.carol), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, g.alice, g.alice.m, res))
	g.alice.m = res.Next
	join(t, res, g.bob)
	h.outbox(t, "c.example", &g.remote)
	h.outbox(t, store.BackendDestination, &g.backend)
	h.queued(t, g.bob)
	return g
}

// bobGot returns the copies of the group's messages that bob received
// since the last call: from his queue, or through the legacy backend.
func (g *sendGroup) bobGot(t *testing.T) int {
	t.Helper()
	if !g.toBackend {
		return len(g.h.queued(t, g.bob))
	}
	n := 0
	for _, e := range g.h.outbox(t, store.BackendDestination, &g.backend) {
		for _, r := range e.Recipients {
			if r == g.bob.uri {
				n++
			}
		}
	}
	return n
}

// TestSendMessageResent checks that the hub delivers an application
// message once however often it is sent (docs/protocol.md §5.4, step 9):
// a client whose answer was lost resends its send_message byte for byte,
// or signed again under a later timestamp after a stale_timestamp; each
// resend is answered ok, as the first send was, and nothing reaches the
// local members (their queues, or the legacy backend) or the other
// providers again. A new message with the same text is another message.
func TestSendMessageResent(t *testing.T) {
	for _, toBackend := range []bool{false, true} {
		name := "queues"
		if toBackend {
			name = "backend"
		}
		t.Run(name, func(t *testing.T) {
			g := newSendGroup(t, toBackend)
			h, alice := g.h, g.alice
			msg, err := alice.m.Protect([]byte("hello"), nil)
			if err != nil {
				t.Fatal(err)
			}
			body := moh.RequestBody{Type: moh.SendMessage, Message: *msg}
			first := signed(t, alice, alice.m.LeafIndex(), body)
			resigned, err := SignRequest(alice.c.kp.CipherSuite, alice.c.signer, body,
				ClientSignature(alice.m.LeafIndex(), time.Now().Add(-time.Minute)))
			if err != nil {
				t.Fatal(err)
			}
			for i, req := range [][]byte{first, first, resigned} {
				resp, err := h.do(t, req)
				if err != nil || resp.Type != moh.ResponseOK {
					t.Fatalf("send %d answered %+v, %v; want ok", i, resp, err)
				}
			}
			if n := g.bobGot(t); n != 1 {
				t.Fatalf("bob got %d copies of one message, want 1", n)
			}
			if got := h.outbox(t, "c.example", &g.remote); len(got) != 1 {
				t.Fatalf("c.example got %d copies of one message, want 1", len(got))
			}

			// The same text protected again is a message of its own.
			again, err := alice.m.Protect([]byte("hello"), nil)
			if err != nil {
				t.Fatal(err)
			}
			h.mustDo(t, "send_message of a new message", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *again}))
			if n := g.bobGot(t); n != 1 {
				t.Fatalf("bob got %d copies of the new message, want 1", n)
			}
		})
	}
}

// TestSendMessageConcurrentCopies checks that of copies of one
// send_message handled at the same time, each is answered ok and exactly
// one is delivered.
func TestSendMessageConcurrentCopies(t *testing.T) {
	g := newSendGroup(t, false)
	h, alice := g.h, g.alice
	msg, err := alice.m.Protect([]byte("once"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req := signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *msg})
	const copies = 8
	errs := make([]error, copies)
	var wg sync.WaitGroup
	for i := range copies {
		wg.Go(func() {
			r, err := h.svc.Authenticate(t.Context(), req)
			if err == nil {
				_, err = h.svc.Handle(t.Context(), r)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("copy %d: %v", i, err)
		}
	}
	if n := g.bobGot(t); n != 1 {
		t.Fatalf("bob got %d copies, want 1", n)
	}
	if got := h.outbox(t, "c.example", &g.remote); len(got) != 1 {
		t.Fatalf("c.example got %d copies, want 1", len(got))
	}
}

// TestSendMessageResentAfterCommit checks the resend of a send_message
// once a commit moved the group on (docs/protocol.md §5.4.1,
// send_message): a message the hub delivered in the epoch before is
// answered ok and delivered to no one again, byte for byte or signed
// again, whether the commit was stored before the resend was
// authenticated or between its authentication and its delivery; a
// message of the epoch before that the hub never delivered is 409
// stale_epoch.
func TestSendMessageResentAfterCommit(t *testing.T) {
	for _, tc := range []struct {
		name string
		// delivered: the hub took the message before the commit.
		delivered bool
		// raced: the commit is stored between the resend's
		// authentication and its handling.
		raced bool
	}{
		{"delivered", true, false},
		{"delivered, commit raced", true, true},
		{"never delivered", false, false},
		{"never delivered, commit raced", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newSendGroup(t, false)
			h, alice, bob := g.h, g.alice, g.bob
			msg, err := alice.m.Protect([]byte("hello"), nil)
			if err != nil {
				t.Fatal(err)
			}
			body := moh.RequestBody{Type: moh.SendMessage, Message: *msg}
			first := signed(t, alice, alice.m.LeafIndex(), body)
			if tc.delivered {
				h.mustDo(t, "send_message", first)
				if n := g.bobGot(t); n != 1 {
					t.Fatalf("bob got %d copies, want 1", n)
				}
				h.outbox(t, "c.example", &g.remote)
			}
			resigned, err := SignRequest(alice.c.kp.CipherSuite, alice.c.signer, body,
				ClientSignature(alice.m.LeafIndex(), time.Now().Add(time.Minute)))
			if err != nil {
				t.Fatal(err)
			}
			var early []*Request
			if tc.raced {
				for _, req := range [][]byte{first, resigned} {
					r, err := h.svc.Authenticate(t.Context(), req)
					if err != nil {
						t.Fatalf("authenticating the resend: %v", err)
					}
					early = append(early, r)
				}
			}
			res := commit(t, bob.m, nil, nil, nil)
			h.mustDo(t, "update_client", commitBody(t, moh.UpdateClient, bob, bob.m, res))
			bob.m = res.Next
			g.bobGot(t)
			h.outbox(t, "c.example", &g.remote)

			for i, req := range [][]byte{first, resigned} {
				var resp *moh.DSResponse
				if tc.raced {
					resp, err = h.svc.Handle(t.Context(), early[i])
				} else {
					resp, err = h.do(t, req)
				}
				if !tc.delivered {
					wantCode(t, "the resend of a message never delivered", err, moh.CodeStaleEpoch)
					continue
				}
				if err != nil || resp.Type != moh.ResponseOK {
					t.Fatalf("resend %d answered %+v, %v; want ok", i, resp, err)
				}
			}
			if n := g.bobGot(t); n != 0 {
				t.Fatalf("bob got %d copies of the resent message, want none", n)
			}
			if got := h.outbox(t, "c.example", &g.remote); len(got) != 0 {
				t.Fatalf("c.example got %d copies of the resent message, want none", len(got))
			}
		})
	}
}
