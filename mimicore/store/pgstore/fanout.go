package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// Statements of the group logs: sqlitestore's, with unnest of a text[]
// parameter for json_each of a JSON array.
const (
	groupLogInsertSQL = `INSERT INTO group_log (seq, group_id, sender, except_client, message, size, arrived_ms, expires_ms)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`
	// groupLeaveSQL ends, at post $3, the membership in group $1 of the
	// clients $2.
	groupLeaveSQL = `UPDATE group_members SET to_seq = $3
		WHERE group_id = $1 AND to_seq IS NULL AND client = ANY($2::text[])`
	// groupJoinSQL starts, after post $3, the membership in group $1 of
	// the clients $2 that are not members already.
	groupJoinSQL = `INSERT INTO group_members (client, group_id, from_seq)
		SELECT c, $1, $3 FROM unnest($2::text[]) AS c ON CONFLICT DO NOTHING`
	// groupKnownSQL reports whether group $1's local members are recorded.
	groupKnownSQL = `SELECT members_known FROM mls_groups WHERE group_id = $1`
	// groupSeedSQL records the clients $2 as members of group $1 from
	// before post $3.
	groupSeedSQL = `INSERT INTO group_members (client, group_id, from_seq)
		SELECT c, $1, $3 - 1 FROM unnest($2::text[]) AS c ON CONFLICT DO NOTHING`
	groupKnownSetSQL = `UPDATE mls_groups SET members_known = true WHERE group_id = $1`
	// groupPostSQL is a post to a group whose members are known, in one
	// statement: the next number of the global sequence (queueSeqSQL),
	// the log row with it ($2 sender, $3 except, $4 message, $5 size, $6
	// now, $7 expiry), the memberships of $8 ended at it (groupLeaveSQL)
	// and those of $9 started after it (groupJoinSQL). The sequence row
	// stays locked for one round trip and the commit. Leave and Join name
	// distinct clients (check.GroupPost), so no row is written twice.
	groupPostSQL = `WITH seq AS (UPDATE queue_sequence SET last = last + 1 WHERE id = 1 RETURNING last),
		posted AS (INSERT INTO group_log (seq, group_id, sender, except_client, message, size, arrived_ms, expires_ms)
			SELECT last, $1, $2, $3, $4, $5, $6, $7 FROM seq),
		left_ AS (UPDATE group_members SET to_seq = (SELECT last FROM seq)
			WHERE group_id = $1 AND to_seq IS NULL AND client = ANY($8::text[])),
		joined AS (INSERT INTO group_members (client, group_id, from_seq)
			SELECT c, $1, (SELECT last FROM seq) FROM unnest($9::text[]) AS c ON CONFLICT DO NOTHING)
		SELECT last FROM seq`
	// groupCurrentSQL lists the current members of group $1 that joined
	// before post $2: one range of the partial index
	// group_members_current, the group's local members.
	groupCurrentSQL = `SELECT client FROM group_members
		WHERE group_id = $1 AND to_seq IS NULL AND from_seq < $2`
)

// checkFanout checks f, the fan-out of a write to group groupID.
func checkFanout(f store.Fanout, groupID []byte) error {
	if err := check.Fanout(f); err != nil {
		return err
	}
	if f.Group != nil && !bytes.Equal(f.Group.GroupID, groupID) {
		return fmt.Errorf("group post for another group: %w", store.ErrInvalid)
	}
	return nil
}

// checkFanoutWithoutDedup is checkFanout for a write other than Deliver,
// which alone takes a dedup key (store.Fanout.Dedup).
func checkFanoutWithoutDedup(f store.Fanout, groupID []byte) error {
	if err := checkFanout(f, groupID); err != nil {
		return err
	}
	return check.FanoutWithoutDedup(f)
}

// fanoutTx writes f inside tx at time now (Unix ms): the group post, the
// personal deliveries, the outbox messages.
func (s *Store) fanoutTx(ctx context.Context, tx pgx.Tx, f store.Fanout, now int64) (store.Delivered, error) {
	var d store.Delivered
	if g := f.Group; g != nil {
		seq, err := postTx(ctx, tx, g, now)
		if err != nil {
			return store.Delivered{}, err
		}
		d.Group = seq
	}
	for _, l := range f.Local {
		out, err := s.appendTx(ctx, tx, l, now)
		if err != nil {
			return store.Delivered{}, err
		}
		d.Local = append(d.Local, out)
	}
	// A destination over its bound loses its messages, not the write:
	// the state change and the others' messages commit.
	ids, err := s.outboxTx(ctx, tx, f.Remote, now, true)
	if err != nil {
		return store.Delivered{}, err
	}
	d.Outbox = ids
	// The other Stores hear of the posts and messages at the commit.
	if err := notifyTx(ctx, tx, wakeEvents(f, d)); err != nil {
		return store.Delivered{}, err
	}
	return d, nil
}

