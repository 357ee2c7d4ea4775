package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Coalesced appends. Under load most of a batch's ops are Appends (each
// deliver_message from a peer, each fan-out chunk), and each would run its
// own six statements: a dedup record, a replay record, a sequence number,
// a body, the recipients' queue heads and their entries. The writer hands
// the Appends of an optimistic batch to appendBatchTx instead, which
// writes them with one multi-row statement per table (split into chunks of
// prepared sizes): the same rows, a quarter less of the writer's CPU per
// Append, measured on BenchmarkDeliverParallel64.
//
// Only the common case is coalesced: every dedup key and replay key new,
// every queue with room. Anything else (a duplicate, a replay conflict, a
// full queue, any error) fails the coalesced write, and the writer runs
// the batch again carefully, each op on its own (see writer.run), where
// the op's own appendTx gives each Append its exact outcome. So coalescing
// changes how many statements a batch runs, never an answer.

// appendOp is an Append queued in the writer: its checked delivery, and
// its outcome once the transaction that ran it committed.
type appendOp struct {
	qa  queuedAppend
	out []store.Appended
}

// errNotCoalesced fails a coalesced write whose Appends need their own
// runs; it never reaches a caller.
var errNotCoalesced = errors.New("appends need their own runs")

// chunkSizes are the row counts of the prepared multi-row statements,
// largest first: a write of n rows runs one statement per set bit of n,
// above 64 as many of 64 rows as it takes.
var chunkSizes = [...]int{64, 32, 16, 8, 4, 2, 1}

// A multiRow is an INSERT of many rows: head, then rows of cols
// parameters each, then tail, whose fixed parameters (values such as now,
// the same for every row) come after the rows' in the argument list. All
// parameters are anonymous ("?"), numbered by their place: the driver
// looks up the name of every parameter of a statement it binds, and
// SQLite finds the name of a numbered one ("?NNN") by a linear search, so
// numbered parameters cost a time quadratic in their count (a tenth of
// the server's CPU on deliver_message with 512-parameter statements).
type multiRow struct {
	head, row, tail string
	cols            int
}

// The coalesced statements, one per table an Append writes.
var (
	// The fixed parameter is now: an expired record is replaced, as
	// seenInsertSQL does.
	seenMulti = multiRow{
		head: `INSERT INTO seen_signatures (digest, expires_ms) VALUES `,
		row:  `(?, ?)`,
		tail: ` ON CONFLICT (digest) DO UPDATE SET expires_ms = excluded.expires_ms, answer = NULL WHERE seen_signatures.expires_ms <= ?`,
		cols: 2,
	}
	// The fixed parameter is now, as in replayRecordSQL.
	replayMulti = multiRow{
		head: `INSERT INTO replay_requests (sender, request_id, digest, expires_ms, body) VALUES `,
		row:  `(?, ?, ?, ?, ?)`,
		tail: ` ON CONFLICT (sender, request_id) DO UPDATE
			SET digest = excluded.digest, expires_ms = excluded.expires_ms, body = excluded.body
			WHERE replay_requests.expires_ms <= ?`,
		cols: 5,
	}
	bodyMulti = multiRow{
		head: `INSERT INTO queue_bodies (id, message, refs) VALUES `,
		row:  `(?, ?, ?)`,
		cols: 3,
	}
	// A row per queue of the write: its highest sequence number and the
	// messages and bytes the write adds. The fixed parameters are the
	// queue limits, as in queueBumpSQL: a queue that cannot take all of
	// its messages of the write changes no row.
	headMulti = multiRow{
		head: `INSERT INTO queue_heads (client, last_seq, messages, bytes) VALUES `,
		row:  `(?, ?, ?, ?)`,
		tail: ` ON CONFLICT (client) DO UPDATE SET last_seq = excluded.last_seq,
			messages = queue_heads.messages + excluded.messages, bytes = queue_heads.bytes + excluded.bytes
			WHERE queue_heads.messages + excluded.messages <= ? AND queue_heads.bytes + excluded.bytes <= ?`,
		cols: 4,
	}
	entryMulti = multiRow{
		head: `INSERT INTO queue_messages (client, seq, body_id, size, group_id, sender, arrived_ms, expires_ms) VALUES `,
		row:  `(?, ?, ?, ?, ?, ?, ?, ?)`,
		cols: 8,
	}
	multiRows = []*multiRow{&seenMulti, &replayMulti, &bodyMulti, &headMulti, &entryMulti}
)

// sql renders m for n rows.
func (m *multiRow) sql(n int) string {
	var b strings.Builder
	b.WriteString(m.head)
	for r := range n {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteString(m.row)
	}
	b.WriteString(m.tail)
	return b.String()
}

