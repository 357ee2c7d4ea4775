package sqlitestore

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestMigrationObjectKeep applies the migration that keeps attachment
// objects until a late commit of their bytes can no longer land to a
// database of the version before it: an unreferenced object written
// before it is forgotten as before, and a reservation made after it keeps
// its object's row until its KeepObject.
func TestMigrationObjectKeep(t *testing.T) {
	path, raw, version := openBefore(t, schemaObjectKeep)
	const old = "00000000000000000000000000000001"
	if _, err := raw.Exec(`INSERT INTO attachment_objects (name, refs, created_ms) VALUES (?1, 0, 0)`, old); err != nil {
		t.Fatalf("writing an object row of version %d: %v", version, err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
	storetest.CheckObjectKeepMigrated(t, s, old)
}
