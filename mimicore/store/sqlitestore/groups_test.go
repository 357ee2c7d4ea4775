package sqlitestore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestGroupCommitsInOneBatch queues rival commits of one epoch, and
// failing group writes beside succeeding ones, behind a blocked writer, so
// that they all run in one transaction: exactly one rival wins, every
// failure is its own, and the successes commit.
func TestGroupCommitsInOneBatch(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	const rivals, others = 6, 4
	g := storetest.NewGroup(t, []byte("raced group"), 3)
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	var calls []*call
	nexts := make([]*storetest.Group, rivals)
	for i := range rivals {
		var c store.EpochCommit
		nexts[i], c = g.Commit(t)
		calls = append(calls, &call{name: fmt.Sprint("rival ", i), run: func(ctx context.Context) error {
			return commitErr(s.CommitEpoch(ctx, c))
		}})
	}
	otherNext := make([]*storetest.Group, others)
	for i := range others {
		o := storetest.NewGroup(t, fmt.Appendf(nil, "other %d", i), 2)
		if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: o.State}); err != nil {
			t.Fatal(err)
		}
		var c store.EpochCommit
		otherNext[i], c = o.Commit(t)
		calls = append(calls,
			&call{name: fmt.Sprint("other commit ", i), run: func(ctx context.Context) error { return commitErr(s.CommitEpoch(ctx, c)) }},
			&call{name: fmt.Sprint("create in use ", i), run: func(ctx context.Context) error {
				return s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: o.State})
			}})
	}
	before := runBatch(t, s, ctx, calls)
	if d := statsDelta(before, s.Stats()); d.Commits != 2 {
		t.Fatalf("stats %+v: want the blocking op's commit and one commit of all %d calls", d, len(calls))
	}
	winner := -1
	for i, c := range calls {
		switch {
		case i < rivals && c.err == nil:
			if winner >= 0 {
				t.Fatalf("rivals %d and %d both won", winner, i)
			}
			winner = i
		case i < rivals:
			if !errors.Is(c.err, store.ErrEpochConflict) {
				t.Errorf("%s: got %v, want ErrEpochConflict", c.name, c.err)
			}
		case (i-rivals)%2 == 0:
			if c.err != nil {
				t.Errorf("%s: %v", c.name, c.err)
			}
		default:
			if !errors.Is(c.err, store.ErrGroupExists) {
				t.Errorf("%s: got %v, want ErrGroupExists", c.name, c.err)
			}
		}
	}
	if winner < 0 {
		t.Fatal("no rival won")
	}
	// Read the file, not the cache (and beside s, which holds the lock).
	fresh, err := Open(ctx, dbPath(t, s), WithGroupCache(0), withSharedFile())
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	got, err := fresh.LoadGroup(ctx, g.State.GroupID())
	if err != nil {
		t.Fatal(err)
	}
	storetest.SameState(t, "the raced group", got, nexts[winner].State)
	for i, o := range otherNext {
		got, err := fresh.LoadGroup(ctx, o.State.GroupID())
		if err != nil {
			t.Fatal(err)
		}
		storetest.SameState(t, fmt.Sprint("other group ", i), got, o.State)
	}
}

