package sqlitestore

import (
	"database/sql"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestMigrationGroupReInit applies the migration that records whether a
// group was reinitialized to a database of the version before it, which
// holds a group of two members written in that version's SQL: the group
// is not reinitialized, takes commits, and a ReInit commit closes it.
func TestMigrationGroupReInit(t *testing.T) {
	path, raw, version := openBefore(t, schemaGroupReInit)
	g := storetest.NewGroup(t, []byte("group stored before the migration"), 2)
	groupInfo := []byte("the GroupInfo of the group's epoch")
	writeOldGroup(t, raw, version, g, groupInfo, false)
	storetest.CheckReInitMigrated(t, openAt(t, path), g, groupInfo)
}

// TestMigrationGroupReInitProposal applies the migration that keeps the
// ReInit proposal of a reinitialized group to a database of the version
// before it, which holds a group marked reinitialized, written in that
// version's SQL: the group stays closed, and ReInitOf does not find it.
func TestMigrationGroupReInitProposal(t *testing.T) {
	path, raw, version := openBefore(t, schemaGroupReInitProposal)
	g := storetest.NewGroup(t, []byte("group reinitialized before the migration"), 2)
	writeOldGroup(t, raw, version, g, nil, true)
	storetest.CheckReInitProposalMigrated(t, openAt(t, path), g)
}

// writeOldGroup writes g, hosted here, into raw, a database of version
// (one before a migration under test), in that version's SQL, and closes
// raw: its hub row, its group row with groupInfo (nil: none) and, when
// reinitialized, the reinit mark of the versions that have one (earlier
// versions have no such column), and its tree.
func writeOldGroup(t *testing.T, raw *sql.DB, version int, g *storetest.Group, groupInfo []byte, reinitialized bool) {
	t.Helper()
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
	var info any // NULL unless given
	if groupInfo != nil {
		info = groupInfo
	}
	cols, vals := "", ""
	if reinitialized {
		cols, vals = ", reinit", ", 1"
	}
	var rowID int64
	if err := tx.QueryRow(`INSERT INTO mls_groups
		(group_id, epoch, context, interim, conf_tag, width, updated_ms, group_info, members_known`+cols+`)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, 1`+vals+`) RETURNING id`,
		g.State.GroupID(), int64(g.State.Epoch()), st.Context, nonNil(st.InterimTranscriptHash), nonNil(st.ConfirmationTag),
		st.Width, info).Scan(&rowID); err != nil {
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
}