// multiStmts are the prepared statements of the multiRows, by statement
// and chunk size: nil until a coalesced write first needs them (see
// readyMulti). The writer goroutine alone uses them, and Close after the
// writer has stopped.
type multiStmts map[*multiRow]*[len(chunkSizes)]*sql.Stmt

// newMultiStmts makes the table of the multiRows' statements, none of them
// prepared yet: a statement of 64 rows of 8 parameters holds tens of KB of
// SQLite's memory, and a gateway that never coalesces that many Appends
// (most of them, most of the time) need not keep it.
func newMultiStmts() multiStmts {
	m := make(multiStmts, len(multiRows))
	for _, r := range multiRows {
		m[r] = new([len(chunkSizes)]*sql.Stmt)
	}
	return m
}

// readyMulti prepares, on the writer connection, each multi-row statement
// that a coalesced write of at most apps Appends for at most rows
// recipients in all may run and that is not prepared yet: the chunk sizes
// up to apps for the statements of a row per Append (dedup, replay,
// body), up to rows for those of a row per recipient (queue heads and
// entries). The writer calls it before it begins the transaction, since
// the writer's only connection is the transaction's once it has begun.
func (s *Store) readyMulti(ctx context.Context, apps, rows int) error {
	for _, m := range multiRows {
		n := apps
		if m == &headMulti || m == &entryMulti {
			n = rows
		}
		sts := s.multi[m]
		for i, size := range chunkSizes {
			if size > n || sts[i] != nil {
				continue
			}
			st, err := s.w.PrepareContext(ctx, m.sql(size))
			if err != nil {
				return fmt.Errorf("preparing a %d-row statement: %w", size, err)
			}
			sts[i] = st
		}
	}
	return nil
}

// multiStmtList lists the prepared multi-row statements, for Close.
func (s *Store) multiStmtList() []*sql.Stmt {
	var out []*sql.Stmt
	for _, sts := range s.multi {
		for _, st := range sts {
			if st != nil {
				out = append(out, st)
			}
		}
	}
	return out
}

// execMulti inserts rows rows through m, in chunks: row(i, args) appends
// row i's columns to args, and fixed are the tail's parameters. It returns
// the rows the statements changed. readyMulti has prepared the chunks.
func (s *Store) execMulti(ctx context.Context, tx *sql.Tx, m *multiRow, fixed []any, rows int, row func(i int, args []any) []any) (int64, error) {
	sts := s.multi[m]
	var changed int64
	args := s.multiArgs[:0]
	defer func() {
		clear(args[:cap(args)])
		s.multiArgs = args[:0]
	}()
	for done := 0; done < rows; {
		k := 0
		for chunkSizes[k] > rows-done {
			k++
		}
		n := chunkSizes[k]
		args = args[:0]
		for i := done; i < done+n; i++ {
			args = row(i, args)
		}
		args = append(args, fixed...)
		if sts[k] == nil {
			return 0, fmt.Errorf("the %d-row statement is not prepared", n)
		}
		res, err := tx.StmtContext(ctx, sts[k]).ExecContext(ctx, args...)
		if err != nil {
			return 0, err
		}
		c, err := res.RowsAffected()
		if err != nil {
			return 0, err
		}
		changed += c
		done += n
	}
	return changed, nil
}

// coalescable reports whether a can run in a coalesced write with first,
// the first Append of the write: the queue limits are statement
// parameters, so they must agree, and a message over the byte limit is
// refused by the careful path only.
func coalescable(first, a *appendOp) bool {
	return a.qa.maxMessages == first.qa.maxMessages && a.qa.maxBytes == first.qa.maxBytes &&
		int64(len(a.qa.msg)) <= a.qa.maxBytes
}

