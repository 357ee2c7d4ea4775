package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// Statements of the local client queues.
const (
	queueBodySQL = `INSERT INTO queue_bodies (message, refs) VALUES (?1, ?2) RETURNING id`
	// queueSeqSQL takes the next number of the global sequence.
	queueSeqSQL = `UPDATE queue_sequence SET last = last + 1 WHERE id = 1 RETURNING last`
	// queueSeqNSQL takes the next ?1 numbers; it returns the last.
	queueSeqNSQL = `UPDATE queue_sequence SET last = last + ?1 WHERE id = 1 RETURNING last`
	// queueMaxBodySQL reads the highest body id (0 for none).
	queueMaxBodySQL = `SELECT COALESCE(MAX(id), 0) FROM queue_bodies`
	// queueBumpSQL counts a message of ?2 bytes, numbered ?5, in queue ?1
	// while it stays within ?3 messages and ?4 bytes; no row means full.
	// A new head is within the limits: Append checks a single message
	// against them first.
	queueBumpSQL = `INSERT INTO queue_heads (client, last_seq, messages, bytes) VALUES (?1, ?5, 1, ?2)
		ON CONFLICT (client) DO UPDATE SET last_seq = ?5,
			messages = queue_heads.messages + 1, bytes = queue_heads.bytes + ?2
		WHERE queue_heads.messages + 1 <= ?3 AND queue_heads.bytes + ?2 <= ?4
		RETURNING last_seq`
	queueEntrySQL = `INSERT INTO queue_messages (client, seq, body_id, size, group_id, sender, arrived_ms, expires_ms)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)`
	// queueBumpManySQL is queueBumpSQL for the queues named in the JSON
	// array ?4 (WHERE true: SQLite's parser needs it before ON CONFLICT).
	queueBumpManySQL = `INSERT INTO queue_heads (client, last_seq, messages, bytes)
		SELECT value, ?5, 1, ?1 FROM json_each(?4) WHERE true
		ON CONFLICT (client) DO UPDATE SET last_seq = ?5,
			messages = queue_heads.messages + 1, bytes = queue_heads.bytes + ?1
		WHERE queue_heads.messages + 1 <= ?2 AND queue_heads.bytes + ?1 <= ?3
		RETURNING client, last_seq`
	// queueEntryManySQL writes the entries, numbered ?8, of the queues
	// named in the JSON array ?7, each of which took that number.
	queueEntryManySQL = `INSERT INTO queue_messages (client, seq, body_id, size, group_id, sender, arrived_ms, expires_ms)
		SELECT value, ?8, ?1, ?2, ?3, ?4, ?5, ?6 FROM json_each(?7)`
	// queueCursorSQL reads the global sequence and client ?1's
	// acknowledged cursor.
	queueCursorSQL = `SELECT s.last, COALESCE((SELECT acked FROM queue_cursors WHERE client = ?1), 0)
		FROM queue_sequence s WHERE s.id = 1`
	// queueFetchSQL merges client ?1's personal entries and the group log
	// posts it sees, above ?2 and alive at ?3, by sequence number, at
	// most ?4 of them, and cuts the list where their sizes pass ?5 bytes
	// (the first always comes). A personal message's bytes (its body)
	// are read only for the rows answered: the merge and the cut read
	// the entries' sizes, so a backlog of large messages costs what one
	// page holds, not ?4 messages read and dropped. A group log post's
	// row holds its bytes before its size: the merge and the cut read the
	// posts through the covering index group_log_view, and their bytes
	// are read for the rows answered only, as a body is.
	queueFetchSQL = `SELECT c.seq, c.size, c.group_id, c.sender, c.arrived_ms, c.expires_ms,
			COALESCE(b.message, l.message)
		FROM (SELECT u.*, SUM(u.size) OVER (ORDER BY u.seq) AS run FROM (
			SELECT * FROM (SELECT m.seq, m.size, m.group_id, m.sender, m.arrived_ms, m.expires_ms, m.body_id
				FROM queue_messages m
				WHERE m.client = ?1 AND m.seq > ?2 AND m.expires_ms > ?3
				ORDER BY m.seq LIMIT ?4)
			UNION ALL
			SELECT * FROM (SELECT l.seq, l.size, l.group_id, l.sender, l.arrived_ms, l.expires_ms, NULL
				FROM group_members g JOIN group_log l ON l.group_id = g.group_id
				WHERE g.client = ?1 AND (g.to_seq IS NULL OR g.to_seq > ?2)
					AND l.seq > ?2 AND l.seq > g.from_seq AND (g.to_seq IS NULL OR l.seq <= g.to_seq)
					AND l.expires_ms > ?3 AND l.except_client <> ?1
				ORDER BY l.seq LIMIT ?4)
			ORDER BY seq LIMIT ?4) u) c
		LEFT JOIN queue_bodies b ON b.id = c.body_id
		LEFT JOIN group_log l ON c.body_id IS NULL AND l.seq = c.seq
		WHERE c.run <= ?5 OR c.run = c.size
		ORDER BY c.seq`
	// queueAckGroupSQL counts the alive group log posts that client ?1
	// sees in (?2, ?3], at ?4.
	queueAckGroupSQL = `SELECT COUNT(*) FROM group_members g JOIN group_log l ON l.group_id = g.group_id
		WHERE g.client = ?1 AND (g.to_seq IS NULL OR g.to_seq > ?2)
			AND l.seq > ?2 AND l.seq <= ?3 AND l.seq > g.from_seq AND (g.to_seq IS NULL OR l.seq <= g.to_seq)
			AND l.expires_ms > ?4 AND l.except_client <> ?1`
	// queueKnownSQL reports whether client ?1 has a queue or a group
	// membership: a client with neither has nothing to acknowledge, now
	// or later (see Ack).
	queueKnownSQL = `SELECT EXISTS (SELECT 1 FROM queue_heads WHERE client = ?1)
		OR EXISTS (SELECT 1 FROM group_members WHERE client = ?1)`
	// queueAckCursorSQL raises client ?1's cursor to ?2.
	queueAckCursorSQL = `INSERT INTO queue_cursors (client, acked) VALUES (?1, ?2)
		ON CONFLICT (client) DO UPDATE SET acked = max(queue_cursors.acked, ?2)`
	// queueAckRangesSQL forgets client ?1's membership ranges that ended
	// at or below its cursor ?2: nothing of them is left to fetch.
	queueAckRangesSQL = `DELETE FROM group_members WHERE client = ?1 AND to_seq IS NOT NULL AND to_seq <= ?2`
	// queueAckSQL deletes queue ?1's entries up to ?2.
	queueAckSQL = `DELETE FROM queue_messages WHERE client = ?1 AND seq <= ?2
		RETURNING client, body_id, size, expires_ms`
	// queueReclaimSQL deletes queue ?1's expired entries (?2 is now), when
	// an Append finds the queue full.
	queueReclaimSQL = `DELETE FROM queue_messages WHERE client = ?1 AND expires_ms <= ?2
		RETURNING client, body_id, size, expires_ms`
	// groupLogSweepSQL deletes ?2 expired group log posts (?1 is now).
	groupLogSweepSQL = `DELETE FROM group_log WHERE seq IN
		(SELECT seq FROM group_log WHERE expires_ms <= ?1 LIMIT ?2)`
	queueHeadReleaseSQL = `UPDATE queue_heads SET messages = messages - ?2, bytes = bytes - ?3 WHERE client = ?1`
	queueBodyReleaseSQL = `UPDATE queue_bodies SET refs = refs - ?2 WHERE id = ?1 RETURNING refs`
	queueBodyRefsSQL    = `UPDATE queue_bodies SET refs = ?2 WHERE id = ?1`
	queueBodyDeleteSQL  = `DELETE FROM queue_bodies WHERE id = ?1`
)

