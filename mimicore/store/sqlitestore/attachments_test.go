package sqlitestore

import (
	"context"
	"crypto/sha256"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestMigrationObjectKeep applies the migration that keeps attachment
// objects until a late commit of their bytes can no longer land to a
// database of the version before it: an unreferenced object written
// before it is forgotten as before, and a reservation made after it keeps
// its object's row until its KeepObject.
func TestMigrationObjectKeep(t *testing.T) {
	ctx := context.Background()
	path, raw, version := openBefore(t, schemaObjectKeep)
	const old = "00000000000000000000000000000001"
	if _, err := raw.Exec(`INSERT INTO attachment_objects (name, refs, created_ms) VALUES (?1, 0, 0)`, old); err != nil {
		t.Fatalf("writing an object row of version %d: %v", version, err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
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