// appendBatchTx writes apps, which coalescable accepted, inside tx at now
// (Unix ms) and sets each one's outcome; errNotCoalesced or any other
// error means nothing of its writes may commit (see the top of the file).
func (s *Store) appendBatchTx(ctx context.Context, tx *sql.Tx, apps []*appendOp, now int64) error {
	// Dedup records, then replay records: a key that is alive already
	// (or twice in the batch) changes no row.
	var dedups []*appendOp
	var replays []*appendOp
	recipients := 0
	for _, a := range apps {
		if len(a.qa.dedup) > 0 {
			dedups = append(dedups, a)
		}
		if a.qa.replay != nil {
			replays = append(replays, a)
			s.remember(a.qa.replay.sender, a.qa.replay.requestID, a.qa.replay.expires, now)
		}
		recipients += len(a.qa.recipients)
	}
	if len(dedups) > 0 {
		n, err := s.execMulti(ctx, tx, &seenMulti, []any{now}, len(dedups), func(i int, args []any) []any {
			return append(args, dedups[i].qa.dedup, dedups[i].qa.dedupExpires)
		})
		if err != nil {
			return err
		}
		if n != int64(len(dedups)) {
			return errNotCoalesced // a duplicate
		}
	}
	if len(replays) > 0 {
		n, err := s.execMulti(ctx, tx, &replayMulti, []any{now}, len(replays), func(i int, args []any) []any {
			r := replays[i].qa.replay
			return append(args, r.sender, r.requestID, r.digest, r.expires, r.answer)
		})
		if err != nil {
			return err
		}
		if n != int64(len(replays)) {
			return errNotCoalesced // a replay conflict
		}
	}

	// One number of the global sequence per Append, in batch order.
	var last int64
	if err := tx.StmtContext(ctx, s.qs.seqN).QueryRowContext(ctx, len(apps)).Scan(&last); err != nil {
		return fmt.Errorf("taking %d sequence numbers: %w", len(apps), err)
	}
	seq0 := last - int64(len(apps)) + 1
	// Bodies get explicit ids after the highest, as SQLite would number
	// them, so that each Append knows its own without RETURNING.
	var maxBody int64
	if err := tx.StmtContext(ctx, s.qs.maxBody).QueryRowContext(ctx).Scan(&maxBody); err != nil {
		return fmt.Errorf("reading the last body id: %w", err)
	}
	if _, err := s.execMulti(ctx, tx, &bodyMulti, nil, len(apps), func(i int, args []any) []any {
		return append(args, maxBody+1+int64(i), apps[i].qa.msg, len(apps[i].qa.recipients))
	}); err != nil {
		return err
	}

	// The recipients' heads and entries, a row per (Append, recipient).
	type rcpt struct{ app, r int }
	rows := make([]rcpt, 0, recipients)
	for i, a := range apps {
		for r := range a.qa.recipients {
			rows = append(rows, rcpt{i, r})
		}
	}
	// One head update per queue, with all its messages of the write: the
	// same counters as one update per message, since the limits hold for
	// the sum exactly when they hold after each message. A queue that
	// is new or cannot take them all sends the write down the careful
	// path, which refuses the copies that do not fit, one by one.
	type head struct {
		client          string
		lastSeq, n, len int64
	}
	heads := make([]head, 0, min(recipients, 16))
	headOf := make(map[string]int, min(recipients, 16)) // index in heads, in first-seen order
	for _, rc := range rows {
		a := apps[rc.app]
		client := a.qa.recipients[rc.r]
		i, ok := headOf[client]
		if !ok {
			i = len(heads)
			headOf[client] = i
			heads = append(heads, head{client: client})
		}
		h := &heads[i]
		h.lastSeq, h.n, h.len = seq0+int64(rc.app), h.n+1, h.len+int64(len(a.qa.msg))
	}
	for _, h := range heads {
		if h.n > apps[0].qa.maxMessages || h.len > apps[0].qa.maxBytes {
			return errNotCoalesced // more than an empty queue takes
		}
	}
	limits := []any{apps[0].qa.maxMessages, apps[0].qa.maxBytes}
	n, err := s.execMulti(ctx, tx, &headMulti, limits, len(heads), func(i int, args []any) []any {
		return append(args, heads[i].client, heads[i].lastSeq, heads[i].n, heads[i].len)
	})
	if err != nil {
		return err
	}
	if n != int64(len(heads)) {
		return errNotCoalesced // a full queue
	}
	// The columns of an Append's entries after the recipient are the
	// same for each of its recipients: boxed once per Append, not once
	// per entry (an interface value of an int64, a string or a slice is
	// an allocation).
	appCols := entryMulti.cols - 1
	nowArg := any(now)
	appArgs := make([]any, 0, appCols*len(apps))
	for i, a := range apps {
		appArgs = append(appArgs, seq0+int64(i), maxBody+1+int64(i), len(a.qa.msg), a.qa.groupID, a.qa.sender,
			nowArg, queueExpiry(a.qa, now))
	}
	n, err = s.execMulti(ctx, tx, &entryMulti, nil, len(rows), func(i int, args []any) []any {
		k := rows[i].app
		args = append(args, apps[k].qa.recipients[rows[i].r])
		return append(args, appArgs[appCols*k:appCols*(k+1)]...)
	})
	if err != nil {
		return err
	}
	if n != int64(len(rows)) {
		return fmt.Errorf("wrote %d queue entries for %d", n, len(rows))
	}
	for i, a := range apps {
		a.out = make([]store.Appended, len(a.qa.recipients))
		for r := range a.out {
			a.out[r].Seq = uint64(seq0 + int64(i))
		}
	}
	return nil
}
