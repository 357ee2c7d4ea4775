package storetest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Clients and destinations of the fan-out tests.
const (
	fanAlice = "mimi://a.example/d/alice/phone"
	fanBob   = "mimi://a.example/d/bob/phone"
	fanCarol = "mimi://c.example/d/carol/phone"
	fanDave  = "mimi://c.example/d/dave/phone"
	fanErin  = "mimi://e.example/d/erin/phone"
)

// fanoutOf is a Fanout of msg to the local clients (one Delivery) and to
// the remote ones (one OutboxMessage per destination, in the given order).
func fanoutOf(gid []byte, msg string, local []string, remote map[string][]string, order ...string) store.Fanout {
	var f store.Fanout
	if len(local) > 0 {
		f.Local = []store.Delivery{{Recipients: local, GroupID: gid, Sender: fanAlice, Message: []byte(msg)}}
	}
	for _, d := range order {
		f.Remote = append(f.Remote, store.OutboxMessage{Sender: "a.example", Destination: d, GroupID: gid, Recipients: remote[d], Message: []byte(msg)})
	}
	return f
}

// wantOutbox checks destination's outbox: the messages and recipients, in
// order, as "msg>uri,uri".
func wantOutbox(t *testing.T, s store.Store, destination string, want ...string) []store.OutboxEntry {
	t.Helper()
	got, err := s.OutboxPending(ctx(), destination, 0, store.MaxOutboxList)
	noErr(t, "OutboxPending", err)
	var list []string
	for i, e := range got {
		if e.Destination != destination || e.Sender != "a.example" || e.Enqueued.IsZero() || (i > 0 && e.ID <= got[i-1].ID) {
			t.Fatalf("outbox entry %+v of %s out of order or incomplete", e, destination)
		}
		list = append(list, string(e.Message)+">"+strings.Join(e.Recipients, ","))
	}
	if !slices.Equal(list, want) {
		t.Fatalf("outbox of %s: got %q, want %q", destination, list, want)
	}
	return got
}

