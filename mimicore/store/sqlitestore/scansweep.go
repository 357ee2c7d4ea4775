package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// Expiry without an expiry index. The tables that every hot write inserts
// into (the replay log, the seen signatures, the spent tokens and the queue
// entries) have no index on their expiry: each such index cost a B-tree
// insert per row on the writer, which every write of the gateway waits
// behind (a fifth of the writer's CPU per delivered message, measured on
// a benchmark of deliveries with random keys). Their expired rows are
// found instead by a scan in primary-key order on a read connection, a
// page of scanPage rows per read transaction, so the scan never holds the
// writer nor a snapshot for long; only the expired keys it found go to
// the writer, sweepBatch per DELETE, each re-checking the expiry. A sweep
// thus reads every row of these tables once per pass (DefaultSweepEvery in
// the service), off the write path.

// scanPage is how many rows one read transaction of a scan sweep reads.
const scanPage = 2000

// colKind is the type of a primary-key column, as a scan reads it and as
// the JSON key list of its DELETE carries it.
type colKind int

const (
	colText colKind = iota // a JSON string
	colBlob                // a JSON string of hex, unhex()ed
	colInt                 // a JSON number
)

// scanSweep is the sweep of one table without an expiry index.
type scanSweep struct {
	table   string
	pk      []string  // primary-key columns, in key order
	kinds   []colKind // of pk
	expires string    // the expiry column (Unix ms)
	// entries: the table is queue_messages, whose deleted rows release
	// their queues' counters and bodies (deleteEntries).
	entries bool
}

var scanSweeps = []scanSweep{
	{table: "replay_requests", pk: []string{"sender", "request_id"}, kinds: []colKind{colText, colBlob}, expires: "expires_ms"},
	{table: "seen_signatures", pk: []string{"digest"}, kinds: []colKind{colBlob}, expires: "expires_ms"},
	{table: "spent_tokens", pk: []string{"key"}, kinds: []colKind{colBlob}, expires: "expires_ms"},
	{table: "queue_messages", pk: []string{"client", "seq"}, kinds: []colKind{colText, colInt}, expires: "expires_ms", entries: true},
}

// tuple renders cols as an SQL row value, or the one column alone.
func tuple(cols []string) string {
	if len(cols) == 1 {
		return cols[0]
	}
	return "(" + strings.Join(cols, ", ") + ")"
}

// firstSQL reads the first page: the key and expiry of the first
// scanPage rows.
func (sw *scanSweep) firstSQL() string {
	return fmt.Sprintf("SELECT %s, %s FROM %s ORDER BY %s LIMIT %d",
		strings.Join(sw.pk, ", "), sw.expires, sw.table, strings.Join(sw.pk, ", "), scanPage)
}

// nextSQL reads the page after the key ?1, ?2, ...
func (sw *scanSweep) nextSQL() string {
	params := make([]string, len(sw.pk))
	for i := range params {
		params[i] = fmt.Sprintf("?%d", i+1)
	}
	return fmt.Sprintf("SELECT %s, %s FROM %s WHERE %s > %s ORDER BY %s LIMIT %d",
		strings.Join(sw.pk, ", "), sw.expires, sw.table, tuple(sw.pk), tuple(params), strings.Join(sw.pk, ", "), scanPage)
}

// deleteSQL deletes the rows named in the JSON array of keys ?2 that have
// expired at ?1; for queue entries, RETURNING what deleteEntries releases.
func (sw *scanSweep) deleteSQL() string {
	vals := make([]string, len(sw.pk))
	for i, k := range sw.kinds {
		v := fmt.Sprintf("value ->> %d", i)
		if len(sw.pk) == 1 {
			v = "value"
		}
		if k == colBlob {
			v = "unhex(" + v + ")"
		}
		vals[i] = v
	}
	q := fmt.Sprintf("DELETE FROM %s WHERE %s IN (SELECT %s FROM json_each(?2)) AND %s <= ?1",
		sw.table, tuple(sw.pk), strings.Join(vals, ", "), sw.expires)
	if sw.entries {
		q += " RETURNING client, body_id, size, expires_ms"
	}
	return q
}

