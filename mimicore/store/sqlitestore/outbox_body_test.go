package sqlitestore

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// outboxBodies counts s's outbox_bodies rows.
func outboxBodies(s *Store) storetest.OutboxBodies {
	return func() (int, error) {
		var n int
		err := s.w.QueryRow(`SELECT COUNT(*) FROM outbox_bodies`).Scan(&n)
		return n, err
	}
}

func TestOutboxBodies(t *testing.T) {
	storetest.RunOutboxBodyTests(t, func(t *testing.T) (store.Store, storetest.OutboxBodies) {
		s := openTemp(t)
		return s, outboxBodies(s)
	})
}

// dbBytes is the size of s's database, its pages written to the WAL
// included.
func dbBytes(t *testing.T, s *Store) int64 {
	t.Helper()
	var pages, size int64
	if err := s.w.QueryRow(`PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if err := s.w.QueryRow(`PRAGMA page_size`).Scan(&size); err != nil {
		t.Fatal(err)
	}
	return pages * size
}

// TestOutboxFanoutSize checks that a message of 1 MiB fanned out to 20
// providers grows the database by about 1 MiB, its one body, not 20.
func TestOutboxFanoutSize(t *testing.T) {
	const size, dests = 1 << 20, 20
	ctx := context.Background()
	s := openTemp(t)
	g := storetest.NewGroup(t, []byte("size group"), 1)
	gid := g.State.GroupID()
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, size)
	rand.Read(msg)
	var remote []store.OutboxMessage
	for i := range dests {
		d := fmt.Sprintf("p%d.example", i)
		remote = append(remote, store.OutboxMessage{Sender: "a.example", Destination: d, GroupID: gid,
			Recipients: []string{"mimi://" + d + "/d/carol/phone"}, Message: msg})
	}
	before := dbBytes(t, s)
	if _, err := s.Deliver(ctx, gid, g.State.Epoch(), store.Fanout{Remote: remote}); err != nil {
		t.Fatal(err)
	}
	growth := dbBytes(t, s) - before
	t.Logf("a message of %d bytes to %d providers grew the database by %d bytes", size, dests, growth)
	if growth < size*3/4 || growth > size+size/4 {
		t.Fatalf("a message of %d bytes to %d providers grew the database by %d bytes, want about %d", size, dests, growth, size)
	}
}
