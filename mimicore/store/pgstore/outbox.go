package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/outboxbody"
)

// outboxLockSQL takes the outbox's write lock, until the transaction ends.
// Outbox ids come from an identity column, handed out at INSERT, not at
// COMMIT; under the lock, the writes to the outbox commit one at a time in
// id order, so the federation sender, which reads a destination's messages
// after the last id it delivered (OutboxPending), never misses one that a
// slower transaction commits later with a smaller id.
const outboxLockSQL = `SELECT pg_advisory_xact_lock(7883952921190036852)` // "mimi-out"

// Statements of the outbox's writes (schemaOutboxBodies).
const (
	// outboxBodyInsertSQL writes a message body referenced by $2 outbox
	// rows and returns its id.
	outboxBodyInsertSQL = `INSERT INTO outbox_bodies (message, refs) VALUES ($1, $2) RETURNING id`
	// outboxInsertSQL writes one outbox message, its bytes body $5, and
	// returns its id.
	outboxInsertSQL = `INSERT INTO outbox (sender, destination, group_id, recipients, body_id, enqueued_ms, size)
		VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`
	// outboxInsertLastBodySQL is outboxInsertSQL for a message whose body
	// is the last this session wrote: currval is the session's own, so
	// a write of one body sends it and its rows in one round trip.
	outboxInsertLastBodySQL = `INSERT INTO outbox (sender, destination, group_id, recipients, body_id, enqueued_ms, size)
		VALUES ($1, $2, $3, $4, currval(pg_get_serial_sequence('outbox_bodies', 'id')), $5, $6) RETURNING id`
)

// Statements of the outbox's bound (store.OutboxBound): sqlitestore's.
const (
	// outboxAdmitSQL counts $2 messages of $3 bytes in destination $1's
	// head while it stays within $4 messages and $5 bytes; no row
	// changed means the backlog would pass the bound.
	outboxAdmitSQL = `INSERT INTO outbox_heads AS h (destination, messages, bytes)
		SELECT $1, $2::bigint, $3::bigint WHERE $2::bigint <= $4::bigint AND $3::bigint <= $5::bigint
		ON CONFLICT (destination) DO UPDATE SET messages = h.messages + excluded.messages, bytes = h.bytes + excluded.bytes
		WHERE h.messages + excluded.messages <= $4::bigint AND h.bytes + excluded.bytes <= $5::bigint`
	// outboxDropFullSQL counts $2 messages for $1 dropped at the bound.
	outboxDropFullSQL = `INSERT INTO outbox_heads AS h (destination, messages, bytes, dropped_full) VALUES ($1, 0, 0, $2)
		ON CONFLICT (destination) DO UPDATE SET dropped_full = h.dropped_full + excluded.dropped_full`
	outboxHeadColumns = `h.destination, h.messages, h.bytes, h.dropped_full, h.dropped_reset,
		(SELECT enqueued_ms FROM outbox o WHERE o.destination = h.destination ORDER BY o.id LIMIT 1)`
)

// Statements of the outbox's removals but a lease holder's
// (outboxReleaseSQL), each returning how many messages it deleted.
var (
	// outboxDeliveredSQL deletes destination $1's messages of ids $2.
	outboxDeliveredSQL = outboxRemoveSQL(`DELETE FROM outbox WHERE destination = $1 AND id = ANY($2::bigint[]) RETURNING size`, false)
	// outboxResetSQL deletes up to $3 messages of $1 with ids up to $2,
	// counted as reset.
	outboxResetSQL = outboxRemoveSQL(`DELETE FROM outbox WHERE id IN (
		SELECT id FROM outbox WHERE destination = $1 AND id <= $2 ORDER BY id LIMIT $3) RETURNING size`, true)
)

// outboxRemoveSQL is del, a DELETE of destination $1's outbox rows
// RETURNING their size, and the uncounting of those rows in $1's head (as
// removed by a reset when reset), in one statement that returns how many
// rows it deleted. One statement, as outboxReleaseSQL is: the trigger
// outbox_release_bodies (schemaOutboxBodies) runs at the statement's end,
// so every removal locks the destination's head before the bodies of its
// rows, and then only commits. A removal that locked bodies first, then the
// head in a statement of its own, would deadlock with a release of the
// same destination holding the head and waiting for one of those bodies.
func outboxRemoveSQL(del string, reset bool) string {
	dropped := ""
	if reset {
		dropped = `,
			dropped_reset = dropped_reset + (SELECT count(*) FROM d)`
	}
	return `WITH d AS (` + del + `),
		h AS (UPDATE outbox_heads SET messages = messages - (SELECT count(*) FROM d),
			bytes = bytes - (SELECT COALESCE(sum(size), 0) FROM d)` + dropped + `
			WHERE destination = $1 AND EXISTS (SELECT 1 FROM d))
		SELECT count(*) FROM d`
}

// outboxResetBatch is how many messages one write of OutboxReset removes.
const outboxResetBatch = 500

// SetOutboxLimits implements store.OutboxBound. The limits are this
// Store's: gateways sharing a database check their own.
func (s *Store) SetOutboxLimits(l store.OutboxLimits) {
	l = l.WithDefaults()
	s.outboxLimits.Store(&l)
}

