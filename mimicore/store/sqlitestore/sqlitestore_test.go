package sqlitestore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass/spenttest"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		os.Exit(crashChild(path))
	}
	os.Exit(m.Run())
}

// openTemp opens a store on a new file in t's temporary directory and
// closes it when t ends.
func openTemp(t testing.TB, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "mimi.db"), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestContract(t *testing.T) {
	storetest.RunContractTests(t, func(t *testing.T) store.Store { return openTemp(t) })
}

func TestReopen(t *testing.T) {
	storetest.RunReopenTests(t, func(t *testing.T) func() (store.Store, error) {
		path := filepath.Join(t.TempDir(), "mimi.db")
		return func() (store.Store, error) { return Open(context.Background(), path) }
	})
}

// TestSpentStoreContract runs the privacypass package's own contract tests,
// which policy/privacypass relies on, against MarkSpent.
func TestSpentStoreContract(t *testing.T) {
	spenttest.RunSpentStoreTests(t, func(t *testing.T) privacypass.SpentStore { return openTemp(t) })
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "mimi")
	path := filepath.Join(dir, "mimi.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	// Write, so the WAL and shared-memory files exist.
	if _, err := s.MarkSpent(context.Background(), []byte("k"), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("MarkSpent: %v", err)
	}
	wantMode(t, dir, 0o700|os.ModeDir)
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		wantMode(t, name, 0o600)
	}
}

func wantMode(t *testing.T, name string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	if got := fi.Mode(); got != want {
		t.Errorf("%s has mode %v, want %v", filepath.Base(name), got, want)
	}
}

// TestPathEscaping opens a database whose path holds the bytes that mean
// something in a URI: the file must be created at exactly that path.
func TestPathEscaping(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a b?c=d#e%41&f")
	path := filepath.Join(dir, "x?_pragma=query_only(1)#.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if _, err := s.MarkSpent(context.Background(), []byte("k"), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("MarkSpent: %v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("reading directory: %v", err)
	}
	found := false
	for _, e := range entries {
		if e.Name() == filepath.Base(path) {
			found = true
		}
	}
	if !found {
		t.Fatalf("database not created at %q; directory holds %v", path, entries)
	}
}

// TestConnectionSettings checks the pragmas on every connection: the
// writer's durability settings and the readers' read-only mode.
func TestConnectionSettings(t *testing.T) {
	s := openTemp(t, WithReaders(2))
	ctx := context.Background()
	for _, c := range []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"synchronous", "2"},
		{"foreign_keys", "1"},
		{"busy_timeout", "5000"},
		{"query_only", "0"},
	} {
		var got string
		if err := s.w.QueryRowContext(ctx, "PRAGMA "+c.pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", c.pragma, err)
		}
		if got != c.want {
			t.Errorf("writer: PRAGMA %s = %s, want %s", c.pragma, got, c.want)
		}
	}
	// Hold both reader connections at once so both are checked.
	for i := 0; i < 2; i++ {
		conn, err := s.r.Conn(ctx)
		if err != nil {
			t.Fatalf("reader connection: %v", err)
		}
		defer conn.Close()
		var q int
		if err := conn.QueryRowContext(ctx, "PRAGMA query_only").Scan(&q); err != nil {
			t.Fatalf("PRAGMA query_only: %v", err)
		}
		if q != 1 {
			t.Errorf("reader %d: query_only = %d, want 1", i, q)
		}
		if _, err := conn.ExecContext(ctx, "INSERT INTO spent_tokens (key, expires_ms) VALUES (x'01', 0)"); err == nil {
			t.Errorf("reader %d accepted a write", i)
		}
	}
}

func TestMigrationsContiguous(t *testing.T) {
	for i, m := range migrations {
		if m.version != i+1 {
			t.Fatalf("migration %d has version %d, want %d", i, m.version, i+1)
		}
		if m.name == "" || m.sql == "" {
			t.Fatalf("migration %d has no name or no SQL", m.version)
		}
	}
}

func schemaVersion(t *testing.T, s *Store) int {
	t.Helper()
	var v int
	if err := s.w.QueryRow("SELECT MAX(version) FROM schema_version").Scan(&v); err != nil {
		t.Fatalf("reading schema version: %v", err)
	}
	return v
}

func TestSchemaTooNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mimi.db")
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if v := schemaVersion(t, s); v != latestVersion() {
		t.Fatalf("new database at version %d, want %d", v, latestVersion())
	}
	if _, err := s.w.Exec("INSERT INTO schema_version (version, name, applied_ms) VALUES (?1, 'from the future', 0)", latestVersion()+1); err != nil {
		t.Fatalf("faking a newer schema: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := Open(ctx, path); !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema: got %v, want ErrSchemaTooNew", err)
	}
}

// TestMigrationAppends checks the framework later issues rely on: a new
// step applies to an existing database once, and a failing step leaves the
// database at its old version with nothing of the step applied.
func TestMigrationAppends(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	now := time.Now()
	v2 := migration{latestVersion() + 1, "test table", "CREATE TABLE test_v2 (x INTEGER NOT NULL);"}
	steps := append(append([]migration(nil), migrations...), v2)
	for i := 0; i < 2; i++ { // the second run finds nothing to do
		if err := migrateTo(ctx, s.w, steps, now); err != nil {
			t.Fatalf("migrating to version %d: %v", v2.version, err)
		}
	}
	if v := schemaVersion(t, s); v != v2.version {
		t.Fatalf("schema at version %d, want %d", v, v2.version)
	}
	if _, err := s.w.Exec("INSERT INTO test_v2 (x) VALUES (1)"); err != nil {
		t.Fatalf("using the migrated table: %v", err)
	}

	bad := migration{v2.version + 1, "half broken", "CREATE TABLE test_v3 (x INTEGER); INSERT INTO no_such_table VALUES (1);"}
	if err := migrateTo(ctx, s.w, append(steps, bad), now); err == nil {
		t.Fatal("a failing migration reported success")
	}
	if v := schemaVersion(t, s); v != v2.version {
		t.Fatalf("after a failed migration the schema is at version %d, want %d", v, v2.version)
	}
	var n int
	if err := s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'test_v3'").Scan(&n); err != nil {
		t.Fatalf("reading schema: %v", err)
	}
	if n != 0 {
		t.Fatal("a failed migration left part of its changes behind")
	}
}

// TestClock checks that expiry follows the clock given with WithClock.
func TestClock(t *testing.T) {
	now := time.Unix(1_000_000_000, 0)
	s := openTemp(t, WithClock(func() time.Time { return now }))
	ctx := context.Background()
	key := []byte("token")
	first, err := s.MarkSpent(ctx, key, now.Add(time.Minute))
	if err != nil || !first {
		t.Fatalf("MarkSpent = %t, %v; want first use", first, err)
	}
	now = now.Add(time.Minute - time.Millisecond)
	if first, err := s.MarkSpent(ctx, key, now.Add(time.Minute)); err != nil || first {
		t.Fatalf("MarkSpent 1 ms before expiry = %t, %v; want replay", first, err)
	}
	now = now.Add(time.Millisecond)
	if first, err := s.MarkSpent(ctx, key, now.Add(time.Minute)); err != nil || !first {
		t.Fatalf("MarkSpent at expiry = %t, %v; want first use", first, err)
	}
}

