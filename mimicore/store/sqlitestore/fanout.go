package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// fanout is a checked store.Fanout, copied (an op may run after its
// caller changed its slices) and ready for fanoutTx.
type fanout struct {
	group  *groupPost // nil for none
	local  []queuedAppend
	remote outboxRows
	// dedup is store.Fanout.Dedup, empty for none, recorded until
	// dedupExpires (Unix ms).
	dedup        []byte
	dedupExpires int64
}

// groupPost is a checked store.GroupPost, copied, its members as JSON
// arrays (json_each; unnest of a text[] in PostgreSQL).
type groupPost struct {
	groupID, msg         []byte
	sender               string
	except               string
	join, leave, members string   // JSON arrays, "" for none
	left                 []string // Leave: they see the post, and are woken for it
	expires              time.Time
}

// Statements of the group logs.
const (
	groupLogInsertSQL = `INSERT INTO group_log (seq, group_id, sender, except_client, message, size, arrived_ms, expires_ms)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)`
	// groupLeaveSQL ends, at post ?3, the membership in group ?1 of the
	// clients in the JSON array ?2.
	groupLeaveSQL = `UPDATE group_members SET to_seq = ?3
		WHERE group_id = ?1 AND to_seq IS NULL AND client IN (SELECT value FROM json_each(?2))`
	// groupJoinSQL starts, after post ?3, the membership in group ?1 of
	// the clients in the JSON array ?2 that are not members already.
	groupJoinSQL = `INSERT INTO group_members (client, group_id, from_seq)
		SELECT value, ?1, ?3 FROM json_each(?2) WHERE true ON CONFLICT DO NOTHING`
	// groupKnownSQL reports whether group ?1's local members are recorded.
	groupKnownSQL = `SELECT members_known FROM mls_groups WHERE group_id = ?1`
	// groupSeedSQL records the clients of the JSON array ?2 as members of
	// group ?1 from before post ?3, and the group's members as known.
	groupSeedSQL = `INSERT INTO group_members (client, group_id, from_seq)
		SELECT value, ?1, ?3 - 1 FROM json_each(?2) WHERE true ON CONFLICT DO NOTHING`
	groupKnownSetSQL = `UPDATE mls_groups SET members_known = 1 WHERE group_id = ?1`
	// groupCurrentSQL lists the current members of group ?1 that joined
	// before post ?2: one range of the partial index
	// group_members_current, the group's local members.
	groupCurrentSQL = `SELECT client FROM group_members
		WHERE group_id = ?1 AND to_seq IS NULL AND from_seq < ?2`
)

// outboxRow is a store.OutboxMessage ready for its INSERT, but for its
// message: that is its write's outboxRows.bodies[body].
type outboxRow struct {
	sender      string
	destination string
	groupID     []byte
	recipients  string // JSON array
	body        int
	size        int64 // counted against the destination's bound
}

// outboxRows is the outbox messages of one write, copied and ready for
// their INSERTs: each distinct message body once (outboxbody.Distinct),
// and a row per message naming its body.
type outboxRows struct {
	rows   []outboxRow
	bodies [][]byte
}

// newFanout checks and copies f.
func newFanout(f store.Fanout) (fanout, error) {
	if err := check.Fanout(f); err != nil {
		return fanout{}, err
	}
	var out fanout
	if p := f.Group; p != nil {
		g := &groupPost{groupID: bytes.Clone(p.GroupID), msg: bytes.Clone(p.Message), sender: p.Sender,
			except: p.Except, left: slices.Clone(p.Leave), expires: p.Expires}
		for _, l := range []struct {
			dst     *string
			clients []string
			// none is whether an empty list is "": Members are only
			// when nil, since an empty list records that the group
			// has no local members.
			none bool
		}{{&g.join, p.Join, true}, {&g.leave, p.Leave, true}, {&g.members, p.Members, p.Members == nil}} {
			if len(l.clients) == 0 && l.none {
				continue
			}
			b, err := json.Marshal(l.clients)
			if err != nil {
				return fanout{}, fmt.Errorf("encoding group members: %w", err)
			}
			*l.dst = string(b)
		}
		out.group = g
	}
	for _, d := range f.Local {
		out.local = append(out.local, newQueuedAppend(d))
	}
	var err error
	if out.remote, err = newOutboxRows(f.Remote); err != nil {
		return fanout{}, err
	}
	if len(f.Dedup) > 0 {
		out.dedup, out.dedupExpires = bytes.Clone(f.Dedup), check.ExpiryMillis(f.DedupExpires)
	}
	return out, nil
}