// limits returns the outbox limits in effect.
func (s *Store) limits() store.OutboxLimits {
	if l := s.outboxLimits.Load(); l != nil {
		return *l
	}
	return store.OutboxLimits{}.WithDefaults()
}

// outboxTx writes msgs to the outbox inside tx at now (Unix ms), in order,
// under the outbox lock, and returns their ids. Each destination's
// messages are first counted in its head against the bound: when they
// would pass it, with drop they are not written (id 0) and counted as
// dropped, and without drop the write fails with store.ErrOutboxFull.
func (s *Store) outboxTx(ctx context.Context, tx pgx.Tx, msgs []store.OutboxMessage, now int64, drop bool) ([]uint64, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	if _, err := tx.Exec(ctx, outboxLockSQL); err != nil {
		return nil, fmt.Errorf("taking the outbox lock: %w", err)
	}
	type total struct {
		messages int
		bytes    int64
	}
	var order []string
	totals := map[string]*total{}
	for _, m := range msgs {
		t := totals[m.Destination]
		if t == nil {
			t = &total{}
			totals[m.Destination] = t
			order = append(order, m.Destination)
		}
		t.messages++
		t.bytes += m.Size()
	}
	l := s.limits()
	refused := map[string]bool{}
	for _, d := range order {
		t := totals[d]
		tag, err := tx.Exec(ctx, outboxAdmitSQL, d, t.messages, t.bytes, l.MaxMessages, l.MaxBytes)
		if err != nil {
			return nil, fmt.Errorf("counting the outbox backlog: %w", err)
		}
		if tag.RowsAffected() == 1 {
			continue
		}
		if !drop {
			return nil, fmt.Errorf("%d messages for %s: %w", t.messages, d, store.ErrOutboxFull)
		}
		refused[d] = true
		if _, err := tx.Exec(ctx, outboxDropFullSQL, d, t.messages); err != nil {
			return nil, fmt.Errorf("counting dropped outbox messages: %w", err)
		}
	}
	// Each distinct body of the admitted messages is written once. One
	// body (a message to several destinations) goes in the batch of its
	// rows, which name it by currval; several go in a round trip before
	// theirs, which need their ids.
	bodies, bodyOf := outboxbody.Distinct(msgs)
	refs := make([]int64, len(bodies))
	for i, m := range msgs {
		if !refused[m.Destination] {
			refs[bodyOf[i]]++
		}
	}
	written := 0
	for _, n := range refs {
		if n > 0 {
			written++
		}
	}
	if written == 0 {
		return make([]uint64, len(msgs)), nil
	}
	bodyIDs := make([]int64, len(bodies))
	b := &pgx.Batch{}
	for k, body := range bodies {
		if refs[k] > 0 {
			b.Queue(outboxBodyInsertSQL, body, refs[k]).QueryRow(func(row pgx.Row) error { return row.Scan(&bodyIDs[k]) })
		}
	}
	if written > 1 {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, fmt.Errorf("writing message bodies to the outbox: %w", err)
		}
		b = &pgx.Batch{}
	}
	ids := make([]uint64, len(msgs))
	for i, m := range msgs {
		if refused[m.Destination] {
			continue
		}
		var q *pgx.QueuedQuery
		if written == 1 {
			q = b.Queue(outboxInsertLastBodySQL, m.Sender, m.Destination, m.GroupID, m.Recipients, now, m.Size())
		} else {
			q = b.Queue(outboxInsertSQL, m.Sender, m.Destination, m.GroupID, m.Recipients, bodyIDs[bodyOf[i]], now, m.Size())
		}
		q.QueryRow(func(row pgx.Row) error {
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
		ids, err = s.outboxTx(ctx, tx, w.Messages, now, false)
		return err
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return ids, nil
}

// outboxCapSQL wraps head, a query of outbox rows (id, sender, group_id,
// recipients, message, enqueued_ms), each joined with its body
// (outboxReadSQL), in id order with its LIMIT, so that
// only the rows whose messages before them, in that order, hold fewer than
// store.MaxOutboxListBytes bytes leave the database: the rows collectOutbox
// keeps. The message lengths come from octet_length, which reads a stored
// value's length without the value, so the rows past the cap cost neither
// their transfer nor their decoding (up to MaxOutboxList rows of a
// MaxQueuedMessageSize each, for 16 MiB kept).
func outboxCapSQL(head string) string {
	return `SELECT id, sender, group_id, recipients, message, enqueued_ms FROM (
		SELECT h.*, sum(octet_length(h.message)) OVER (ORDER BY h.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
		FROM (` + head + `) h) w
		WHERE w.before IS NULL OR w.before < ` + strconv.Itoa(store.MaxOutboxListBytes) + ` ORDER BY id`
}

// collectOutbox reads rows of (id, sender, group_id, recipients, message,
// enqueued_ms), destination's messages in id order, up to
// store.MaxOutboxListBytes of messages (at least one when any).
func collectOutbox(rows pgx.Rows, destination string) ([]store.OutboxEntry, error) {
	var out []store.OutboxEntry
	size := 0
	var (
		e       store.OutboxEntry
		id, enq int64
	)
	_, err := pgx.ForEachRow(rows, []any{&id, &e.Sender, &e.GroupID, &e.Recipients, &e.Message, &enq}, func() error {
		if size >= store.MaxOutboxListBytes {
			return nil // the rest is for the next call
		}
		size += len(e.Message)
		e.ID, e.Destination, e.Enqueued = uint64(id), destination, check.Time(enq)
		out = append(out, e)
		e = store.OutboxEntry{}
		return nil
	})
	return out, err
}

// outboxIDs is ids as a sorted BIGINT array without duplicates, leaving
// out those no BIGINT identity can hold (they name no row).
func outboxIDs(ids []uint64) []int64 {
	list := make([]int64, 0, len(ids))
	for _, id := range ids {
		if id <= maxID {
			list = append(list, int64(id))
		}
	}
	return slices.Compact(slices.Sorted(slices.Values(list)))
}

// maxID is the largest id of a BIGINT identity column.
const maxID = 1<<63 - 1

// outboxReadSQL is the head of a read of outbox rows, each with its body
// (schemaOutboxBodies): the outbox as the alias o.
const outboxReadSQL = `SELECT o.id, o.sender, o.group_id, o.recipients, b.message, o.enqueued_ms
	FROM outbox o JOIN outbox_bodies b ON b.id = o.body_id`

// outboxPendingSQL reads destination $1's messages with an id above $2,
// up to $3 of them and store.MaxOutboxListBytes (outboxCapSQL).
var outboxPendingSQL = outboxCapSQL(outboxReadSQL + `
	WHERE o.destination = $1 AND o.id > $2 ORDER BY o.id LIMIT $3`)

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
	rows, _ := s.pool.Query(ctx, outboxPendingSQL, destination, int64(after), limit)
	out, err := collectOutbox(rows, destination)
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
	rows, _ := s.pool.Query(ctx, `SELECT destination FROM outbox_heads WHERE messages > 0 ORDER BY destination`)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// OutboxDelivered implements store.Outbox: one statement
// (outboxDeliveredSQL) deleting the ids, given as one bigint[] parameter.
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
	list := outboxIDs(ids)
	var n int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, outboxDeliveredSQL, destination, list).Scan(&n)
	})
	if err != nil {
		return 0, s.fail(doing, err)
	}
	return int(n), nil
}

