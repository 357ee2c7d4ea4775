package storetest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// wantBacklog checks destination's counters against the outbox's rows:
// the number of messages OutboxPending lists, the sum of their sizes, and
// the drop counts.
func wantBacklog(t *testing.T, what string, s store.Store, destination string, messages int, dropped store.Dropped) store.Backlog {
	t.Helper()
	b, err := s.OutboxDestinationBacklog(ctx(), destination)
	noErr(t, what+": OutboxDestinationBacklog", err)
	var size int64
	var after uint64
	rows := 0
	for {
		page, err := s.OutboxPending(ctx(), destination, after, store.MaxOutboxList)
		noErr(t, what+": OutboxPending", err)
		for _, e := range page {
			size += e.Size()
		}
		rows += len(page)
		if len(page) < store.MaxOutboxList {
			break
		}
		after = page[len(page)-1].ID
	}
	if b.Destination != destination || b.Messages != messages || rows != messages || b.Bytes != size || b.Dropped != dropped ||
		(messages == 0) != b.Oldest.IsZero() {
		t.Fatalf("%s: backlog of %s = %+v with %d rows of %d bytes, want %d messages, their bytes and dropped %+v",
			what, destination, b, rows, size, messages, dropped)
	}
	return b
}

// testOutboxBound checks the per-destination bound of the outbox
// (store.OutboxBound): a write over a destination's bound loses that
// destination's messages, all of them, and nothing else (the state change
// commits, the other destinations get theirs), the loss is counted; the
// counters stay exact through delivery and an admin reset; an OutboxAdd
// over the bound is refused whole, its dedup record too.
func testOutboxBound(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	remote := map[string][]string{"c.example": {fanCarol, fanDave}, "e.example": {fanErin}}
	one := store.OutboxMessage{Sender: "a.example", Destination: "c.example", GroupID: gid, Recipients: remote["c.example"], Message: []byte("m0")}
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 3, MaxBytes: 5 * one.Size()})

	for i, to := range [][]string{{"c.example", "e.example"}, {"c.example", "e.example"}, {"c.example"}} {
		_, err := s.Deliver(ctx(), gid, g.State.Epoch(), fanoutOf(gid, fmt.Sprint("m", i), nil, remote, to...))
		noErr(t, "Deliver within the bound", err)
	}
	wantBacklog(t, "at the bound", s, "c.example", 3, store.Dropped{})

	// A commit over c.example's bound: it commits, bob's queue and
	// e.example's outbox get it, c.example's does not, and that is
	// counted.
	g1, c1 := g.Commit(t)
	c1.Fanout = fanoutOf(gid, "commit", []string{fanBob}, remote, "c.example", "e.example")
	d, err := s.CommitEpoch(ctx(), c1)
	noErr(t, "CommitEpoch over c.example's bound", err)
	if len(d.Outbox) != 2 || d.Outbox[0] != 0 || d.Outbox[1] == 0 {
		t.Fatalf("Delivered.Outbox = %v, want 0 for c.example and an id for e.example", d.Outbox)
	}
	if cur, err := s.LoadGroup(ctx(), gid); err != nil || cur.Epoch() != g1.State.Epoch() {
		t.Fatalf("the commit over the bound did not commit: %v", err)
	}
	wantMsgs(t, "bob's queue", fetch(t, s, fanBob, 0, store.FetchLimit{}), 1, "commit")
	wantOutbox(t, s, "e.example", "m0>"+fanErin, "m1>"+fanErin, "commit>"+fanErin)
	wantOutbox(t, s, "c.example", "m0>"+fanCarol+","+fanDave, "m1>"+fanCarol+","+fanDave, "m2>"+fanCarol+","+fanDave)
	wantBacklog(t, "over the bound", s, "c.example", 3, store.Dropped{BacklogFull: 1})
	g = g1

	// Delivery makes room; a write of two messages for c.example with room
	// for one loses both.
	pending, err := s.OutboxPending(ctx(), "c.example", 0, store.MaxOutboxList)
	noErr(t, "OutboxPending", err)
	n, err := s.OutboxDelivered(ctx(), "c.example", []uint64{pending[0].ID, pending[0].ID, 1 << 62})
	if err != nil || n != 1 {
		t.Fatalf("OutboxDelivered = %d, %v; want 1", n, err)
	}
	wantBacklog(t, "after a delivery", s, "c.example", 2, store.Dropped{BacklogFull: 1})
	two := fanoutOf(gid, "pair", nil, remote, "c.example", "c.example")
	_, err = s.Deliver(ctx(), gid, g.State.Epoch(), two)
	noErr(t, "Deliver of two with room for one", err)
	wantBacklog(t, "two with room for one", s, "c.example", 2, store.Dropped{BacklogFull: 3})
	_, err = s.Deliver(ctx(), gid, g.State.Epoch(), fanoutOf(gid, "m3", nil, remote, "c.example"))
	noErr(t, "Deliver with room for one", err)
	wantBacklog(t, "at the bound again", s, "c.example", 3, store.Dropped{BacklogFull: 3})

	// The byte bound: room for 5 messages of one's size, 3 held; a lower
	// message bound does not remove what is there.
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 100, MaxBytes: 5 * one.Size()})
	for i := 4; i < 7; i++ {
		_, err := s.Deliver(ctx(), gid, g.State.Epoch(), fanoutOf(gid, fmt.Sprint("m", i), nil, remote, "c.example"))
		noErr(t, "Deliver under the byte bound", err)
	}
	wantBacklog(t, "at the byte bound", s, "c.example", 5, store.Dropped{BacklogFull: 4})
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 1, MaxBytes: 5 * one.Size()})
	wantBacklog(t, "under a lowered bound", s, "c.example", 5, store.Dropped{BacklogFull: 4})

	// The admin reset removes the whole backlog, counted, and nothing of
	// the other destinations; the destination stays listed for its
	// counts, but has no messages for the sender.
	n, err = s.OutboxReset(ctx(), "c.example")
	if err != nil || n != 5 {
		t.Fatalf("OutboxReset = %d, %v; want 5", n, err)
	}
	wantBacklog(t, "after the reset", s, "c.example", 0, store.Dropped{BacklogFull: 4, AdminReset: 5})
	wantBacklog(t, "the other destination", s, "e.example", 3, store.Dropped{})
	if dests, err := s.OutboxDestinations(ctx()); err != nil || !slices.Equal(dests, []string{"e.example"}) {
		t.Fatalf("OutboxDestinations after the reset = %q, %v", dests, err)
	}
	list, err := s.OutboxBacklog(ctx())
	noErr(t, "OutboxBacklog", err)
	if len(list) != 2 || list[0].Destination != "c.example" || list[0].Messages != 0 || list[0].Dropped.AdminReset != 5 ||
		list[1].Destination != "e.example" || list[1].Messages != 3 {
		t.Fatalf("OutboxBacklog after the reset = %+v", list)
	}
	if n, err := s.OutboxReset(ctx(), "c.example"); err != nil || n != 0 {
		t.Fatalf("OutboxReset of an empty backlog = %d, %v", n, err)
	}
	if n, err := s.OutboxReset(ctx(), "never.example"); err != nil || n != 0 {
		t.Fatalf("OutboxReset of an unknown destination = %d, %v", n, err)
	}
	wantBacklog(t, "an unknown destination", s, "never.example", 0, store.Dropped{})
	_, err = s.OutboxReset(ctx(), "")
	wantErr(t, "OutboxReset of an empty destination", err, store.ErrInvalid)
	_, err = s.OutboxDestinationBacklog(ctx(), "")
	wantErr(t, "OutboxDestinationBacklog of an empty destination", err, store.ErrInvalid)

	// Room again after the reset, within the bound of 1.
	_, err = s.Deliver(ctx(), gid, g.State.Epoch(), fanoutOf(gid, "after", nil, remote, "c.example"))
	noErr(t, "Deliver after the reset", err)
	wantOutbox(t, s, "c.example", "after>"+fanCarol+","+fanDave)
	wantBacklog(t, "after the reset and a write", s, "c.example", 1, store.Dropped{BacklogFull: 4, AdminReset: 5})

	// OutboxAdd over the bound is refused whole and writes nothing, its
	// dedup record neither: the same write goes through once there is
	// room.
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 2})
	backend := func(body string) store.OutboxMessage {
		return store.OutboxMessage{Sender: "a.example", Destination: store.BackendDestination, GroupID: gid, Recipients: []string{fanAlice}, Message: []byte(body)}
	}
	_, err = s.OutboxAdd(ctx(), store.OutboxWrite{Messages: []store.OutboxMessage{backend("b1")}})
	noErr(t, "OutboxAdd within the bound", err)
	key := digestOf([]byte("b2"))
	w := store.OutboxWrite{Messages: []store.OutboxMessage{backend("b2"), backend("b2'")}, Dedup: key[:], DedupExpires: clock.Now().Add(future)}
	_, err = s.OutboxAdd(ctx(), w)
	wantErr(t, "OutboxAdd over the bound", err, store.ErrOutboxFull)
	wantErr(t, "OutboxAdd over the bound", err, store.ErrConflict)
	wantBacklog(t, "after a refused OutboxAdd", s, store.BackendDestination, 1, store.Dropped{})
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 3})
	_, err = s.OutboxAdd(ctx(), w)
	noErr(t, "OutboxAdd once there is room", err)
	wantOutbox(t, s, store.BackendDestination, "b1>"+fanAlice, "b2>"+fanAlice, "b2'>"+fanAlice)
	wantBacklog(t, "backend", s, store.BackendDestination, 3, store.Dropped{})

	// Delivering everything brings the counters to zero.
	for _, dest := range []string{"c.example", "e.example", store.BackendDestination} {
		pending, err := s.OutboxPending(ctx(), dest, 0, store.MaxOutboxList)
		noErr(t, "OutboxPending", err)
		var ids []uint64
		for _, e := range pending {
			ids = append(ids, e.ID)
		}
		_, err = s.OutboxDelivered(ctx(), dest, ids)
		noErr(t, "OutboxDelivered", err)
	}
	wantBacklog(t, "all delivered", s, "c.example", 0, store.Dropped{BacklogFull: 4, AdminReset: 5})
	wantBacklog(t, "all delivered", s, "e.example", 0, store.Dropped{})
	wantBacklog(t, "all delivered", s, store.BackendDestination, 0, store.Dropped{})
}

