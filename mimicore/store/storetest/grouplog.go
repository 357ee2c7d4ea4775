package storetest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Local members of the group log tests, besides fanAlice and fanBob.
const (
	logCarl = "mimi://a.example/d/carl/phone"
	logDana = "mimi://a.example/d/dana/phone"
)

// post is a Fanout of msg to the local members of gid through its log.
func post(gid []byte, msg, except string, join, leave []string) store.Fanout {
	return store.Fanout{Group: &store.GroupPost{GroupID: gid, Sender: fanAlice, Message: []byte(msg),
		Except: except, Join: join, Leave: leave}}
}

// testGroupLog checks the group log (store.GroupPost): a post written once
// reaches each local member but the one it excepts, a joiner from the post
// after its Join, a leaver up to the post of its Leave; a client's stream
// merges its personal queue and its groups' logs by one sequence, with
// gaps; Ack raises a cursor below which the log is not fetched again; a
// refused commit's post leaves no trace; a deleted group's members keep
// the posts written before, until they expire.
func testGroupLog(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State,
		Members: []string{fanAlice, fanBob}}))
	other := NewGroup(t, randBytes(t, 16), 2)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: other.State,
		Members: []string{fanBob}}))

	deliver(t, s, msgTo("personal", fanBob)) // 1
	d, err := s.Deliver(ctx(), gid, g.State.Epoch(), post(gid, "hello", fanAlice, nil, nil))
	noErr(t, "Deliver a post", err)
	if d.Group != 2 || len(d.Local) != 0 {
		t.Fatalf("Delivered = %+v, want the post at 2", d)
	}
	// A commit that adds carl and removes alice, with carl's Welcome.
	g1, c1 := g.Commit(t)
	rival := c1
	c1.Fanout = post(gid, "commit 1", fanBob, []string{logCarl}, []string{fanAlice})
	c1.Fanout.Local = []store.Delivery{{Recipients: []string{logCarl}, GroupID: gid, Message: []byte("welcome")}}
	d, err = s.CommitEpoch(ctx(), c1)
	noErr(t, "CommitEpoch with a post", err)
	if d.Group != 3 || len(d.Local) != 1 || d.Local[0][0].Seq != 4 {
		t.Fatalf("Delivered = %+v, want the post at 3 and the Welcome at 4", d)
	}
	rival.Fanout = post(gid, "rival", "", []string{logDana}, nil)
	_, err = s.CommitEpoch(ctx(), rival)
	wantErr(t, "rival commit", err, store.ErrEpochConflict)
	_, err = s.Deliver(ctx(), other.State.GroupID(), other.State.Epoch(), post(other.State.GroupID(), "other", "", nil, nil)) // 5
	noErr(t, "Deliver to the other group", err)
	_, err = s.Deliver(ctx(), gid, g1.State.Epoch(), post(gid, "after", "", nil, nil)) // 6
	noErr(t, "Deliver after the commit", err)

	for _, tc := range []struct {
		client string
		want   []any
	}{
		{fanAlice, []any{3, "commit 1"}},
		{fanBob, []any{1, "personal", 2, "hello", 5, "other", 6, "after"}},
		{logCarl, []any{4, "welcome", 6, "after"}},
		{logDana, nil},
	} {
		t.Run(tc.client, func(t *testing.T) {
			wantMsgs(t, tc.client, fetch(t, s, tc.client, 0, store.FetchLimit{}), tc.want...)
		})
	}
	msgs := fetch(t, s, fanBob, 0, store.FetchLimit{Messages: 2})
	wantMsgs(t, "bob, two at a time", msgs, 1, "personal", 2, "hello")
	if string(msgs[1].GroupID) != string(gid) || msgs[1].Sender != fanAlice || msgs[1].Arrived.IsZero() || !msgs[1].Expires.After(msgs[1].Arrived) {
		t.Fatalf("post %+v lost its group, sender or times", msgs[1])
	}
	wantMsgs(t, "bob after 2", fetch(t, s, fanBob, 2, store.FetchLimit{}), 5, "other", 6, "after")

	// Ack: bob's personal message goes, and the posts below the cursor
	// are not fetched again, whatever the cursor given.
	ack(t, s, fanBob, 2, 2)
	wantMsgs(t, "bob after acknowledging 2", fetch(t, s, fanBob, 0, store.FetchLimit{}), 5, "other", 6, "after")
	ack(t, s, fanBob, 2, 0)
	ack(t, s, fanBob, 1, 0)
	// The others still have what bob acknowledged.
	wantMsgs(t, "alice after bob's ack", fetch(t, s, fanAlice, 0, store.FetchLimit{}), 3, "commit 1")
	ack(t, s, fanAlice, 6, 1)
	wantMsgs(t, "alice after her ack", fetch(t, s, fanAlice, 0, store.FetchLimit{}))
	// A cursor beyond the global sequence is refused, for any client.
	for _, c := range []string{fanBob, logDana} {
		_, err := s.Fetch(ctx(), c, 7, store.FetchLimit{})
		wantErr(t, "Fetch beyond the sequence", err, store.ErrInvalid)
		_, err = s.Ack(ctx(), c, 7)
		wantErr(t, "Ack beyond the sequence", err, store.ErrInvalid)
	}

	// Delete: carl keeps the posts written before, and nothing after;
	// the id is not used again.
	noErr(t, "DeleteGroup", s.DeleteGroup(ctx(), gid))
	wantErr(t, "CreateGroup of the deleted id", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub,
		State: NewGroup(t, gid, 2).State, Members: []string{logDana}}), store.ErrGroupExists)
	_, err = s.Deliver(ctx(), gid, 1, post(gid, "deleted group", "", nil, nil))
	wantErr(t, "Deliver to the deleted group", err, store.ErrNotFound)
	gid2 := randBytes(t, 16)
	again := NewGroup(t, gid2, 2)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: again.State,
		Members: []string{logDana}}))
	_, err = s.Deliver(ctx(), gid2, again.State.Epoch(), post(gid2, "new group", "", nil, nil)) // 7
	noErr(t, "Deliver to the new group", err)
	wantMsgs(t, "carl after the delete", fetch(t, s, logCarl, 0, store.FetchLimit{}), 4, "welcome", 6, "after")
	wantMsgs(t, "dana in the new group", fetch(t, s, logDana, 0, store.FetchLimit{}), 7, "new group")

	// Expiry: an expired post is skipped at once, and swept.
	short := post(gid2, "short", "", nil, nil)
	short.Group.Expires = clock.Now().Add(time.Minute)
	_, err = s.Deliver(ctx(), gid2, again.State.Epoch(), short) // 8
	noErr(t, "Deliver a short-lived post", err)
	clock.Advance(time.Minute)
	wantMsgs(t, "dana once the post expired", fetch(t, s, logDana, 0, store.FetchLimit{}), 7, "new group")
	n, err := s.DeleteExpired(ctx(), clock.Now())
	noErr(t, "DeleteExpired", err)
	if n < 1 {
		t.Fatalf("DeleteExpired removed %d, want the expired post", n)
	}
	clock.Advance(store.DefaultQueueTTL)
	wantMsgs(t, "dana once everything expired", fetch(t, s, logDana, 0, store.FetchLimit{}))
	if n, err := s.DeleteExpired(ctx(), clock.Now()); err != nil || n < 5 {
		t.Fatalf("DeleteExpired = %d, %v; want the expired posts and personal messages", n, err)
	}
}

