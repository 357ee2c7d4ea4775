package pgstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestRoundTrips checks Stats.RoundTrips against what each operation
// sends on a connection that prepared its statements already: with a pool
// of one connection, an operation run twice costs the round trips of its
// statements the second time, and the prepares on top the first time.
// What a case's setup sends before each run is not counted.
func TestRoundTrips(t *testing.T) {
	s := openTemp(t, Options{MaxConns: 1})
	ctx := context.Background()
	expires := time.Now().Add(time.Hour)
	n := 0
	delivery := func(recipients ...string) func() error {
		return func() error {
			n++
			_, err := s.Append(ctx, store.Delivery{
				Recipients: recipients, Sender: "b.example", Message: []byte("message"),
				Dedup: key32("dedup", n), DedupExpires: expires,
				Replay: &store.ReplayRecord{Sender: "b.example", RequestID: fmt.Appendf(nil, "request %d", n),
					Answer: store.Answer{Body: []byte("answer")}, Expires: expires},
			})
			return err
		}
	}
	// queued appends a message for each of recipients and answers its
	// sequence number in the first one's queue.
	var last uint64
	queued := func(recipients ...string) error {
		n++
		out, err := s.Append(ctx, store.Delivery{Recipients: recipients, Sender: "b.example",
			Message: fmt.Appendf(nil, "message %d", n), Expires: expires})
		if err == nil {
			last = out[0].Seq
		}
		return err
	}
	const alice, bob = "mimi://a.example/d/alice/1", "mimi://a.example/d/bob/1"
	ack := func() error {
		_, err := s.Ack(ctx, alice, last)
		return err
	}
	pinRoundTrips(t, s, []roundTripCase{
		// One INSERT ... ON CONFLICT ... RETURNING, outside a transaction.
		{"MarkSpent", nil, func() error {
			n++
			_, err := s.MarkSpent(ctx, fmt.Appendf(nil, "token %d", n), expires)
			return err
		}, 1},
		// BEGIN; a batch of the dedup record, the replay record and the
		// body; the numbered queue entries; pg_notify; COMMIT.
		{"Append to one queue", nil, delivery("mimi://a.example/d/alice/1"), 5},
		{"Append to three queues", nil, delivery("mimi://a.example/d/alice/1", "mimi://a.example/d/bob/1",
			"mimi://a.example/d/carol/1"), 5},
		// The local client API's fetch: the global sequence and the
		// client's cursor; the entries and group log posts.
		{"Fetch", func() error { return queued(alice) }, func() error {
			_, err := s.Fetch(ctx, alice, 0, store.FetchLimit{})
			return err
		}, 2},
		// The local client API's ack: BEGIN; a batch of the cursor row
		// locked and the global sequence; a batch of the group log posts
		// counted and the entries deleted; a batch of the queue's
		// counters and the bodies' references released, the bodies left
		// unreferenced deleted, the cursor raised and the ended
		// memberships forgotten; COMMIT. As many for any number of
		// messages.
		{"Ack of one message", func() error { return queued(alice) }, ack, 5},
		{"Ack of one message another queue holds too", func() error { return queued(alice, bob) }, ack, 5},
		{"Ack of three messages", func() error {
			return errors.Join(queued(alice), queued(alice), queued(alice))
		}, ack, 5},
	})
}

// roundTripCase is an operation whose round trips on a warm connection
// are pinned.
type roundTripCase struct {
	name string
	// setup, when set, runs before each run of op, not counted.
	setup func() error
	op    func() error
	// want is the round trips of a run on a warm connection.
	want uint64
}

