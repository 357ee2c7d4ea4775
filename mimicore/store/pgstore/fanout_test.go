package pgstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// alterDatabase runs ALTER DATABASE ... SET setting = value on the
// database of dsn, for the sessions that start afterwards.
func alterDatabase(t *testing.T, dsn, setting, value string) {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET `+setting+` = %L', current_database(), '`+value+`'); END $$`); err != nil {
		t.Fatalf("setting %s: %v", setting, err)
	}
}

// deadlocks is the count of deadlocks in the database of dsn, once the
// sessions other than the one it opens have ended (a session reports its
// deadlocks at the latest when it ends).
func deadlocks(t *testing.T, dsn string) int64 {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	for tries := 0; ; tries++ {
		var others int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&others); err != nil {
			t.Fatalf("listing sessions: %v", err)
		}
		if others == 0 {
			break
		}
		if tries == 3000 { // 30 s, only against a hang
			t.Fatalf("%d sessions still on the database after 30 s", others)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var n int64
	if _, err := conn.Exec(ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
		t.Fatalf("clearing the statistics snapshot: %v", err)
	}
	if err := conn.QueryRow(ctx, `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`).Scan(&n); err != nil {
		t.Fatalf("reading the deadlock count: %v", err)
	}
	return n
}

// TestDeliverMembersUnknown has 8 Delivers race to post to a group whose
// members are not recorded yet (a group from before schema version 7),
// each with the members: all of them succeed, and none deadlocks on the
// group's row (each took its share lock, then the first to record the
// members needed the row exclusively).
func TestDeliverMembersUnknown(t *testing.T) {
	dsn := pgtest.NewDB(t)
	// The deadlocks, if any, are found at once.
	alterDatabase(t, dsn, "deadlock_timeout", "10ms")
	ctx := context.Background()
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	g := storetest.NewGroup(t, []byte("0123456789abcdef"), 2)
	gid := g.State.GroupID()
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: g.State}); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	if _, err := s.pool.Exec(ctx, `UPDATE mls_groups SET members_known = false`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM group_members`); err != nil {
		t.Fatal(err)
	}
	members := []string{"mimi://a.example/d/alice/phone", "mimi://a.example/d/bob/phone"}
	const racers = 8
	errs := make([]error, racers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = s.Deliver(ctx, gid, g.State.Epoch(), store.Fanout{Group: &store.GroupPost{GroupID: gid,
				Sender: members[0], Message: []byte("hi"), Members: members}})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Deliver %d: %v", i, err)
		}
	}
	var posts, current int
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM group_log), (SELECT count(*) FROM group_members WHERE to_seq IS NULL)`).Scan(&posts, &current); err != nil {
		t.Fatal(err)
	}
	if posts != racers || current != len(members) {
		t.Errorf("%d posts and %d members recorded, want %d and %d", posts, current, racers, len(members))
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := deadlocks(t, dsn); n != 0 {
		t.Errorf("%d deadlocks", n)
	}
}
