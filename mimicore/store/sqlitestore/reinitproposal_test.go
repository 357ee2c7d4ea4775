package sqlitestore

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestMigrationGroupReInitProposal applies the migration that keeps the
// ReInit proposal of a reinitialized group to a database of the version
// before it, which holds a group marked reinitialized, written in that
// version's SQL: the group stays closed, and ReInitOf does not find it.
func TestMigrationGroupReInitProposal(t *testing.T) {
	path, raw, version := openBefore(t, schemaGroupReInitProposal)
	g := storetest.NewGroup(t, []byte("group reinitialized before the migration"), 2)
	st, err := g.State.Stored()
	if err != nil {
		t.Fatal(err)
	}
	tx, err := raw.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO group_hubs (group_id, hub, hosted, created_ms) VALUES (?1, 'hub.example', 1, 0)`,
		g.State.GroupID()); err != nil {
		t.Fatalf("writing a hub row of version %d: %v", version, err)
	}
	var rowID int64
	if err := tx.QueryRow(`INSERT INTO mls_groups
		(group_id, epoch, context, interim, conf_tag, width, updated_ms, group_info, members_known, reinit)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, NULL, 1, 1) RETURNING id`,
		g.State.GroupID(), int64(g.State.Epoch()), st.Context, nonNil(st.InterimTranscriptHash), nonNil(st.ConfirmationTag),
		st.Width).Scan(&rowID); err != nil {
		t.Fatalf("writing a group row of version %d: %v", version, err)
	}
	for _, sn := range st.Nodes {
		if _, err := tx.Exec(`INSERT INTO mls_group_nodes (gid, node_index, from_epoch, node, hash) VALUES (?1, ?2, ?3, ?4, ?5)`,
			rowID, int64(sn.Index), int64(g.State.Epoch()), nullBlob(sn.Node), sn.Hash); err != nil {
			t.Fatalf("writing a tree position of version %d: %v", version, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	storetest.CheckReInitProposalMigrated(t, openAt(t, path), g)
}
