package pgtest

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestNewDB checks that each test gets its own empty database, writable,
// on a server that keeps fsync on.
func TestNewDB(t *testing.T) {
	ctx := context.Background()
	eachDistinctDB(t, []string{NewDB(t), NewDB(t)}, func(t *testing.T, i int, conn *pgx.Conn) {
		var tables int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil {
			t.Fatalf("counting tables: %v", err)
		}
		if tables != 0 {
			t.Fatalf("database %d has %d tables, want none", i, tables)
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE t (x int)"); err != nil {
			t.Fatalf("creating a table: %v", err)
		}
		var fsync string
		if err := conn.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil {
			t.Fatalf("reading fsync: %v", err)
		}
		if fsync != "on" {
			t.Fatalf("fsync is %s, want on", fsync)
		}
	})
}

// eachDistinctDB checks that dsns name distinct databases and runs check
// on a connection to each, in a subtest of its own.
func eachDistinctDB(t *testing.T, dsns []string, check func(t *testing.T, i int, conn *pgx.Conn)) {
	t.Helper()
	if dsns[0] == dsns[1] {
		t.Fatalf("two databases share the DSN %s", dsns[0])
	}
	for i, dsn := range dsns {
		t.Run(fmt.Sprint("database ", i), func(t *testing.T) {
			conn, err := pgx.Connect(t.Context(), dsn)
			if err != nil {
				t.Fatalf("connecting: %v", err)
			}
			defer conn.Close(context.Background())
			check(t, i, conn)
		})
	}
}

// TestCreateDB checks that CreateDB, outside a test's lifetime, makes a
// new database each time that outlives the test that asked for it.
func TestCreateDB(t *testing.T) {
	require(t) // skips (or fails under $CI) without PostgreSQL
	ctx := context.Background()
	var dsns []string
	for i := 0; i < 2; i++ {
		dsn, err := CreateDB()
		if err != nil {
			t.Fatalf("CreateDB: %v", err)
		}
		dsns = append(dsns, dsn)
	}
	eachDistinctDB(t, dsns, func(t *testing.T, _ int, conn *pgx.Conn) {
		if _, err := conn.Exec(ctx, "CREATE TABLE t (x int)"); err != nil {
			t.Fatalf("creating a table: %v", err)
		}
	})
}

func TestVersionOrder(t *testing.T) {
	for _, c := range []struct {
		newer, older string
	}{
		{"/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"},
		{"/usr/lib/postgresql/10/bin", "/usr/lib/postgresql/9.6/bin"},
	} {
		t.Run(c.newer, func(t *testing.T) {
			if version(c.newer) <= version(c.older) {
				t.Fatalf("version(%s) = %v is not above version(%s) = %v", c.newer, version(c.newer), c.older, version(c.older))
			}
		})
	}
}
