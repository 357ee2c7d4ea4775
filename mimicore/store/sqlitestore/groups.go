package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/groupcache"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// DefaultGroupCacheNodes bounds the in-memory cache of group states (see
// WithGroupCache): the sum of the tree widths of the states it holds, about
// 32 groups of 10,000 members or thousands of small ones.
const DefaultGroupCacheNodes = 1 << 20

// nodeInsertRows is how many tree positions one INSERT of CreateGroup
// carries (5 parameters each, far below SQLite's limit), and
// joinerInsertRows how many joiners one INSERT of CommitEpoch carries (4
// each).
const (
	nodeInsertRows   = 200
	joinerInsertRows = 250
)

// Statements of the group store. ?N parameters as everywhere; the
// conditional UPDATE of groupAdvanceSQL is the commit's check-and-set.
const (
	groupHeadSQL = `SELECT id, epoch, context, interim, conf_tag, width FROM mls_groups WHERE group_id = ?1`
	// groupAdvanceSQL moves a group to the next epoch only while it is
	// at the base state and not reinitialized: ?7 group id, ?8 base
	// epoch, ?9 base GroupContext (which holds the tree hash), ?10 base
	// interim transcript hash; ?12, the encoded ReInit proposal of a
	// reinitializing commit (NULL for others), marks it reinitialized
	// and is kept (ReInitOf). So the stored
	// tree positions are the base's, and writing the positions that
	// changed from the base gives the next state's tree.
	groupAdvanceSQL = `UPDATE mls_groups
		SET epoch = ?1, context = ?2, interim = ?3, conf_tag = ?4, width = ?5, updated_ms = ?6, group_info = ?11,
			reinit = ?12 IS NOT NULL, reinit_proposal = ?12
		WHERE group_id = ?7 AND epoch = ?8 AND context = ?9 AND interim = ?10 AND reinit = 0
		RETURNING id`
	nodeUpsertSQL = `INSERT INTO mls_group_nodes (gid, node_index, from_epoch, node, hash)
		VALUES (?1, ?2, ?3, ?4, ?5)
		ON CONFLICT (gid, node_index) DO UPDATE
		SET from_epoch = excluded.from_epoch, node = excluded.node, hash = excluded.hash`
	// nodeKeepSQL moves the current version of position ?2 to the history
	// when the retained Welcome epoch ?4 needs it (it was written at or
	// before ?4); ?3 is the epoch that replaces it.
	nodeKeepSQL = `INSERT INTO mls_group_node_history (gid, node_index, from_epoch, to_epoch, node)
		SELECT gid, node_index, from_epoch, ?3, node FROM mls_group_nodes
		WHERE gid = ?1 AND node_index = ?2 AND from_epoch <= ?4`
	groupNodesSQL = `SELECT node_index, node, hash FROM mls_group_nodes WHERE gid = ?1 ORDER BY node_index`
	// welcomeNodesSQL is the tree of epoch ?2.
	welcomeNodesSQL = `SELECT node_index, node FROM mls_group_nodes WHERE gid = ?1 AND from_epoch <= ?2
		UNION ALL
		SELECT node_index, node FROM mls_group_node_history WHERE gid = ?1 AND from_epoch <= ?2 AND to_epoch > ?2
		ORDER BY node_index`
)

// groupStmts are the prepared statements of the group store's hot paths.
type groupStmts struct {
	advance, nodeUpsert, nodeKeep *sql.Stmt // writer
	head, nodes                   *sql.Stmt // readers
}

func (s *Store) prepareGroups(ctx context.Context) error {
	for _, p := range []struct {
		db  *sql.DB
		dst **sql.Stmt
		sql string
	}{
		{s.w, &s.gs.advance, groupAdvanceSQL},
		{s.w, &s.gs.nodeUpsert, nodeUpsertSQL},
		{s.w, &s.gs.nodeKeep, nodeKeepSQL},
		{s.r, &s.gs.head, groupHeadSQL},
		{s.r, &s.gs.nodes, groupNodesSQL},
	} {
		st, err := p.db.PrepareContext(ctx, p.sql)
		if err != nil {
			return fmt.Errorf("preparing group statement: %w", err)
		}
		*p.dst = st
	}
	return nil
}

