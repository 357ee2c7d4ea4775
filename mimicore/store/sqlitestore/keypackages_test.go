package sqlitestore

import (
	"context"
	"database/sql"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestMigrationKeyPackagesHandedOut applies the migration that records
// whether a last-resort KeyPackage was handed out to a database of the
// version before it: a last-resort package stored then may have been
// handed out, so its replacement keeps it as replaced rather than delete
// it, while single-use packages stay available.
func TestMigrationKeyPackagesHandedOut(t *testing.T) {
	const client = "mimi://a.example/d/alice/phone"
	path := filepath.Join(t.TempDir(), "mimi.db")
	ctx := context.Background()
	raw, err := sql.Open("sqlite", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	before := slices.IndexFunc(migrations, func(m migration) bool { return m.sql == schemaKeyPackagesHandedOut })
	if before < 1 {
		t.Fatal("the migration is not listed")
	}
	if err := migrateTo(ctx, raw, migrations[:before], time.Now()); err != nil {
		t.Fatalf("migrating to version %d: %v", migrations[before-1].version, err)
	}
	exp := time.Now().Add(time.Hour)
	old := storetest.KP(client, 1, "old lr", exp, true)
	one := storetest.KP(client, 1, "one", exp, false)
	for _, kp := range []store.KeyPackage{old, one} {
		if _, err := raw.Exec(`INSERT INTO key_packages (ref, client, suite, key_package, not_after_ms, last_resort, published_ms, claimed_ms, expires_ms)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?5)`,
			kp.Ref, kp.Client, kp.Suite, kp.KeyPackage, exp.UnixMilli(), kp.LastResort, time.Now().UnixMilli()); err != nil {
			t.Fatalf("writing a KeyPackage of version %d: %v", migrations[before-1].version, err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
	if err := s.PublishKeyPackages(ctx, client, []store.KeyPackage{storetest.KP(client, 1, "new lr", exp, true)}, store.KeyPackageLimits{}); err != nil {
		t.Fatal(err)
	}
	got, err := s.KeyPackageByRef(ctx, old.Ref)
	if err != nil || !got.Claimed {
		t.Fatalf("the replaced last resort stored before the migration: %+v, %v; want it kept as replaced", got, err)
	}
	kp, err := s.ClaimKeyPackage(ctx, client, 1)
	if err != nil || string(kp.Ref) != string(one.Ref) {
		t.Fatalf("claim: %q, %v; want the single-use package stored before the migration", kp.Ref, err)
	}
}
