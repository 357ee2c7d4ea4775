package storetest

import (
	"context"
	"crypto/sha256"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// The checks after migrations, run by each store's
// migration test once it has written rows of the version before the
// migration in its own SQL and opened s on them.

// CheckHandedOutMigrated checks s, opened on a database migrated past the
// migration that records whether a last-resort KeyPackage was handed out,
// which held client's last-resort package old and single-use package one
// (NotAfter exp) from before it: old may have been handed out, so
// publishing its replacement keeps it as replaced, and one stays
// available.
func CheckHandedOutMigrated(t *testing.T, s store.Store, client string, old, one store.KeyPackage, exp time.Time) {
	t.Helper()
	ctx := context.Background()
	if err := s.PublishKeyPackages(ctx, client, []store.KeyPackage{KP(client, 1, "new lr", exp, true)}, store.KeyPackageLimits{}); err != nil {
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

// CheckRetainedMigrated checks s, opened with clock on a database migrated
// past the migration that keeps a claimed KeyPackage's ref until its
// NotAfter, which held client's package kp, claimed an hour before the
// clock's now, from before it (NotAfter a day past the retention):
// KeyPackageByRef finds it within the retention; past it the sweep drops
// its bytes (rowBytes, the store's own query of the row's package and
// client bytes, then answers 0), and a publish of it is refused; the
// sweep after its NotAfter removes it.
func CheckRetainedMigrated(t *testing.T, s store.Store, clock *Clock, client string, kp store.KeyPackage, rowBytes func() (int, error)) {
	t.Helper()
	ctx := context.Background()
	if got, err := s.KeyPackageByRef(ctx, kp.Ref); err != nil || !got.Claimed || string(got.KeyPackage) != string(kp.KeyPackage) {
		t.Fatalf("KeyPackageByRef within the retention: %+v, %v", got, err)
	}
	clock.Advance(store.ClaimedKeyPackageRetention)
	if n, err := s.DeleteExpired(ctx, clock.Now()); err != nil || n != 1 {
		t.Fatalf("DeleteExpired past the retention: %d, %v; want the bytes of 1 package dropped", n, err)
	}
	if size, err := rowBytes(); err != nil || size != 0 {
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

// CheckObjectKeepMigrated checks s, opened on a database migrated past
// the migration that keeps an object's row until its KeepObject, which
// held the unreferenced object row old from before it: old is forgotten
// as before, and a reservation made now keeps its object's row, once the
// reservation expired, until its KeepObject.
func CheckObjectKeepMigrated(t *testing.T, s store.Store, old string) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	if forgotten, err := s.ForgetObject(ctx, old, now); err != nil || !forgotten {
		t.Fatalf("ForgetObject of the old row: forgotten %v, %v; want it forgotten", forgotten, err)
	}
	a := store.Attachment{TokenHash: sha256.Sum256([]byte("token")), GroupID: []byte("g"),
		Object: "00000000000000000000000000000002", Size: 1, ContentHash: make([]byte, 32),
		Uploader: "mimi://a.example/d/u/phone", Created: now, Expires: now.Add(time.Minute),
		KeepObject: now.Add(time.Hour)}
	if err := s.ReserveAttachment(ctx, a, store.AttachmentQuota{}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.ExpireAttachments(ctx, now.Add(2*time.Minute), 10); err != nil || n != 1 {
		t.Fatalf("ExpireAttachments removed %d, %v; want the reservation", n, err)
	}
	if forgotten, err := s.ForgetObject(ctx, a.Object, now.Add(2*time.Minute)); err != nil || forgotten {
		t.Fatalf("ForgetObject of the kept row: forgotten %v, %v; want it kept", forgotten, err)
	}
	got, err := s.UnreferencedObjects(ctx, "", 10)
	if err != nil || !slices.Equal(got, []string{a.Object}) {
		t.Fatalf("unreferenced objects %v, %v; want only the kept %s (the old row forgotten)", got, err, a.Object)
	}
}

// CheckOutboxBodiesMigrated checks s, opened on a database migrated past
// the migration that stores outbox bodies once per write, which held the
// outbox messages old (each destination's in this order) from before it:
// each is a body of its own and reads back intact; a write after it gets
// bodies of its own, with its equal messages sharing one; and removing
// the messages, delivered or reset, removes every body.
func CheckOutboxBodiesMigrated(t *testing.T, s store.Store, bodies OutboxBodies, old []store.OutboxMessage) {
	t.Helper()
	wantBodies(t, "migrated", bodies, len(old))
	byDest := map[string][][]byte{}
	var dests []string
	for _, m := range old {
		if _, ok := byDest[m.Destination]; !ok {
			dests = append(dests, m.Destination)
		}
		byDest[m.Destination] = append(byDest[m.Destination], m.Message)
	}
	for _, d := range dests {
		wantPending(t, s, d, byDest[d]...)
	}
	added := randBytes(t, 2048)
	_, err := s.OutboxAdd(ctx(), store.OutboxWrite{Messages: remoteTo([]byte("g"), added, store.BackendDestination, store.BackendDestination)})
	noErr(t, "OutboxAdd after the migration", err)
	wantBodies(t, "a write after the migration", bodies, len(old)+1)
	byDest[store.BackendDestination] = [][]byte{added, added}
	dests = append(dests, store.BackendDestination)
	for i, d := range dests {
		entries := wantPending(t, s, d, byDest[d]...)
		if i%2 == 0 {
			_, err := s.OutboxDelivered(ctx(), d, idsOf(entries))
			noErr(t, "OutboxDelivered", err)
		} else {
			_, err := s.OutboxReset(ctx(), d)
			noErr(t, "OutboxReset", err)
		}
		wantPending(t, s, d)
	}
	wantBodies(t, "all removed", bodies, 0)
}