// testGroupFanout checks that a commit's and a message's fan-out are
// written with the state change, atomically and on its condition: a
// refused commit or a message for a past epoch leaves no trace in any
// queue or outbox; and that the outbox lists and clears per destination.
func testGroupFanout(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid, e0 := g.State.GroupID(), g.State.Epoch()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	remote := map[string][]string{"c.example": {fanCarol, fanDave}, "e.example": {fanErin}}

	g1, c1 := g.Commit(t)
	rival := c1
	c1.Fanout = fanoutOf(gid, "commit 1", []string{fanBob}, remote, "c.example", "e.example")
	d, err := s.CommitEpoch(ctx(), c1)
	noErr(t, "CommitEpoch with a fan-out", err)
	if len(d.Local) != 1 || len(d.Local[0]) != 1 || d.Local[0][0].Seq != 1 || d.Local[0][0].Err != nil || len(d.Outbox) != 2 || d.Outbox[0] >= d.Outbox[1] {
		t.Fatalf("Delivered = %+v", d)
	}
	// The rival commit of the same epoch, with its own fan-out, is
	// refused and delivers nothing.
	rival.Fanout = fanoutOf(gid, "rival", []string{fanBob, fanAlice}, remote, "e.example")
	_, err = s.CommitEpoch(ctx(), rival)
	wantErr(t, "rival commit", err, store.ErrEpochConflict)

	// An application message of the new epoch, then one built for the
	// epoch before and one for the epoch after.
	d, err = s.Deliver(ctx(), gid, e0+1, fanoutOf(gid, "hello", []string{fanBob, fanAlice}, remote, "c.example"))
	noErr(t, "Deliver", err)
	if len(d.Local) != 1 || fmt.Sprint(d.Local[0][0].Seq, d.Local[0][1].Seq) != "2 2" || len(d.Outbox) != 1 {
		t.Fatalf("Delivered = %+v", d)
	}
	_, err = s.Deliver(ctx(), gid, e0, fanoutOf(gid, "stale", []string{fanBob}, remote, "c.example"))
	wantErr(t, "Deliver for a past epoch", err, store.ErrEpochConflict)
	_, err = s.Deliver(ctx(), gid, e0+2, fanoutOf(gid, "future", []string{fanBob}, remote, "c.example"))
	wantErr(t, "Deliver for a future epoch", err, store.ErrEpochConflict)
	_, err = s.Deliver(ctx(), randBytes(t, 16), 0, fanoutOf(gid, "nowhere", []string{fanBob}, nil))
	wantErr(t, "Deliver to an unknown group", err, store.ErrNotFound)

	wantMsgs(t, "bob's queue", fetch(t, s, fanBob, 0, store.FetchLimit{}), 1, "commit 1", 2, "hello")
	wantMsgs(t, "alice's queue", fetch(t, s, fanAlice, 0, store.FetchLimit{}), 2, "hello")
	msgs := fetch(t, s, fanBob, 0, store.FetchLimit{})
	if string(msgs[0].GroupID) != string(gid) || msgs[0].Sender != fanAlice {
		t.Fatalf("queued message %+v lost its group or sender", msgs[0])
	}
	ce := wantOutbox(t, s, "c.example", "commit 1>"+fanCarol+","+fanDave, "hello>"+fanCarol+","+fanDave)
	wantOutbox(t, s, "e.example", "commit 1>"+fanErin)
	wantOutbox(t, s, "x.example")
	if dests, err := s.OutboxDestinations(ctx()); err != nil || !slices.Equal(dests, []string{"c.example", "e.example"}) {
		t.Fatalf("OutboxDestinations = %q, %v", dests, err)
	}
	if string(ce[0].GroupID) != string(gid) {
		t.Fatal("outbox entry lost its group")
	}

	// A second commit fans out after the first's messages.
	_, c2 := g1.Commit(t)
	c2.Fanout = fanoutOf(gid, "commit 2", nil, remote, "c.example")
	_, err = s.CommitEpoch(ctx(), c2)
	noErr(t, "second commit", err)

	// Pending after a cursor, then cleared in part.
	after, err := s.OutboxPending(ctx(), "c.example", ce[0].ID, 1)
	noErr(t, "OutboxPending after the first", err)
	if len(after) != 1 || string(after[0].Message) != "hello" {
		t.Fatalf("OutboxPending after %d, limit 1: %+v", ce[0].ID, after)
	}
	n, err := s.OutboxDelivered(ctx(), "c.example", []uint64{ce[0].ID, ce[0].ID, 1 << 62})
	noErr(t, "OutboxDelivered", err)
	if n != 1 {
		t.Fatalf("OutboxDelivered removed %d, want 1", n)
	}
	n, err = s.OutboxDelivered(ctx(), "e.example", []uint64{ce[1].ID})
	noErr(t, "OutboxDelivered of another destination's id", err)
	if n != 0 {
		t.Fatalf("OutboxDelivered removed %d of another destination's messages", n)
	}
	wantOutbox(t, s, "c.example", "hello>"+fanCarol+","+fanDave, "commit 2>"+fanCarol+","+fanDave)
	if n, err := s.OutboxDelivered(ctx(), "c.example", nil); n != 0 || err != nil {
		t.Fatalf("OutboxDelivered of nothing: %d, %v", n, err)
	}

	// The outbox lives with the store, not with the group.
	noErr(t, "DeleteGroup", s.DeleteGroup(ctx(), gid))
	wantOutbox(t, s, "c.example", "hello>"+fanCarol+","+fanDave, "commit 2>"+fanCarol+","+fanDave)
	// A destination with nothing left is no longer listed.
	all, err := s.OutboxPending(ctx(), "e.example", 0, store.MaxOutboxList)
	noErr(t, "OutboxPending", err)
	n, err = s.OutboxDelivered(ctx(), "e.example", []uint64{all[0].ID})
	noErr(t, "OutboxDelivered", err)
	if dests, err := s.OutboxDestinations(ctx()); n != 1 || err != nil || !slices.Equal(dests, []string{"c.example"}) {
		t.Fatalf("OutboxDestinations after clearing e.example = %q, %v", dests, err)
	}
}