// postTx writes g to its group's log under a new number of the global
// sequence, and the membership changes it carries: O(1) statements,
// whatever the number of members. The caller holds the group's row, so
// whether its members are known cannot change under it; when they are
// not, the post updates the row, and the caller holds its update lock.
func postTx(ctx context.Context, tx pgx.Tx, g *store.GroupPost, now int64) (uint64, error) {
	var known bool
	if err := tx.QueryRow(ctx, groupKnownSQL, g.GroupID).Scan(&known); err != nil {
		return 0, fmt.Errorf("reading the group: %w", err)
	}
	exp := now + store.DefaultQueueTTL.Milliseconds()
	if !g.Expires.IsZero() {
		exp = check.ExpiryMillis(g.Expires)
	}
	leave, join := g.Leave, g.Join
	if leave == nil {
		leave = []string{}
	}
	if join == nil {
		join = []string{}
	}
	if known {
		var seq int64
		if err := tx.QueryRow(ctx, groupPostSQL, g.GroupID, g.Sender, g.Except, g.Message, len(g.Message), now, exp,
			leave, join).Scan(&seq); err != nil {
			return 0, fmt.Errorf("posting to the group log: %w", err)
		}
		return uint64(seq), nil
	}
	// Members recorded with this post: they must be in place before
	// Leave ends some of them, so the steps are statements of their own.
	if g.Members == nil {
		return 0, store.ErrGroupMembersUnknown
	}
	var seq int64
	if err := tx.QueryRow(ctx, queueSeqSQL).Scan(&seq); err != nil {
		return 0, fmt.Errorf("taking a sequence number: %w", err)
	}
	if _, err := tx.Exec(ctx, groupSeedSQL, g.GroupID, g.Members, seq); err != nil {
		return 0, fmt.Errorf("recording group members: %w", err)
	}
	if _, err := tx.Exec(ctx, groupKnownSetSQL, g.GroupID); err != nil {
		return 0, fmt.Errorf("recording group members: %w", err)
	}
	if _, err := tx.Exec(ctx, groupLogInsertSQL, seq, g.GroupID, g.Sender, g.Except, g.Message, len(g.Message), now, exp); err != nil {
		return 0, fmt.Errorf("writing to the group log: %w", err)
	}
	if _, err := tx.Exec(ctx, groupLeaveSQL, g.GroupID, leave, seq); err != nil {
		return 0, fmt.Errorf("ending group memberships: %w", err)
	}
	if _, err := tx.Exec(ctx, groupJoinSQL, g.GroupID, join, seq); err != nil {
		return 0, fmt.Errorf("starting group memberships: %w", err)
	}
	return uint64(seq), nil
}

// notifyPost wakes, once post seq of groupID committed (through this
// Store or, heard by its listener, another), the waiting clients that see
// it: the group's current local members that joined before it, read from
// the index of current memberships, and left, the members the post
// removed (who see it; another Store hears of them as queue events,
// wakeEvents). The cost follows the group's local members, never the
// waiters of the process, and a post costs no read when nobody waits. A
// member the read misses had its membership changed by a later post that
// committed first, whose own wake-up (with a higher seq) wakes it. Should
// the read fail or time out, every waiter of the process is woken
// (Notifier.Fallback), and the failure logged: each fetches its queue
// once, where the group's members, not known, would otherwise sleep
// through the post until the end of their wait. A lookup that ends
// because the Store is closing is no failure: Close wakes every waiter.
func (s *Store) notifyPost(ctx context.Context, groupID []byte, except string, seq uint64, left []string) {
	if s.notify.Idle() {
		return
	}
	s.notify.NotifyEach(left, except, seq)
	rows, _ := s.pool.Query(ctx, groupCurrentSQL, groupID, int64(seq))
	members, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		if s.closed.Load() {
			// The lookup ended because the Store is closing (Close
			// cancelled the listener's lookups and closes the pool):
			// nothing failed, nothing to log, and Close wakes every
			// waiter.
			return
		}
		s.notify.Fallback(fmt.Errorf("looking up the local members of a group to wake them after post %d: %w", seq, err))
		return
	}
	s.notify.NotifyEach(members, except, seq)
}