// dbPath returns the file of s.
func dbPath(t testing.TB, s *Store) string {
	t.Helper()
	var seq int
	var name, file string
	if err := s.w.QueryRow("PRAGMA database_list").Scan(&seq, &name, &file); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestGroupCacheTwoStores checks that a cached state is never served once
// another Store on the same file committed, as two gateways sharing a
// backend would: the cache is checked against the stored head on every
// load.
func TestGroupCacheTwoStores(t *testing.T) {
	ctx := context.Background()
	a := openTemp(t, withSharedFile())
	b, err := Open(ctx, dbPath(t, a), withSharedFile())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	g := storetest.NewGroup(t, []byte("shared group"), 2)
	if err := a.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		for _, s := range []*Store{a, b} {
			got, err := s.LoadGroup(ctx, g.State.GroupID())
			if err != nil {
				t.Fatal(err)
			}
			storetest.SameState(t, fmt.Sprint("load ", i), got, g.State)
		}
		var c store.EpochCommit
		g, c = g.Commit(t)
		if err := commitErr([]*Store{a, b}[i%2].CommitEpoch(ctx, c)); err != nil {
			t.Fatal(err)
		}
	}
	// Deleted by the other store: the first one's cache must not keep it.
	if err := b.DeleteGroup(ctx, g.State.GroupID()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.LoadGroup(ctx, g.State.GroupID()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LoadGroup through the other store after the delete: %v, want ErrNotFound", err)
	}
}

// TestGroupCommitWritesWhatChanged checks the cost promise: a path commit
// in a 1,000-member group writes a few kilobytes (the committer's leaf and
// direct path, the head), not the group's hundreds.
func TestGroupCommitWritesWhatChanged(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	g := storetest.NewGroup(t, []byte("big group"), 1000)
	before := s.Stats().GroupBytes
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	created := s.Stats().GroupBytes - before
	for i := range 3 {
		var c store.EpochCommit
		g, c = g.Commit(t)
		before := s.Stats().GroupBytes
		if err := commitErr(s.CommitEpoch(ctx, c)); err != nil {
			t.Fatal(err)
		}
		wrote := s.Stats().GroupBytes - before
		t.Logf("commit %d: %d bytes written; the group is %d bytes", i, wrote, created)
		if wrote > 8<<10 || wrote*50 > created {
			t.Fatalf("commit %d wrote %d bytes in a group of %d", i, wrote, created)
		}
	}
	var rows int
	if err := s.w.QueryRow("SELECT count(*) FROM mls_group_node_history").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Fatalf("%d old tree versions kept without a Welcome tree that needs them", rows)
	}
}

// TestGroupDeleteLeavesNothing checks that DeleteGroup's cascade removes
// every row of the group, history and Welcome trees included: the contract
// cannot see orphan rows, which a new group never reads (its row id is
// new), but they would fill the file.
func TestGroupDeleteLeavesNothing(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	g := storetest.NewGroup(t, []byte("deleted group"), 1)
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		var c store.EpochCommit
		g, c = g.Commit(t, storetest.Adds(t, i)...) // Welcome epochs, then history
		if err := commitErr(s.CommitEpoch(ctx, c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddProposal(ctx, g.State.GroupID(), g.State.Epoch(), store.PendingProposal{Ref: []byte("r"), Message: []byte("m")}); err != nil {
		t.Fatal(err)
	}
	tables := []string{"group_hubs", "mls_groups", "mls_group_nodes", "mls_group_node_history", "mls_group_welcomes",
		"mls_group_joiners", "mls_group_proposals"}
	count := func(table string) int {
		var n int
		if err := s.w.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, table := range tables {
		if count(table) == 0 {
			t.Fatalf("%s is empty before the delete: the test does not cover it", table)
		}
	}
	if err := s.DeleteGroup(ctx, g.State.GroupID()); err != nil {
		t.Fatal(err)
	}
	for _, table := range tables {
		if n := count(table); n != 0 {
			t.Errorf("%s keeps %d rows of the deleted group", table, n)
		}
	}
}

// TestJoinersLeaveWithTheirTree checks that the joiner rows of a Welcome
// epoch are deleted with its mls_group_welcomes row, by the commit that
// ends its epochs and by DeleteExpired: the contract cannot see them once
// the tree is gone, but they would fill the file.
func TestJoinersLeaveWithTheirTree(t *testing.T) {
	ctx := context.Background()
	count := func(t *testing.T, s *Store) (joiners, welcomes int) {
		t.Helper()
		if err := s.w.QueryRow("SELECT (SELECT count(*) FROM mls_group_joiners), (SELECT count(*) FROM mls_group_welcomes)").
			Scan(&joiners, &welcomes); err != nil {
			t.Fatal(err)
		}
		return joiners, welcomes
	}
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, s *Store, clock *storetest.Clock, g *storetest.Group)
	}{
		{"by epochs", func(t *testing.T, s *Store, _ *storetest.Clock, g *storetest.Group) {
			for range store.WelcomeTreeEpochs {
				var c store.EpochCommit
				g, c = g.Commit(t)
				if err := commitErr(s.CommitEpoch(ctx, c)); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"by the sweep", func(t *testing.T, s *Store, clock *storetest.Clock, _ *storetest.Group) {
			clock.Advance(store.WelcomeTreeLifetime)
			if _, err := s.DeleteExpired(ctx, clock.Now()); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := storetest.NewClock()
			s := openTemp(t, WithClock(clock.Now))
			g := storetest.NewGroup(t, []byte("joined group"), 1)
			if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: g.State}); err != nil {
				t.Fatal(err)
			}
			g, c := g.Commit(t, storetest.Adds(t, 3)...)
			if err := commitErr(s.CommitEpoch(ctx, c)); err != nil {
				t.Fatal(err)
			}
			if j, w := count(t, s); j != 3 || w != 1 {
				t.Fatalf("after the add: %d joiner rows and %d Welcome trees, want 3 and 1", j, w)
			}
			tc.end(t, s, clock, g)
			if j, w := count(t, s); j != 0 || w != 0 {
				t.Fatalf("after the tree's end: %d joiner rows and %d Welcome trees are left", j, w)
			}
		})
	}
}

// commitErr is the error of a CommitEpoch, for the tests that check only
// that.
func commitErr(_ store.Delivered, err error) error { return err }

// tableRows counts the rows of the tables a delivery writes to.
func tableRows(t *testing.T, s *Store) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, table := range []string{"group_log", "group_members", "queue_messages", "queue_heads", "queue_bodies"} {
		var n int
		if err := s.r.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		out[table] = n
	}
	return out
}