func (s *Store) groupStmts() []*sql.Stmt {
	return []*sql.Stmt{s.gs.advance, s.gs.nodeUpsert, s.gs.nodeKeep, s.gs.head, s.gs.nodes}
}

// groupHead is a mls_groups row.
type groupHead struct {
	groupcache.Head
	width uint32
}

func scanHead(row *sql.Row) (groupHead, error) {
	var h groupHead
	var epoch int64
	err := row.Scan(&h.RowID, &epoch, &h.Context, &h.Interim, &h.ConfTag, &h.width)
	if errors.Is(err, sql.ErrNoRows) {
		return h, fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound)
	}
	if err != nil {
		return h, fmt.Errorf("reading group: %w", err)
	}
	h.Epoch = uint64(epoch)
	return h, nil
}

// CreateGroup implements store.GroupStore. The hub record, the head,
// every tree position and the local members are written in one op.
func (s *Store) CreateGroup(ctx context.Context, c store.GroupCreation) error {
	const doing = "creating group"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	hub, state, groupInfo := c.Hub, c.State, c.GroupInfo
	id, err := check.GroupCreation(c)
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	var members string
	if len(c.Members) > 0 {
		b, err := json.Marshal(c.Members)
		if err != nil {
			return fmt.Errorf("%s: encoding members: %w", doing, err)
		}
		members = string(b)
	}
	st, err := state.Stored()
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	epoch := int64(state.Epoch())
	var rowID int64
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := check.Millis(s.now())
		res, err := tx.ExecContext(ctx, `INSERT INTO group_hubs (group_id, hub, hosted, created_ms)
			SELECT ?1, ?2, 1, ?3 WHERE NOT EXISTS (SELECT 1 FROM deleted_groups WHERE group_id = ?1)
			ON CONFLICT (group_id) DO NOTHING`, id, hub, now)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return store.ErrGroupExists
		}
		if err := tx.QueryRowContext(ctx, `INSERT INTO mls_groups
			(group_id, epoch, context, interim, conf_tag, width, updated_ms, group_info, members_known)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1) RETURNING id`,
			id, epoch, st.Context, nonNil(st.InterimTranscriptHash), nonNil(st.ConfirmationTag), st.Width, now,
			nullBlob(groupInfo)).Scan(&rowID); err != nil {
			return err
		}
		if members != "" {
			// Members from the next number of the global sequence on.
			if _, err := tx.ExecContext(ctx, `INSERT INTO group_members (client, group_id, from_seq)
				SELECT value, ?1, (SELECT last FROM queue_sequence WHERE id = 1) FROM json_each(?2)`,
				id, members); err != nil {
				return fmt.Errorf("recording members: %w", err)
			}
		}
		return insertNodes(ctx, tx, rowID, epoch, st.Nodes)
	})
	if err != nil {
		return s.fail(doing, err)
	}
	s.groupBytes.Add(uint64(headSize(st) + len(groupInfo) + nodesSize(st.Nodes)))
	s.cache.Put(id, groupcache.Head{RowID: rowID, Epoch: state.Epoch(), Context: st.Context,
		Interim: nonNil(st.InterimTranscriptHash), ConfTag: nonNil(st.ConfirmationTag)}, state)
	return nil
}

// insertNodes writes new tree positions, nodeInsertRows per statement.
func insertNodes(ctx context.Context, tx *sql.Tx, rowID, epoch int64, nodes []mls.StoredNode) error {
	err := insertRows(ctx, tx, "mls_group_nodes (gid, node_index, from_epoch, node, hash)", 5, nodeInsertRows, nodes,
		func(sn mls.StoredNode) []any { return []any{rowID, int64(sn.Index), epoch, nullBlob(sn.Node), sn.Hash} })
	if err != nil {
		return fmt.Errorf("writing tree positions: %w", err)
	}
	return nil
}