// empty reports whether there is nothing to deliver.
func (f *fanout) empty() bool { return f.group == nil && len(f.local) == 0 && len(f.remote.rows) == 0 }

// checkGroup reports an ErrInvalid when f posts to another group than
// groupID, the group of the write that carries it.
func (f *fanout) checkGroup(groupID []byte) error {
	if f.group != nil && !bytes.Equal(f.group.groupID, groupID) {
		return fmt.Errorf("group post for another group: %w", store.ErrInvalid)
	}
	return nil
}

// size is the number of bytes the fan-out writes, for the group write
// statistics: each message body once per queue write or outbox write.
func (f *fanout) size() int {
	n := 0
	if g := f.group; g != nil {
		n += len(g.msg) + len(g.groupID) + len(g.sender) + len(g.except) + len(g.join) + len(g.leave) + len(g.members)
	}
	for _, qa := range f.local {
		n += len(qa.msg) + len(qa.groupID) + 32*len(qa.recipients)
	}
	for _, b := range f.remote.bodies {
		n += len(b)
	}
	for _, r := range f.remote.rows {
		n += len(r.groupID) + len(r.recipients) + len(r.sender) + len(r.destination)
	}
	return n
}

// fanoutTx writes f inside tx at time now (Unix ms).
func (s *Store) fanoutTx(ctx context.Context, tx *sql.Tx, f *fanout, now int64) (store.Delivered, error) {
	var d store.Delivered
	if g := f.group; g != nil {
		seq, err := s.postTx(ctx, tx, g, now)
		if err != nil {
			return store.Delivered{}, err
		}
		d.Group = seq
	}
	for _, qa := range f.local {
		out, err := s.appendTx(ctx, tx, qa, now)
		if err != nil {
			return store.Delivered{}, err
		}
		d.Local = append(d.Local, out)
	}
	if len(f.remote.rows) > 0 {
		// A destination over its bound loses its messages, not the
		// write: the state change and the others' messages commit.
		admit, err := s.outboxAdmitTx(ctx, tx, f.remote.rows, true)
		if err != nil {
			return store.Delivered{}, err
		}
		if d.Outbox, err = outboxInsertTx(ctx, tx, f.remote, admit, now); err != nil {
			return store.Delivered{}, err
		}
	}
	return d, nil
}

// postTx writes g to its group's log under a new number of the global
// sequence, and the membership changes it carries: O(1) rows and one per
// Join or Leave, whatever the number of members.
func (s *Store) postTx(ctx context.Context, tx *sql.Tx, g *groupPost, now int64) (uint64, error) {
	var seq int64
	if err := tx.StmtContext(ctx, s.qs.seq).QueryRowContext(ctx).Scan(&seq); err != nil {
		return 0, fmt.Errorf("taking a sequence number: %w", err)
	}
	var known bool
	if err := tx.QueryRowContext(ctx, groupKnownSQL, g.groupID).Scan(&known); err != nil {
		return 0, fmt.Errorf("reading the group: %w", err)
	}
	if !known {
		if g.members == "" {
			return 0, store.ErrGroupMembersUnknown
		}
		if _, err := tx.ExecContext(ctx, groupSeedSQL, g.groupID, g.members, seq); err != nil {
			return 0, fmt.Errorf("recording group members: %w", err)
		}
		if _, err := tx.ExecContext(ctx, groupKnownSetSQL, g.groupID); err != nil {
			return 0, fmt.Errorf("recording group members: %w", err)
		}
	}
	exp := now + store.DefaultQueueTTL.Milliseconds()
	if !g.expires.IsZero() {
		exp = check.ExpiryMillis(g.expires)
	}
	if _, err := tx.ExecContext(ctx, groupLogInsertSQL, seq, g.groupID, g.sender, g.except, g.msg, len(g.msg), now, exp); err != nil {
		return 0, fmt.Errorf("writing to the group log: %w", err)
	}
	if g.leave != "" {
		if _, err := tx.ExecContext(ctx, groupLeaveSQL, g.groupID, g.leave, seq); err != nil {
			return 0, fmt.Errorf("ending group memberships: %w", err)
		}
	}
	if g.join != "" {
		if _, err := tx.ExecContext(ctx, groupJoinSQL, g.groupID, g.join, seq); err != nil {
			return 0, fmt.Errorf("starting group memberships: %w", err)
		}
	}
	return uint64(seq), nil
}

