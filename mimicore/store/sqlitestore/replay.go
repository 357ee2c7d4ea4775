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

// Reserve implements store.ReplayCache. The insert and, when it changed
// nothing, the read of the entry that holds the key run in one op of the
// writer's transaction, so nothing can change the entry in between.
func (s *Store) Reserve(ctx context.Context, sender string, requestID []byte, digest [32]byte, expires time.Time) (store.Reservation, error) {
	const doing = "reserving request id"
	if err := s.checkOpen(doing); err != nil {
		return store.Reservation{}, err
	}
	if err := checkReplayKey(sender, requestID); err != nil {
		return store.Reservation{}, fmt.Errorf("%s: %w", doing, err)
	}
	exp := check.ExpiryMillis(expires)
	var r store.Reservation
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		r = store.Reservation{}
		now := check.Millis(s.now())
		s.remember(sender, requestID, exp, now)
		res, err := tx.StmtContext(ctx, s.ws.replayInsert).ExecContext(ctx,
			sender, requestID, digest[:], exp, now)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 1 {
			r.Status = store.ReplayNew
			return nil
		}
		// An alive entry holds the key.
		e, err := getReplay(ctx, tx, s.ws.replayGet, sender, requestID)
		if err != nil {
			return err
		}
		switch {
		case !bytes.Equal(e.digest, digest[:]):
			r.Status = store.ReplayConflict
		case e.pending:
			r.Status = store.ReplayInProgress
		default:
			r = store.Reservation{Status: store.ReplayDuplicate, Answer: store.Answer{Body: nonNil(e.body)}}
		}
		return nil
	})
	if err != nil {
		return store.Reservation{}, s.fail(doing, err)
	}
	return r, nil
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
// when it changes nothing, it reads the entry, in the same op, to tell why.
func (s *Store) finishReplay(ctx context.Context, doing string, stmt *sql.Stmt, sender string, requestID []byte, digest [32]byte, extra ...any) error {
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := check.Millis(s.now())
		args := append([]any{sender, requestID, digest[:]}, extra...)
		args = append(args, now)
		res, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 1 {
			return nil
		}
		e, err := getReplay(ctx, tx, s.ws.replayGet, sender, requestID)
		switch {
		case err != nil:
			return err
		case e.expires <= now || !bytes.Equal(e.digest, digest[:]):
			return fmt.Errorf("no pending entry with this digest: %w", store.ErrNotFound)
		default: // alive, same digest, so complete
			return fmt.Errorf("the request already has an answer: %w", store.ErrConflict)
		}
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
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
	const doing = "recording client signature"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	first, err := s.insertOnce(ctx, s.ws.seenInsert, digest[:], expires)
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
	err := s.r.QueryRowContext(ctx, `SELECT answer FROM seen_signatures
		WHERE digest = ?1 AND expires_ms > ?2 AND answer IS NOT NULL`, digest[:], check.Millis(s.now())).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
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

// MarkSpent implements store.SpentNonces and privacypass.SpentStore.
func (s *Store) MarkSpent(ctx context.Context, key []byte, expires time.Time) (bool, error) {
	const doing = "recording spent token"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	if err := check.ID("spent token key", key); err != nil {
		return false, fmt.Errorf("%s: %w", doing, err)
	}
	first, err := s.insertOnce(ctx, s.ws.spentInsert, key, expires)
	if err != nil {
		return false, s.fail(doing, err)
	}
	return first, nil
}

// insertOnce runs an insert-if-absent-or-expired statement as one op of
// the writer: the statement checks and writes under the write lock, and
// the caller learns whether it was first only after the commit.
func (s *Store) insertOnce(ctx context.Context, stmt *sql.Stmt, key []byte, expires time.Time) (bool, error) {
	exp := check.ExpiryMillis(expires)
	var first bool
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, key, exp, check.Millis(s.now()))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		first = n == 1
		return nil
	})
	return first, err
}

// nonNil returns b, or an empty slice for nil, so that a NULL is never
// written for an empty body and an empty body reads back as empty.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
