package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/outboxbody"
)

// Statements of the outbox's per-destination heads (schemaOutboxHeads).
const (
	// outboxAdmitSQL adds ?2 messages of ?3 bytes to destination ?1's
	// head if its backlog stays within ?4 messages and ?5 bytes: one row
	// affected when admitted, none when over the bound.
	outboxAdmitSQL = `INSERT INTO outbox_heads (destination, messages, bytes)
		SELECT ?1, ?2, ?3 WHERE ?2 <= ?4 AND ?3 <= ?5
		ON CONFLICT (destination) DO UPDATE SET messages = messages + excluded.messages, bytes = bytes + excluded.bytes
		WHERE messages + excluded.messages <= ?4 AND bytes + excluded.bytes <= ?5`
	// outboxDropFullSQL counts ?2 messages for destination ?1 dropped at
	// the bound.
	outboxDropFullSQL = `INSERT INTO outbox_heads (destination, messages, bytes, dropped_full) VALUES (?1, 0, 0, ?2)
		ON CONFLICT (destination) DO UPDATE SET dropped_full = dropped_full + excluded.dropped_full`
	// outboxRemovedSQL takes ?2 messages of ?3 bytes off destination
	// ?1's head, ?4 of them counted as dropped by an admin reset.
	outboxRemovedSQL = `UPDATE outbox_heads SET messages = messages - ?2, bytes = bytes - ?3,
		dropped_reset = dropped_reset + ?4 WHERE destination = ?1`
	// outboxHeadSQL reads destination ?1's head and its oldest message's
	// time (the first of the destination's index), NULL when none.
	outboxHeadSQL = `SELECT messages, bytes, dropped_full, dropped_reset,
		(SELECT enqueued_ms FROM outbox WHERE destination = ?1 ORDER BY id LIMIT 1)
		FROM outbox_heads WHERE destination = ?1`
	// outboxResetSQL removes, oldest first, at most ?3 of destination
	// ?1's messages up to id ?2, returning their sizes.
	outboxResetSQL = `DELETE FROM outbox WHERE id IN (
		SELECT id FROM outbox WHERE destination = ?1 AND id <= ?2 ORDER BY id LIMIT ?3) RETURNING size`
)

// outboxResetBatch is how many messages one write of OutboxReset removes.
const outboxResetBatch = 500

// newOutboxRows checks nothing (the caller did) and copies msgs into rows,
// each with the size it counts against its destination's bound, and their
// distinct bodies, each copied once.
func newOutboxRows(msgs []store.OutboxMessage) (outboxRows, error) {
	if len(msgs) == 0 {
		return outboxRows{}, nil
	}
	bodies, bodyOf := outboxbody.Distinct(msgs)
	out := outboxRows{rows: make([]outboxRow, len(msgs)), bodies: make([][]byte, len(bodies))}
	for i, b := range bodies {
		out.bodies[i] = bytes.Clone(b)
	}
	for i, m := range msgs {
		rcpt, err := json.Marshal(m.Recipients)
		if err != nil {
			return outboxRows{}, fmt.Errorf("encoding recipients: %w", err)
		}
		out.rows[i] = outboxRow{sender: m.Sender, destination: m.Destination, groupID: bytes.Clone(m.GroupID),
			recipients: string(rcpt), body: bodyOf[i], size: m.Size()}
	}
	return out, nil
}

// SetOutboxLimits implements store.OutboxBound.
func (s *Store) SetOutboxLimits(l store.OutboxLimits) {
	l = l.WithDefaults()
	s.outboxLimits.Store(&l)
}

// limits returns the outbox bounds in force.
func (s *Store) limits() store.OutboxLimits {
	if l := s.outboxLimits.Load(); l != nil {
		return *l
	}
	return store.OutboxLimits{}.WithDefaults()
}

