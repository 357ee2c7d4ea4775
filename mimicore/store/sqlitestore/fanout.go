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
	local  []queuedAppend
	remote []outboxRow
}

// outboxRow is a store.OutboxMessage ready for its INSERT.
type outboxRow struct {
	sender      string
	destination string
	groupID     []byte
	recipients  string // JSON array
	message     []byte
}

// newFanout checks and copies f.
func newFanout(f store.Fanout) (fanout, error) {
	if err := check.Fanout(f); err != nil {
		return fanout{}, err
	}
	var out fanout
	for _, d := range f.Local {
		out.local = append(out.local, newQueuedAppend(d))
	}
	for _, m := range f.Remote {
		rcpt, err := json.Marshal(m.Recipients)
		if err != nil {
			return fanout{}, fmt.Errorf("encoding recipients: %w", err)
		}
		out.remote = append(out.remote, outboxRow{sender: m.Sender, destination: m.Destination, groupID: bytes.Clone(m.GroupID),
			recipients: string(rcpt), message: bytes.Clone(m.Message)})
	}
	return out, nil
}

// empty reports whether there is nothing to deliver.
func (f *fanout) empty() bool { return len(f.local) == 0 && len(f.remote) == 0 }

// size is the number of bytes the fan-out writes, for the group write
// statistics: each message body once per queue write or outbox row.
func (f *fanout) size() int {
	n := 0
	for _, qa := range f.local {
		n += len(qa.msg) + len(qa.groupID) + 32*len(qa.recipients)
	}
	for _, r := range f.remote {
		n += len(r.message) + len(r.groupID) + len(r.recipients) + len(r.sender) + len(r.destination)
	}
	return n
}

// fanoutTx writes f inside tx at time now (Unix ms).
func (s *Store) fanoutTx(ctx context.Context, tx *sql.Tx, f *fanout, now int64) (store.Delivered, error) {
	var d store.Delivered
	for _, qa := range f.local {
		out, err := s.appendTx(ctx, tx, qa, now)
		if err != nil {
			return store.Delivered{}, err
		}
		d.Local = append(d.Local, out)
	}
	for _, r := range f.remote {
		var id int64
		if err := tx.QueryRowContext(ctx, `INSERT INTO outbox (sender, destination, group_id, recipients, message, enqueued_ms)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id`, r.sender, r.destination, r.groupID, r.recipients, r.message, now).Scan(&id); err != nil {
			return store.Delivered{}, err
		}
		d.Outbox = append(d.Outbox, uint64(id))
	}
	return d, nil
}

// notifyDelivered wakes the waiters of the local queues d wrote to, once
// its write committed.
func (s *Store) notifyDelivered(f *fanout, d store.Delivered) {
	for i, qa := range f.local {
		s.notifyAppended(qa.recipients, d.Local[i])
	}
}

// Deliver implements store.GroupStore: the check of the group's epoch and
// the fan-out are one op.
func (s *Store) Deliver(ctx context.Context, groupID []byte, epoch uint64, f store.Fanout) (store.Delivered, error) {
	const doing = "delivering message"
	if err := s.checkOpen(doing); err != nil {
		return store.Delivered{}, err
	}
	if err := check.GroupID(groupID); err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	fo, err := newFanout(f)
	if err != nil {
		return store.Delivered{}, fmt.Errorf("%s: %w", doing, err)
	}
	id := bytes.Clone(groupID)
	var d store.Delivered
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var cur int64
		err := tx.QueryRowContext(ctx, `SELECT epoch FROM mls_groups WHERE group_id = ?1`, id).Scan(&cur)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("no group hosted here with this id: %w", store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if uint64(cur) != epoch {
			return store.ErrEpochConflict
		}
		d, err = s.fanoutTx(ctx, tx, &fo, check.Millis(s.now()))
		return err
	})
	if err != nil {
		return store.Delivered{}, s.fail(doing, err)
	}
	s.notifyDelivered(&fo, d)
	return d, nil
}

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
	rows, err := s.r.QueryContext(ctx, `SELECT id, sender, group_id, recipients, message, enqueued_ms FROM outbox
		WHERE destination = ?1 AND id > ?2 ORDER BY id LIMIT ?3`, destination, int64(after), limit)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	var out []store.OutboxEntry
	for rows.Next() {
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
	rows, err := s.r.QueryContext(ctx, `SELECT DISTINCT destination FROM outbox ORDER BY destination`)
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

// OutboxDelivered implements store.Outbox: one DELETE of the ids, as one
// op.
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
		res, err := tx.ExecContext(ctx, `DELETE FROM outbox WHERE destination = ?1
			AND id IN (SELECT value FROM json_each(?2))`, destination, string(arg))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, s.fail(doing, err)
	}
	return int(n), nil
}

// maxRowID is the largest SQLite rowid.
const maxRowID = 1<<63 - 1