// insertJoiners writes the joiners of Welcome epoch epoch,
// joinerInsertRows per statement.
func insertJoiners(ctx context.Context, tx *sql.Tx, rowID, epoch int64, js []store.Joiner) error {
	err := insertRows(ctx, tx, "mls_group_joiners (gid, epoch, ref, signature_key)", 4, joinerInsertRows, js,
		func(j store.Joiner) []any { return []any{rowID, epoch, j.Ref, j.SignatureKey} })
	if err != nil {
		return fmt.Errorf("writing joiners: %w", err)
	}
	return nil
}

// insertRows inserts one row per item into into ("table (columns)", cols
// columns), perStmt rows per multi-row INSERT; row gives an item's values
// in column order.
func insertRows[T any](ctx context.Context, tx *sql.Tx, into string, cols, perStmt int, items []T, row func(T) []any) error {
	for len(items) > 0 {
		n := min(len(items), perStmt)
		q := make([]byte, 0, 32+len(into)+n*(6*cols+2))
		q = append(q, "INSERT INTO "...)
		q = append(q, into...)
		q = append(q, " VALUES "...)
		args := make([]any, 0, cols*n)
		for i, it := range items[:n] {
			if i > 0 {
				q = append(q, ',')
			}
			q = append(q, '(')
			for c := range cols {
				if c > 0 {
					q = append(q, ", "...)
				}
				q = fmt.Appendf(q, "?%d", cols*i+c+1)
			}
			q = append(q, ')')
			args = append(args, row(it)...)
		}
		if _, err := tx.ExecContext(ctx, string(q), args...); err != nil {
			return err
		}
		items = items[n:]
	}
	return nil
}

// joinersSize counts the bytes of the joiner rows a write sends.
func joinersSize(js []store.Joiner) int {
	n := 0
	for _, j := range js {
		n += len(j.Ref) + len(j.SignatureKey) + 2*8
	}
	return n
}

// headSize and nodesSize count the bytes of the rows a write sends: blobs
// and text at their length, integers at 8 bytes.
func headSize(st *mls.StoredState) int {
	return len(st.Context) + len(st.InterimTranscriptHash) + len(st.ConfirmationTag) + 4*8
}

func nodesSize(nodes []mls.StoredNode) int {
	n := 0
	for _, sn := range nodes {
		n += len(sn.Node) + len(sn.Hash) + 3*8
	}
	return n
}

// readHead begins a read transaction and reads the head of groupID in it.
// On success the caller rolls tx back when done; on failure nothing is
// left open.
func (s *Store) readHead(ctx context.Context, groupID []byte) (*sql.Tx, groupHead, error) {
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return nil, groupHead{}, err
	}
	h, err := scanHead(tx.StmtContext(ctx, s.gs.head).QueryRowContext(ctx, groupID))
	if err != nil {
		rollback(tx)
		return nil, groupHead{}, err
	}
	return tx, h, nil
}