// Append implements store.Queues: the message body, and per recipient the
// head's new sequence number and the entry, are one op.
func (s *Store) Append(ctx context.Context, d store.Delivery) ([]store.Appended, error) {
	const doing = "appending to queues"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.Delivery(d); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	// Copied now: the op may run after the caller changed its slices.
	a := &appendOp{qa: newQueuedAppend(d)}
	err := s.wr.doAppend(ctx, a, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		a.out, err = s.appendTx(ctx, tx, a.qa, check.Millis(s.now()))
		return err
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	// Committed: wake the waiters.
	s.notifyAppended(a.qa.recipients, a.out)
	return a.out, nil
}

// queueExpiry is the expiry (Unix ms) of qa's queue entries, appended at
// now (Unix ms).
func queueExpiry(qa queuedAppend, now int64) int64 {
	if qa.expires.IsZero() {
		return now + store.DefaultQueueTTL.Milliseconds()
	}
	return check.ExpiryMillis(qa.expires)
}

// queuedAppend is a checked store.Delivery, copied and with its limits'
// defaults filled in, ready for appendTx.
type queuedAppend struct {
	recipients            []string
	msg, groupID          []byte
	sender                string
	expires               time.Time
	maxMessages, maxBytes int64
	dedup                 []byte // empty for none
	dedupExpires          int64  // Unix ms
	replay                *replayRow
}

// replayRow is a store.ReplayRecord copied for an op.
type replayRow struct {
	sender         string
	requestID      []byte
	digest, answer []byte
	expires        int64 // Unix ms
}

// newReplayRow copies r, which check.ReplayRecord accepted; nil is nil.
func newReplayRow(r *store.ReplayRecord) *replayRow {
	if r == nil {
		return nil
	}
	return &replayRow{sender: r.Sender, requestID: bytes.Clone(r.RequestID), digest: bytes.Clone(r.Digest[:]),
		answer: nonNil(bytes.Clone(r.Answer.Body)), expires: check.ExpiryMillis(r.Expires)}
}

// recordReplayTx writes r, the answer of the request that carries the
// op's write (store.Delivery.Replay, store.OutboxWrite.Replay), inside
// tx as RecordReplay writes it, at now (Unix ms); an alive entry of its
// key fails the op with ErrConflict. A nil r writes nothing.
func (s *Store) recordReplayTx(ctx context.Context, tx *sql.Tx, r *replayRow, now int64) error {
	if r == nil {
		return nil
	}
	s.remember(r.sender, r.requestID, r.expires, now)
	res, err := tx.StmtContext(ctx, s.ws.replayRecord).ExecContext(ctx, r.sender, r.requestID, r.digest, r.expires, r.answer, now)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("an alive replay entry holds this request id: %w", store.ErrConflict)
	}
	return nil
}

