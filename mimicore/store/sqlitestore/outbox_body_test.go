package sqlitestore

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

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
	s := openTemp(t)
	storetest.CheckOutboxFanoutSize(t, s, "database", func() int64 { return dbBytes(t, s) })
}

// TestMigrationOutboxBodies applies the migration that stores outbox
// bodies once per write to a database of the version before it, whose
// outbox rows (two of them with equal bytes) each get a body of their own
// (storetest.CheckOutboxBodiesMigrated).
func TestMigrationOutboxBodies(t *testing.T) {
	path, raw, version := openBefore(t, schemaOutboxBodies)
	old := storetest.OldOutboxMessages()
	for _, m := range old {
		w, err := newOutboxRows([]store.OutboxMessage{m})
		if err != nil {
			t.Fatal(err)
		}
		r := w.rows[0]
		if _, err := raw.Exec(`INSERT INTO outbox (sender, destination, group_id, recipients, message, enqueued_ms, size) VALUES ('a.example', ?1, ?2, ?3, ?4, ?5, ?6)`,
			r.destination, r.groupID, r.recipients, m.Message, time.Now().UnixMilli(), r.size); err != nil {
			t.Fatalf("writing an outbox row of version %d: %v", version, err)
		}
		if _, err := raw.Exec(outboxAdmitSQL, r.destination, 1, r.size, 1000, 1<<30); err != nil {
			t.Fatalf("counting an outbox row of version %d: %v", version, err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
	storetest.CheckOutboxBodiesMigrated(t, s, outboxBodies(s), old)
}

// wantOutboxBodyRefs checks the link of s's outbox rows and bodies: every
// row's body is stored, and every body's refs is the number of its rows.
func wantOutboxBodyRefs(t *testing.T, s *Store) {
	t.Helper()
	var orphans, wrong int
	if err := s.w.QueryRow(`SELECT
		(SELECT COUNT(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM outbox_bodies b WHERE b.id = o.body_id)),
		(SELECT COUNT(*) FROM outbox_bodies b WHERE b.refs != (SELECT COUNT(*) FROM outbox o WHERE o.body_id = b.id))`).Scan(&orphans, &wrong); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 || wrong != 0 {
		t.Fatalf("%d outbox rows without their body, %d bodies whose refs are not their rows", orphans, wrong)
	}
}

// peakMemory reads the process's peak resident set (VmHWM) in bytes, and
// whether it could.
func peakMemory() (int64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

// TestMigrationOutboxBodiesMemory migrates an outbox of 40 MB and checks
// that opening the store and migrating it grows the process's peak memory
// by less than the outbox's size: the store keeps temp files in memory
// (temp_store), so a statement journal of every outbox page (which an
// ALTER TABLE DROP COLUMN inside the migration's transaction writes) took
// about three times the outbox in memory at once, and a hub with a large
// backlog could not start.
func TestMigrationOutboxBodiesMemory(t *testing.T) {
	const rows, size = 20000, 2000
	if raceEnabled {
		t.Skip("the race detector's memory and slowness (SQLite is translated Go) make the measure meaningless")
	}
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak resident set: %v", err)
	}
	path, raw, version := openBefore(t, schemaOutboxBodies)
	if _, err := raw.Exec(`WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
		INSERT INTO outbox (sender, destination, group_id, recipients, message, enqueued_ms, size)
		SELECT 'a.example', 'p' || (n % 20) || '.example', x'01', '[]', randomblob(?2), 0, ?2 FROM g`, rows, size); err != nil {
		t.Fatalf("writing outbox rows of version %d: %v", version, err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
	before, ok := peakMemory()
	if !ok {
		t.Skip("no VmHWM in /proc/self/status")
	}
	s := openAt(t, path)
	after, _ := peakMemory()
	wantOutboxBodyRefs(t, s)
	if grew := after - before; grew >= rows*size {
		t.Fatalf("migrating an outbox of %d bytes grew the peak memory by %d bytes, want less", rows*size, grew)
	}
}

// TestMigrationOutboxBodiesKeepsIDs checks that the migration, which
// rebuilds the outbox table, keeps its AUTOINCREMENT sequence: an id
// handed out before it, even of a row since delivered, is never handed
// out again.
func TestMigrationOutboxBodiesKeepsIDs(t *testing.T) {
	path, raw, version := openBefore(t, schemaOutboxBodies)
	var last int64
	for range 3 {
		if err := raw.QueryRow(`INSERT INTO outbox (sender, destination, group_id, recipients, message, enqueued_ms, size)
			VALUES ('a.example', 'c.example', x'01', '[]', x'02', 0, 1) RETURNING id`).Scan(&last); err != nil {
			t.Fatalf("writing an outbox row of version %d: %v", version, err)
		}
	}
	if _, err := raw.Exec(`DELETE FROM outbox WHERE id >= ?1 - 1`, last); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
	ids, err := s.OutboxAdd(context.Background(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example",
		Destination: "c.example", GroupID: []byte("g1"), Recipients: []string{"mimi://c.example/d/al/pc"}, Message: []byte("after")}}})
	if err != nil {
		t.Fatalf("OutboxAdd: %v", err)
	}
	if ids[0] <= uint64(last) {
		t.Fatalf("the first outbox id after the migration is %d, want above %d, the last before it", ids[0], last)
	}
}
