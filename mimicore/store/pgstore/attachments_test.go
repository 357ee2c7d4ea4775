package pgstore

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestMigrationUnreferencedByName applies the migration that indexes
// unreferenced attachment objects by name to a database of the version
// before it that holds 200,000 objects, 2,000 of them unreferenced (a
// sweep's backlog): the sweep's listing then reads its page from the new
// index, in name order, without sorting every unreferenced object, and
// pages through them all.
func TestMigrationUnreferencedByName(t *testing.T) {
	const objects, every = 200_000, 100 // one object in every is unreferenced
	ctx := context.Background()
	dsn, pool, version := poolBefore(t, schemaUnreferencedByName)
	_, err := pool.Exec(ctx, `INSERT INTO attachment_objects (name, refs, created_ms)
		SELECT md5(i::text), CASE WHEN i % $2 = 0 THEN 0 ELSE 1 END, 0 FROM generate_series(1, $1) AS i`, objects, every)
	pool.Close()
	if err != nil {
		t.Fatalf("writing objects at version %d: %v", version, err)
	}
	var want []string
	for i := every; i <= objects; i += every {
		sum := md5.Sum([]byte(fmt.Sprint(i)))
		want = append(want, hex.EncodeToString(sum[:]))
	}
	slices.Sort(want)

	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("opening the database of version %d: %v", version, err)
	}
	t.Cleanup(func() { s.Close() })
	if vs := schemaVersions(t, dsn); vs[len(vs)-1] != latestVersion() {
		t.Fatalf("schema_version holds %v, want up to %d", vs, latestVersion())
	}
	if _, err := s.pool.Exec(ctx, `ANALYZE attachment_objects`); err != nil {
		t.Fatal(err)
	}
	for _, after := range []string{"", want[len(want)/2]} {
		t.Run(fmt.Sprintf("plan after %q", after), func(t *testing.T) {
			var plan string
			if err := s.pool.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+unreferencedSQL, after, 256).Scan(&plan); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(plan, `"Sort"`) || !strings.Contains(plan, `"attachment_objects_unreferenced_names"`) {
				t.Fatalf("the listing of unreferenced objects does not read the name index in order:\n%s", plan)
			}
		})
	}
	var got []string
	for after := ""; ; {
		page, err := s.UnreferencedObjects(ctx, after, 256)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
		after = page[len(page)-1]
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %d unreferenced objects, want the %d in name order", len(got), len(want))
	}
}

// TestMigrationObjectKeep applies the migration that keeps attachment
// objects until a late commit of their bytes can no longer land to a
// database of the version before it: an unreferenced object written
// before it is forgotten as before, and a reservation made after it keeps
// its object's row until its KeepObject.
func TestMigrationObjectKeep(t *testing.T) {
	ctx := context.Background()
	dsn, pool, version := poolBefore(t, schemaObjectKeep)
	const old = "00000000000000000000000000000001"
	_, err := pool.Exec(ctx, `INSERT INTO attachment_objects (name, refs, created_ms) VALUES ($1, 0, 0)`, old)
	pool.Close()
	if err != nil {
		t.Fatalf("writing an object row of version %d: %v", version, err)
	}
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("opening the database of version %d: %v", version, err)
	}
	t.Cleanup(func() { s.Close() })
	storetest.CheckObjectKeepMigrated(t, s, old)
}
