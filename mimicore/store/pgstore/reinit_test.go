package pgstore

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestMigrationGroupReInit applies the migration that records whether a
// group was reinitialized to a database of the version before it, which
// holds a group of two members written in that version's SQL: the group
// is not reinitialized, takes commits, and a ReInit commit closes it.
func TestMigrationGroupReInit(t *testing.T) {
	dsn, pool, version := poolBefore(t, schemaGroupReInit)
	g := storetest.NewGroup(t, []byte("group stored before the migration"), 2)
	groupInfo := []byte("the GroupInfo of the group's epoch")
	s := writeOldGroup(t, dsn, pool, version, g, groupInfo, false)
	storetest.CheckReInitMigrated(t, s, g, groupInfo)
}

// TestMigrationGroupReInitProposal applies the migration that keeps the
// ReInit proposal of a reinitialized group to a database of the version
// before it, which holds a group marked reinitialized, written in that
// version's SQL: the group stays closed, and ReInitOf does not find it.
func TestMigrationGroupReInitProposal(t *testing.T) {
	dsn, pool, version := poolBefore(t, schemaGroupReInitProposal)
	g := storetest.NewGroup(t, []byte("group reinitialized before the migration"), 2)
	s := writeOldGroup(t, dsn, pool, version, g, nil, true)
	storetest.CheckReInitProposalMigrated(t, s, g)
}

// writeOldGroup writes g, hosted here, through pool into the database at
// dsn, of version (one before a migration under test), in that version's
// SQL, closes pool and opens the database as a Store (closed when the
// test ends): its hub row, its group row with groupInfo (nil: NULL) and,
// when reinitialized, the reinit mark of the versions that have one
// (earlier versions have no such column), and its tree.
func writeOldGroup(t *testing.T, dsn string, pool *pgxpool.Pool, version int, g *storetest.Group, groupInfo []byte, reinitialized bool) *Store {
	t.Helper()
	ctx := context.Background()
	st, err := g.State.Stored()
	if err != nil {
		pool.Close()
		t.Fatal(err)
	}
	cols, vals := "", ""
	if reinitialized {
		cols, vals = ", reinit", ", true"
	}
	idx, enc, hash := nodeArrays(st.Nodes)
	_, err = pool.Exec(ctx, `WITH h AS (INSERT INTO group_hubs (group_id, hub, hosted, created_ms) VALUES ($1, 'hub.example', true, 0)),
		g AS (INSERT INTO mls_groups (group_id, epoch, context, interim, conf_tag, width, updated_ms, group_info, members_known`+cols+`)
			VALUES ($1, $2, $3, $4, $5, $6, 0, $7, true`+vals+`) RETURNING id)
		INSERT INTO mls_group_nodes (gid, node_index, from_epoch, node, hash)
		SELECT (SELECT id FROM g), i, $2, n, hh FROM unnest($8::integer[], $9::bytea[], $10::bytea[]) AS u(i, n, hh)`,
		g.State.GroupID(), int64(g.State.Epoch()), st.Context, nonNil(st.InterimTranscriptHash), nonNil(st.ConfirmationTag),
		int32(st.Width), groupInfo, idx, enc, hash)
	pool.Close()
	if err != nil {
		t.Fatalf("writing a group of version %d: %v", version, err)
	}
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("opening the database of version %d: %v", version, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