// TestExpiryRoundsUp checks that an expiry between two milliseconds keeps
// the record until the later one.
func TestExpiryRoundsUp(t *testing.T) {
	base := time.Unix(1_000_000_000, 0)
	now := base
	s := openTemp(t, WithClock(func() time.Time { return now }))
	ctx := context.Background()
	if _, err := s.MarkSpent(ctx, []byte("k"), base.Add(time.Millisecond+time.Microsecond)); err != nil {
		t.Fatalf("MarkSpent: %v", err)
	}
	now = base.Add(time.Millisecond + time.Microsecond/2) // before the expiry
	if first, err := s.MarkSpent(ctx, []byte("k"), now.Add(time.Minute)); err != nil || first {
		t.Fatalf("MarkSpent before the expiry = %t, %v; want replay", first, err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, ""); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Open(\"\"): got %v, want ErrInvalid", err)
	}
	// A directory where the file should be.
	dir := t.TempDir()
	if _, err := Open(ctx, dir); err == nil {
		t.Error("Open of a directory succeeded")
	}
	// A file that is not a database.
	junk := filepath.Join(t.TempDir(), "junk.db")
	if err := os.WriteFile(junk, []byte("this is not an SQLite database, not at all, no"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, junk); err == nil {
		t.Error("Open of a file that is not a database succeeded")
	}
}

// TestMigrationV2KeepsReplayEntries checks that the rebuild of
// replay_requests in schema version 2 keeps every entry: a completed one
// still answers its retry with the recorded bytes and a pending one is still
// in progress, so no request runs twice across the upgrade.
func TestMigrationV2KeepsReplayEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mimi.db")
	ctx := context.Background()
	raw, err := sql.Open("sqlite", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, raw, migrations[:1], time.Now()); err != nil {
		t.Fatalf("migrating to version 1: %v", err)
	}
	exp := time.Now().Add(time.Hour).UnixMilli()
	done, pending := digestOf("done"), digestOf("pending")
	for _, row := range []struct {
		id     string
		digest [32]byte
		status any
		body   any
	}{
		{"done", done, 200, []byte("answer")},
		{"pending", pending, nil, nil},
	} {
		if _, err := raw.Exec("INSERT INTO replay_requests (sender, request_id, digest, expires_ms, status, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
			"a.example", []byte(row.id), row.digest[:], exp, row.status, row.body); err != nil {
			t.Fatalf("writing a version 1 entry: %v", err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open (migrating to the latest version): %v", err)
	}
	defer s.Close()
	for _, tc := range []struct {
		id     string
		digest [32]byte
		want   store.ReplayStatus
		body   string
	}{
		{"done", done, store.ReplayDuplicate, "answer"},
		{"pending", pending, store.ReplayInProgress, ""},
	} {
		t.Run(tc.id, func(t *testing.T) {
			r, err := s.Reserve(ctx, "a.example", []byte(tc.id), tc.digest, time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != tc.want || string(r.Answer.Body) != tc.body {
				t.Fatalf("Reserve after migration = %s %q, want %s %q", r.Status, r.Answer.Body, tc.want, tc.body)
			}
		})
	}
}

func digestOf(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// TestGroupContract runs the group contract twice: with the state cache,
// and without it, so that every load reads the tree from the file.
func TestGroupContract(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cache int
	}{{"cache", DefaultGroupCacheNodes}, {"no-cache", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.RunGroupTests(t, func(t *testing.T, clock *storetest.Clock) store.Store {
				return openTemp(t, WithClock(clock.Now), WithGroupCache(tc.cache))
			})
		})
	}
}

func TestKeyPackageContract(t *testing.T) {
	storetest.RunKeyPackageTests(t, func(t *testing.T, clock *storetest.Clock) store.Store {
		return openTemp(t, WithClock(clock.Now))
	})
}

func TestQueueContract(t *testing.T) {
	storetest.RunQueueTests(t, func(t *testing.T, clock *storetest.Clock) store.Store {
		return openTemp(t, WithClock(clock.Now))
	})
}

// syncers counts the goroutines running a store's syncer
// ((*durability).run).
func syncers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "sqlitestore.(*durability).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestFailedOpenStopsItsSyncer fails an Open after it started the
// syncer of its log (its replay table unreadable, so loading the replay
// filter fails): the failed Open must not leave the syncer running, one
// goroutine per attempt (a Caddy reload retried against a broken file).
func TestFailedOpenStopsItsSyncer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mimi.db")
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open("sqlite", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec("ALTER TABLE replay_requests RENAME TO replay_requests_elsewhere"); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	before := syncers()
	for range 3 {
		if s, err := Open(ctx, path); err == nil {
			s.Close()
			t.Fatal("Open succeeded without its replay table")
		}
	}
	// A syncer that was told to stop ends at once; give the scheduler a
	// while before concluding that one was left running.
	deadline := time.Now().Add(30 * time.Second)
	for syncers() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := syncers(); n > before {
		t.Fatalf("%d syncers running after three failed Opens, %d before", n, before)
	}
}
