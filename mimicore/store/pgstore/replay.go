package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// replayEntry is a replay_requests row.
type replayEntry struct {
	digest  []byte
	expires int64
	// pending: the body is NULL, the request is still being processed.
	pending bool
	body    []byte
}

func checkReplayKey(sender string, requestID []byte) error {
	if err := check.Domain("sender", sender); err != nil {
		return err
	}
	return check.ID("request id", requestID)
}

// querier is a pool, a connection or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// replayInsertSQL inserts an entry, or replaces an expired one ($6 is
// now); it returns a row only when it wrote. The row lock ON CONFLICT
// takes makes it atomic against every other write of the key.
const replayInsertSQL = `INSERT INTO replay_requests AS r (sender, request_id, digest, expires_ms, body)
	VALUES ($1, $2, $3, $4, $5)
	ON CONFLICT (sender, request_id) DO UPDATE
	SET digest = excluded.digest, expires_ms = excluded.expires_ms, body = excluded.body
	WHERE r.expires_ms <= $6
	RETURNING true`

// getReplay reads the alive entry of (sender, requestID), or
// store.ErrNotFound.
func getReplay(ctx context.Context, q querier, sender string, requestID []byte, now int64) (replayEntry, error) {
	var e replayEntry
	err := q.QueryRow(ctx, `SELECT digest, expires_ms, body IS NULL, body FROM replay_requests
		WHERE sender = $1 AND request_id = $2 AND expires_ms > $3`, sender, requestID, now).
		Scan(&e.digest, &e.expires, &e.pending, &e.body)
	if errors.Is(err, pgx.ErrNoRows) {
		return e, fmt.Errorf("no entry for this request id: %w", store.ErrNotFound)
	}
	if err != nil {
		return e, fmt.Errorf("reading replay entry: %w", err)
	}
	return e, nil
}

// insertReplay writes the entry (body nil: pending) unless an alive entry
// holds the key, and then returns that entry with wrote false. The insert
// and the read are two statements: when the entry that made the insert a
// no-op is gone or expired by the read, it runs again.
func (s *Store) insertReplay(ctx context.Context, q querier, sender string, requestID []byte, digest [32]byte, body []byte, exp int64) (e replayEntry, wrote bool, err error) {
	for range maxRetries {
		now := s.nowMs()
		var ok bool
		err := q.QueryRow(ctx, replayInsertSQL, sender, requestID, digest[:], exp, body, now).Scan(&ok)
		switch {
		case err == nil:
			return replayEntry{}, true, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return replayEntry{}, false, err
		}
		e, err := getReplay(ctx, q, sender, requestID, now)
		if errors.Is(err, store.ErrNotFound) {
			continue // released or expired meanwhile: insert again
		}
		return e, false, err
	}
	return replayEntry{}, false, fmt.Errorf("the entry kept changing under %d attempts: %w", maxRetries, errRetry)
}

// Reserve implements store.ReplayCache.
func (s *Store) Reserve(ctx context.Context, sender string, requestID []byte, digest [32]byte, expires time.Time) (store.Reservation, error) {
	const doing = "reserving request id"
	if err := s.checkOpen(doing); err != nil {
		return store.Reservation{}, err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return store.Reservation{}, fmt.Errorf("%s: %w", doing, err)
	}
	e, wrote, err := s.insertReplay(ctx, s.pool, sender, requestID, digest, nil, check.ExpiryMillis(expires))
	if err != nil {
		return store.Reservation{}, s.fail(doing, err)
	}
	switch {
	case wrote:
		return store.Reservation{Status: store.ReplayNew}, nil
	case !bytes.Equal(e.digest, digest[:]):
		return store.Reservation{Status: store.ReplayConflict}, nil
	case e.pending:
		return store.Reservation{Status: store.ReplayInProgress}, nil
	default:
		return store.Reservation{Status: store.ReplayDuplicate, Answer: store.Answer{Body: nonNil(e.body)}}, nil
	}
}

// Complete implements store.ReplayCache.
func (s *Store) Complete(ctx context.Context, sender string, requestID []byte, digest [32]byte, answer store.Answer) error {
	const doing = "completing request id"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	if err := check.Answer(answer); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return s.finishReplay(ctx, doing, `UPDATE replay_requests SET body = $5
		WHERE sender = $1 AND request_id = $2 AND digest = $3 AND expires_ms > $4 AND body IS NULL`,
		sender, requestID, digest, nonNil(answer.Body))
}

// Release implements store.ReplayCache.
func (s *Store) Release(ctx context.Context, sender string, requestID []byte, digest [32]byte) error {
	const doing = "releasing request id"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return s.finishReplay(ctx, doing, `DELETE FROM replay_requests
		WHERE sender = $1 AND request_id = $2 AND digest = $3 AND expires_ms > $4 AND body IS NULL`,
		sender, requestID, digest)
}