// SetWakeErrorLog implements store.WakeErrorLogger.
func (s *Store) SetWakeErrorLog(fn func(error)) { s.notify.SetOnFallback(fn) }

// notifyDelivered wakes the waiters of the local queues and group log d
// wrote to, once its write committed.
func (s *Store) notifyDelivered(f store.Fanout, d store.Delivered) {
	if f.Group != nil && d.Group != 0 {
		s.notifyPost(context.Background(), f.Group.GroupID, f.Group.Except, d.Group, f.Group.Leave)
	}
	for i, l := range f.Local {
		if i < len(d.Local) {
			s.notifyAppended(l.Recipients, d.Local[i])
		}
	}
}

// lockGroupDedup is lockGroup for Deliver, with f's dedup record, when it
// has one, sent in the same round trip (the record, one row, shares the
// seen signatures' table): a message delivered already is
// store.ErrDuplicate, and the caller's transaction, rolled back, wrote
// nothing. Of two transactions recording one key, the second waits for
// the first and finds the key once it committed. The record is written
// whatever the group's row says; an error rolls it back with the rest.
func lockGroupDedup(ctx context.Context, tx pgx.Tx, groupID []byte, epoch uint64, lock string, f store.Fanout, now int64) (known bool, err error) {
	if len(f.Dedup) == 0 {
		_, known, err = lockGroup(ctx, tx, groupID, epoch, lock)
		return known, err
	}
	var cur int64
	var reinit bool
	found, first := true, false
	b := &pgx.Batch{}
	b.Queue(`SELECT epoch, members_known, reinit FROM mls_groups WHERE group_id = $1 `+lock, groupID).QueryRow(func(row pgx.Row) error {
		err := row.Scan(&cur, &known, &reinit)
		if errors.Is(err, pgx.ErrNoRows) {
			found = false
			return nil
		}
		return err
	})
	b.Queue(seenInsertSQL, f.Dedup, check.ExpiryMillis(f.DedupExpires), now).QueryRow(func(row pgx.Row) error {
		var err error
		first, err = scanFirstUse(row)
		return err
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return false, fmt.Errorf("reading the group and recording the message for duplicate suppression: %w", err)
	}
	switch {
	case !found:
		return false, fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound)
	case reinit:
		return false, store.ErrReInitialized
	case uint64(cur) != epoch:
		return false, store.ErrEpochConflict
	case !first:
		return false, store.ErrDuplicate
	}
	return known, nil
}

// Deliver implements store.GroupStore: under a share lock of the group's
// row, the check of its epoch and the fan-out are one transaction; a
// commit of the next epoch waits for it. A post to a group whose members
// are not recorded yet updates the row (postTx): it runs under the row's
// FOR NO KEY UPDATE lock instead, taken before the sequence row, so that
// concurrent Delivers wait for it rather than deadlock.
func (s *Store) Deliver(ctx context.Context, groupID []byte, epoch uint64, f store.Fanout) (store.Delivered, error) {
	const doing = "delivering message"
	if err := s.checkOpen(doing); err != nil {
		return store.Delivered{}, err
	}
	if err := check.GroupID(groupID); err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	if err := checkFanout(f, groupID); err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	var d store.Delivered
	lock := lockForShare
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		now := s.nowMs()
		known, err := lockGroupDedup(ctx, tx, groupID, epoch, lock, f, now)
		if err != nil {
			return err
		}
		if !known && f.Group != nil && lock == lockForShare {
			// The post records the members and updates the row: run
			// again under the lock the update takes, taken first.
			lock = lockForNoKeyUpdate
			return errRetry
		}
		d, err = s.fanoutTx(ctx, tx, f, now)
		return err
	})
	if err != nil {
		return store.Delivered{}, s.fail(doing, err)
	}
	s.notifyDelivered(f, d)
	return d, nil
}

// DedupRecorded implements store.GroupStore: a read of the seen
// signatures, which hold the dedup records.
func (s *Store) DedupRecorded(ctx context.Context, key []byte) (bool, error) {
	const doing = "looking up a message's dedup record"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	if len(key) != 32 {
		return false, fmt.Errorf("%s: key of %d bytes, want 32: %w", doing, len(key), store.ErrInvalid)
	}
	var one int
	err := s.pool.QueryRow(ctx, `SELECT 1 FROM seen_signatures WHERE digest = $1 AND expires_ms > $2`,
		key, s.nowMs()).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, s.fail(doing, err)
	}
	return true, nil
}
