package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// OutboxBodies counts the message bodies a store's outbox holds, by the
// backend's own query of its body table: a test hook of
// RunOutboxBodyTests.
type OutboxBodies func() (int, error)

// RunOutboxBodyTests checks that the outbox stores a message's bytes once
// per write, not once per destination: the messages of one write whose
// Message bytes are equal are one stored body (bodies of two writes are
// never merged), a body stays while any of its messages waits and goes
// with the last, however they go: delivered (OutboxDelivered, as the
// sender removes what it delivered or gave up at the give-up age),
// released by a lease holder (OutboxRelease, the same with leases),
// reset by the admin (OutboxReset), or never written for a destination
// over its bound. open returns a fresh store and its OutboxBodies.
func RunOutboxBodyTests(t *testing.T, open func(t *testing.T) (store.Store, OutboxBodies)) {
	t.Run("OncePerWrite", func(t *testing.T) { testOutboxBodyOncePerWrite(t, open) })
	t.Run("Removal", func(t *testing.T) { testOutboxBodyRemoval(t, open) })
	t.Run("BoundDrop", func(t *testing.T) { testOutboxBodyBoundDrop(t, open) })
	t.Run("ConcurrentRemoval", func(t *testing.T) { testOutboxBodyConcurrentRemoval(t, open) })
}

// bodyDest is the i-th destination of the body tests.
func bodyDest(i int) string { return fmt.Sprintf("p%d.example", i) }

// wantBodies checks the number of stored bodies.
func wantBodies(t *testing.T, what string, bodies OutboxBodies, want int) {
	t.Helper()
	n, err := bodies()
	noErr(t, what+": counting outbox bodies", err)
	if n != want {
		t.Fatalf("%s: %d outbox bodies stored, want %d", what, n, want)
	}
}

// bodyGroup creates a hosted group in s and returns it.
func bodyGroup(t *testing.T, s store.Store) *Group {
	t.Helper()
	g := NewGroup(t, randBytes(t, 16), 2)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	return g
}

// remoteTo is msg for the destinations, one OutboxMessage each.
func remoteTo(gid, msg []byte, dests ...string) []store.OutboxMessage {
	out := make([]store.OutboxMessage, len(dests))
	for i, d := range dests {
		out[i] = store.OutboxMessage{Sender: "a.example", Destination: d, GroupID: gid,
			Recipients: []string{"mimi://" + d + "/d/carol/phone"}, Message: msg}
	}
	return out
}

// wantPending checks that destination's outbox holds exactly msgs, in
// order, and returns its entries.
func wantPending(t *testing.T, s store.Store, destination string, msgs ...[]byte) []store.OutboxEntry {
	t.Helper()
	got, err := s.OutboxPending(ctx(), destination, 0, store.MaxOutboxList)
	noErr(t, "OutboxPending", err)
	if len(got) != len(msgs) {
		t.Fatalf("outbox of %s holds %d messages, want %d", destination, len(got), len(msgs))
	}
	for i, e := range got {
		if !bytes.Equal(e.Message, msgs[i]) {
			t.Fatalf("outbox of %s: message %d of %d bytes is not the %d bytes written", destination, i, len(e.Message), len(msgs[i]))
		}
	}
	return got
}

