package pgstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// Statements of the local client queues: sqlitestore's, with json_each of
// a JSON array spelt unnest of a text[] parameter.
const (
	queueBodySQL = `INSERT INTO queue_bodies (message, refs) VALUES ($1, $2) RETURNING id`
	// queueSeqSQL takes the next number of the global sequence. The row
	// stays locked until the transaction ends, so the writes that take
	// numbers run one at a time from here to their commit, and numbers
	// become visible in order: a reader that saw n committed never later
	// finds a smaller number appear.
	queueSeqSQL = `UPDATE queue_sequence SET last = last + 1 WHERE id = 1 RETURNING last`
	// queueAppendSQL is the hot path of an Append in one statement: it
	// takes the next number of the global sequence (queueSeqSQL), counts
	// a message of $1 bytes in each queue of $4 that stays within $2
	// messages and $3 bytes (queueBumpManySQL), and writes the entries
	// of the queues that took it, with body $5 (queueEntryManySQL). It
	// returns the number and the queues that took the message. One
	// statement, so the sequence row is locked for one round trip and
	// the commit, not three.
	queueAppendSQL = `WITH seq AS (UPDATE queue_sequence SET last = last + 1 WHERE id = 1 RETURNING last),
		took AS (INSERT INTO queue_heads AS h (client, last_seq, messages, bytes)
			SELECT c, (SELECT last FROM seq), 1, $1::bigint FROM unnest($4::text[]) AS c
			ON CONFLICT (client) DO UPDATE SET last_seq = excluded.last_seq,
				messages = h.messages + 1, bytes = h.bytes + $1::bigint
			WHERE h.messages + 1 <= $2::bigint AND h.bytes + $1::bigint <= $3::bigint
			RETURNING client, last_seq),
		entries AS (INSERT INTO queue_messages (client, seq, body_id, size, group_id, sender, arrived_ms, expires_ms)
			SELECT client, last_seq, $5, $1::integer, $6, $7, $8, $9 FROM took
			RETURNING client)
		SELECT last, ARRAY(SELECT client FROM entries) FROM seq`
	// queueBumpManySQL counts a message of $1 bytes, numbered $5, in each
	// queue of $4 that stays within $2 messages and $3 bytes; the rows
	// returned are the queues that took it. A new head is within the
	// limits: Append checks a single message against them first.
	queueBumpManySQL = `INSERT INTO queue_heads AS h (client, last_seq, messages, bytes)
		SELECT c, $5, 1, $1 FROM unnest($4::text[]) AS c
		ON CONFLICT (client) DO UPDATE SET last_seq = $5,
			messages = h.messages + 1, bytes = h.bytes + $1
		WHERE h.messages + 1 <= $2 AND h.bytes + $1 <= $3
		RETURNING client`
	// queueEntryManySQL writes the entries, numbered $8, of the queues
	// named in $7, each of which took that number.
	queueEntryManySQL = `INSERT INTO queue_messages (client, seq, body_id, size, group_id, sender, arrived_ms, expires_ms)
		SELECT c, $8, $1, $2, $3, $4, $5, $6 FROM unnest($7::text[]) AS c`
	// queueCursorSQL reads the global sequence and client $1's
	// acknowledged cursor.
	queueCursorSQL = `SELECT s.last, COALESCE((SELECT acked FROM queue_cursors WHERE client = $1), 0)
		FROM queue_sequence s WHERE s.id = 1`
	// queueFetchSQL merges client $1's personal entries and the group log
	// posts it sees, above $2 and alive at $3, by sequence number, at
	// most $4 of them, and cuts the list where their sizes pass $5 bytes
	// (the first always comes). The messages' bytes are read only for
	// the rows answered: the merge and the cut read the entries' sizes,
	// so a backlog of large messages costs what one page holds, not $4
	// messages read and dropped.
	queueFetchSQL = `SELECT c.seq, c.size, c.group_id, c.sender, c.arrived_ms, c.expires_ms,
			CASE WHEN c.body_id IS NULL THEN (SELECT l.message FROM group_log l WHERE l.seq = c.seq)
				ELSE (SELECT b.message FROM queue_bodies b WHERE b.id = c.body_id) END
		FROM (SELECT u.*, SUM(u.size) OVER (ORDER BY u.seq) AS run FROM (
			(SELECT m.seq, m.size, m.group_id, m.sender, m.arrived_ms, m.expires_ms, m.body_id
				FROM queue_messages m
				WHERE m.client = $1 AND m.seq > $2 AND m.expires_ms > $3
				ORDER BY m.seq LIMIT $4)
			UNION ALL
			(SELECT l.seq, l.size, l.group_id, l.sender, l.arrived_ms, l.expires_ms, NULL::bigint
				FROM group_members g JOIN group_log l ON l.group_id = g.group_id
				WHERE g.client = $1 AND (g.to_seq IS NULL OR g.to_seq > $2)
					AND l.seq > $2 AND l.seq > g.from_seq AND (g.to_seq IS NULL OR l.seq <= g.to_seq)
					AND l.expires_ms > $3 AND l.except_client <> $1
				ORDER BY l.seq LIMIT $4)
			ORDER BY seq LIMIT $4) u) c
		WHERE c.run <= $5 OR c.run = c.size
		ORDER BY c.seq`
	// queueAckGroupSQL counts the alive group log posts that client $1
	// sees in ($2, $3], at $4.
	queueAckGroupSQL = `SELECT COUNT(*) FROM group_members g JOIN group_log l ON l.group_id = g.group_id
		WHERE g.client = $1 AND (g.to_seq IS NULL OR g.to_seq > $2)
			AND l.seq > $2 AND l.seq <= $3 AND l.seq > g.from_seq AND (g.to_seq IS NULL OR l.seq <= g.to_seq)
			AND l.expires_ms > $4 AND l.except_client <> $1`
	// queueAckLockSQL locks client $1's cursor row (creating it), so the
	// Acks of one client run one at a time, and returns the cursor.
	queueAckLockSQL = `INSERT INTO queue_cursors AS c (client, acked) VALUES ($1, 0)
		ON CONFLICT (client) DO UPDATE SET acked = c.acked
		RETURNING acked`
	// queueKnownSQL reports whether client $1 has a queue or a group
	// membership: a client with neither has nothing to acknowledge, now
	// or later (see Ack).
	queueKnownSQL = `SELECT EXISTS (SELECT 1 FROM queue_heads WHERE client = $1)
		OR EXISTS (SELECT 1 FROM group_members WHERE client = $1)`
	queueAckCursorSQL = `UPDATE queue_cursors SET acked = GREATEST(acked, $2) WHERE client = $1`
	// queueAckRangesSQL forgets client $1's membership ranges that ended
	// at or below its cursor $2: nothing of them is left to fetch.
	queueAckRangesSQL = `DELETE FROM group_members WHERE client = $1 AND to_seq IS NOT NULL AND to_seq <= $2`
	// queueAckSQL deletes queue $1's entries up to $2.
	queueAckSQL = `DELETE FROM queue_messages WHERE client = $1 AND seq <= $2
		RETURNING client, body_id, size, expires_ms`
	// queueReclaimSQL deletes queue $1's expired entries ($2 is now), when
	// an Append finds the queue full.
	queueReclaimSQL = `DELETE FROM queue_messages WHERE client = $1 AND expires_ms <= $2
		RETURNING client, body_id, size, expires_ms`
	// groupLogSweepSQL deletes $2 expired group log posts ($1 is now).
	groupLogSweepSQL = `DELETE FROM group_log WHERE seq IN
		(SELECT seq FROM group_log WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`
	// queueSweepSQL deletes $2 expired entries of any queue ($1 is now).
	queueSweepSQL = `DELETE FROM queue_messages WHERE (client, seq) IN
		(SELECT client, seq FROM queue_messages WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
		RETURNING client, body_id, size, expires_ms`
	queueHeadReleaseSQL = `UPDATE queue_heads SET messages = messages - $2, bytes = bytes - $3 WHERE client = $1`
	queueBodyReleaseSQL = `UPDATE queue_bodies SET refs = refs - $2 WHERE id = $1`
	// queueBodyDropSQL deletes the bodies of $1 that no entry references.
	queueBodyDropSQL   = `DELETE FROM queue_bodies WHERE id = ANY($1::bigint[]) AND refs = 0`
	queueBodyRefsSQL   = `UPDATE queue_bodies SET refs = $2 WHERE id = $1`
	queueBodyDeleteSQL = `DELETE FROM queue_bodies WHERE id = $1`
)

