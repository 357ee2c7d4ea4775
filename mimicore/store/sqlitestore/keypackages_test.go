package sqlitestore

import (
	"context"
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
	path, raw, version := openBefore(t, schemaKeyPackagesHandedOut)
	exp := time.Now().Add(time.Hour)
	old := storetest.KP(client, 1, "old lr", exp, true)
	one := storetest.KP(client, 1, "one", exp, false)
	for _, kp := range []store.KeyPackage{old, one} {
		if _, err := raw.Exec(`INSERT INTO key_packages (ref, client, suite, key_package, not_after_ms, last_resort, published_ms, claimed_ms, expires_ms)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?5)`,
			kp.Ref, kp.Client, kp.Suite, kp.KeyPackage, exp.UnixMilli(), kp.LastResort, time.Now().UnixMilli()); err != nil {
			t.Fatalf("writing a KeyPackage of version %d: %v", version, err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
	storetest.CheckHandedOutMigrated(t, s, client, old, one, exp)
}

// TestMigrationKeyPackagesRetained applies the migration that keeps a
// claimed KeyPackage's ref until its NotAfter to a database of the version
// before it holding a package claimed then: KeyPackageByRef finds it
// within the retention, a publish of it is refused past the retention,
// when the sweep has dropped its bytes, and the sweep after its NotAfter
// removes it.
func TestMigrationKeyPackagesRetained(t *testing.T) {
	const client = "mimi://a.example/d/alice/phone"
	ctx := context.Background()
	path, raw, version := openBefore(t, schemaKeyPackagesRetained)
	clock := storetest.NewClock()
	exp := clock.Now().Add(store.ClaimedKeyPackageRetention + 24*time.Hour)
	kp := storetest.KP(client, 1, "claimed", exp, false)
	claimed := clock.Now().Add(-time.Hour)
	if _, err := raw.Exec(`INSERT INTO key_packages (ref, client, suite, key_package, not_after_ms, last_resort, published_ms, claimed_ms, expires_ms)
		VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6, ?7)`,
		kp.Ref, kp.Client, kp.Suite, kp.KeyPackage, exp.UnixMilli(), claimed.UnixMilli(),
		claimed.Add(store.ClaimedKeyPackageRetention).UnixMilli()); err != nil {
		t.Fatalf("writing a KeyPackage of version %d: %v", version, err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, path, WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	storetest.CheckRetainedMigrated(t, s, clock, client, kp, func() (size int, err error) {
		err = s.w.QueryRow(`SELECT length(key_package) + length(client) FROM key_packages WHERE ref = ?1`, kp.Ref).Scan(&size)
		return size, err
	})
}