// testOutboxResetLarge checks that OutboxReset removes a backlog larger
// than one of its writes, and only what was written before it.
func testOutboxResetLarge(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	s := open(t, NewClock())
	const n = 1200
	var w store.OutboxWrite
	for i := range n {
		w.Messages = append(w.Messages, store.OutboxMessage{Sender: "a.example", Destination: "c.example", GroupID: []byte("g"),
			Recipients: []string{fanCarol}, Message: fmt.Appendf(nil, "m%d", i)})
		if len(w.Messages) == store.MaxFanoutMessages || i == n-1 {
			_, err := s.OutboxAdd(ctx(), w)
			noErr(t, "OutboxAdd", err)
			w.Messages = nil
		}
	}
	wantBacklog(t, "before the reset", s, "c.example", n, store.Dropped{})
	got, err := s.OutboxReset(ctx(), "c.example")
	if err != nil || got != n {
		t.Fatalf("OutboxReset = %d, %v; want %d", got, err, n)
	}
	wantBacklog(t, "after the reset", s, "c.example", 0, store.Dropped{AdminReset: n})
}

// testReopenOutbox checks that the outbox's counters survive a reopen and
// stay exact after it.
func testReopenOutbox(t *testing.T, open func() (store.Store, error)) {
	s, err := open()
	noErr(t, "opening store", err)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	remote := map[string][]string{"c.example": {fanCarol}}
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 2})
	for i := range 3 {
		_, err := s.Deliver(ctx(), gid, g.State.Epoch(), fanoutOf(gid, fmt.Sprint("m", i), nil, remote, "c.example"))
		noErr(t, "Deliver", err)
	}
	wantBacklog(t, "before closing", s, "c.example", 2, store.Dropped{BacklogFull: 1})
	noErr(t, "Close", s.Close())

	s, err = open()
	noErr(t, "reopening store", err)
	defer s.Close()
	wantBacklog(t, "reopened", s, "c.example", 2, store.Dropped{BacklogFull: 1})
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 2})
	_, err = s.Deliver(ctx(), gid, g.State.Epoch(), fanoutOf(gid, "m3", nil, remote, "c.example"))
	noErr(t, "Deliver", err)
	wantBacklog(t, "reopened, over the bound", s, "c.example", 2, store.Dropped{BacklogFull: 2})
	pending := wantOutbox(t, s, "c.example", "m0>"+fanCarol, "m1>"+fanCarol)
	_, err = s.OutboxDelivered(ctx(), "c.example", []uint64{pending[0].ID})
	noErr(t, "OutboxDelivered", err)
	n, err := s.OutboxReset(ctx(), "c.example")
	if err != nil || n != 1 {
		t.Fatalf("OutboxReset = %d, %v; want 1", n, err)
	}
	wantBacklog(t, "reopened, delivered and reset", s, "c.example", 0, store.Dropped{BacklogFull: 2, AdminReset: 1})
}