// outboxAdmitTx checks rows against their destinations' bounds and counts
// the admitted ones in their heads, all of a destination's rows together,
// in one statement per destination. It reports which rows are admitted.
// With drop set, the rows of a destination over its bound are counted as
// dropped (store.Dropped.BacklogFull); without, the first destination
// over its bound fails the op with store.ErrOutboxFull.
func (s *Store) outboxAdmitTx(ctx context.Context, tx *sql.Tx, rows []outboxRow, drop bool) ([]bool, error) {
	type total struct {
		messages int
		bytes    int64
	}
	var order []string
	totals := map[string]*total{}
	for _, r := range rows {
		t := totals[r.destination]
		if t == nil {
			t = &total{}
			totals[r.destination] = t
			order = append(order, r.destination)
		}
		t.messages++
		t.bytes += r.size
	}
	l := s.limits()
	refused := map[string]bool{}
	for _, d := range order {
		t := totals[d]
		res, err := tx.ExecContext(ctx, outboxAdmitSQL, d, t.messages, t.bytes, l.MaxMessages, l.MaxBytes)
		if err != nil {
			return nil, fmt.Errorf("counting the outbox backlog: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, err
		}
		if n == 1 {
			continue
		}
		if !drop {
			return nil, fmt.Errorf("%d messages for %s: %w", t.messages, d, store.ErrOutboxFull)
		}
		refused[d] = true
		if _, err := tx.ExecContext(ctx, outboxDropFullSQL, d, t.messages); err != nil {
			return nil, fmt.Errorf("counting dropped outbox messages: %w", err)
		}
	}
	admit := make([]bool, len(rows))
	for i, r := range rows {
		admit[i] = !refused[r.destination]
	}
	return admit, nil
}

// outboxInsertTx writes the admitted rows and returns their ids, 0 for
// the others. Each body an admitted row references is written once, before
// its first row, with the number of admitted rows that reference it as its
// refs; a body of refused rows only is not written.
func outboxInsertTx(ctx context.Context, tx *sql.Tx, w outboxRows, admit []bool, now int64) ([]uint64, error) {
	refs := make([]int64, len(w.bodies))
	for i, r := range w.rows {
		if admit[i] {
			refs[r.body]++
		}
	}
	bodyIDs := make([]int64, len(w.bodies))
	ids := make([]uint64, len(w.rows))
	for i, r := range w.rows {
		if !admit[i] {
			continue
		}
		if bodyIDs[r.body] == 0 {
			if err := tx.QueryRowContext(ctx, outboxBodyInsertSQL, w.bodies[r.body], refs[r.body]).Scan(&bodyIDs[r.body]); err != nil {
				return nil, fmt.Errorf("writing a message body to the outbox: %w", err)
			}
		}
		var id int64
		if err := tx.QueryRowContext(ctx, outboxInsertSQL, r.sender, r.destination, r.groupID, r.recipients, bodyIDs[r.body], now, r.size).Scan(&id); err != nil {
			return nil, fmt.Errorf("writing to the outbox: %w", err)
		}
		ids[i] = uint64(id)
	}
	return ids, nil
}

// outboxRemovedTx takes the rows a DELETE ... RETURNING size removed off
// destination's head, counting them as reset when reset is set, and
// reports how many there were.
func outboxRemovedTx(ctx context.Context, tx *sql.Tx, destination string, sizes *sql.Rows, reset bool) (int64, error) {
	var n, total int64
	for sizes.Next() {
		var size int64
		if err := sizes.Scan(&size); err != nil {
			sizes.Close()
			return 0, err
		}
		n++
		total += size
	}
	if err := sizes.Close(); err != nil {
		return 0, err
	}
	if err := sizes.Err(); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	var dropped int64
	if reset {
		dropped = n
	}
	if _, err := tx.ExecContext(ctx, outboxRemovedSQL, destination, n, total, dropped); err != nil {
		return 0, fmt.Errorf("counting the outbox backlog: %w", err)
	}
	return n, nil
}

// OutboxDestinationBacklog implements store.OutboxBound: one probe of the
// destination's head and one of its index.
func (s *Store) OutboxDestinationBacklog(ctx context.Context, destination string) (store.Backlog, error) {
	const doing = "reading a destination's outbox backlog"
	if err := s.checkOpen(doing); err != nil {
		return store.Backlog{}, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return store.Backlog{}, fmt.Errorf("%s: %w", doing, err)
	}
	b := store.Backlog{Destination: destination}
	var oldest sql.NullInt64
	err := s.r.QueryRowContext(ctx, outboxHeadSQL, destination).Scan(&b.Messages, &b.Bytes, &b.Dropped.BacklogFull, &b.Dropped.AdminReset, &oldest)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return b, nil
	case err != nil:
		return store.Backlog{}, s.fail(doing, err)
	}
	if oldest.Valid {
		b.Oldest = check.Time(oldest.Int64)
	}
	return b, nil
}

// OutboxReset implements store.OutboxBound: writes of at most
// outboxResetBatch deletions each, up to the destination's last message
// when the call began.
func (s *Store) OutboxReset(ctx context.Context, destination string) (int, error) {
	const doing = "resetting a destination's outbox"
	if err := s.checkOpen(doing); err != nil {
		return 0, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return 0, fmt.Errorf("%s: %w", doing, err)
	}
	var last int64
	if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM outbox WHERE destination = ?1`, destination).Scan(&last); err != nil {
		return 0, s.fail(doing, err)
	}
	total := 0
	for last > 0 {
		var n int64
		err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
			sizes, err := tx.QueryContext(ctx, outboxResetSQL, destination, last, outboxResetBatch)
			if err != nil {
				return err
			}
			n, err = outboxRemovedTx(ctx, tx, destination, sizes, true)
			return err
		})
		if err != nil {
			return total, s.fail(doing, err)
		}
		total += int(n)
		if n < outboxResetBatch {
			break
		}
	}
	return total, nil
}

var _ store.OutboxBound = (*Store)(nil) // interface guard