// testGroupFanoutLimits checks the arguments of a fan-out: each refusal is
// ErrInvalid and writes nothing, not even the commit it came with; a full
// queue refuses its message alone.
func testGroupFanoutLimits(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	many := make([]string, store.MaxOutboxRecipients+1)
	for i := range many {
		many[i] = fmt.Sprintf("mimi://c.example/d/u%d/d", i)
	}
	ok := store.OutboxMessage{Sender: "a.example", Destination: "c.example", GroupID: gid, Recipients: []string{fanCarol}, Message: []byte("m")}
	with := func(edit func(*store.OutboxMessage)) store.Fanout {
		m := ok
		edit(&m)
		return store.Fanout{Remote: []store.OutboxMessage{m}}
	}
	tooMany := store.Fanout{Remote: make([]store.OutboxMessage, store.MaxFanoutMessages+1)}
	for i := range tooMany.Remote {
		tooMany.Remote[i] = ok
	}
	g1, c := g.Commit(t)
	for _, tc := range []struct {
		name string
		f    store.Fanout
	}{
		{"no sender", with(func(m *store.OutboxMessage) { m.Sender = "" })},
		{"no destination", with(func(m *store.OutboxMessage) { m.Destination = "" })},
		{"no group", with(func(m *store.OutboxMessage) { m.GroupID = nil })},
		{"no recipients", with(func(m *store.OutboxMessage) { m.Recipients = nil })},
		{"too many recipients", with(func(m *store.OutboxMessage) { m.Recipients = many })},
		{"a recipient twice", with(func(m *store.OutboxMessage) { m.Recipients = []string{fanCarol, fanCarol} })},
		{"an empty message", with(func(m *store.OutboxMessage) { m.Message = nil })},
		{"a message too large", with(func(m *store.OutboxMessage) { m.Message = make([]byte, store.MaxQueuedMessageSize+1) })},
		{"a bad local delivery", store.Fanout{Local: []store.Delivery{{Recipients: nil, Message: []byte("m")}}}},
		{"too many messages", tooMany},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Deliver(ctx(), gid, g.State.Epoch(), tc.f)
			wantErr(t, "Deliver", err, store.ErrInvalid)
			bad := c
			bad.Fanout = tc.f
			_, err = s.CommitEpoch(ctx(), bad)
			wantErr(t, "CommitEpoch", err, store.ErrInvalid)
			wantLoad(t, s, "after a refused fan-out", g.State)
		})
	}
	wantOutbox(t, s, "c.example")
	for _, tc := range []struct {
		name  string
		after uint64
		limit int
	}{{"limit 0", 0, 0}, {"limit too large", 0, store.MaxOutboxList + 1}} {
		_, err := s.OutboxPending(ctx(), "c.example", tc.after, tc.limit)
		wantErr(t, "OutboxPending with "+tc.name, err, store.ErrInvalid)
	}
	_, err := s.OutboxPending(ctx(), "", 0, 1)
	wantErr(t, "OutboxPending without a destination", err, store.ErrInvalid)

	// A full queue refuses its copy; the commit and the other recipients
	// still get theirs.
	deliver(t, s, store.Delivery{Recipients: []string{fanBob}, Message: []byte("filler")})
	c.Fanout = store.Fanout{Local: []store.Delivery{{Recipients: []string{fanAlice, fanBob}, GroupID: gid,
		Message: []byte("commit"), Limits: store.QueueLimits{MaxMessages: 1}}}}
	d, err := s.CommitEpoch(ctx(), c)
	noErr(t, "CommitEpoch with a full queue", err)
	if d.Local[0][0].Seq != 2 || !errors.Is(d.Local[0][1].Err, store.ErrQueueFull) {
		t.Fatalf("Delivered = %+v, want alice's seq 2 and bob's queue full", d.Local)
	}
	wantLoad(t, s, "after a commit with a full queue", g1.State)
	wantMsgs(t, "bob's full queue", fetch(t, s, fanBob, 0, store.FetchLimit{}), 1, "filler")
}

// testGroupProposalFanout checks that a pending proposal's fan-out is
// written with it, and only by the AddProposal that added it: a repeat of
// a pending proposal and a proposal for another epoch deliver nothing.
func testGroupProposalFanout(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid, epoch := g.State.GroupID(), g.State.Epoch()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	remote := map[string][]string{"c.example": {fanCarol}}
	p := store.PendingProposal{Ref: []byte("ref 1"), Message: []byte("proposal"),
		Fanout: fanoutOf(gid, "proposal", []string{fanBob}, remote, "c.example")}
	noErr(t, "AddProposal", s.AddProposal(ctx(), gid, epoch, p))
	noErr(t, "AddProposal of the pending proposal again", s.AddProposal(ctx(), gid, epoch, p))
	other := p
	other.Ref = []byte("ref 2")
	wantErr(t, "AddProposal for another epoch", s.AddProposal(ctx(), gid, epoch+1, other), store.ErrEpochConflict)
	wantMsgs(t, "bob's queue", fetch(t, s, fanBob, 0, store.FetchLimit{}), 1, "proposal")
	wantOutbox(t, s, "c.example", "proposal>"+fanCarol)
	got, err := s.PendingProposals(ctx(), gid, epoch)
	noErr(t, "PendingProposals", err)
	if len(got) != 1 || len(got[0].Fanout.Local) != 0 || len(got[0].Fanout.Remote) != 0 {
		t.Fatalf("PendingProposals = %+v, want the proposal without its fan-out", got)
	}
	bad := other
	bad.Fanout = store.Fanout{Remote: []store.OutboxMessage{{Destination: "c.example"}}}
	wantErr(t, "AddProposal with a bad fan-out", s.AddProposal(ctx(), gid, epoch, bad), store.ErrInvalid)
}