// testOutboxPendingBytes checks that OutboxPending stops at
// MaxOutboxListBytes: 20 messages of the largest size come in a page of 16
// and a page of the other 4.
func testOutboxPendingBytes(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	s := open(t, NewClock())
	var w store.OutboxWrite
	for i := range 20 {
		body := make([]byte, store.MaxQueuedMessageSize)
		body[0] = byte(i)
		w.Messages = append(w.Messages, store.OutboxMessage{Sender: "a.example", Destination: "c.example", GroupID: []byte("g"),
			Recipients: []string{fanCarol}, Message: body})
	}
	_, err := s.OutboxAdd(ctx(), w)
	noErr(t, "OutboxAdd", err)
	first, err := s.OutboxPending(ctx(), "c.example", 0, store.MaxOutboxList)
	noErr(t, "OutboxPending", err)
	want := store.MaxOutboxListBytes / store.MaxQueuedMessageSize
	if len(first) != want || first[0].Message[0] != 0 {
		t.Fatalf("first page of %d messages, want %d from the first", len(first), want)
	}
	rest, err := s.OutboxPending(ctx(), "c.example", first[len(first)-1].ID, store.MaxOutboxList)
	noErr(t, "OutboxPending", err)
	if len(rest) != 20-want || rest[0].Message[0] != byte(want) {
		t.Fatalf("second page of %d messages, want the other %d in order", len(rest), 20-want)
	}
}
