package pgstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/groupcache"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// DefaultGroupCacheNodes bounds the in-memory cache of group states, as in
// sqlitestore: the sum of the tree widths of the states it holds. The
// cache is keyed by the group's stored head, so a state another gateway
// committed misses it (see package groupcache).
const DefaultGroupCacheNodes = 1 << 20

// Statements of the group store: sqlitestore's, with the tree positions of
// a write sent as arrays (unnest) instead of one row each.
const (
	groupHeadSQL = `SELECT id, epoch, context, interim, conf_tag, width FROM mls_groups WHERE group_id = $1`
	// groupAdvanceSQL moves a group to the next epoch only while it is
	// at the base state and not reinitialized: $7 group id, $8 base
	// epoch, $9 base GroupContext (which holds the tree hash), $10 base
	// interim transcript hash; $12, the encoded ReInit proposal of a
	// reinitializing commit (NULL for others), marks it reinitialized
	// and is kept (ReInitOf). The UPDATE
	// locks the row, so of rival commits on one base the second
	// waits for the first, then finds the row changed and returns none.
	groupAdvanceSQL = `UPDATE mls_groups
		SET epoch = $1, context = $2, interim = $3, conf_tag = $4, width = $5, updated_ms = $6, group_info = $11,
			reinit = $12::bytea IS NOT NULL, reinit_proposal = $12
		WHERE group_id = $7 AND epoch = $8 AND context = $9 AND interim = $10 AND NOT reinit
		RETURNING id`
	// nodesInsertSQL writes the positions $2 (with nodes $4 and hashes
	// $5) of group row $1 as of epoch $3, replacing those stored.
	nodesInsertSQL = `INSERT INTO mls_group_nodes (gid, node_index, from_epoch, node, hash)
		SELECT $1, i, $3, n, h FROM unnest($2::integer[], $4::bytea[], $5::bytea[]) AS u(i, n, h)
		ON CONFLICT (gid, node_index) DO UPDATE
		SET from_epoch = excluded.from_epoch, node = excluded.node, hash = excluded.hash`
	// nodesKeepSQL moves the current versions of positions $2 to the
	// history when the retained Welcome epoch $4 needs them (they were
	// written at or before $4); $3 is the epoch that replaces them.
	nodesKeepSQL = `INSERT INTO mls_group_node_history (gid, node_index, from_epoch, to_epoch, node)
		SELECT gid, node_index, from_epoch, $3, node FROM mls_group_nodes
		WHERE gid = $1 AND node_index = ANY($2::integer[]) AND from_epoch <= $4`
	// groupStateSQL is the head and, as arrays in node_index order, the
	// tree positions of group $1: one statement, so one snapshot.
	// welcomesEndSQL deletes the Welcome trees of group $1 (its group id)
	// at or below epoch $2 or expired at $3, and returns the first and
	// last epoch of those it keeps (NULL: none).
	welcomesEndSQL = `WITH g AS (SELECT id FROM mls_groups WHERE group_id = $1),
			gone AS (DELETE FROM mls_group_welcomes
				WHERE gid = (SELECT id FROM g) AND (epoch <= $2 OR expires_ms <= $3) RETURNING epoch)
		SELECT MIN(epoch), MAX(epoch) FROM mls_group_welcomes
		WHERE gid = (SELECT id FROM g) AND epoch > $2 AND expires_ms > $3`
	groupStateSQL = `SELECT g.id, g.epoch, g.context, g.interim, g.conf_tag, g.width, n.idx, n.nodes, n.hashes
		FROM mls_groups g, LATERAL (SELECT array_agg(node_index ORDER BY node_index) AS idx,
				array_agg(node ORDER BY node_index) AS nodes, array_agg(hash ORDER BY node_index) AS hashes
			FROM mls_group_nodes WHERE gid = g.id) n
		WHERE g.group_id = $1`
	// groupProposalsSQL is group $1's epoch and, in their order, the
	// pending proposals of epoch $2 (none: one row whose proposal columns
	// are NULL).
	groupProposalsSQL = `SELECT g.epoch, p.seq IS NOT NULL, p.ref, p.message
		FROM mls_groups g LEFT JOIN mls_group_proposals p ON p.gid = g.id AND p.epoch = $2
		WHERE g.group_id = $1 ORDER BY p.seq`
	// welcomeNodesSQL is the tree of epoch $2.
	welcomeNodesSQL = `SELECT node_index, node FROM mls_group_nodes WHERE gid = $1 AND from_epoch <= $2
		UNION ALL
		SELECT node_index, node FROM mls_group_node_history WHERE gid = $1 AND from_epoch <= $2 AND to_epoch > $2
		ORDER BY node_index`
)