// newQueuedAppend copies d, which check.Delivery accepted.
func newQueuedAppend(d store.Delivery) queuedAppend {
	qa := queuedAppend{
		recipients:  slices.Clone(d.Recipients),
		msg:         bytes.Clone(d.Message),
		groupID:     nonNil(bytes.Clone(d.GroupID)),
		sender:      d.Sender,
		expires:     d.Expires,
		maxMessages: int64(d.Limits.MaxMessages),
		maxBytes:    d.Limits.MaxBytes,
		dedup:       bytes.Clone(d.Dedup),
	}
	if len(qa.dedup) > 0 {
		qa.dedupExpires = check.ExpiryMillis(d.DedupExpires)
	}
	qa.replay = newReplayRow(d.Replay)
	if qa.maxMessages == 0 {
		qa.maxMessages = store.DefaultQueueMaxMessages
	}
	if qa.maxBytes == 0 {
		qa.maxBytes = store.DefaultQueueMaxBytes
	}
	return qa
}

// appendTx appends qa inside tx at time now (Unix ms) and answers each
// recipient's outcome.
func (s *Store) appendTx(ctx context.Context, tx *sql.Tx, qa queuedAppend, now int64) ([]store.Appended, error) {
	if len(qa.dedup) > 0 {
		// The record of a delivered message lives with the seen
		// signatures (store.Delivery.Dedup).
		res, err := tx.StmtContext(ctx, s.ws.seenInsert).ExecContext(ctx, qa.dedup, qa.dedupExpires, now)
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, err
		} else if n == 0 {
			return nil, store.ErrDuplicate
		}
	}
	if err := s.recordReplayTx(ctx, tx, qa.replay, now); err != nil {
		return nil, err
	}
	out := make([]store.Appended, len(qa.recipients))
	exp := queueExpiry(qa, now)
	// One number of the global sequence for every recipient.
	var seq int64
	if err := tx.StmtContext(ctx, s.qs.seq).QueryRowContext(ctx).Scan(&seq); err != nil {
		return nil, fmt.Errorf("taking a sequence number: %w", err)
	}
	// The body is stored with a reference per recipient, corrected
	// below in the rare case that a queue is full.
	var bodyID int64
	if err := tx.StmtContext(ctx, s.qs.body).QueryRowContext(ctx, qa.msg, len(qa.recipients)).Scan(&bodyID); err != nil {
		return nil, err
	}
	e := entry{seq: seq, bodyID: bodyID, size: int64(len(qa.msg)), groupID: qa.groupID, sender: qa.sender, arrived: now, expires: exp}
	var refs int
	var err error
	if len(qa.recipients) == 1 {
		refs, err = s.appendOne(ctx, tx, qa.recipients[0], e, qa.maxMessages, qa.maxBytes, out)
	} else {
		refs, err = s.appendMany(ctx, tx, qa.recipients, e, qa.maxMessages, qa.maxBytes, out)
	}
	if err != nil {
		return nil, err
	}
	for i, a := range out {
		if a.Seq == 0 {
			out[i].Err = fmt.Errorf("queue of %s holds up to %d messages and %d bytes: %w",
				qa.recipients[i], qa.maxMessages, qa.maxBytes, store.ErrQueueFull)
		}
	}
	switch refs {
	case len(qa.recipients):
		return out, nil
	case 0:
		_, err = tx.ExecContext(ctx, queueBodyDeleteSQL, bodyID)
	default:
		_, err = tx.ExecContext(ctx, queueBodyRefsSQL, bodyID, refs)
	}
	return out, err
}