// sweepByScan deletes sw's rows expired at now (Unix ms) and reports how
// many it deleted.
func (s *Store) sweepByScan(ctx context.Context, sw *scanSweep, now int64) (int64, error) {
	first, next, del := sw.firstSQL(), sw.nextSQL(), sw.deleteSQL()
	var total int64
	var expired []any // JSON keys waiting for their DELETE
	flush := func() error {
		if len(expired) == 0 {
			return nil
		}
		list, err := json.Marshal(expired)
		if err != nil {
			return err
		}
		expired = expired[:0]
		var n int64
		err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
			if sw.entries {
				d, _, err := deleteEntries(ctx, tx, del, now, now, string(list))
				n = int64(d)
				return err
			}
			res, err := tx.ExecContext(ctx, del, now, string(list))
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		total += n
		return err
	}
	var after []any // the last key read; nil before the first page
	rs := newRowScanner(sw)
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var rows *sql.Rows
		var err error
		if after == nil {
			rows, err = s.r.QueryContext(ctx, first)
		} else {
			rows, err = s.r.QueryContext(ctx, next, after...)
		}
		if err != nil {
			return total, fmt.Errorf("scanning %s: %w", sw.table, err)
		}
		read := 0
		for rows.Next() {
			if err := rs.scan(rows); err != nil {
				rows.Close()
				return total, fmt.Errorf("scanning %s: %w", sw.table, err)
			}
			read++
			if rs.exp <= now {
				expired = append(expired, sw.jsonKey(rs.key()))
			}
		}
		if read > 0 {
			after = rs.key()
		}
		if err := rows.Err(); err != nil {
			rows.Close()
			return total, fmt.Errorf("scanning %s: %w", sw.table, err)
		}
		rows.Close()
		if len(expired) >= sweepBatch || read < scanPage {
			if err := flush(); err != nil {
				return total, err
			}
		}
		if read < scanPage {
			return total, nil
		}
	}
}

// rowScanner reads the rows of a scan page into buffers it reuses: a scan
// reads every row of its table, so only the keys of expired rows and of
// each page's last row are copied out.
type rowScanner struct {
	sw   *scanSweep
	dst  []any // Scan's destinations: vals, then &exp
	vals []any // *string, *[]byte or *int64 per key column
	exp  int64
}

func newRowScanner(sw *scanSweep) *rowScanner {
	r := &rowScanner{sw: sw, vals: make([]any, len(sw.pk))}
	for i, k := range sw.kinds {
		switch k {
		case colText:
			r.vals[i] = new(string)
		case colBlob:
			r.vals[i] = new([]byte)
		case colInt:
			r.vals[i] = new(int64)
		}
	}
	r.dst = append(append([]any{}, r.vals...), &r.exp)
	return r
}

// scan reads a row of a scan page into r's buffers: key returns its key
// and r.exp holds its expiry.
func (r *rowScanner) scan(rows *sql.Rows) error {
	return rows.Scan(r.dst...)
}

// key returns the last row's key as query parameters (a copy).
func (r *rowScanner) key() []any {
	key := make([]any, len(r.vals))
	for i, v := range r.vals {
		switch v := v.(type) {
		case *string:
			key[i] = *v
		case *[]byte:
			key[i] = bytes.Clone(*v)
		case *int64:
			key[i] = *v
		}
	}
	return key
}

// jsonKey is key as an element of the DELETE's JSON list: the value alone
// for a one-column key, else an array; blobs as hex.
func (sw *scanSweep) jsonKey(key []any) any {
	out := make([]any, len(key))
	for i, v := range key {
		if b, ok := v.([]byte); ok {
			out[i] = hex.EncodeToString(b)
		} else {
			out[i] = v
		}
	}
	if len(out) == 1 {
		return out[0]
	}
	return out
}