// readOnly is the transaction of a read of several statements that must
// see one snapshot: a Welcome tree and the head that keeps it, a joiner's
// key.
var readOnly = pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}

// groupHead is a mls_groups row.
type groupHead struct {
	groupcache.Head
	width uint32
}

func scanHead(row pgx.Row) (groupHead, error) {
	var h groupHead
	var epoch int64
	var width int32
	err := row.Scan(&h.RowID, &epoch, &h.Context, &h.Interim, &h.ConfTag, &width)
	if errors.Is(err, pgx.ErrNoRows) {
		return h, fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound)
	}
	if err != nil {
		return h, fmt.Errorf("reading group: %w", err)
	}
	h.Epoch, h.width = uint64(epoch), uint32(width)
	return h, nil
}

// nodeArrays splits tree positions into the arrays of nodesInsertSQL.
func nodeArrays(nodes []mls.StoredNode) (idx []int32, enc, hash [][]byte) {
	idx, enc, hash = make([]int32, len(nodes)), make([][]byte, len(nodes)), make([][]byte, len(nodes))
	for i, sn := range nodes {
		idx[i], enc[i], hash[i] = int32(sn.Index), sn.Node, sn.Hash
	}
	return idx, enc, hash
}

// CreateGroup implements store.GroupStore. The hub record, the head,
// every tree position and the local members are written in one
// transaction; of two creations of one id, the second waits on the hub
// record's key and finds it taken.
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
	st, err := state.Stored()
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	epoch := int64(state.Epoch())
	var rowID int64
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		now := s.nowMs()
		tag, err := tx.Exec(ctx, `INSERT INTO group_hubs (group_id, hub, hosted, created_ms)
			VALUES ($1, $2, true, $3) ON CONFLICT (group_id) DO NOTHING`, id, hub, now)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return store.ErrGroupExists
		}
		if err := checkNotDeleted(ctx, tx, id); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO mls_groups
			(group_id, epoch, context, interim, conf_tag, width, updated_ms, group_info, members_known)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true) RETURNING id`,
			id, epoch, st.Context, nonNil(st.InterimTranscriptHash), nonNil(st.ConfirmationTag), int32(st.Width), now,
			groupInfo).Scan(&rowID); err != nil {
			return err
		}
		if len(c.Members) > 0 {
			// Members from the next number of the global sequence on.
			if _, err := tx.Exec(ctx, `INSERT INTO group_members (client, group_id, from_seq)
				SELECT c, $1, (SELECT last FROM queue_sequence WHERE id = 1) FROM unnest($2::text[]) AS c`,
				id, c.Members); err != nil {
				return fmt.Errorf("recording members: %w", err)
			}
		}
		idx, enc, hash := nodeArrays(st.Nodes)
		if _, err := tx.Exec(ctx, nodesInsertSQL, rowID, idx, epoch, enc, hash); err != nil {
			return fmt.Errorf("writing tree positions: %w", err)
		}
		return nil
	})
	if err != nil {
		return s.fail(doing, err)
	}
	s.cache.Put(id, groupcache.Head{RowID: rowID, Epoch: state.Epoch(), Context: st.Context,
		Interim: nonNil(st.InterimTranscriptHash), ConfTag: nonNil(st.ConfirmationTag)}, state)
	return nil
}

// readTx runs fn in a read-only REPEATABLE READ transaction, so that what
// it reads is one snapshot.
func (s *Store) readTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, readOnly, fn)
}

// LoadGroup implements store.GroupStore. It reads the group's head alone
// (one round trip) and, unless the cache holds the state with that head,
// the head again and its tree positions in one statement (a second).
func (s *Store) LoadGroup(ctx context.Context, groupID []byte) (*mls.GroupState, error) {
	const doing = "loading group"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.GroupID(groupID); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	h, err := scanHead(s.pool.QueryRow(ctx, groupHeadSQL, groupID))
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if g := s.cache.Get(groupID, &h.Head); g != nil {
		return g, nil
	}
	var (
		epoch  int64
		width  int32
		idx    []int32
		nodes  [][]byte
		hashes [][]byte
	)
	err = s.pool.QueryRow(ctx, groupStateSQL, groupID).Scan(&h.RowID, &epoch, &h.Context, &h.Interim, &h.ConfTag, &width,
		&idx, &nodes, &hashes)
	if errors.Is(err, pgx.ErrNoRows) {
		// Deleted since the head was read.
		err = fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound)
	}
	if err != nil {
		return nil, s.fail(doing, fmt.Errorf("reading tree positions: %w", err))
	}
	if len(nodes) != len(idx) || len(hashes) != len(idx) {
		return nil, s.fail(doing, fmt.Errorf("reading tree positions: %d positions, %d nodes, %d hashes", len(idx), len(nodes), len(hashes)))
	}
	h.Epoch, h.width = uint64(epoch), uint32(width)
	st := &mls.StoredState{Context: h.Context, InterimTranscriptHash: h.Interim, ConfirmationTag: h.ConfTag,
		Width: h.width, Nodes: make([]mls.StoredNode, len(idx))}
	for i := range idx {
		st.Nodes[i] = mls.StoredNode{Index: uint32(idx[i]), Node: nodes[i], Hash: hashes[i]}
	}
	g, err := mls.RestoreGroupState(st)
	if err != nil {
		return nil, s.fail(doing, fmt.Errorf("stored state is damaged: %w", err))
	}
	s.cache.Put(groupID, h.Head, g)
	return g, nil
}

// CommitEpoch implements store.GroupStore. The changed tree positions are
// found before the transaction (mls.GroupState.StoredChanges); it runs the
// conditional UPDATE of the head, whose RETURNING row is the
// check-and-set, then writes those positions, moving the versions a
// retained Welcome epoch still needs to the history, and drops what the
// new epoch ends: out-of-date Welcome trees and their history, and the
// pending proposals; then the fan-out.
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
	if err := checkFanoutWithoutDedup(c.Fanout, id); err != nil {
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
	idx, enc, hash := nodeArrays(ch.Nodes)
	var rowID int64
	var delivered store.Delivered
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		now := s.nowMs()
		// One batch: the head advanced, then the Welcome trees the new
		// epoch no longer keeps ended and which of the others need the
		// versions this commit replaces. When the head did not advance,
		// the second statement's writes go with the rolled back
		// transaction.
		b := &pgx.Batch{}
		b.Queue(groupAdvanceSQL,
			next, ch.Context, nonNil(ch.InterimTranscriptHash), nonNil(ch.ConfirmationTag), int32(ch.Width), now,
			id, next-1, baseContext, baseInterim, c.GroupInfo, reinit)
		b.Queue(welcomesEndSQL, id, next-store.WelcomeTreeEpochs, now)
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		var minW, maxW *int64
		err := br.QueryRow().Scan(&rowID)
		if err == nil {
			if err = br.QueryRow().Scan(&minW, &maxW); err != nil {
				return fmt.Errorf("ending Welcome trees: %w", err)
			}
		}
		if cerr := br.Close(); err == nil && cerr != nil {
			return cerr
		}
		if errors.Is(err, pgx.ErrNoRows) {
			var reinit bool
			err := tx.QueryRow(ctx, `SELECT reinit FROM mls_groups WHERE group_id = $1`, id).Scan(&reinit)
			if errors.Is(err, pgx.ErrNoRows) {
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
		b = &pgx.Batch{}
		if maxW != nil {
			b.Queue(nodesKeepSQL, rowID, idx, next, *maxW)
		}
		b.Queue(nodesInsertSQL, rowID, idx, next, enc, hash)
		if ch.Width < baseWidth { // the tree was truncated
			if maxW != nil {
				b.Queue(`INSERT INTO mls_group_node_history (gid, node_index, from_epoch, to_epoch, node)
					SELECT gid, node_index, from_epoch, $3, node FROM mls_group_nodes
					WHERE gid = $1 AND node_index >= $2 AND from_epoch <= $4`,
					rowID, int32(ch.Width), next, *maxW)
			}
			b.Queue(`DELETE FROM mls_group_nodes WHERE gid = $1 AND node_index >= $2`, rowID, int32(ch.Width))
		}
		// History no retained Welcome epoch needs: all of it without
		// one, else the versions replaced at or before the oldest.
		gcBefore := int64(math.MaxInt64)
		if minW != nil {
			gcBefore = *minW
		}
		b.Queue(`DELETE FROM mls_group_node_history WHERE gid = $1 AND to_epoch <= $2`, rowID, gcBefore)
		// The epoch's pending proposals go with it: exactly those the
		// commit was checked against. AddProposal holds the group row's
		// lock, which the head's update above waited for, so this
		// statement sees every proposal added before the update.
		b.Queue(`DELETE FROM mls_group_proposals WHERE gid = $1`, rowID).Exec(func(tag pgconn.CommandTag) error {
			if n := tag.RowsAffected(); n != int64(c.Pending) {
				return fmt.Errorf("%d proposals pending, the commit was checked against %d: %w", n, c.Pending, store.ErrProposalsChanged)
			}
			return nil
		})
		if c.Welcome {
			exp := check.ExpiryMillis(s.now().Add(store.WelcomeTreeLifetime))
			b.Queue(`INSERT INTO mls_group_welcomes (gid, epoch, expires_ms) VALUES ($1, $2, $3)`, rowID, next, exp)
			if len(c.Joiners) > 0 {
				refs, keys := make([][]byte, len(c.Joiners)), make([][]byte, len(c.Joiners))
				for i, j := range c.Joiners {
					refs[i], keys[i] = j.Ref, j.SignatureKey
				}
				b.Queue(`INSERT INTO mls_group_joiners (gid, epoch, ref, signature_key)
					SELECT $1, $2, r, k FROM unnest($3::bytea[], $4::bytea[]) AS u(r, k)`, rowID, next, refs, keys)
			}
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("writing the tree: %w", err)
		}
		if delivered, err = s.fanoutTx(ctx, tx, c.Fanout, now); err != nil || !c.Delete {
			return err
		}
		return deleteGroupTx(ctx, tx, id, now)
	})
	if c.Delete {
		s.cache.Delete(id)
	}
	if err != nil {
		return store.Delivered{}, s.fail(doing, err)
	}
	if !c.Delete {
		s.cache.Put(id, groupcache.Head{RowID: rowID, Epoch: c.Next.Epoch(), Context: ch.Context,
			Interim: nonNil(ch.InterimTranscriptHash), ConfTag: nonNil(ch.ConfirmationTag)}, c.Next)
	}
	s.notifyDelivered(c.Fanout, delivered)
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
	err := s.pool.QueryRow(ctx, `SELECT epoch, group_info, reinit FROM mls_groups WHERE group_id = $1`, groupID).
		Scan(&epoch, &gi, &reinit)
	if errors.Is(err, pgx.ErrNoRows) {
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
	err := s.pool.QueryRow(ctx, `SELECT epoch, reinit_proposal FROM mls_groups WHERE group_id = $1`, groupID).
		Scan(&epoch, &enc)
	if errors.Is(err, pgx.ErrNoRows) {
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
	var rt mls.RatchetTree
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		h, err := s.readWelcome(ctx, tx, groupID, epoch)
		if err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, welcomeNodesSQL, h.RowID, int64(epoch))
		var idx int32
		var enc []byte
		_, err = pgx.ForEachRow(rows, []any{&idx, &enc}, func() error {
			if int(idx) != len(rt) {
				return fmt.Errorf("tree position %d missing or stored twice", len(rt))
			}
			var n *mls.Node
			if enc != nil {
				n = new(mls.Node)
				if err := wire.Unmarshal(enc, n, "tree node"); err != nil {
					return fmt.Errorf("stored tree position %d: %w", idx, err)
				}
			}
			rt = append(rt, n)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	for len(rt) > 0 && rt[len(rt)-1] == nil {
		rt = rt[:len(rt)-1]
	}
	return rt, nil
}

// readWelcome reads in tx the head of groupID and checks that the Welcome
// tree of epoch is still kept: its row is there, its lifetime has not
// ended and the group is less than store.WelcomeTreeEpochs past it (a
// commit or DeleteExpired may not have removed it yet).
func (s *Store) readWelcome(ctx context.Context, tx pgx.Tx, groupID []byte, epoch uint64) (groupHead, error) {
	if epoch > check.MaxEpoch {
		return groupHead{}, fmt.Errorf("no tree kept for epoch %d: %w", epoch, store.ErrNotFound)
	}
	h, err := scanHead(tx.QueryRow(ctx, groupHeadSQL, groupID))
	if err != nil {
		return groupHead{}, err
	}
	var expires int64
	err = tx.QueryRow(ctx, `SELECT expires_ms FROM mls_group_welcomes WHERE gid = $1 AND epoch = $2`,
		h.RowID, int64(epoch)).Scan(&expires)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && (expires <= s.nowMs() ||
		h.Epoch >= epoch+store.WelcomeTreeEpochs)) {
		err = fmt.Errorf("no tree kept for epoch %d: %w", epoch, store.ErrNotFound)
	}
	return h, err
}

// JoinerKey implements store.GroupStore: the joiner's row, read in the
// snapshot that checked its Welcome tree is still kept.
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
	var key []byte
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		h, err := s.readWelcome(ctx, tx, groupID, epoch)
		if err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `SELECT signature_key FROM mls_group_joiners WHERE gid = $1 AND epoch = $2 AND ref = $3`,
			h.RowID, int64(epoch), ref).Scan(&key)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("the commit starting epoch %d added no such KeyPackage: %w", epoch, store.ErrNotFound)
		}
		return err
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return key, nil
}

// Row locks of lockGroup.
const (
	// lockForShare lets writes for the epoch run side by side.
	lockForShare = "FOR SHARE"
	// lockForNoKeyUpdate is the lock an UPDATE of the row takes: a
	// transaction that may update the row takes it before anything else,
	// never after a share lock, which the other holders of share locks
	// would keep it from turning into this one (a deadlock).
	lockForNoKeyUpdate = "FOR NO KEY UPDATE"
	lockForUpdate      = "FOR UPDATE"
)

// lockGroup locks the row of groupID in tx (with lock, one of the lockFor
// constants), checks it is at epoch and reports whether the group's local
// members are recorded: a commit, which updates the row, waits for tx, so
// what tx writes for epoch precedes the next epoch.
func lockGroup(ctx context.Context, tx pgx.Tx, groupID []byte, epoch uint64, lock string) (rowID int64, known bool, err error) {
	var cur int64
	var reinit bool
	err = tx.QueryRow(ctx, `SELECT id, epoch, members_known, reinit FROM mls_groups WHERE group_id = $1 `+lock, groupID).
		Scan(&rowID, &cur, &known, &reinit)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound)
	}
	if err != nil {
		return 0, false, err
	}
	if reinit {
		return 0, false, store.ErrReInitialized
	}
	if uint64(cur) != epoch {
		return 0, false, store.ErrEpochConflict
	}
	return rowID, known, nil
}

// AddProposal implements store.GroupStore: under the group row's lock,
// the epoch check, the count and the insert, then the fan-out.
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
	if err := checkFanoutWithoutDedup(p.Fanout, groupID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	var delivered store.Delivered
	added := false
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		added = false
		rowID, _, err := lockGroup(ctx, tx, groupID, epoch, lockForUpdate)
		if err != nil {
			return err
		}
		var n, seq int64
		var have bool
		if err := tx.QueryRow(ctx, `SELECT COUNT(*), COALESCE(MAX(seq), 0), COALESCE(bool_or(ref = $2), false)
			FROM mls_group_proposals WHERE gid = $1`, rowID, p.Ref).Scan(&n, &seq, &have); err != nil {
			return err
		}
		if have {
			return nil
		}
		if n >= store.MaxPendingProposals {
			return fmt.Errorf("%d proposals pending already: %w", n, store.ErrConflict)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO mls_group_proposals (gid, ref, epoch, seq, message)
			VALUES ($1, $2, $3, $4, $5)`, rowID, p.Ref, int64(epoch), seq+1, p.Message); err != nil {
			return err
		}
		added = true
		delivered, err = s.fanoutTx(ctx, tx, p.Fanout, s.nowMs())
		return err
	})
	if err != nil {
		return s.fail(doing, err)
	}
	if added {
		s.notifyDelivered(p.Fanout, delivered)
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
	rows, _ := s.pool.Query(ctx, groupProposalsSQL, groupID, int64(epoch))
	var (
		out   []store.PendingProposal
		found bool
		at    int64
		has   bool
		p     store.PendingProposal
	)
	_, err := pgx.ForEachRow(rows, []any{&at, &has, &p.Ref, &p.Message}, func() error {
		found = true
		if has {
			out = append(out, p)
		}
		p = store.PendingProposal{}
		return nil
	})
	switch {
	case err != nil:
		return nil, s.fail(doing, fmt.Errorf("reading group: %w", err))
	case !found:
		return nil, s.fail(doing, fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound))
	case uint64(at) != epoch:
		return nil, s.fail(doing, store.ErrEpochConflict)
	}
	return out, nil
}

