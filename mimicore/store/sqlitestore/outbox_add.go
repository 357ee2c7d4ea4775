package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// Statements of the outbox's writes (schemaOutboxBodies).
const (
	// outboxBodyInsertSQL writes a message body referenced by ?2 outbox
	// rows and returns its id.
	outboxBodyInsertSQL = `INSERT INTO outbox_bodies (message, refs) VALUES (?1, ?2) RETURNING id`
	// outboxInsertSQL writes one outbox message, its bytes body ?5, and
	// returns its id.
	outboxInsertSQL = `INSERT INTO outbox (sender, destination, group_id, recipients, body_id, enqueued_ms, size)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id`
)

// OutboxAdd implements store.OutboxAdder: the dedup record (shared with
// the queues' Delivery.Dedup, in seen_signatures), the outbox rows and
// their destinations' heads, as one op.
func (s *Store) OutboxAdd(ctx context.Context, w store.OutboxWrite) ([]uint64, error) {
	const doing = "adding to outbox"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.OutboxWrite(w); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	// Copied now: the op may run after the caller changed its slices.
	rows, err := newOutboxRows(w.Messages)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	dedup := bytes.Clone(w.Dedup)
	var dedupExpires int64
	if len(dedup) > 0 {
		dedupExpires = check.ExpiryMillis(w.DedupExpires)
	}
	replay := newReplayRow(w.Replay)
	var ids []uint64
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := check.Millis(s.now())
		if len(dedup) > 0 {
			res, err := tx.StmtContext(ctx, s.ws.seenInsert).ExecContext(ctx, dedup, dedupExpires, now)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return store.ErrDuplicate
			}
		}
		if err := s.recordReplayTx(ctx, tx, replay, now); err != nil {
			return err
		}
		// Over a destination's bound the whole write is refused
		// (store.ErrOutboxFull), the dedup record too: the peer retries.
		admit, err := s.outboxAdmitTx(ctx, tx, rows.rows, false)
		if err != nil {
			return err
		}
		ids, err = outboxInsertTx(ctx, tx, rows, admit, now)
		return err
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return ids, nil
}