// notifyPost wakes, once post seq of groupID committed, the waiting
// clients that see it: the group's current local members that joined
// before it, read from the index of current memberships, and left, the
// members the post removed (who see it). The cost follows the group's
// local members, never the waiters of the process, and a post costs no
// read when nobody waits. A member the read misses had its membership
// changed by a later post that committed first, whose own wake-up
// (with a higher seq) wakes it. Should the read fail, every waiter of
// the process is woken (Notifier.Fallback), and the failure logged: each
// fetches its queue once, where the group's members, not known, would
// otherwise sleep through the post until the end of their wait.
func (s *Store) notifyPost(groupID []byte, except string, seq uint64, left []string) {
	if s.notifier.Idle() {
		return
	}
	s.notifier.NotifyEach(left, except, seq)
	members, err := s.postMembers(groupID, seq)
	if err != nil {
		s.notifier.Fallback(fmt.Errorf("looking up the local members of a group to wake them after post %d: %w", seq, err))
		return
	}
	s.notifier.NotifyEach(members, except, seq)
}

// SetWakeErrorLog implements store.WakeErrorLogger.
func (s *Store) SetWakeErrorLog(fn func(error)) { s.notifier.SetOnFallback(fn) }

// postMembers returns the current members of groupID that joined before
// post seq.
func (s *Store) postMembers(groupID []byte, seq uint64) ([]string, error) {
	rows, err := s.r.QueryContext(context.Background(), groupCurrentSQL, groupID, int64(seq))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// notifyDelivered wakes the waiters of the local queues and group log d
// wrote to, once its write committed.
func (s *Store) notifyDelivered(f *fanout, d store.Delivered) {
	if f.group != nil && d.Group != 0 {
		s.notifyPost(f.group.groupID, f.group.except, d.Group, f.group.left)
	}
	for i, qa := range f.local {
		s.notifyAppended(qa.recipients, d.Local[i])
	}
}

// Deliver implements store.GroupStore: the check of the group's epoch,
// the dedup record (one row, with the seen signatures) and the fan-out are
// one op. A duplicate writes nothing and ends the op without an error, so
// that it does not roll back the other ops of its batch.
func (s *Store) Deliver(ctx context.Context, groupID []byte, epoch uint64, f store.Fanout) (store.Delivered, error) {
	const doing = "delivering message"
	if err := s.checkOpen(doing); err != nil {
		return store.Delivered{}, err
	}
	if err := check.GroupID(groupID); err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	fo, err := newFanout(f)
	if err == nil {
		err = fo.checkGroup(groupID)
	}
	if err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	id := bytes.Clone(groupID)
	var d store.Delivered
	dup := false
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		d, dup = store.Delivered{}, false
		var cur int64
		var reinit bool
		err := tx.QueryRowContext(ctx, `SELECT epoch, reinit FROM mls_groups WHERE group_id = ?1`, id).Scan(&cur, &reinit)
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
		now := check.Millis(s.now())
		if len(fo.dedup) > 0 {
			res, err := tx.StmtContext(ctx, s.ws.seenInsert).ExecContext(ctx, fo.dedup, fo.dedupExpires, now)
			if err != nil {
				return fmt.Errorf("recording the message for duplicate suppression: %w", err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("recording the message for duplicate suppression: %w", err)
			}
			if n == 0 {
				// Delivered before: nothing was written.
				dup = true
				return nil
			}
		}
		d, err = s.fanoutTx(ctx, tx, &fo, now)
		return err
	})
	if err != nil {
		return store.Delivered{}, s.fail(doing, err)
	}
	if dup {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, store.ErrDuplicate)
	}
	s.notifyDelivered(&fo, d)
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
	err := s.r.QueryRowContext(ctx, `SELECT 1 FROM seen_signatures WHERE digest = ?1 AND expires_ms > ?2`,
		key, check.Millis(s.now())).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, s.fail(doing, err)
	}
	return true, nil
}