// Append implements store.Queues: the dedup record, the replay answer, the
// message body, the sequence number, and per recipient the head's
// counters and the entry are one transaction of a few statements whatever
// the number of recipients.
func (s *Store) Append(ctx context.Context, d store.Delivery) ([]store.Appended, error) {
	const doing = "appending to queues"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.Delivery(d); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	var out []store.Appended
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = s.appendTx(ctx, tx, d, s.nowMs())
		if err != nil {
			return err
		}
		return notifyTx(ctx, tx, appendedEvents(nil, d.Recipients, out))
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	// Committed: wake the waiters.
	s.notifyAppended(d.Recipients, out)
	return out, nil
}

// dedupTx records a delivery's dedup key (it shares the seen signatures'
// table) inside tx, or fails with store.ErrDuplicate; no key is no-op.
func dedupTx(ctx context.Context, tx pgx.Tx, dedup []byte, expires time.Time, now int64) error {
	if len(dedup) == 0 {
		return nil
	}
	first, err := firstUse(ctx, tx, seenInsertSQL, dedup, check.ExpiryMillis(expires), now)
	if err != nil {
		return err
	}
	if !first {
		return store.ErrDuplicate
	}
	return nil
}

// recordReplayTx writes r, the answer of the request that carries a
// write, inside tx; an alive entry of its key fails the write with
// store.ErrConflict. A nil r writes nothing.
func (s *Store) recordReplayTx(ctx context.Context, tx pgx.Tx, r *store.ReplayRecord) error {
	if r == nil {
		return nil
	}
	_, err := s.recordReplay(ctx, tx, r)
	return err
}

