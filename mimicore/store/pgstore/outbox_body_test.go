package pgstore

import (
	"context"
	"testing"
	"time"

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
	s := openTemp(t, Options{})
	storetest.CheckOutboxFanoutSize(t, s, "tables", func() int64 {
		t.Helper()
		var n int64
		if err := s.pool.QueryRow(context.Background(), `SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
			JOIN pg_namespace ns ON ns.oid = c.relnamespace
			WHERE ns.nspname = current_schema() AND c.relkind = 'r'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	})
}

// TestMigrationOutboxBodies applies the migration that stores outbox
// bodies once per write to a database of the version before it, whose
// outbox rows (two of them with equal bytes) each get a body of their own
// (storetest.CheckOutboxBodiesMigrated), and the ids of later bodies
// follow theirs.
func TestMigrationOutboxBodies(t *testing.T) {
	ctx := context.Background()
	dsn, pool, version := poolBefore(t, schemaOutboxBodies)
	old := storetest.OldOutboxMessages()
	for _, m := range old {
		if _, err := pool.Exec(ctx, `INSERT INTO outbox (sender, destination, group_id, recipients, message, enqueued_ms, size)
			VALUES ('a.example', $1, $2, $3, $4, $5, $6)`, m.Destination, m.GroupID, m.Recipients, m.Message, time.Now().UnixMilli(), m.Size()); err != nil {
			pool.Close()
			t.Fatalf("writing an outbox row of version %d: %v", version, err)
		}
		if _, err := pool.Exec(ctx, outboxAdmitSQL, m.Destination, 1, m.Size(), 1000, 1<<30); err != nil {
			pool.Close()
			t.Fatalf("counting an outbox row of version %d: %v", version, err)
		}
	}
	pool.Close()
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("opening the database of version %d: %v", version, err)
	}
	t.Cleanup(func() { s.Close() })
	storetest.CheckOutboxBodiesMigrated(t, s, outboxBodies(s), old)
}

// waitLockWaiters waits until n backends of s's database wait for a lock.
func waitLockWaiters(t *testing.T, s *Store, n int) {
	t.Helper()
	for {
		var waiting int
		if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatalf("reading the backends that wait for a lock: %v", err)
		}
		if waiting >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOutboxBodyRemovalLockOrder checks that a lease holder's release and
// a removal of OutboxDelivered, of two messages of one destination that
// share a body, take the destination's head and the body in the same
// order, so that neither ends in a deadlock: the removal, first to wait
// for the body (locked by a third transaction), gets it first, while the
// release, after it, already holds the head.
func TestOutboxBodyRemovalLockOrder(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t, Options{})
	const dest = "c.example"
	msg := []byte("one body for two messages to one destination")
	ids, err := s.OutboxAdd(ctx, store.OutboxWrite{Messages: []store.OutboxMessage{
		{Sender: "a.example", Destination: dest, GroupID: []byte("g1"), Recipients: []string{"mimi://c.example/d/al/pc"}, Message: msg},
		{Sender: "a.example", Destination: dest, GroupID: []byte("g1"), Recipients: []string{"mimi://c.example/d/bo/pc"}, Message: msg},
	}})
	if err != nil {
		t.Fatalf("OutboxAdd: %v", err)
	}
	if _, ok, err := s.OutboxClaim(ctx, dest, "gw1", time.Now(), time.Minute, 10); err != nil || !ok {
		t.Fatalf("OutboxClaim: granted %v, %v", ok, err)
	}
	locker, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Rollback(ctx)
	if _, err := locker.Exec(ctx, `SELECT 1 FROM outbox_bodies FOR UPDATE`); err != nil {
		t.Fatalf("locking the body: %v", err)
	}
	delivered, released := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := s.OutboxDelivered(ctx, dest, ids[1:])
		delivered <- err
	}()
	waitLockWaiters(t, s, 1)
	go func() {
		_, err := s.OutboxRelease(ctx, dest, "gw1", ids[:1])
		released <- err
	}()
	waitLockWaiters(t, s, 2)
	if err := locker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-delivered; err != nil {
		t.Errorf("OutboxDelivered: %v", err)
	}
	if err := <-released; err != nil {
		t.Errorf("OutboxRelease: %v", err)
	}
	b, err := s.OutboxDestinationBacklog(ctx, dest)
	if err != nil {
		t.Fatal(err)
	}
	if b.Messages != 0 || b.Bytes != 0 {
		t.Errorf("backlog after both removals: %d messages of %d bytes, want none", b.Messages, b.Bytes)
	}
	wantNoBodies(t, s)
}

// wantNoBodies checks that s's outbox holds no body.
func wantNoBodies(t *testing.T, s *Store) {
	t.Helper()
	n, err := outboxBodies(s)()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d outbox bodies left, want none", n)
	}
}