// LoadGroup implements store.GroupStore. It reads the group's head and,
// unless the cache holds the state with that head, its tree positions, in
// one read transaction.
func (s *Store) LoadGroup(ctx context.Context, groupID []byte) (*mls.GroupState, error) {
	const doing = "loading group"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.GroupID(groupID); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	tx, h, err := s.readHead(ctx, groupID)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rollback(tx)
	if g := s.cache.Get(groupID, &h.Head); g != nil {
		return g, nil
	}
	st := &mls.StoredState{Context: h.Context, InterimTranscriptHash: h.Interim, ConfirmationTag: h.ConfTag,
		Width: h.width, Nodes: make([]mls.StoredNode, 0, h.width)}
	rows, err := tx.StmtContext(ctx, s.gs.nodes).QueryContext(ctx, h.RowID)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	for rows.Next() {
		var sn mls.StoredNode
		var idx int64
		if err := rows.Scan(&idx, &sn.Node, &sn.Hash); err != nil {
			return nil, s.fail(doing, err)
		}
		sn.Index = uint32(idx)
		st.Nodes = append(st.Nodes, sn)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	g, err := mls.RestoreGroupState(st)
	if err != nil {
		return nil, fmt.Errorf("%s: stored state is damaged: %w", doing, err)
	}
	s.cache.Put(groupID, h.Head, g)
	return g, nil
}

// CommitEpoch implements store.GroupStore. The changed tree positions are
// found before the op is queued (mls.GroupState.StoredChanges); the op
// runs the conditional UPDATE of the head, whose RETURNING row is the
// check-and-set, then writes those positions, moving the versions a
// retained Welcome epoch still needs to the history, and drops what the new
// epoch ends: out-of-date Welcome trees and their history, and the
// pending proposals.
func (s *Store) CommitEpoch(ctx context.Context, c store.EpochCommit) (store.Delivered, error) {
	const doing = "committing epoch"
	if err := s.checkOpen(doing); err != nil {
		return store.Delivered{}, err
	}
	id, err := check.EpochCommit(c)
	if err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	reinit, err := check.ReInit(c.ReInit)
	if err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	fo, err := newFanout(c.Fanout)
	if err == nil {
		err = fo.checkGroup(id)
	}
	if err == nil {
		err = check.FanoutWithoutDedup(c.Fanout)
	}
	if err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	ch, err := c.Next.StoredChanges(c.Base)
	if err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	baseCtx := c.Base.GroupContext()
	baseContext, err := wire.Marshal(&baseCtx)
	if err != nil {
		return store.Delivered{}, fmt.Errorf("%s: encoding base context: %w", doing, err)
	}
	baseInterim := nonNil(c.Base.InterimTranscriptHash())
	baseWidth := 2*c.Base.Tree().LeafCount() - 1
	next := int64(c.Next.Epoch())
	var rowID int64
	var written int
	var delivered store.Delivered
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := check.Millis(s.now())
		written = headSize(ch) + len(c.GroupInfo) + nodesSize(ch.Nodes)
		err := tx.StmtContext(ctx, s.gs.advance).QueryRowContext(ctx,
			next, ch.Context, nonNil(ch.InterimTranscriptHash), nonNil(ch.ConfirmationTag), ch.Width, now,
			id, next-1, baseContext, baseInterim, nullBlob(c.GroupInfo), nullBlob(reinit)).Scan(&rowID)
		if errors.Is(err, sql.ErrNoRows) {
			var reinit bool
			err := tx.QueryRowContext(ctx, `SELECT reinit FROM mls_groups WHERE group_id = ?1`, id).Scan(&reinit)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound)
			}
			if err != nil {
				return err
			}
			if reinit {
				return store.ErrReInitialized
			}
			return store.ErrEpochConflict
		}
		if err != nil {
			return err
		}
		// Welcome trees the new epoch no longer keeps, then which of
		// the others need the versions this commit replaces.
		if _, err := tx.ExecContext(ctx, `DELETE FROM mls_group_welcomes
			WHERE gid = ?1 AND (epoch <= ?2 OR expires_ms <= ?3)`, rowID, next-store.WelcomeTreeEpochs, now); err != nil {
			return err
		}
		var minW, maxW sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MIN(epoch), MAX(epoch) FROM mls_group_welcomes WHERE gid = ?1`,
			rowID).Scan(&minW, &maxW); err != nil {
			return err
		}
		keep, upsert := tx.StmtContext(ctx, s.gs.nodeKeep), tx.StmtContext(ctx, s.gs.nodeUpsert)
		for _, sn := range ch.Nodes {
			if maxW.Valid {
				if _, err := keep.ExecContext(ctx, rowID, int64(sn.Index), next, maxW.Int64); err != nil {
					return err
				}
			}
			if _, err := upsert.ExecContext(ctx, rowID, int64(sn.Index), next, nullBlob(sn.Node), sn.Hash); err != nil {
				return err
			}
		}
		if ch.Width < baseWidth { // the tree was truncated
			if maxW.Valid {
				if _, err := tx.ExecContext(ctx, `INSERT INTO mls_group_node_history
					(gid, node_index, from_epoch, to_epoch, node)
					SELECT gid, node_index, from_epoch, ?3, node FROM mls_group_nodes
					WHERE gid = ?1 AND node_index >= ?2 AND from_epoch <= ?4`,
					rowID, ch.Width, next, maxW.Int64); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM mls_group_nodes WHERE gid = ?1 AND node_index >= ?2`,
				rowID, ch.Width); err != nil {
				return err
			}
		}
		// History no retained Welcome epoch needs: all of it without
		// one, else the versions replaced at or before the oldest.
		gcBefore := int64(math.MaxInt64)
		if minW.Valid {
			gcBefore = minW.Int64
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM mls_group_node_history WHERE gid = ?1 AND to_epoch <= ?2`,
			rowID, gcBefore); err != nil {
			return err
		}
		// The epoch's pending proposals go with it: exactly those the
		// commit was checked against (the writer is the only one).
		res, err := tx.ExecContext(ctx, `DELETE FROM mls_group_proposals WHERE gid = ?1`, rowID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != int64(c.Pending) {
			return fmt.Errorf("%d proposals pending, the commit was checked against %d: %w", n, c.Pending, store.ErrProposalsChanged)
		}
		if c.Welcome {
			exp := check.ExpiryMillis(s.now().Add(store.WelcomeTreeLifetime))
			if _, err := tx.ExecContext(ctx, `INSERT INTO mls_group_welcomes (gid, epoch, expires_ms)
				VALUES (?1, ?2, ?3)`, rowID, next, exp); err != nil {
				return err
			}
			written += 3 * 8
			if err := insertJoiners(ctx, tx, rowID, next, c.Joiners); err != nil {
				return err
			}
			written += joinersSize(c.Joiners)
		}
		if !fo.empty() {
			written += fo.size()
			if delivered, err = s.fanoutTx(ctx, tx, &fo, now); err != nil {
				return err
			}
		}
		if c.Delete {
			return deleteGroupTx(ctx, tx, id, now)
		}
		return nil
	})
	if c.Delete {
		s.cache.Delete(id)
	}
	if err != nil {
		return store.Delivered{}, s.fail(doing, err)
	}
	s.groupBytes.Add(uint64(written))
	if !c.Delete {
		s.cache.Put(id, groupcache.Head{RowID: rowID, Epoch: c.Next.Epoch(), Context: ch.Context,
			Interim: nonNil(ch.InterimTranscriptHash), ConfTag: nonNil(ch.ConfirmationTag)}, c.Next)
	}
	s.notifyDelivered(&fo, delivered)
	return delivered, nil
}

// GroupInfo implements store.GroupStore.
func (s *Store) GroupInfo(ctx context.Context, groupID []byte) (uint64, []byte, error) {
	const doing = "reading group info"
	if err := s.checkOpen(doing); err != nil {
		return 0, nil, err
	}
	if err := check.GroupID(groupID); err != nil {
		return 0, nil, fmt.Errorf("%s: %w", doing, err)
	}
	var epoch int64
	var gi []byte
	var reinit bool
	err := s.r.QueryRowContext(ctx, `SELECT epoch, group_info, reinit FROM mls_groups WHERE group_id = ?1`, groupID).
		Scan(&epoch, &gi, &reinit)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, fmt.Errorf("%s: no group hosted here with this id: %w", doing, store.ErrNotFound)
	}
	if err != nil {
		return 0, nil, s.fail(doing, err)
	}
	if reinit {
		return uint64(epoch), nil, fmt.Errorf("%s: %w", doing, store.ErrReInitialized)
	}
	if gi == nil {
		return uint64(epoch), nil, fmt.Errorf("%s: none stored for epoch %d: %w", doing, epoch, store.ErrNotFound)
	}
	return uint64(epoch), gi, nil
}

// ReInitOf implements store.GroupStore.
func (s *Store) ReInitOf(ctx context.Context, groupID []byte) (store.ReInitRecord, error) {
	const doing = "reading the group's ReInit"
	if err := s.checkOpen(doing); err != nil {
		return store.ReInitRecord{}, err
	}
	if err := check.GroupID(groupID); err != nil {
		return store.ReInitRecord{}, fmt.Errorf("%s: %w", doing, err)
	}
	var epoch int64
	var enc []byte
	err := s.r.QueryRowContext(ctx, `SELECT epoch, reinit_proposal FROM mls_groups WHERE group_id = ?1`, groupID).
		Scan(&epoch, &enc)
	if errors.Is(err, sql.ErrNoRows) {
		return store.ReInitRecord{}, fmt.Errorf("%s: no group hosted here with this id: %w", doing, store.ErrNotFound)
	}
	if err != nil {
		return store.ReInitRecord{}, s.fail(doing, err)
	}
	r, err := check.ReInitRecord(epoch, enc)
	if err != nil {
		return store.ReInitRecord{}, fmt.Errorf("%s: %w", doing, err)
	}
	return r, nil
}

// WelcomeTree implements store.GroupStore.
func (s *Store) WelcomeTree(ctx context.Context, groupID []byte, epoch uint64) (mls.RatchetTree, error) {
	const doing = "reading welcome tree"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.GroupID(groupID); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	tx, h, err := s.readWelcome(ctx, groupID, epoch)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rollback(tx)
	rows, err := tx.QueryContext(ctx, welcomeNodesSQL, h.RowID, int64(epoch))
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	var rt mls.RatchetTree
	for rows.Next() {
		var idx int64
		var enc []byte
		if err := rows.Scan(&idx, &enc); err != nil {
			return nil, s.fail(doing, err)
		}
		if idx != int64(len(rt)) {
			return nil, fmt.Errorf("%s: tree position %d missing or stored twice", doing, len(rt))
		}
		var n *mls.Node
		if enc != nil {
			n = new(mls.Node)
			if err := wire.Unmarshal(enc, n, "tree node"); err != nil {
				return nil, fmt.Errorf("%s: stored tree position %d: %w", doing, idx, err)
			}
		}
		rt = append(rt, n)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	for len(rt) > 0 && rt[len(rt)-1] == nil {
		rt = rt[:len(rt)-1]
	}
	return rt, nil
}

// readWelcome begins a read transaction and reads in it the head of
// groupID and checks that the Welcome tree of epoch is still kept: its
// row is there, its lifetime has not ended and the group is less than
// store.WelcomeTreeEpochs past it (a commit or DeleteExpired may not have
// removed it yet). On success the caller rolls tx back when done; on
// failure nothing is left open.
func (s *Store) readWelcome(ctx context.Context, groupID []byte, epoch uint64) (*sql.Tx, groupHead, error) {
	if epoch > check.MaxEpoch {
		return nil, groupHead{}, fmt.Errorf("no tree kept for epoch %d: %w", epoch, store.ErrNotFound)
	}
	tx, h, err := s.readHead(ctx, groupID)
	if err != nil {
		return nil, groupHead{}, err
	}
	var expires int64
	err = tx.QueryRowContext(ctx, `SELECT expires_ms FROM mls_group_welcomes WHERE gid = ?1 AND epoch = ?2`,
		h.RowID, int64(epoch)).Scan(&expires)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && (expires <= check.Millis(s.now()) ||
		h.Epoch >= epoch+store.WelcomeTreeEpochs)) {
		err = fmt.Errorf("no tree kept for epoch %d: %w", epoch, store.ErrNotFound)
	}
	if err != nil {
		rollback(tx)
		return nil, groupHead{}, err
	}
	return tx, h, nil
}

// JoinerKey implements store.GroupStore: the joiner's row, read in the
// same transaction that checked its Welcome tree is still kept.
func (s *Store) JoinerKey(ctx context.Context, groupID []byte, epoch uint64, ref []byte) ([]byte, error) {
	const doing = "reading joiner key"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.GroupID(groupID); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	if err := check.ID("KeyPackage ref", ref); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	tx, h, err := s.readWelcome(ctx, groupID, epoch)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rollback(tx)
	var key []byte
	err = tx.QueryRowContext(ctx, `SELECT signature_key FROM mls_group_joiners WHERE gid = ?1 AND epoch = ?2 AND ref = ?3`,
		h.RowID, int64(epoch), ref).Scan(&key)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%s: the commit starting epoch %d added no such KeyPackage: %w", doing, epoch, store.ErrNotFound)
	}
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return key, nil
}

// AddProposal implements store.GroupStore.
func (s *Store) AddProposal(ctx context.Context, groupID []byte, epoch uint64, p store.PendingProposal) error {
	const doing = "adding pending proposal"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.GroupID(groupID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	if err := check.Proposal(p); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	fo, err := newFanout(p.Fanout)
	if err == nil {
		err = fo.checkGroup(groupID)
	}
	if err == nil {
		err = check.FanoutWithoutDedup(p.Fanout)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	var delivered store.Delivered
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var rowID, cur int64
		var reinit bool
		err := tx.QueryRowContext(ctx, `SELECT id, epoch, reinit FROM mls_groups WHERE group_id = ?1`, groupID).Scan(&rowID, &cur, &reinit)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if reinit {
			return store.ErrReInitialized
		}
		if uint64(cur) != epoch {
			return store.ErrEpochConflict
		}
		var n, seq int64
		var have bool
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(MAX(seq), 0),
			COALESCE(SUM(CASE WHEN ref = ?2 THEN 1 ELSE 0 END), 0) > 0
			FROM mls_group_proposals WHERE gid = ?1`, rowID, p.Ref).
			Scan(&n, &seq, &have); err != nil {
			return err
		}
		if have {
			return nil
		}
		if n >= store.MaxPendingProposals {
			return fmt.Errorf("%d proposals pending already: %w", n, store.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO mls_group_proposals (gid, ref, epoch, seq, message)
			VALUES (?1, ?2, ?3, ?4, ?5)`, rowID, p.Ref, cur, seq+1, p.Message); err != nil {
			return err
		}
		if fo.empty() {
			return nil
		}
		delivered, err = s.fanoutTx(ctx, tx, &fo, check.Millis(s.now()))
		return err
	})
	if err != nil {
		return s.fail(doing, err)
	}
	if len(delivered.Local) > 0 || delivered.Group != 0 {
		s.notifyDelivered(&fo, delivered)
	}
	return nil
}

// PendingProposals implements store.GroupStore.
func (s *Store) PendingProposals(ctx context.Context, groupID []byte, epoch uint64) ([]store.PendingProposal, error) {
	const doing = "listing pending proposals"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.GroupID(groupID); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	tx, h, err := s.readHead(ctx, groupID)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rollback(tx)
	if h.Epoch != epoch {
		return nil, s.fail(doing, store.ErrEpochConflict)
	}
	rows, err := tx.QueryContext(ctx, `SELECT ref, message FROM mls_group_proposals
		WHERE gid = ?1 AND epoch = ?2 ORDER BY seq`, h.RowID, int64(epoch))
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	var out []store.PendingProposal
	for rows.Next() {
		var p store.PendingProposal
		if err := rows.Scan(&p.Ref, &p.Message); err != nil {
			return nil, s.fail(doing, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	return out, nil
}

// DeleteGroup implements store.GroupStore. Deleting the hub record
// cascades to the group's state, history, Welcome trees and proposals.
func (s *Store) DeleteGroup(ctx context.Context, groupID []byte) error {
	const doing = "deleting group"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.GroupID(groupID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return deleteGroupTx(ctx, tx, groupID, check.Millis(s.now()))
	})
	s.cache.Delete(groupID)
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// deleteGroupTx is DeleteGroup's write in tx, at now (Unix ms): also that
// of a CommitEpoch with Delete set.
func deleteGroupTx(ctx context.Context, tx *sql.Tx, groupID []byte, now int64) error {
	var hosted bool
	err := tx.QueryRowContext(ctx, `DELETE FROM group_hubs WHERE group_id = ?1 RETURNING hosted`, groupID).Scan(&hosted)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("no group with this id: %w", store.ErrNotFound)
	} else if err != nil {
		return err
	}
	if hosted {
		if _, err := tx.ExecContext(ctx, `INSERT INTO deleted_groups (group_id, deleted_ms) VALUES (?1, ?2)`,
			groupID, now); err != nil {
			return fmt.Errorf("keeping the id: %w", err)
		}
	}
	// Its local members stop being members: ranges with nothing in
	// them go, the others end at the last number given.
	if _, err := tx.ExecContext(ctx, `DELETE FROM group_members WHERE group_id = ?1 AND to_seq IS NULL
		AND from_seq >= (SELECT last FROM queue_sequence WHERE id = 1)`, groupID); err != nil {
		return fmt.Errorf("forgetting members: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE group_members SET to_seq = (SELECT last FROM queue_sequence WHERE id = 1)
		WHERE group_id = ?1 AND to_seq IS NULL`, groupID); err != nil {
		return fmt.Errorf("ending memberships: %w", err)
	}
	if err := dropGroupAttachments(ctx, tx, groupID); err != nil {
		return fmt.Errorf("expiring its attachments: %w", err)
	}
	return nil
}