// testOutboxBodyOncePerWrite checks that a write's equal messages share
// one body, its distinct ones have one each, and two writes of the same
// bytes are two bodies.
func testOutboxBodyOncePerWrite(t *testing.T, open func(t *testing.T) (store.Store, OutboxBodies)) {
	s, bodies := open(t)
	g := bodyGroup(t, s)
	gid := g.State.GroupID()
	commit, welcome := randBytes(t, 4096), randBytes(t, 4096)
	wantBodies(t, "empty", bodies, 0)
	// The commit to five providers, two rows for p0 (its recipients
	// split), and a Welcome to two of them, in one write.
	remote := remoteTo(gid, commit, bodyDest(0), bodyDest(0), bodyDest(1), bodyDest(2), bodyDest(3), bodyDest(4))
	remote = append(remote, remoteTo(gid, welcome, bodyDest(1), bodyDest(2))...)
	d, err := s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remote})
	noErr(t, "Deliver", err)
	if len(d.Outbox) != len(remote) || d.Outbox[0] == 0 {
		t.Fatalf("Delivered.Outbox = %v, want %d ids", d.Outbox, len(remote))
	}
	wantBodies(t, "a write of 2 distinct messages to 5 providers", bodies, 2)
	wantPending(t, s, bodyDest(0), commit, commit)
	wantPending(t, s, bodyDest(1), commit, welcome)
	wantPending(t, s, bodyDest(4), commit)

	// The same bytes again, in a write of their own: a body of their own.
	_, err = s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remoteTo(gid, commit, bodyDest(0), bodyDest(1))})
	noErr(t, "Deliver", err)
	wantBodies(t, "the same bytes in another write", bodies, 3)
	wantPending(t, s, bodyDest(0), commit, commit, commit)

	// OutboxAdd shares its equal messages' body the same way.
	backend := remoteTo(gid, welcome, store.BackendDestination, store.BackendDestination, store.BackendDestination)
	_, err = s.OutboxAdd(ctx(), store.OutboxWrite{Messages: backend})
	noErr(t, "OutboxAdd", err)
	wantBodies(t, "an OutboxAdd of 3 equal messages", bodies, 4)
	wantPending(t, s, store.BackendDestination, welcome, welcome, welcome)
}

// testOutboxBodyRemoval writes a message to n providers, and one to
// another, and removes the n rows one by one through each way a row
// goes: the body stays, intact, while one row is left, and goes with the
// last; the other message's body stays.
func testOutboxBodyRemoval(t *testing.T, open func(t *testing.T) (store.Store, OutboxBodies)) {
	const n = 5
	const keep = "keep.example"
	remove := map[string]func(t *testing.T, s store.Store, dest string, e store.OutboxEntry){
		"Delivered": func(t *testing.T, s store.Store, dest string, e store.OutboxEntry) {
			got, err := s.OutboxDelivered(ctx(), dest, []uint64{e.ID})
			if err != nil || got != 1 {
				t.Fatalf("OutboxDelivered = %d, %v; want 1", got, err)
			}
		},
		"Released": func(t *testing.T, s store.Store, dest string, e store.OutboxEntry) {
			claimed, ok, err := s.OutboxClaim(ctx(), dest, "gw", time.Now(), time.Minute, 10)
			if err != nil || !ok || len(claimed) != 1 || claimed[0].ID != e.ID {
				t.Fatalf("OutboxClaim = %d entries, %t, %v; want the one", len(claimed), ok, err)
			}
			got, err := s.OutboxRelease(ctx(), dest, "gw", []uint64{e.ID})
			if err != nil || got != 1 {
				t.Fatalf("OutboxRelease = %d, %v; want 1", got, err)
			}
		},
		"Reset": func(t *testing.T, s store.Store, dest string, _ store.OutboxEntry) {
			got, err := s.OutboxReset(ctx(), dest)
			if err != nil || got != 1 {
				t.Fatalf("OutboxReset = %d, %v; want 1", got, err)
			}
		},
	}
	for _, name := range []string{"Delivered", "Released", "Reset"} {
		t.Run(name, func(t *testing.T) {
			s, bodies := open(t)
			g := bodyGroup(t, s)
			gid := g.State.GroupID()
			msg, other := randBytes(t, 4096), randBytes(t, 100)
			dests := make([]string, n)
			for i := range dests {
				dests[i] = bodyDest(i)
			}
			remote := append(remoteTo(gid, msg, dests...), remoteTo(gid, other, keep)...)
			_, err := s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remote})
			noErr(t, "Deliver", err)
			wantBodies(t, "written", bodies, 2)
			for i, d := range dests {
				e := wantPending(t, s, d, msg)[0]
				remove[name](t, s, d, e)
				wantPending(t, s, d)
				if i < n-1 {
					wantBodies(t, fmt.Sprintf("%d of %d rows removed", i+1, n), bodies, 2)
					wantPending(t, s, dests[n-1], msg)
				}
			}
			wantBodies(t, "every row removed", bodies, 1)
			wantPending(t, s, keep, other)
		})
	}
}