// appendTx appends d inside tx at time now (Unix ms) and answers each
// recipient's outcome. The dedup record, the replay answer and the
// message body are sent as one batch (one round trip), then the numbered
// part as one statement (appendMany).
func (s *Store) appendTx(ctx context.Context, tx pgx.Tx, d store.Delivery, now int64) ([]store.Appended, error) {
	dup, replayed := false, false
	var bodyID int64
	b := &pgx.Batch{}
	if len(d.Dedup) > 0 {
		b.Queue(seenInsertSQL, d.Dedup, check.ExpiryMillis(d.DedupExpires), now).QueryRow(func(row pgx.Row) error {
			first, err := scanFirstUse(row)
			dup = !first
			return err
		})
	}
	if r := d.Replay; r != nil {
		b.Queue(replayInsertSQL, r.Sender, r.RequestID, r.Digest[:], check.ExpiryMillis(r.Expires),
			nonNil(r.Answer.Body), now).QueryRow(func(row pgx.Row) error {
			wrote, err := scanFirstUse(row)
			replayed = !wrote
			return err
		})
	}
	// The body is stored with a reference per recipient, corrected below
	// in the rare case that a queue is full. It is written before the
	// sequence row is locked (in appendMany), which is held until the
	// commit.
	b.Queue(queueBodySQL, d.Message, len(d.Recipients)).QueryRow(func(row pgx.Row) error { return row.Scan(&bodyID) })
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("storing the message: %w", err)
	}
	switch {
	case dup:
		return nil, store.ErrDuplicate
	case replayed: // the insert is a no-op on an alive entry, which it locked
		return nil, fmt.Errorf("an alive replay entry holds this request id: %w", store.ErrConflict)
	}
	maxMessages, maxBytes := int64(d.Limits.MaxMessages), d.Limits.MaxBytes
	if maxMessages == 0 {
		maxMessages = store.DefaultQueueMaxMessages
	}
	if maxBytes == 0 {
		maxBytes = store.DefaultQueueMaxBytes
	}
	exp := now + store.DefaultQueueTTL.Milliseconds()
	if !d.Expires.IsZero() {
		exp = check.ExpiryMillis(d.Expires)
	}
	out := make([]store.Appended, len(d.Recipients))
	e := entry{bodyID: bodyID, size: int64(len(d.Message)), groupID: nonNil(d.GroupID), sender: d.Sender, arrived: now, expires: exp}
	refs, err := appendMany(ctx, tx, d.Recipients, e, maxMessages, maxBytes, out)
	if err != nil {
		return nil, err
	}
	for i, a := range out {
		if a.Seq == 0 {
			out[i].Err = fmt.Errorf("queue of %s holds up to %d messages and %d bytes: %w",
				d.Recipients[i], maxMessages, maxBytes, store.ErrQueueFull)
		}
	}
	switch refs {
	case len(d.Recipients):
		return out, nil
	case 0:
		_, err = tx.Exec(ctx, queueBodyDeleteSQL, bodyID)
	default:
		_, err = tx.Exec(ctx, queueBodyRefsSQL, bodyID, refs)
	}
	return out, err
}