// RecordGroupHub implements store.GroupStore.
func (s *Store) RecordGroupHub(ctx context.Context, groupID []byte, hub string) error {
	const doing = "recording group hub"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.GroupID(groupID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	if err := check.Domain("hub", hub); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO group_hubs (group_id, hub, hosted, created_ms)
			SELECT ?1, ?2, 0, ?3 WHERE NOT EXISTS (SELECT 1 FROM deleted_groups WHERE group_id = ?1)
			ON CONFLICT (group_id) DO NOTHING`, groupID, hub, check.Millis(s.now()))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var have string
		var hosted bool
		err = tx.QueryRowContext(ctx, `SELECT hub, hosted FROM group_hubs WHERE group_id = ?1`, groupID).Scan(&have, &hosted)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrGroupExists // a group of this id was deleted here
		} else if err != nil {
			return err
		}
		if hosted || have != hub {
			return store.ErrGroupExists
		}
		return nil
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// GroupHub implements store.GroupStore.
func (s *Store) GroupHub(ctx context.Context, groupID []byte) (string, error) {
	const doing = "looking up group hub"
	if err := s.checkOpen(doing); err != nil {
		return "", err
	}
	if err := check.GroupID(groupID); err != nil {
		return "", fmt.Errorf("%s: %w", doing, err)
	}
	var hub string
	err := s.r.QueryRowContext(ctx, `SELECT hub FROM group_hubs WHERE group_id = ?1`, groupID).Scan(&hub)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%s: no group with this id: %w", doing, store.ErrNotFound)
	}
	if err != nil {
		return "", s.fail(doing, err)
	}
	return hub, nil
}

// ForgetGroupHub implements store.GroupStore.
func (s *Store) ForgetGroupHub(ctx context.Context, groupID []byte) (string, error) {
	const doing = "forgetting group hub"
	if err := s.checkOpen(doing); err != nil {
		return "", err
	}
	if err := check.GroupID(groupID); err != nil {
		return "", fmt.Errorf("%s: %w", doing, err)
	}
	var hub string
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var hosted bool
		err := tx.QueryRowContext(ctx, `SELECT hub, hosted FROM group_hubs WHERE group_id = ?1`, groupID).Scan(&hub, &hosted)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("no hub recorded for this id: %w", store.ErrNotFound)
		case err != nil:
			return err
		case hosted:
			return fmt.Errorf("the group is hosted here: %w", store.ErrGroupExists)
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM group_hubs WHERE group_id = ?1 AND NOT hosted`, groupID)
		return err
	})
	if err != nil {
		return "", s.fail(doing, err)
	}
	return hub, nil
}

// nullBlob binds a nil slice as SQL NULL (a blank tree position) rather
// than as an empty blob.
func nullBlob(b []byte) any {
	if b == nil {
		return nil
	}
	return b
}