// testOutboxBodyBoundDrop checks that a destination over its bound takes
// no reference to the body of the message it loses, and that a write
// whose every destination is over its bound stores no body.
func testOutboxBodyBoundDrop(t *testing.T, open func(t *testing.T) (store.Store, OutboxBodies)) {
	s, bodies := open(t)
	g := bodyGroup(t, s)
	gid := g.State.GroupID()
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 1})
	first, msg, lost := randBytes(t, 100), randBytes(t, 4096), randBytes(t, 4096)
	_, err := s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remoteTo(gid, first, bodyDest(0))})
	noErr(t, "Deliver", err)
	wantBodies(t, "one message", bodies, 1)

	// p0 is full: it loses msg, p1..p3 get it, one body.
	d, err := s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remoteTo(gid, msg, bodyDest(0), bodyDest(1), bodyDest(2), bodyDest(3))})
	noErr(t, "Deliver over p0's bound", err)
	if d.Outbox[0] != 0 || d.Outbox[1] == 0 {
		t.Fatalf("Delivered.Outbox = %v, want p0's message dropped", d.Outbox)
	}
	wantBodies(t, "a message one destination lost", bodies, 2)
	_, err = s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remoteTo(gid, lost, bodyDest(0), bodyDest(0))})
	noErr(t, "Deliver to a full destination only", err)
	wantBodies(t, "a message only a full destination was to get", bodies, 2)

	for i := 1; i <= 3; i++ {
		e := wantPending(t, s, bodyDest(i), msg)[0]
		_, err := s.OutboxDelivered(ctx(), bodyDest(i), []uint64{e.ID})
		noErr(t, "OutboxDelivered", err)
	}
	wantBodies(t, "the message delivered where it was kept", bodies, 1)
	e := wantPending(t, s, bodyDest(0), first)[0]
	_, err = s.OutboxDelivered(ctx(), bodyDest(0), []uint64{e.ID})
	noErr(t, "OutboxDelivered", err)
	wantBodies(t, "all delivered", bodies, 0)
}

