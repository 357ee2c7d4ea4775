package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/keyfilter"
)

const (
	// replayFindSQL reads an alive entry on the reader pool. ?3 is now.
	replayFindSQL = `SELECT digest, body IS NULL, body FROM replay_requests
		WHERE sender = ?1 AND request_id = ?2 AND expires_ms > ?3`
	// replayRecordSQL stores a completed entry, replacing an expired one;
	// zero rows changed means an alive entry exists. ?6 is now.
	replayRecordSQL = `INSERT INTO replay_requests (sender, request_id, digest, expires_ms, body)
		VALUES (?1, ?2, ?3, ?4, ?5)
		ON CONFLICT (sender, request_id) DO UPDATE
		SET digest = excluded.digest, expires_ms = excluded.expires_ms, body = excluded.body
		WHERE replay_requests.expires_ms <= ?6`
)

// errReplayNotFound is FindReplay's answer for a request id without an
// alive entry, the answer to almost every request: built once, since
// wrapping it afresh allocated on every request.
var errReplayNotFound = fmt.Errorf("finding replay entry: %w", store.ErrNotFound)

// FindReplay implements store.ReplayLog.
func (s *Store) FindReplay(ctx context.Context, sender string, requestID []byte) (store.ReplayEntry, error) {
	const doing = "finding replay entry"
	if err := s.checkOpen(doing); err != nil {
		return store.ReplayEntry{}, err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return store.ReplayEntry{}, fmt.Errorf("%s: %w", doing, err)
	}
	now := check.Millis(s.now())
	if s.known != nil && !s.known.MayContain(s.known.Key(sender, requestID), now) {
		// Never inserted by this Store, the file's only writer, nor
		// found alive when it opened.
		return store.ReplayEntry{}, errReplayNotFound
	}
	e, err := scanReplayEntry(s.rs.replayFind.QueryRowContext(ctx, sender, requestID, now))
	if errors.Is(err, sql.ErrNoRows) {
		return store.ReplayEntry{}, errReplayNotFound
	}
	if err != nil {
		return store.ReplayEntry{}, s.fail(doing, err)
	}
	return e, nil
}

// RecordReplay implements store.ReplayLog.
func (s *Store) RecordReplay(ctx context.Context, sender string, requestID []byte, digest [32]byte, answer store.Answer, expires time.Time) (store.ReplayEntry, error) {
	const doing = "recording answer"
	if err := s.checkOpen(doing); err != nil {
		return store.ReplayEntry{}, err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return store.ReplayEntry{}, fmt.Errorf("%s: %w", doing, err)
	}
	if err := check.Answer(answer); err != nil {
		return store.ReplayEntry{}, fmt.Errorf("%s: %w", doing, err)
	}
	exp := check.ExpiryMillis(expires)
	body := nonNil(answer.Body)
	var (
		e        store.ReplayEntry
		conflict bool
	)
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		e, conflict = store.ReplayEntry{}, false
		now := check.Millis(s.now())
		s.remember(sender, requestID, exp, now)
		res, err := tx.StmtContext(ctx, s.ws.replayRecord).ExecContext(ctx, sender, requestID, digest[:], exp, body, now)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 1 {
			e = store.ReplayEntry{Digest: digest, Answer: store.Answer{Body: body}}
			return nil
		}
		// An alive entry holds the key: report it.
		e, err = scanReplayEntry(tx.StmtContext(ctx, s.ws.replayFind).QueryRowContext(ctx, sender, requestID, now))
		conflict = err == nil
		return err
	})
	if err != nil {
		return store.ReplayEntry{}, s.fail(doing, err)
	}
	if conflict {
		return e, fmt.Errorf("%s: an alive entry holds this request id: %w", doing, store.ErrConflict)
	}
	return e, nil
}

// scanReplayEntry reads a replayFindSQL row.
func scanReplayEntry(row *sql.Row) (store.ReplayEntry, error) {
	var (
		e      store.ReplayEntry
		digest []byte
		body   []byte
	)
	if err := row.Scan(&digest, &e.Pending, &body); err != nil {
		return e, err
	}
	if len(digest) != len(e.Digest) {
		return e, fmt.Errorf("replay entry with a %d-byte digest", len(digest))
	}
	copy(e.Digest[:], digest)
	if !e.Pending {
		e.Answer = store.Answer{Body: nonNil(body)} // Scan copied it
	}
	return e, nil
}

// replayFilterSpan is the expiry span of one generation of the replay
// filter: a quarter or so of the usual lifetime of an entry (the provider
// layer's 11-minute replay window), so that a lookup checks about five
// generations and expired keys leave memory within three minutes.
const replayFilterSpan = 3 * time.Minute

// replayFilterGrace keeps a generation this long after its last key
// expired: the database says "alive" by comparing with the clock at the
// lookup, so a wall clock stepped back (NTP) by up to this much must still
// find keys the filter had seen expire.
const replayFilterGrace = 5 * time.Minute

// replayFilterBudget bounds the replay filter's memory: 64 MiB holds about
// 30 million keys, an 11-minute window at 45,000 requests a second. Beyond
// it the filter stops answering "absent" and lookups read the database.
const replayFilterBudget = 64 << 20

// loadReplayFilter builds the replay filter from the entries alive at now.
// It runs in Open, before the Store is returned, so nothing writes.
func loadReplayFilter(ctx context.Context, db *sql.DB, now time.Time) (*keyfilter.Filter, error) {
	f := keyfilter.New(replayFilterSpan.Milliseconds(), replayFilterGrace.Milliseconds(), replayFilterBudget)
	nowMS := check.Millis(now)
	// Entries that expired within the filter's grace too: a clock that
	// steps back after Open finds them alive again (keyfilter.New).
	rows, err := db.QueryContext(ctx, `SELECT sender, request_id, expires_ms FROM replay_requests WHERE expires_ms > ?1`,
		nowMS-replayFilterGrace.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("loading replay filter: %w", err)
	}
	defer rows.Close()
	var (
		sender    string
		requestID []byte
		expires   int64
	)
	for rows.Next() {
		if err := rows.Scan(&sender, &requestID, &expires); err != nil {
			return nil, fmt.Errorf("loading replay filter: %w", err)
		}
		f.Add(f.Key(sender, requestID), expires, nowMS)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("loading replay filter: %w", err)
	}
	return f, nil
}

// remember adds a replay key to the filter. The insert paths call it inside
// their op, before the statement: a key is in the filter no later than its
// entry is committed, and a rolled-back insert leaves only a key the
// filter answers "maybe" for, which costs one query.
func (s *Store) remember(sender string, requestID []byte, expiresMS, nowMS int64) {
	if s.known != nil {
		s.known.Add(s.known.Key(sender, requestID), expiresMS, nowMS)
	}
}