// scanBacklog reads a row of outboxHeadColumns.
func scanBacklog(row pgx.Row) (store.Backlog, error) {
	var b store.Backlog
	var oldest *int64
	if err := row.Scan(&b.Destination, &b.Messages, &b.Bytes, &b.Dropped.BacklogFull, &b.Dropped.AdminReset, &oldest); err != nil {
		return b, err
	}
	if oldest != nil {
		b.Oldest = check.Time(*oldest)
	}
	return b, nil
}

// OutboxBacklog implements store.OutboxBacklog: the destinations' heads.
func (s *Store) OutboxBacklog(ctx context.Context) ([]store.Backlog, error) {
	const doing = "reading outbox backlog"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	rows, _ := s.pool.Query(ctx, `SELECT `+outboxHeadColumns+` FROM outbox_heads h
		WHERE h.messages > 0 OR h.dropped_full > 0 OR h.dropped_reset > 0 ORDER BY h.destination`)
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Backlog, error) { return scanBacklog(row) })
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if out == nil {
		out = []store.Backlog{}
	}
	return out, nil
}

// OutboxDestinationBacklog implements store.OutboxBound: one head.
func (s *Store) OutboxDestinationBacklog(ctx context.Context, destination string) (store.Backlog, error) {
	const doing = "reading a destination's outbox backlog"
	if err := s.checkOpen(doing); err != nil {
		return store.Backlog{}, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return store.Backlog{}, fmt.Errorf("%s: %w", doing, err)
	}
	b, err := scanBacklog(s.pool.QueryRow(ctx, `SELECT `+outboxHeadColumns+` FROM outbox_heads h WHERE h.destination = $1`, destination))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return store.Backlog{Destination: destination}, nil
	case err != nil:
		return store.Backlog{}, s.fail(doing, err)
	}
	return b, nil
}

// OutboxReset implements store.OutboxBound: the messages up to the last
// id at the call, in transactions of outboxResetBatch.
func (s *Store) OutboxReset(ctx context.Context, destination string) (int, error) {
	const doing = "resetting a destination's outbox"
	if err := s.checkOpen(doing); err != nil {
		return 0, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return 0, fmt.Errorf("%s: %w", doing, err)
	}
	var last int64
	if err := s.pool.QueryRow(ctx, `SELECT COALESCE(MAX(id), 0) FROM outbox WHERE destination = $1`, destination).Scan(&last); err != nil {
		return 0, s.fail(doing, err)
	}
	total := 0
	for last > 0 {
		var n int64
		err := s.inTx(ctx, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, outboxResetSQL, destination, last, outboxResetBatch).Scan(&n)
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