// notifyAppended wakes the waiters of the queues that took a message, once
// its write committed.
func (s *Store) notifyAppended(recipients []string, out []store.Appended) {
	for i, r := range recipients {
		if out[i].Seq != 0 {
			s.notify.Notify(r, out[i].Seq)
		}
	}
}

// entry is what the queue entries of one Append share.
type entry struct {
	seq              int64 // the Append's number of the global sequence
	bodyID, size     int64
	groupID          []byte
	sender           string
	arrived, expires int64
}

// appendMany takes one number of the global sequence for every recipient
// and appends e, under it, to the queues of recipients (queueAppendSQL,
// the recipients as one text[] parameter). A full queue takes no entry
// there and is tried again alone, after its expired messages are
// reclaimed. It sets out[i].Seq for each queue that took the message and
// reports how many did.
func appendMany(ctx context.Context, tx pgx.Tx, recipients []string, e entry, maxMessages, maxBytes int64, out []store.Appended) (int, error) {
	try := recipients
	if e.size > maxBytes {
		try = []string{} // fits no queue; the number is taken all the same
	}
	var took []string
	if err := tx.QueryRow(ctx, queueAppendSQL, e.size, maxMessages, maxBytes, try,
		e.bodyID, e.groupID, e.sender, e.arrived, e.expires).Scan(&e.seq, &took); err != nil {
		return 0, fmt.Errorf("appending to the queues: %w", err)
	}
	index := make(map[string]int, len(recipients))
	for i, r := range recipients {
		index[r] = i
	}
	for _, c := range took {
		i, ok := index[c]
		if !ok {
			return 0, fmt.Errorf("queue entry of %q written for no recipient", c)
		}
		out[i].Seq = uint64(e.seq)
	}
	if len(took) == len(try) {
		return len(took), nil
	}
	// Full queues: reclaim their expired messages, try again.
	var again []string
	for i, r := range recipients {
		if out[i].Seq != 0 {
			continue
		}
		n, _, err := deleteEntries(ctx, tx, queueReclaimSQL, e.arrived, r, e.arrived)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			continue
		}
		rows, _ := tx.Query(ctx, queueBumpManySQL, e.size, maxMessages, maxBytes, []string{r}, e.seq)
		bumped, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return 0, fmt.Errorf("counting the message in its queue: %w", err)
		}
		if len(bumped) == 1 {
			out[i].Seq = uint64(e.seq)
			again = append(again, r)
		}
	}
	if len(again) == 0 {
		return len(took), nil
	}
	tag, err := tx.Exec(ctx, queueEntryManySQL, e.bodyID, e.size, e.groupID, e.sender, e.arrived, e.expires, again, e.seq)
	if err != nil {
		return 0, fmt.Errorf("writing queue entries: %w", err)
	}
	if n := tag.RowsAffected(); n != int64(len(again)) {
		return 0, fmt.Errorf("wrote %d queue entries for %d queues", n, len(again))
	}
	return len(took) + len(again), nil
}

// deleteEntries runs sql, a DELETE of queue entries RETURNING client,
// body_id, size and expires_ms, and releases what they held: their queues'
// counters and their bodies' references, deleting bodies no entry uses
// any more. It reports how many entries it deleted and how many of them
// were alive (expiring after now).
func deleteEntries(ctx context.Context, tx pgx.Tx, sql string, now int64, args ...any) (deleted, alive int, err error) {
	rows, _ := tx.Query(ctx, sql, args...)
	h, err := collectEntries(rows, now)
	if err != nil || h.deleted == 0 {
		return 0, 0, err
	}
	b := &pgx.Batch{}
	h.release(b)
	br := tx.SendBatch(ctx, b)
	defer br.Close()
	if err := h.released(br); err != nil {
		return 0, 0, err
	}
	if err := br.Close(); err != nil {
		return 0, 0, fmt.Errorf("releasing queue counters and message bodies: %w", err)
	}
	return h.deleted, h.alive, nil
}

// heldEntries is what deleted queue entries held: per queue its count and
// bytes, per body its references.
type heldEntries struct {
	queues         map[string]queueUsage
	bodies         map[int64]int64
	deleted, alive int
}

type queueUsage struct{ n, size int64 }

