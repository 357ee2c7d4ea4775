package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

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

// Reserve implements store.ReplayCache.
func (s *Store) Reserve(ctx context.Context, sender string, requestID []byte, digest [32]byte, expires time.Time) (store.Reservation, error) {
	const doing = "reserving request id"
	if err := s.checkOpen(doing); err != nil {
		return store.Reservation{}, err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return store.Reservation{}, fmt.Errorf("%s: %w", doing, err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Reservation{}, s.fail(doing, err)
	}
	defer rollback(tx)
	now := check.Millis(s.now())
	res, err := tx.StmtContext(ctx, s.ws.replayInsert).ExecContext(ctx,
		sender, requestID, digest[:], check.ExpiryMillis(expires), now)
	if err != nil {
		return store.Reservation{}, s.fail(doing, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return store.Reservation{}, s.fail(doing, err)
	} else if n == 1 {
		if err := tx.Commit(); err != nil {
			return store.Reservation{}, s.fail(doing, err)
		}
		return store.Reservation{Status: store.ReplayNew}, nil
	}
	// An alive entry holds the key; the transaction keeps it from
	// changing before it is read.
	e, err := getReplay(ctx, tx, s.ws.replayGet, sender, requestID)
	if err != nil {
		return store.Reservation{}, s.fail(doing, err)
	}
	switch {
	case !bytes.Equal(e.digest, digest[:]):
		return store.Reservation{Status: store.ReplayConflict}, nil
	case e.pending:
		return store.Reservation{Status: store.ReplayInProgress}, nil
	default:
		return store.Reservation{
			Status: store.ReplayDuplicate,
			Answer: store.Answer{Body: nonNil(e.body)},
		}, nil
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
	return s.finishReplay(ctx, doing, s.ws.replayComplete, sender, requestID, digest,
		nonNil(answer.Body))
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
	return s.finishReplay(ctx, doing, s.ws.replayRelease, sender, requestID, digest)
}

// finishReplay runs stmt, the UPDATE of Complete or the DELETE of Release,
// which changes the entry only while it is alive and pending with digest;
// when it changes nothing, it reads the entry to tell why.
func (s *Store) finishReplay(ctx context.Context, doing string, stmt *sql.Stmt, sender string, requestID []byte, digest [32]byte, extra ...any) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.fail(doing, err)
	}
	defer rollback(tx)
	now := check.Millis(s.now())
	args := append([]any{sender, requestID, digest[:]}, extra...)
	args = append(args, now)
	res, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...)
	if err != nil {
		return s.fail(doing, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return s.fail(doing, err)
	} else if n == 1 {
		if err := tx.Commit(); err != nil {
			return s.fail(doing, err)
		}
		return nil
	}
	e, err := getReplay(ctx, tx, s.ws.replayGet, sender, requestID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%s: %w", doing, err)
	case err != nil:
		return s.fail(doing, err)
	case e.expires <= now || !bytes.Equal(e.digest, digest[:]):
		return fmt.Errorf("%s: no pending entry with this digest: %w", doing, store.ErrNotFound)
	default: // alive, same digest, so complete
		return fmt.Errorf("%s: the request already has an answer: %w", doing, store.ErrConflict)
	}
}

// getReplay reads the entry of (sender, requestID) in tx.
func getReplay(ctx context.Context, tx *sql.Tx, stmt *sql.Stmt, sender string, requestID []byte) (replayEntry, error) {
	var e replayEntry
	err := tx.StmtContext(ctx, stmt).QueryRowContext(ctx, sender, requestID).
		Scan(&e.digest, &e.expires, &e.pending, &e.body)
	if errors.Is(err, sql.ErrNoRows) {
		return e, fmt.Errorf("no entry for this request id: %w", store.ErrNotFound)
	}
	if err != nil {
		return e, fmt.Errorf("reading replay entry: %w", err)
	}
	return e, nil
}

// SeenSignature implements store.SeenSignatures.
func (s *Store) SeenSignature(ctx context.Context, digest [32]byte, expires time.Time) (bool, error) {
	first, err := s.insertOnce(ctx, s.ws.seenInsert, digest[:], expires)
	if err != nil {
		return false, s.fail("recording client signature", err)
	}
	return first, nil
}

// MarkSpent implements store.SpentNonces and privacypass.SpentStore.
func (s *Store) MarkSpent(ctx context.Context, key []byte, expires time.Time) (bool, error) {
	const doing = "recording spent token"
	if err := check.ID("spent token key", key); err != nil {
		return false, fmt.Errorf("%s: %w", doing, err)
	}
	first, err := s.insertOnce(ctx, s.ws.spentInsert, key, expires)
	if err != nil {
		return false, s.fail(doing, err)
	}
	return first, nil
}

// insertOnce runs an insert-if-absent-or-expired statement. A single
// statement is atomic on its own: it takes the write lock before it reads,
// so no explicit transaction is needed, and it is committed (fsynced) when
// ExecContext returns.
func (s *Store) insertOnce(ctx context.Context, stmt *sql.Stmt, key []byte, expires time.Time) (bool, error) {
	if s.closed.Load() {
		return false, store.ErrClosed
	}
	res, err := stmt.ExecContext(ctx, key, check.ExpiryMillis(expires), check.Millis(s.now()))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

// nonNil returns b, or an empty slice for nil, so that a NULL is never
// written for an empty body and an empty body reads back as empty.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