// TestGroupPostRows checks what a post to a group of 2,000 local members
// writes: one log row and a membership row per joiner, whatever the number
// of members (issue 9: a commit in a large group writes O(log n) rows), no
// queue row; and that every member but the excepted one reads it.
func TestGroupPostRows(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	const n = 2000
	members := make([]string, n)
	for i := range members {
		members[i] = fmt.Sprintf("mimi://a.example/d/user%d/phone", i)
	}
	g := storetest.NewGroup(t, []byte("large group"), 2)
	gid := g.State.GroupID()
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State, Members: members}); err != nil {
		t.Fatal(err)
	}
	joiner := func(i int) string { return fmt.Sprintf("mimi://a.example/d/new%d/phone", i) }
	for _, tc := range []struct {
		name        string
		join, leave []string
		wantMembers int // group_members rows added
	}{
		{"a message", nil, nil, 0},
		{"a commit adding three", []string{joiner(0), joiner(1), joiner(2)}, nil, 3},
		{"a commit removing two", nil, members[n-2:], 0},
		{"a commit adding one and removing one", []string{joiner(3)}, members[n-3 : n-2], 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tableRows(t, s)
			d, err := s.Deliver(ctx, gid, g.State.Epoch(), store.Fanout{Group: &store.GroupPost{GroupID: gid,
				Sender: members[0], Message: []byte(tc.name), Except: members[0], Join: tc.join, Leave: tc.leave}})
			if err != nil {
				t.Fatal(err)
			}
			after := tableRows(t, s)
			want := maps.Clone(before)
			want["group_log"]++
			want["group_members"] += tc.wantMembers
			if !maps.Equal(after, want) {
				t.Fatalf("rows after the post %v, want %v", after, want)
			}
			for _, c := range []string{members[0], members[1], members[n-1]} {
				msgs, err := s.Fetch(ctx, c, d.Group-1, store.FetchLimit{})
				if err != nil {
					t.Fatal(err)
				}
				sees := c != members[0] && (c != members[n-1] || d.Group <= 3)
				if got := len(msgs) == 1 && string(msgs[0].Message) == tc.name; got != sees {
					t.Fatalf("%s reads the post: %t, want %t (%+v)", c, got, sees, msgs)
				}
			}
		})
	}
}
