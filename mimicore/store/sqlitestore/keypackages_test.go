package sqlitestore

import (
	"context"
	"errors"
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
	ctx := context.Background()
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
	if got, err := s.KeyPackageByRef(ctx, kp.Ref); err != nil || !got.Claimed || string(got.KeyPackage) != string(kp.KeyPackage) {
		t.Fatalf("KeyPackageByRef within the retention: %+v, %v", got, err)
	}
	clock.Advance(store.ClaimedKeyPackageRetention)
	if n, err := s.DeleteExpired(ctx, clock.Now()); err != nil || n != 1 {
		t.Fatalf("DeleteExpired past the retention: %d, %v; want the bytes of 1 package dropped", n, err)
	}
	var size int
	if err := s.w.QueryRow(`SELECT length(key_package) + length(client) FROM key_packages WHERE ref = ?1`, kp.Ref).Scan(&size); err != nil || size != 0 {
		t.Fatalf("past the retention the row holds %d bytes of package and client (%v), want 0", size, err)
	}
	if _, err := s.KeyPackageByRef(ctx, kp.Ref); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("KeyPackageByRef past the retention: %v, want not found", err)
	}
	if err := s.PublishKeyPackages(ctx, client, []store.KeyPackage{kp}, store.KeyPackageLimits{}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("publishing the claimed package again past the retention: %v, want a conflict", err)
	}
	clock.Advance(24 * time.Hour)
	if n, err := s.DeleteExpired(ctx, clock.Now()); err != nil || n != 1 {
		t.Fatalf("DeleteExpired past the NotAfter: %d, %v; want 1", n, err)
	}
}
