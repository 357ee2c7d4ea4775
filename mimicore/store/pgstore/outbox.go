package pgstore

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// outboxLockSQL takes the outbox's write lock, until the transaction ends.
// Outbox ids come from an identity column, handed out at INSERT, not at
// COMMIT; under the lock, the writes to the outbox commit one at a time in
// id order, so the federation sender, which reads a destination's messages
// after the last id it delivered (OutboxPending), never misses one that a
// slower transaction commits later with a smaller id.
const outboxLockSQL = `SELECT pg_advisory_xact_lock(7883952921190036852)` // "mimi-out"

// outboxInsertSQL writes one outbox message and returns its id.
const outboxInsertSQL = `INSERT INTO outbox (sender, destination, group_id, recipients, message, enqueued_ms)
	VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`

// outboxTx writes msgs to the outbox inside tx at now (Unix ms), in order,
// under the outbox lock, as one batch, and returns their ids.
func outboxTx(ctx context.Context, tx pgx.Tx, msgs []store.OutboxMessage, now int64) ([]uint64, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	b := &pgx.Batch{}
	b.Queue(outboxLockSQL)
	ids := make([]uint64, len(msgs))
	for i, m := range msgs {
		b.Queue(outboxInsertSQL, m.Sender, m.Destination, m.GroupID, m.Recipients, m.Message, now).
			QueryRow(func(row pgx.Row) error {
				var id int64
				if err := row.Scan(&id); err != nil {
					return err
				}
				ids[i] = uint64(id)
				return nil
			})
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("writing to the outbox: %w", err)
	}
	return ids, nil
}

// OutboxAdd implements store.OutboxAdder: the dedup record (shared with
// the queues' Delivery.Dedup, in seen_signatures), the replay answer and
// the outbox rows, as one transaction.
func (s *Store) OutboxAdd(ctx context.Context, w store.OutboxWrite) ([]uint64, error) {
	const doing = "adding to outbox"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.OutboxWrite(w); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	var ids []uint64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		now := s.nowMs()
		if err := dedupTx(ctx, tx, w.Dedup, w.DedupExpires, now); err != nil {
			return err
		}
		if err := s.recordReplayTx(ctx, tx, w.Replay); err != nil {
			return err
		}
		var err error
		ids, err = outboxTx(ctx, tx, w.Messages, now)
		return err
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return ids, nil
}

// maxID is the largest id of a BIGINT identity column.
const maxID = 1<<63 - 1

// OutboxPending implements store.Outbox.
func (s *Store) OutboxPending(ctx context.Context, destination string, after uint64, limit int) ([]store.OutboxEntry, error) {
	const doing = "listing outbox"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	if limit < 1 || limit > store.MaxOutboxList || after > maxID {
		return nil, fmt.Errorf("%s: limit %d, want 1..%d, after %d: %w", doing, limit, store.MaxOutboxList, after, store.ErrInvalid)
	}
	rows, _ := s.pool.Query(ctx, `SELECT id, sender, group_id, recipients, message, enqueued_ms FROM outbox
		WHERE destination = $1 AND id > $2 ORDER BY id LIMIT $3`, destination, int64(after), limit)
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.OutboxEntry, error) {
		var e store.OutboxEntry
		var id, enq int64
		if err := row.Scan(&id, &e.Sender, &e.GroupID, &e.Recipients, &e.Message, &enq); err != nil {
			return e, err
		}
		e.ID, e.Destination, e.Enqueued = uint64(id), destination, check.Time(enq)
		return e, nil
	})
	if err != nil {
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
	rows, _ := s.pool.Query(ctx, `SELECT DISTINCT destination FROM outbox ORDER BY destination`)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// OutboxDelivered implements store.Outbox: one DELETE of the ids, given
// as one bigint[] parameter.
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
		if id <= maxID {
			list = append(list, int64(id))
		}
	}
	list = slices.Compact(slices.Sorted(slices.Values(list)))
	tag, err := s.pool.Exec(ctx, `DELETE FROM outbox WHERE destination = $1 AND id = ANY($2::bigint[])`, destination, list)
	if err != nil {
		return 0, s.fail(doing, err)
	}
	return int(tag.RowsAffected()), nil
}

// OutboxBacklog implements store.OutboxBacklog: one grouped read of the
// outbox's destination index.
func (s *Store) OutboxBacklog(ctx context.Context) ([]store.Backlog, error) {
	const doing = "reading outbox backlog"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	rows, _ := s.pool.Query(ctx, `SELECT destination, COUNT(*), MIN(enqueued_ms) FROM outbox
		GROUP BY destination ORDER BY destination`)
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Backlog, error) {
		var b store.Backlog
		var oldest int64
		if err := row.Scan(&b.Destination, &b.Messages, &oldest); err != nil {
			return b, err
		}
		b.Oldest = check.Time(oldest)
		return b, nil
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if out == nil {
		out = []store.Backlog{}
	}
	return out, nil
}

var _ store.OutboxBacklog = (*Store)(nil) // interface guard