// testGroupLogInvalid checks the arguments of a post and of CreateGroup's
// members: each refusal is ErrInvalid and writes nothing.
func testGroupLogInvalid(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State, Members: []string{fanAlice}}))
	for _, tc := range []struct {
		name string
		f    store.Fanout
	}{
		{"another group", post(randBytes(t, 16), "m", "", nil, nil)},
		{"no message", post(gid, "", "", nil, nil)},
		{"a bad except", post(gid, "m", strings.Repeat("x", store.MaxClientURISize+1), nil, nil)},
		{"a bad joiner", post(gid, "m", "", []string{""}, nil)},
		{"a joiner twice", post(gid, "m", "", []string{fanBob, fanBob}, nil)},
		{"join and leave", post(gid, "m", "", []string{fanBob}, []string{fanBob})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Deliver(ctx(), gid, g.State.Epoch(), tc.f)
			wantErr(t, "Deliver", err, store.ErrInvalid)
		})
	}
	wantMsgs(t, "alice after the refusals", fetch(t, s, fanAlice, 0, store.FetchLimit{}))
	for i, members := range [][]string{{""}, {fanBob, fanBob}} {
		err := s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: NewGroup(t, randBytes(t, 16), 1).State, Members: members})
		wantErr(t, fmt.Sprint("CreateGroup with members ", i), err, store.ErrInvalid)
	}
}

// testGroupLogWatch checks that a post wakes its group's waiting members,
// and only them: not the member it excepts, not a client of another
// group, not one it is before the Join or after the Leave of, but the
// member it removes; and its message is fetchable once woken.
func testGroupLogWatch(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State,
		Members: []string{fanAlice, fanBob}}))
	watch := func(c string) (<-chan struct{}, func()) { return s.WatchQueue(c, 0) }
	readyA, stopA := watch(fanAlice)
	defer stopA()
	readyB, stopB := watch(fanBob)
	defer stopB()
	readyC, stopC := watch(logCarl)
	defer stopC()
	_, err := s.Deliver(ctx(), gid, g.State.Epoch(), post(gid, "from alice", fanAlice, []string{logCarl}, nil))
	noErr(t, "Deliver", err)
	if !closed(readyB) {
		t.Fatal("bob, a member, not woken by the post")
	}
	wantMsgs(t, "bob once woken", fetch(t, s, fanBob, 0, store.FetchLimit{}), 1, "from alice")
	if closed(readyA) {
		t.Fatal("alice woken by her own post")
	}
	if closed(readyC) {
		t.Fatal("carl woken by the post he joins after")
	}
	d, err := s.Deliver(ctx(), gid, g.State.Epoch(), post(gid, "to all", "", nil, nil))
	noErr(t, "Deliver", err)
	if !closed(readyA) || !closed(readyC) {
		t.Fatal("members not woken by a post to all")
	}
	// A post that removes a member is the last it sees: it wakes it,
	// and the next one does not.
	readyC, stopC = s.WatchQueue(logCarl, d.Group)
	defer stopC()
	d, err = s.Deliver(ctx(), gid, g.State.Epoch(), post(gid, "carl removed", fanAlice, nil, []string{logCarl}))
	noErr(t, "Deliver", err)
	if !closed(readyC) {
		t.Fatal("carl not woken by the post that removes him")
	}
	readyC, stopC = s.WatchQueue(logCarl, d.Group)
	defer stopC()
	_, err = s.Deliver(ctx(), gid, g.State.Epoch(), post(gid, "after carl", "", nil, nil))
	noErr(t, "Deliver", err)
	if closed(readyC) {
		t.Fatal("carl woken by a post after his removal")
	}
}