// DeleteGroup implements store.GroupStore. Deleting the hub record
// cascades to the group's state, history, Welcome trees and proposals; it
// waits for the writes that hold the group's row (a Deliver), so the
// memberships it ends cover their posts.
func (s *Store) DeleteGroup(ctx context.Context, groupID []byte) error {
	const doing = "deleting group"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.GroupID(groupID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		return deleteGroupTx(ctx, tx, groupID, s.nowMs())
	})
	s.cache.Delete(groupID)
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// deleteGroupTx is DeleteGroup's write in tx, at now (Unix ms): also that
// of a CommitEpoch with Delete set.
func deleteGroupTx(ctx context.Context, tx pgx.Tx, groupID []byte, now int64) error {
	var hosted bool
	err := tx.QueryRow(ctx, `DELETE FROM group_hubs WHERE group_id = $1 RETURNING hosted`, groupID).Scan(&hosted)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("no group with this id: %w", store.ErrNotFound)
	} else if err != nil {
		return err
	}
	if hosted {
		if _, err := tx.Exec(ctx, `INSERT INTO deleted_groups (group_id, deleted_ms) VALUES ($1, $2)`,
			groupID, now); err != nil {
			return fmt.Errorf("keeping the id: %w", err)
		}
	}
	// Its local members stop being members: ranges with nothing in
	// them go, the others end at the last number given.
	if _, err := tx.Exec(ctx, `DELETE FROM group_members WHERE group_id = $1 AND to_seq IS NULL
		AND from_seq >= (SELECT last FROM queue_sequence WHERE id = 1)`, groupID); err != nil {
		return fmt.Errorf("forgetting members: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE group_members SET to_seq = (SELECT last FROM queue_sequence WHERE id = 1)
		WHERE group_id = $1 AND to_seq IS NULL`, groupID); err != nil {
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		// ON CONFLICT DO UPDATE (a no-op) rather than DO NOTHING, so that
		// the existing row comes back, locked, in the same statement.
		var have string
		var hosted, inserted bool
		err := tx.QueryRow(ctx, `INSERT INTO group_hubs AS g (group_id, hub, hosted, created_ms)
			VALUES ($1, $2, false, $3) ON CONFLICT (group_id) DO UPDATE SET hub = g.hub
			RETURNING hub, hosted, xmax = 0`, groupID, hub, s.nowMs()).Scan(&have, &hosted, &inserted)
		if err != nil {
			return err
		}
		if !inserted {
			if hosted || have != hub {
				return store.ErrGroupExists
			}
			return nil
		}
		return checkNotDeleted(ctx, tx, groupID)
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// ForgetGroupHub implements store.GroupStore. The DELETE only takes a
// row not hosted here; the SELECT after it, when it took none, tells an
// unknown id from a hosted group.
func (s *Store) ForgetGroupHub(ctx context.Context, groupID []byte) (string, error) {
	const doing = "forgetting group hub"
	if err := s.checkOpen(doing); err != nil {
		return "", err
	}
	if err := check.GroupID(groupID); err != nil {
		return "", fmt.Errorf("%s: %w", doing, err)
	}
	var hub string
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `DELETE FROM group_hubs WHERE group_id = $1 AND NOT hosted RETURNING hub`, groupID).Scan(&hub)
		if err == nil {
			// The other Stores' hub caches hear of it when the
			// deletion commits (WatchHubForgets).
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, hubChannel, hex.EncodeToString(groupID))
			return err
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		var hosted bool
		err = tx.QueryRow(ctx, `SELECT hosted FROM group_hubs WHERE group_id = $1`, groupID).Scan(&hosted)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("no hub recorded for this id: %w", store.ErrNotFound)
		case err != nil:
			return err
		}
		return fmt.Errorf("the group is hosted here: %w", store.ErrGroupExists)
	})
	if err != nil {
		return "", s.fail(doing, err)
	}
	return hub, nil
}

// checkNotDeleted fails with ErrGroupExists when a hosted group of id
// was deleted (deleted_groups), after tx inserted id's group_hubs row.
// It runs as a statement of its own, after the INSERT: under READ
// COMMITTED it sees a DeleteGroup that committed while the INSERT waited
// for the row that DeleteGroup removed, which the INSERT's snapshot did
// not.
func checkNotDeleted(ctx context.Context, tx pgx.Tx, id []byte) error {
	var deleted bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM deleted_groups WHERE group_id = $1)`, id).Scan(&deleted); err != nil {
		return fmt.Errorf("looking up deleted groups: %w", err)
	}
	if deleted {
		return store.ErrGroupExists // a group of this id was deleted here
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
	err := s.pool.QueryRow(ctx, `SELECT hub FROM group_hubs WHERE group_id = $1`, groupID).Scan(&hub)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("%s: no group with this id: %w", doing, store.ErrNotFound)
	}
	if err != nil {
		return "", s.fail(doing, err)
	}
	return hub, nil
}