// pinRoundTrips runs each case's op twice on s, whose pool holds one
// connection: the first run may prepare statements, the second must cost
// exactly the case's round trips.
func pinRoundTrips(t *testing.T, s *Store, cases []roundTripCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			setup := func() {
				t.Helper()
				if tc.setup == nil {
					return
				}
				if err := tc.setup(); err != nil {
					t.Fatalf("setup: %v", err)
				}
			}
			setup()
			before := s.Stats().RoundTrips
			if err := tc.op(); err != nil {
				t.Fatalf("first run: %v", err)
			}
			first := s.Stats().RoundTrips - before
			setup()
			if first < tc.want {
				t.Errorf("first run: %d round trips, want at least %d", first, tc.want)
			}
			before = s.Stats().RoundTrips
			if err := tc.op(); err != nil {
				t.Fatalf("second run: %v", err)
			}
			if got := s.Stats().RoundTrips - before; got != tc.want {
				t.Errorf("second run: %d round trips, want %d (first run: %d)", got, tc.want, first)
			}
			if a, b := s.RoundTrips(), s.Stats().RoundTrips; a != b {
				t.Errorf("RoundTrips() = %d, Stats().RoundTrips = %d", a, b)
			}
		})
	}
}

// key32 is a distinct 32-byte key of kind and n.
func key32(kind string, n int) []byte {
	k := sha256.Sum256(fmt.Appendf(nil, "%s %d", kind, n))
	return k[:]
}

// TestGroupRoundTrips pins the round trips of the store operations of a
// Delivery Service commit (an update_client, as the cluster bench's
// commit mode sends): the group's state (LoadGroup: from the cache when it
// holds the current epoch, else read), its pending proposals, and
// CommitEpoch with the commit posted to the group's log.
func TestGroupRoundTrips(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	open := func(o Options) *Store {
		s, err := Open(ctx, dsn, o)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := open(Options{MaxConns: 1})
	cold := open(Options{MaxConns: 1, GroupCacheNodes: -1})
	g := storetest.NewGroup(t, []byte("pinned group"), 3)
	id := g.State.GroupID()
	const member = "mimi://a.example/d/alice/phone"
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State,
		Members: []string{member}}); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	load := func(s *Store) func() error {
		return func() error {
			_, err := s.LoadGroup(ctx, id)
			return err
		}
	}
	var (
		next *storetest.Group
		ec   store.EpochCommit
	)
	pinRoundTrips(t, s, []roundTripCase{
		// The group's head.
		{"LoadGroup of a cached epoch", nil, load(s), 1},
		// The group's epoch and the proposals of the epoch asked for.
		{"PendingProposals", nil, func() error {
			_, err := s.PendingProposals(ctx, id, g.State.Epoch())
			return err
		}, 1},
		// BEGIN; a batch of the head advanced and the Welcome trees
		// ended; a batch of the tree's positions, its history and the
		// proposals dropped; whether the group's members are known; the
		// post numbered and written to the group's log; pg_notify;
		// COMMIT.
		{"CommitEpoch of an update, posted to the group's log", func() error {
			var err error
			next, ec, err = g.MakeCommit()
			ec.Fanout = store.Fanout{Group: &store.GroupPost{GroupID: id, Message: []byte("commit")}}
			return err
		}, func() error {
			if _, err := s.CommitEpoch(ctx, ec); err != nil {
				return err
			}
			g = next
			return nil
		}, 7},
	})
	// A member's ack of a post in the group's log (a message or commit of
	// a group hosted here): no entry of its own to delete.
	var posted uint64
	pinRoundTrips(t, s, []roundTripCase{
		// As for personal entries, without releases in the last batch.
		{"Ack of a group log post", func() error {
			next, ec, err := g.MakeCommit()
			if err != nil {
				return err
			}
			ec.Fanout = store.Fanout{Group: &store.GroupPost{GroupID: id, Message: []byte("commit")}}
			d, err := s.CommitEpoch(ctx, ec)
			if err != nil {
				return err
			}
			g, posted = next, d.Group
			return nil
		}, func() error {
			n, err := s.Ack(ctx, member, posted)
			if err == nil && n == 0 {
				err = errors.New("acknowledged nothing")
			}
			return err
		}, 5},
	})
	pinRoundTrips(t, cold, []roundTripCase{
		// The head; the head again and the tree's positions.
		{"LoadGroup of an epoch not cached", nil, load(cold), 2},
	})
}