// outboxPendingSQL reads destination ?1's messages with an id above ?2,
// up to ?3 of them, each with its body (schemaOutboxBodies). A body is
// read when its row is, so the reader's stop at store.MaxOutboxListBytes
// leaves the bodies of the rows after it unread.
const outboxPendingSQL = `SELECT o.id, o.sender, o.group_id, o.recipients, b.message, o.enqueued_ms
	FROM outbox o JOIN outbox_bodies b ON b.id = o.body_id
	WHERE o.destination = ?1 AND o.id > ?2 ORDER BY o.id LIMIT ?3`

// OutboxPending implements store.Outbox.
func (s *Store) OutboxPending(ctx context.Context, destination string, after uint64, limit int) ([]store.OutboxEntry, error) {
	const doing = "listing outbox"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	if limit < 1 || limit > store.MaxOutboxList || after > maxRowID {
		return nil, fmt.Errorf("%s: limit %d, want 1..%d, after %d: %w", doing, limit, store.MaxOutboxList, after, store.ErrInvalid)
	}
	rows, err := s.r.QueryContext(ctx, outboxPendingSQL, destination, int64(after), limit)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	var out []store.OutboxEntry
	size := 0
	for size < store.MaxOutboxListBytes && rows.Next() {
		var e store.OutboxEntry
		var id, enq int64
		var rcpt string
		if err := rows.Scan(&id, &e.Sender, &e.GroupID, &rcpt, &e.Message, &enq); err != nil {
			return nil, s.fail(doing, err)
		}
		if err := json.Unmarshal([]byte(rcpt), &e.Recipients); err != nil {
			return nil, fmt.Errorf("%s: decoding recipients of message %d: %w", doing, id, err)
		}
		e.ID, e.Destination, e.Enqueued = uint64(id), destination, time.UnixMilli(enq)
		out = append(out, e)
		size += len(e.Message)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	return out, nil
}

// OutboxDestinations implements store.Outbox.
func (s *Store) OutboxDestinations(ctx context.Context) ([]string, error) {
	const doing = "listing outbox destinations"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT destination FROM outbox_heads WHERE messages > 0 ORDER BY destination`)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, s.fail(doing, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	return out, nil
}

// OutboxDelivered implements store.Outbox: one DELETE of the ids, and the
// update of the destination's head, as one op.
func (s *Store) OutboxDelivered(ctx context.Context, destination string, ids []uint64) (int, error) {
	const doing = "clearing outbox"
	if err := s.checkOpen(doing); err != nil {
		return 0, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return 0, fmt.Errorf("%s: %w", doing, err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	if len(ids) > store.MaxOutboxList {
		return 0, fmt.Errorf("%s: %d ids, over the %d limit: %w", doing, len(ids), store.MaxOutboxList, store.ErrInvalid)
	}
	list := make([]int64, 0, len(ids))
	for _, id := range ids {
		if id <= maxRowID {
			list = append(list, int64(id))
		}
	}
	arg, err := json.Marshal(slices.Compact(slices.Sorted(slices.Values(list))))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", doing, err)
	}
	var n int64
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		sizes, err := tx.QueryContext(ctx, `DELETE FROM outbox WHERE destination = ?1
			AND id IN (SELECT value FROM json_each(?2)) RETURNING size`, destination, string(arg))
		if err != nil {
			return err
		}
		n, err = outboxRemovedTx(ctx, tx, destination, sizes, false)
		return err
	})
	if err != nil {
		return 0, s.fail(doing, err)
	}
	return int(n), nil
}

// maxRowID is the largest SQLite rowid.
const maxRowID = 1<<63 - 1