// collectEntries reads the rows of a DELETE of queue entries RETURNING
// client, body_id, size and expires_ms; alive counts those expiring after
// now.
func collectEntries(rows pgx.Rows, now int64) (heldEntries, error) {
	h := heldEntries{queues: map[string]queueUsage{}, bodies: map[int64]int64{}}
	var (
		client            string
		bodyID, size, exp int64
	)
	_, err := pgx.ForEachRow(rows, []any{&client, &bodyID, &size, &exp}, func() error {
		u := h.queues[client]
		h.queues[client] = queueUsage{u.n + 1, u.size + size}
		h.bodies[bodyID]++
		h.deleted++
		if exp > now {
			h.alive++
		}
		return nil
	})
	if err != nil {
		return heldEntries{}, fmt.Errorf("deleting queue entries: %w", err)
	}
	return h, nil
}

// release queues on b, when h holds entries, the statements that release
// them: the counters of each queue, then the references of each body, in
// key order, so that concurrent releases lock rows in one order; then the
// bodies left without one. released reads their results.
func (h heldEntries) release(b *pgx.Batch) {
	if h.deleted == 0 {
		return
	}
	for _, client := range slices.Sorted(maps.Keys(h.queues)) {
		u := h.queues[client]
		b.Queue(queueHeadReleaseSQL, client, u.n, u.size)
	}
	ids := slices.Sorted(maps.Keys(h.bodies))
	for _, id := range ids {
		b.Queue(queueBodyReleaseSQL, id, h.bodies[id])
	}
	b.Queue(queueBodyDropSQL, ids)
}

// released reads, from br, the results of the statements release queued.
func (h heldEntries) released(br pgx.BatchResults) error {
	if h.deleted == 0 {
		return nil
	}
	for range h.queues {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("releasing queue counters: %w", err)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(h.bodies)) {
		tag, err := br.Exec()
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("no body %d", id)
		}
		if err != nil {
			return fmt.Errorf("releasing message bodies: %w", err)
		}
	}
	if _, err := br.Exec(); err != nil {
		return fmt.Errorf("deleting message bodies: %w", err)
	}
	return nil
}

// cursor reads the last number of the global sequence and client's
// acknowledged cursor.
func cursor(ctx context.Context, q querier, client string) (last, acked uint64, err error) {
	var l, a int64
	if err := q.QueryRow(ctx, queueCursorSQL, client).Scan(&l, &a); err != nil {
		return 0, 0, fmt.Errorf("reading the queue sequence: %w", err)
	}
	return uint64(l), uint64(a), nil
}