// finishReplay runs sql, the UPDATE of Complete or the DELETE of Release,
// which changes the entry only while it is alive and pending with digest;
// when it changes nothing, it reads the entry to tell why. The read may
// see a later state than the statement did, but each state it can see
// answers the call truthfully: a pending entry with digest that the
// statement missed was written after it, and the call is ordered first.
func (s *Store) finishReplay(ctx context.Context, doing, sql string, sender string, requestID []byte, digest [32]byte, extra ...any) error {
	now := s.nowMs()
	args := append([]any{sender, requestID, digest[:], now}, extra...)
	tag, err := s.pool.Exec(ctx, sql, args...)
	if err != nil {
		return s.fail(doing, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	e, err := getReplay(ctx, s.pool, sender, requestID, now)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%s: no pending entry with this digest: %w", doing, store.ErrNotFound)
	case err != nil:
		return s.fail(doing, err)
	case !bytes.Equal(e.digest, digest[:]) || e.pending:
		return fmt.Errorf("%s: no pending entry with this digest: %w", doing, store.ErrNotFound)
	default: // alive, same digest, complete
		return fmt.Errorf("%s: the request already has an answer: %w", doing, store.ErrConflict)
	}
}

// FindReplay implements store.ReplayLog.
func (s *Store) FindReplay(ctx context.Context, sender string, requestID []byte) (store.ReplayEntry, error) {
	const doing = "looking up replay entry"
	if err := s.checkOpen(doing); err != nil {
		return store.ReplayEntry{}, err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return store.ReplayEntry{}, fmt.Errorf("%s: %w", doing, err)
	}
	e, err := getReplay(ctx, s.pool, sender, requestID, s.nowMs())
	if errors.Is(err, store.ErrNotFound) {
		return store.ReplayEntry{}, fmt.Errorf("%s: %w", doing, err)
	}
	if err != nil {
		return store.ReplayEntry{}, s.fail(doing, err)
	}
	return e.public(), nil
}

// public is the entry as store.ReplayEntry.
func (e replayEntry) public() store.ReplayEntry {
	r := store.ReplayEntry{Digest: [32]byte(e.digest), Pending: e.pending}
	if !e.pending {
		r.Answer = store.Answer{Body: nonNil(e.body)}
	}
	return r
}

// RecordReplay implements store.ReplayLog.
func (s *Store) RecordReplay(ctx context.Context, sender string, requestID []byte, digest [32]byte, answer store.Answer, expires time.Time) (store.ReplayEntry, error) {
	const doing = "recording replay answer"
	if err := s.checkOpen(doing); err != nil {
		return store.ReplayEntry{}, err
	}
	r := &store.ReplayRecord{Sender: sender, RequestID: requestID, Digest: digest, Answer: answer, Expires: expires}
	if err := check.ReplayRecord(r); err != nil {
		return store.ReplayEntry{}, fmt.Errorf("%s: %w", doing, err)
	}
	e, err := s.recordReplay(ctx, s.pool, r)
	if err != nil {
		return e, s.fail(doing, err)
	}
	return store.ReplayEntry{Digest: digest, Answer: store.Answer{Body: nonNil(answer.Body)}}, nil
}

// recordReplay writes r as a completed entry with q (a transaction, when
// it joins another write), or returns the alive entry that holds its key
// with an error wrapping store.ErrConflict.
func (s *Store) recordReplay(ctx context.Context, q querier, r *store.ReplayRecord) (store.ReplayEntry, error) {
	e, wrote, err := s.insertReplay(ctx, q, r.Sender, r.RequestID, r.Digest, nonNil(r.Answer.Body), check.ExpiryMillis(r.Expires))
	switch {
	case err != nil:
		return store.ReplayEntry{}, err
	case !wrote:
		return e.public(), fmt.Errorf("request id already recorded: %w", store.ErrConflict)
	}
	return store.ReplayEntry{}, nil
}

// SeenSignature implements store.SeenSignatures.
func (s *Store) SeenSignature(ctx context.Context, digest [32]byte, expires time.Time) (bool, error) {
	const doing = "recording client signature"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	first, err := firstUse(ctx, s.pool, seenInsertSQL, digest[:], check.ExpiryMillis(expires), s.nowMs())
	if err != nil {
		return false, s.fail(doing, err)
	}
	return first, nil
}

// SignatureAnswer implements store.SeenSignatures.
func (s *Store) SignatureAnswer(ctx context.Context, digest [32]byte) ([]byte, error) {
	const doing = "reading the answer of a client signature"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	var body []byte
	err := s.pool.QueryRow(ctx, `SELECT answer FROM seen_signatures
		WHERE digest = $1 AND expires_ms > $2 AND answer IS NOT NULL`, digest[:], s.nowMs()).Scan(&body)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: none recorded: %w", doing, store.ErrNotFound)
	}
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if body == nil {
		body = []byte{}
	}
	return body, nil
}

// MarkSpent implements store.SpentNonces.
func (s *Store) MarkSpent(ctx context.Context, key []byte, expires time.Time) (bool, error) {
	const doing = "recording spent token"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	if err := check.ID("token key", key); err != nil {
		return false, fmt.Errorf("%s: %w", doing, err)
	}
	first, err := firstUse(ctx, s.pool, `INSERT INTO spent_tokens AS t (key, expires_ms) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET expires_ms = excluded.expires_ms WHERE t.expires_ms <= $3
		RETURNING true`, key, check.ExpiryMillis(expires), s.nowMs())
	if err != nil {
		return false, s.fail(doing, err)
	}
	return first, nil
}

// seenInsertSQL records a seen signature or a delivery's dedup key (they
// share the table): a row comes back only on first use. An expired
// signature replaced loses its answer.
const seenInsertSQL = `INSERT INTO seen_signatures AS t (digest, expires_ms) VALUES ($1, $2)
	ON CONFLICT (digest) DO UPDATE SET expires_ms = excluded.expires_ms, answer = NULL WHERE t.expires_ms <= $3
	RETURNING true`

// firstUse runs sql, an insert that returns a row only when it wrote.
func firstUse(ctx context.Context, q querier, sql string, args ...any) (bool, error) {
	return scanFirstUse(q.QueryRow(ctx, sql, args...))
}

// scanFirstUse reads the answer of an insert that returns a row only when
// it wrote.
func scanFirstUse(row pgx.Row) (bool, error) {
	var ok bool
	err := row.Scan(&ok)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	}
	return false, err
}