// notifyAppended wakes the waiters of the queues that took a message, once
// its write committed.
func (s *Store) notifyAppended(recipients []string, out []store.Appended) {
	for i, r := range recipients {
		if out[i].Seq != 0 {
			s.notifier.Notify(r, out[i].Seq)
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

// appendOne appends e to one queue through the prepared statements and
// sets out[0].Seq, unless the queue is full; it reports how many entries it
// wrote.
func (s *Store) appendOne(ctx context.Context, tx *sql.Tx, client string, e entry, maxMessages, maxBytes int64, out []store.Appended) (int, error) {
	seq, err := s.bumpQueue(ctx, tx, tx.StmtContext(ctx, s.qs.bump), client, e.seq, e.size, maxMessages, maxBytes, e.arrived)
	if err != nil || seq == 0 {
		return 0, err
	}
	if _, err := tx.StmtContext(ctx, s.qs.entry).ExecContext(ctx, client, seq, e.bodyID, e.size, e.groupID, e.sender, e.arrived, e.expires); err != nil {
		return 0, err
	}
	out[0].Seq = uint64(seq)
	return 1, nil
}

// appendMany appends e to many queues with two prepared statements that
// take the recipients as one JSON array (json_each; unnest of a text[]
// parameter in PostgreSQL): an upsert of their heads, whose RETURNING rows
// are the queues that took the message (a full queue returns none and is
// retried alone, after its expired messages are reclaimed), then the
// INSERT of their entries, numbered from their heads. It sets out[i].Seq
// for each queue that took the message and reports how many did.
func (s *Store) appendMany(ctx context.Context, tx *sql.Tx, recipients []string, e entry, maxMessages, maxBytes int64, out []store.Appended) (int, error) {
	if e.size > maxBytes {
		return 0, nil
	}
	list, err := json.Marshal(recipients)
	if err != nil {
		return 0, err
	}
	index := make(map[string]int, len(recipients))
	for i, r := range recipients {
		index[r] = i
	}
	rows, err := tx.StmtContext(ctx, s.qs.bumpMany).QueryContext(ctx, e.size, maxMessages, maxBytes, list, e.seq)
	if err != nil {
		return 0, err
	}
	taken := 0
	for rows.Next() {
		var client string
		var seq int64
		if err := rows.Scan(&client, &seq); err != nil {
			rows.Close()
			return 0, err
		}
		i, ok := index[client]
		if !ok {
			rows.Close()
			return 0, fmt.Errorf("queue head of %q returned for no recipient", client)
		}
		out[i].Seq = uint64(seq)
		taken++
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, err
	}
	if taken < len(recipients) {
		// Full queues: reclaim their expired messages, try again.
		bump := tx.StmtContext(ctx, s.qs.bump)
		for i, r := range recipients {
			if out[i].Seq != 0 {
				continue
			}
			seq, err := s.bumpQueue(ctx, tx, bump, r, e.seq, e.size, maxMessages, maxBytes, e.arrived)
			if err != nil {
				return 0, err
			}
			if seq != 0 {
				out[i].Seq = uint64(seq)
				taken++
			}
		}
		// Only the queues that took it get an entry.
		took := make([]string, 0, taken)
		for i, r := range recipients {
			if out[i].Seq != 0 {
				took = append(took, r)
			}
		}
		if list, err = json.Marshal(took); err != nil {
			return 0, err
		}
	}
	if taken == 0 {
		return 0, nil
	}
	res, err := tx.StmtContext(ctx, s.qs.entryMany).ExecContext(ctx, e.bodyID, e.size, e.groupID, e.sender, e.arrived, e.expires, list, e.seq)
	if err != nil {
		return 0, err
	}
	if n, err := res.RowsAffected(); err != nil {
		return 0, err
	} else if n != int64(taken) {
		return 0, fmt.Errorf("wrote %d queue entries for %d queues", n, taken)
	}
	return taken, nil
}

// bumpQueue counts a message of size bytes, numbered num, in queue client
// and returns num, or 0 when the queue is full even without its expired
// messages (which it deletes when they are in the way).
func (s *Store) bumpQueue(ctx context.Context, tx *sql.Tx, bump *sql.Stmt, client string, num, size, maxMessages, maxBytes, now int64) (int64, error) {
	if size > maxBytes {
		return 0, nil
	}
	for reclaimed := false; ; reclaimed = true {
		var seq int64
		err := bump.QueryRowContext(ctx, client, size, maxMessages, maxBytes, num).Scan(&seq)
		if err == nil {
			return seq, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return 0, err
		}
		if reclaimed {
			return 0, nil
		}
		n, _, err := deleteEntries(ctx, tx, queueReclaimSQL, now, client, now)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, nil
		}
	}
}

// deleteEntries runs query, a DELETE of queue entries RETURNING client,
// body_id, size and expires_ms, and releases what they held: their queues'
// counters and their bodies' references, deleting bodies no entry uses
// any more. It reports how many entries it deleted and how many of them
// were alive (expiring after now).
func deleteEntries(ctx context.Context, tx *sql.Tx, query string, now int64, args ...any) (deleted, alive int, err error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return 0, 0, err
	}
	type usage struct{ n, size int64 }
	queues, bodies := map[string]usage{}, map[int64]int64{}
	for rows.Next() {
		var client string
		var bodyID, size, exp int64
		if err := rows.Scan(&client, &bodyID, &size, &exp); err != nil {
			rows.Close()
			return 0, 0, err
		}
		u := queues[client]
		queues[client] = usage{u.n + 1, u.size + size}
		bodies[bodyID]++
		deleted++
		if exp > now {
			alive++
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, 0, err
	}
	// In key order, so that the writes of one op do not depend on map
	// order (and would lock rows in one order under PostgreSQL).
	for _, client := range slices.Sorted(maps.Keys(queues)) {
		u := queues[client]
		if _, err := tx.ExecContext(ctx, queueHeadReleaseSQL, client, u.n, u.size); err != nil {
			return 0, 0, err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(bodies)) {
		var left int64
		if err := tx.QueryRowContext(ctx, queueBodyReleaseSQL, id, bodies[id]).Scan(&left); err != nil {
			return 0, 0, err
		}
		if left == 0 {
			if _, err := tx.ExecContext(ctx, queueBodyDeleteSQL, id); err != nil {
				return 0, 0, err
			}
		}
	}
	return deleted, alive, nil
}

// cursor reads the last number of the global sequence and client's
// acknowledged cursor through stmt (queueCursorSQL).
func cursor(ctx context.Context, stmt *sql.Stmt, client string) (last, acked uint64, err error) {
	var l, a int64
	if err := stmt.QueryRowContext(ctx, client).Scan(&l, &a); err != nil {
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
	last, acked, err := cursor(ctx, s.qs.cursorR, client)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if after > last {
		return nil, fmt.Errorf("%s: cursor %d is beyond the last sequence number %d: %w", doing, after, last, store.ErrInvalid)
	}
	rows, err := s.qs.fetch.QueryContext(ctx, client, int64(max(after, acked)), check.Millis(s.now()), limit.Messages, limit.Bytes)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	msgs := []store.QueuedMessage{}
	total := 0
	for rows.Next() {
		var m store.QueuedMessage
		var seq, size, arrived, exp int64
		if err := rows.Scan(&seq, &size, &m.GroupID, &m.Sender, &arrived, &exp, &m.Message); err != nil {
			return nil, s.fail(doing, err)
		}
		if len(msgs) > 0 && total+int(size) > limit.Bytes {
			break
		}
		total += int(size)
		m.Seq, m.Arrived, m.Expires = uint64(seq), check.Time(arrived), check.Time(exp)
		m.GroupID = nonNil(m.GroupID)
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	return msgs, nil
}

// Ack implements store.Queues: the check of upTo against the global
// sequence, the count of the group log posts it covers, the deletion of
// the personal entries and the cursor are one op.
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
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		acked = 0
		last, prev, err := cursor(ctx, tx.StmtContext(ctx, s.qs.cursor), client)
		if err != nil {
			return err
		}
		if upTo > last {
			return fmt.Errorf("acknowledging up to %d, beyond the last sequence number %d: %w", upTo, last, store.ErrInvalid)
		}
		if upTo <= prev {
			return nil
		}
		if prev == 0 {
			// Without a queue or a group membership the client's stream
			// holds nothing up to upTo, and every message it gets later
			// is numbered above the sequence's last number, so above
			// upTo: the cursor would change nothing. Not writing it
			// keeps a made-up client URI (any of a user's own, to the
			// local API) from leaving a row that nothing deletes.
			var known bool
			if err := tx.QueryRowContext(ctx, queueKnownSQL, client).Scan(&known); err != nil {
				return fmt.Errorf("looking up the client's queue: %w", err)
			}
			if !known {
				return nil
			}
		}
		now := check.Millis(s.now())
		if err := tx.QueryRowContext(ctx, queueAckGroupSQL, client, int64(prev), int64(upTo), now).Scan(&acked); err != nil {
			return fmt.Errorf("counting group log posts: %w", err)
		}
		_, personal, err := deleteEntries(ctx, tx, queueAckSQL, now, client, int64(upTo))
		if err != nil {
			return err
		}
		acked += personal
		if _, err := tx.ExecContext(ctx, queueAckCursorSQL, client, int64(upTo)); err != nil {
			return fmt.Errorf("raising the cursor: %w", err)
		}
		if _, err := tx.ExecContext(ctx, queueAckRangesSQL, client, int64(upTo)); err != nil {
			return fmt.Errorf("forgetting ended memberships: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, s.fail(doing, err)
	}
	return acked, nil
}

// WatchQueue implements store.Queues through the Store's store.Notifier,
// which Append signals after each commit and Close closes.
func (s *Store) WatchQueue(client string, after uint64) (<-chan struct{}, func()) {
	return s.notifier.Watch(client, after)
}

// sweepGroupLog is DeleteExpired's part for the group log: bounded
// DELETEs of expired posts. (Expired queue entries go by scan: see
// scansweep.go.)
func (s *Store) sweepGroupLog(ctx context.Context, now int64) (int64, error) {
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var n int64
		err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
			res, err := tx.ExecContext(ctx, groupLogSweepSQL, now, sweepBatch)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < sweepBatch {
			return total, nil
		}
	}
}

// queueStmts are the prepared statements of the queues' and the KeyPackage
// directory's hot paths.
type queueStmts struct {
	body, seq, bump, entry, cursor *sql.Stmt // writer
	bumpMany, entryMany            *sql.Stmt // writer
	seqN, maxBody                  *sql.Stmt // writer: coalesced appends
	cursorR, fetch                 *sql.Stmt // readers
}

// kpStmts are the prepared statements of the KeyPackage directory.
type kpStmts struct {
	insert, get, claim, lastResort *sql.Stmt // writer
	getR, list                     *sql.Stmt // readers
}

func (s *Store) prepareQueues(ctx context.Context) error {
	for _, p := range []struct {
		db  *sql.DB
		dst **sql.Stmt
		sql string
	}{
		{s.w, &s.qs.body, queueBodySQL},
		{s.w, &s.qs.bump, queueBumpSQL},
		{s.w, &s.qs.seq, queueSeqSQL},
		{s.w, &s.qs.entry, queueEntrySQL},
		{s.w, &s.qs.cursor, queueCursorSQL},
		{s.w, &s.qs.bumpMany, queueBumpManySQL},
		{s.w, &s.qs.entryMany, queueEntryManySQL},
		{s.w, &s.qs.seqN, queueSeqNSQL},
		{s.w, &s.qs.maxBody, queueMaxBodySQL},
		{s.r, &s.qs.cursorR, queueCursorSQL},
		{s.r, &s.qs.fetch, queueFetchSQL},
		{s.w, &s.ks.insert, kpInsertSQL},
		{s.w, &s.ks.get, kpGetSQL},
		{s.w, &s.ks.claim, kpClaimSQL},
		{s.w, &s.ks.lastResort, kpLastResortSQL},
		{s.r, &s.ks.getR, kpByRefSQL},
		{s.r, &s.ks.list, kpListSQL},
	} {
		st, err := p.db.PrepareContext(ctx, p.sql)
		if err != nil {
			return fmt.Errorf("preparing queue statement: %w", err)
		}
		*p.dst = st
	}
	return nil
}

func (s *Store) queueStmts() []*sql.Stmt {
	return []*sql.Stmt{s.qs.body, s.qs.seq, s.qs.bump, s.qs.entry, s.qs.cursor, s.qs.bumpMany, s.qs.entryMany, s.qs.seqN, s.qs.maxBody, s.qs.cursorR, s.qs.fetch,
		s.ks.insert, s.ks.get, s.ks.claim, s.ks.lastResort, s.ks.getR, s.ks.list}
}