// Fetch implements store.Queues. It reads the global sequence before the
// messages: it only grows, so a cursor it accepts was valid.
func (s *Store) Fetch(ctx context.Context, client string, after uint64, limit store.FetchLimit) ([]store.QueuedMessage, error) {
	const doing = "fetching queued messages"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.ClientURI("client", client); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	limit, err := check.FetchLimit(limit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	last, acked, err := cursor(ctx, s.pool, client)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if after > last {
		return nil, fmt.Errorf("%s: cursor %d is beyond the last sequence number %d: %w", doing, after, last, store.ErrInvalid)
	}
	rows, _ := s.pool.Query(ctx, queueFetchSQL, client, int64(max(after, acked)), s.nowMs(), limit.Messages, int64(limit.Bytes))
	msgs := []store.QueuedMessage{}
	total := 0
	var (
		m                 store.QueuedMessage
		seq, arrived, exp int64
		size              int32
		full              bool
	)
	_, err = pgx.ForEachRow(rows, []any{&seq, &size, &m.GroupID, &m.Sender, &arrived, &exp, &m.Message}, func() error {
		if full || (len(msgs) > 0 && total+int(size) > limit.Bytes) {
			full = true
			return nil
		}
		total += int(size)
		m.Seq, m.Arrived, m.Expires = uint64(seq), check.Time(arrived), check.Time(exp)
		m.GroupID = nonNil(m.GroupID)
		msgs = append(msgs, m)
		m = store.QueuedMessage{}
		return nil
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return msgs, nil
}

// Ack implements store.Queues: under the lock of the client's cursor row,
// the check of upTo against the global sequence, the count of the group
// log posts it covers, the deletion of the personal entries and the
// cursor are one transaction.
func (s *Store) Ack(ctx context.Context, client string, upTo uint64) (int, error) {
	const doing = "acknowledging queued messages"
	if err := s.checkOpen(doing); err != nil {
		return 0, err
	}
	if err := check.ClientURI("client", client); err != nil {
		return 0, fmt.Errorf("%s: %w", doing, err)
	}
	if upTo == 0 {
		return 0, nil
	}
	var acked int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		acked = 0
		// One batch: the cursor row locked, then the global sequence.
		b := &pgx.Batch{}
		b.Queue(queueAckLockSQL, client)
		b.Queue(queueCursorSQL, client)
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		var prev, last, cur int64
		if err := br.QueryRow().Scan(&prev); err != nil {
			return fmt.Errorf("locking the cursor: %w", err)
		}
		if err := br.QueryRow().Scan(&last, &cur); err != nil {
			return fmt.Errorf("reading the queue sequence: %w", err)
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("locking the cursor: %w", err)
		}
		if upTo > uint64(last) {
			return fmt.Errorf("acknowledging up to %d, beyond the last sequence number %d: %w", upTo, last, store.ErrInvalid)
		}
		if upTo <= uint64(prev) {
			return nil
		}
		if prev == 0 {
			// Without a queue or a group membership the client's stream
			// holds nothing up to upTo (every number up to last is
			// committed), and every message it gets later is numbered
			// above last, so above upTo: the cursor would change
			// nothing. The transaction is rolled back, with the row the
			// lock inserted, so that a made-up client URI (any of a
			// user's own, to the local API) leaves no row that nothing
			// deletes.
			var known bool
			if err := tx.QueryRow(ctx, queueKnownSQL, client).Scan(&known); err != nil {
				return fmt.Errorf("looking up the client's queue: %w", err)
			}
			if !known {
				return errNothingToAck
			}
		}
		// One batch: the group log posts counted, the entries deleted.
		now := s.nowMs()
		b = &pgx.Batch{}
		b.Queue(queueAckGroupSQL, client, prev, int64(upTo), now)
		b.Queue(queueAckSQL, client, int64(upTo))
		br = tx.SendBatch(ctx, b)
		defer br.Close()
		if err := br.QueryRow().Scan(&acked); err != nil {
			return fmt.Errorf("counting group log posts: %w", err)
		}
		rows, _ := br.Query()
		held, err := collectEntries(rows, now)
		if err != nil {
			return err
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("deleting queue entries: %w", err)
		}
		acked += held.alive
		// One batch: what the entries held released, the cursor raised,
		// the ended memberships forgotten.
		b = &pgx.Batch{}
		held.release(b)
		b.Queue(queueAckCursorSQL, client, int64(upTo))
		b.Queue(queueAckRangesSQL, client, int64(upTo))
		br = tx.SendBatch(ctx, b)
		defer br.Close()
		if err := held.released(br); err != nil {
			return err
		}
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("raising the cursor: %w", err)
		}
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("forgetting ended memberships: %w", err)
		}
		return br.Close()
	})
	if errors.Is(err, errNothingToAck) {
		return 0, nil
	}
	if err != nil {
		return 0, s.fail(doing, err)
	}
	return acked, nil
}

// errNothingToAck rolls back the Ack of a client that has neither a queue
// nor a group membership.
var errNothingToAck = errors.New("the client has no queue and no group membership")

// WatchQueue implements store.Queues through the Store's store.Notifier,
// which Append signals after each commit and Close closes. Its waiters
// are also woken by the writes of other Stores on the database, in this
// process or another: their NOTIFY, heard by this Store's listener (see
// the package documentation).
func (s *Store) WatchQueue(client string, after uint64) (<-chan struct{}, func()) {
	return s.notify.Watch(client, after)
}

// sweepQueues is DeleteExpired's part for queues: bounded DELETEs of
// expired entries, each one transaction with the release of what they
// held, then of expired group log posts.
func (s *Store) sweepQueues(ctx context.Context, now int64) (int64, error) {
	var total int64
	for {
		var n int
		err := s.inTx(ctx, func(tx pgx.Tx) error {
			var err error
			n, _, err = deleteEntries(ctx, tx, queueSweepSQL, now, now, sweepBatch)
			return err
		})
		if err != nil {
			return total, err
		}
		total += int64(n)
		if n < sweepBatch {
			break
		}
	}
	for {
		tag, err := s.pool.Exec(ctx, groupLogSweepSQL, now, sweepBatch)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < sweepBatch {
			return total, nil
		}
	}
}
