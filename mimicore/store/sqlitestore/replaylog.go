package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
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

// FindReplay implements store.ReplayLog.
func (s *Store) FindReplay(ctx context.Context, sender string, requestID []byte) (store.ReplayEntry, error) {
	const doing = "finding replay entry"
	if err := s.checkOpen(doing); err != nil {
		return store.ReplayEntry{}, err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return store.ReplayEntry{}, fmt.Errorf("%s: %w", doing, err)
	}
	e, err := scanReplayEntry(s.rs.replayFind.QueryRowContext(ctx, sender, requestID, check.Millis(s.now())))
	if errors.Is(err, sql.ErrNoRows) {
		return store.ReplayEntry{}, fmt.Errorf("%s: %w", doing, store.ErrNotFound)
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