// testOutboxBodyConcurrentRemoval has one sender per destination remove
// its rows of messages that all destinations share, at once, in pages of
// a few, half of them through OutboxDelivered and half through leases:
// every body goes, none early.
func testOutboxBodyConcurrentRemoval(t *testing.T, open func(t *testing.T) (store.Store, OutboxBodies)) {
	const dests, messages, page = 8, 24, 5
	s, bodies := open(t)
	g := bodyGroup(t, s)
	gid := g.State.GroupID()
	all := make([]string, dests)
	for i := range all {
		all[i] = bodyDest(i)
	}
	msgs := make([][]byte, messages)
	for i := range msgs {
		msgs[i] = randBytes(t, 1024)
		_, err := s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remoteTo(gid, msgs[i], all...)})
		noErr(t, "Deliver", err)
	}
	wantBodies(t, "written", bodies, messages)
	var wg sync.WaitGroup
	errs := make(chan error, dests)
	for i, d := range all {
		wg.Go(func() {
			for {
				var got []store.OutboxEntry
				var err error
				if i%2 == 0 {
					got, err = s.OutboxPending(ctx(), d, 0, page)
				} else {
					got, _, err = s.OutboxClaim(ctx(), d, "gw", time.Now(), time.Minute, page)
				}
				if err != nil {
					errs <- err
					return
				}
				ids := make([]uint64, len(got))
				for k, e := range got {
					if !slices.ContainsFunc(msgs, func(m []byte) bool { return bytes.Equal(m, e.Message) }) {
						errs <- fmt.Errorf("%s: message %d read back altered", d, e.ID)
						return
					}
					ids[k] = e.ID
				}
				if i%2 == 0 {
					_, err = s.OutboxDelivered(ctx(), d, ids)
				} else {
					_, err = s.OutboxRelease(ctx(), d, "gw", ids)
				}
				if err != nil {
					errs <- err
					return
				}
				if len(got) == 0 {
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	wantBodies(t, "every destination drained", bodies, 0)
}

// outboxBenchDrainEvery is how many fan-outs BenchOutboxFanout writes
// before it delivers (deletes) everything pending, a page per
// destination, as the federation sender does.
const outboxBenchDrainEvery = 50

// BenchOutboxFanout measures, per op, the Deliver of a message of size
// bytes to the remote members of a hosted group on destinations
// providers (one outbox row each) and its share of their delivery: every
// outboxBenchDrainEvery ops, each destination's pending rows are read and
// removed with OutboxDelivered, timed too. s must be a fresh store; its
// outbox bound is lifted so that nothing is dropped.
func BenchOutboxFanout(b *testing.B, s store.Store, destinations, size int) {
	g := NewGroup(b, []byte("a group id of 32 bytes, say....."), 2)
	gid := g.State.GroupID()
	if err := s.CreateGroup(ctx(), store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		b.Fatal(err)
	}
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 1 << 40, MaxBytes: 1 << 60})
	dests := make([]string, destinations)
	remote := make([]store.OutboxMessage, destinations)
	msg := make([]byte, size)
	for i := range dests {
		dests[i] = fmt.Sprintf("p%d.example", i)
		remote[i] = store.OutboxMessage{Sender: "a.example", Destination: dests[i], GroupID: gid,
			Recipients: []string{fmt.Sprintf("mimi://%s/d/carol/phone", dests[i])}, Message: msg}
	}
	drain := func() {
		for _, d := range dests {
			for {
				page, err := s.OutboxPending(ctx(), d, 0, store.MaxOutboxList)
				if err != nil {
					b.Fatal(err)
				}
				if len(page) == 0 {
					break
				}
				ids := make([]uint64, len(page))
				for i, e := range page {
					ids[i] = e.ID
				}
				if _, err := s.OutboxDelivered(ctx(), d, ids); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.SetBytes(int64(size))
	for i := uint64(0); b.Loop(); i++ {
		binary.BigEndian.PutUint64(msg, i) // each op's message its own
		if _, err := s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remote}); err != nil {
			b.Fatal(err)
		}
		if (i+1)%outboxBenchDrainEvery == 0 {
			drain()
		}
	}
	drain()
}

// CheckOutboxFanoutSize checks that a message of 1 MiB fanned out to 20
// providers in one Deliver grows s's storage by about 1 MiB, its one
// body, not 20: size reports the storage in bytes, by the backend's own
// measure, and what names it in the messages.
func CheckOutboxFanoutSize(t *testing.T, s store.Store, what string, size func() int64) {
	t.Helper()
	const msgSize, dests = 1 << 20, 20
	ctx := context.Background()
	g := NewGroup(t, []byte("size group"), 1)
	gid := g.State.GroupID()
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, msgSize)
	rand.Read(msg)
	var remote []store.OutboxMessage
	for i := range dests {
		d := fmt.Sprintf("p%d.example", i)
		remote = append(remote, store.OutboxMessage{Sender: "a.example", Destination: d, GroupID: gid,
			Recipients: []string{"mimi://" + d + "/d/carol/phone"}, Message: msg})
	}
	before := size()
	if _, err := s.Deliver(ctx, gid, g.State.Epoch(), store.Fanout{Remote: remote}); err != nil {
		t.Fatal(err)
	}
	growth := size() - before
	t.Logf("a message of %d bytes to %d providers grew the %s by %d bytes", msgSize, dests, what, growth)
	if growth < msgSize*3/4 || growth > msgSize+msgSize/4 {
		t.Fatalf("a message of %d bytes to %d providers grew the %s by %d bytes, want about %d", msgSize, dests, what, growth, msgSize)
	}
}

// OldOutboxMessages are the outbox rows a backend's migration test writes
// to a database of the version before outbox bodies, for
// CheckOutboxBodiesMigrated: two of them with equal bytes, to other
// destinations, and a third of its own.
func OldOutboxMessages() []store.OutboxMessage {
	sameBytes := []byte("the same bytes for two providers")
	return []store.OutboxMessage{
		{Destination: "c.example", GroupID: []byte("g1"), Recipients: []string{"mimi://c.example/d/al/pc"}, Message: sameBytes},
		{Destination: "e.example", GroupID: []byte("g1"), Recipients: []string{"mimi://e.example/d/ed/pc"}, Message: sameBytes},
		{Destination: "c.example", GroupID: []byte("g2"), Recipients: []string{"mimi://c.example/d/bo/pc"}, Message: make([]byte, 3000)},
	}
}
