package pgstore

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
		err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox_bodies`).Scan(&n)
		return n, err
	}
}

func TestOutboxBodies(t *testing.T) {
	storetest.RunOutboxBodyTests(t, func(t *testing.T) (store.Store, storetest.OutboxBodies) {
		s := openTemp(t, Options{})
		return s, outboxBodies(s)
	})
}

// TestOutboxFanoutSize checks that a message of 1 MiB fanned out to 20
// providers grows the database by about 1 MiB, its one body, not 20: the
// size of every table of the schema, with its TOAST table and indexes.
func TestOutboxFanoutSize(t *testing.T) {
	const size, dests = 1 << 20, 20
	ctx := context.Background()
	s := openTemp(t, Options{})
	g := storetest.NewGroup(t, []byte("size group"), 1)
	gid := g.State.GroupID()
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	tables := func() int64 {
		t.Helper()
		var n int64
		if err := s.pool.QueryRow(ctx, `SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
			JOIN pg_namespace ns ON ns.oid = c.relnamespace
			WHERE ns.nspname = current_schema() AND c.relkind = 'r'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	msg := make([]byte, size)
	rand.Read(msg)
	var remote []store.OutboxMessage
	for i := range dests {
		d := fmt.Sprintf("p%d.example", i)
		remote = append(remote, store.OutboxMessage{Sender: "a.example", Destination: d, GroupID: gid,
			Recipients: []string{"mimi://" + d + "/d/carol/phone"}, Message: msg})
	}
	before := tables()
	if _, err := s.Deliver(ctx, gid, g.State.Epoch(), store.Fanout{Remote: remote}); err != nil {
		t.Fatal(err)
	}
	growth := tables() - before
	t.Logf("a message of %d bytes to %d providers grew the tables by %d bytes", size, dests, growth)
	if growth < size*3/4 || growth > size+size/4 {
		t.Fatalf("a message of %d bytes to %d providers grew the tables by %d bytes, want about %d", size, dests, growth, size)
	}
}
