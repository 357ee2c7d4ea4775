package pgstore

import (
	"context"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestMigrationGroupReInitProposal applies the migration that keeps the
// ReInit proposal of a reinitialized group to a database of the version
// before it, which holds a group marked reinitialized, written in that
// version's SQL: the group stays closed, and ReInitOf does not find it.
func TestMigrationGroupReInitProposal(t *testing.T) {
	ctx := context.Background()
	dsn, pool, version := poolBefore(t, schemaGroupReInitProposal)
	g := storetest.NewGroup(t, []byte("group reinitialized before the migration"), 2)
	st, err := g.State.Stored()
	if err != nil {
		pool.Close()
		t.Fatal(err)
	}
	idx, enc, hash := nodeArrays(st.Nodes)
	_, err = pool.Exec(ctx, `WITH h AS (INSERT INTO group_hubs (group_id, hub, hosted, created_ms) VALUES ($1, 'hub.example', true, 0)),
		g AS (INSERT INTO mls_groups (group_id, epoch, context, interim, conf_tag, width, updated_ms, group_info, members_known, reinit)
			VALUES ($1, $2, $3, $4, $5, $6, 0, NULL, true, true) RETURNING id)
		INSERT INTO mls_group_nodes (gid, node_index, from_epoch, node, hash)
		SELECT (SELECT id FROM g), i, $2, n, hh FROM unnest($7::integer[], $8::bytea[], $9::bytea[]) AS u(i, n, hh)`,
		g.State.GroupID(), int64(g.State.Epoch()), st.Context, nonNil(st.InterimTranscriptHash), nonNil(st.ConfirmationTag),
		int32(st.Width), idx, enc, hash)
	pool.Close()
	if err != nil {
		t.Fatalf("writing a group of version %d: %v", version, err)
	}
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("opening the database of version %d: %v", version, err)
	}
	t.Cleanup(func() { s.Close() })
	storetest.CheckReInitProposalMigrated(t, s, g)
}
