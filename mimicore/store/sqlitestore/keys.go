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

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// collectRows reads every row with scan, then closes rows; an error from
// scanning, iterating or closing is returned.
func collectRows[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, errors.Join(err, rows.Close())
		}
		out = append(out, v)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	return out, nil
}

// scanSigningKey reads a row of signingKeyColumns.
func scanSigningKey(sc scanner) (store.SigningKey, error) {
	var (
		k                   store.SigningKey
		scheme              int64
		notBefore, notAfter int64
		retired             sql.NullInt64
	)
	if err := sc.Scan(&k.KeyID, &scheme, &k.PublicKey, &notBefore, &notAfter, &retired, &k.File, &k.Sealed); err != nil {
		return k, err
	}
	k.Scheme = uint16(scheme) // the table's CHECK keeps it in range
	k.NotBefore, k.NotAfter = check.Time(notBefore), check.Time(notAfter)
	if retired.Valid {
		k.RetiredAt = check.Time(retired.Int64)
	}
	return k, nil
}

// InsertSigningKey implements store.SigningKeys.
func (s *Store) InsertSigningKey(ctx context.Context, k store.SigningKey) error {
	const doing = "recording signing key"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.SigningKey(k); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	var retired sql.NullInt64
	if !k.RetiredAt.IsZero() {
		retired = sql.NullInt64{Int64: check.Millis(k.RetiredAt), Valid: true}
	}
	// The check for an existing key and the insert run in one op.
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+signingKeyColumns+` FROM signing_keys
			WHERE key_id = ?1 OR file_name = ?2`, k.KeyID, k.File)
		if err != nil {
			return err
		}
		existing, err := collectRows(rows, scanSigningKey)
		if err != nil {
			return err
		}
		switch {
		case len(existing) == 1 && sameSigningKey(existing[0], k):
			return nil
		case len(existing) > 0:
			return fmt.Errorf("another key has key id %x or file %q: %w", k.KeyID, k.File, store.ErrConflict)
		}
		var sealed []byte
		if len(k.Sealed) > 0 {
			sealed = k.Sealed
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO signing_keys (`+signingKeyColumns+`)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)`,
			k.KeyID, int64(k.Scheme), k.PublicKey, check.Millis(k.NotBefore), check.Millis(k.NotAfter), retired, k.File, sealed)
		return err
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// sameSigningKey compares a stored key with one being inserted at the
// store's precision, ignoring RetiredAt.
func sameSigningKey(stored, k store.SigningKey) bool {
	return bytes.Equal(stored.KeyID, k.KeyID) && stored.Scheme == k.Scheme &&
		bytes.Equal(stored.PublicKey, k.PublicKey) && stored.File == k.File &&
		bytes.Equal(stored.Sealed, k.Sealed) &&
		check.Millis(stored.NotBefore) == check.Millis(k.NotBefore) &&
		check.Millis(stored.NotAfter) == check.Millis(k.NotAfter)
}

// ListSigningKeys implements store.SigningKeys.
func (s *Store) ListSigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	const doing = "listing signing keys"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	rows, err := s.rs.signingKeys.QueryContext(ctx)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	keys, err := collectRows(rows, scanSigningKey)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return keys, nil
}

// RetireSigningKey implements store.SigningKeys.
func (s *Store) RetireSigningKey(ctx context.Context, keyID []byte, at time.Time) error {
	const doing = "retiring signing key"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.ID("key id", keyID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	// COALESCE keeps the first retirement time; the row counts as changed
	// either way, so zero rows means no such key.
	atMs := check.Millis(at)
	return s.oneRow(ctx, doing, keyID, func(ctx context.Context, tx *sql.Tx) (sql.Result, error) {
		return tx.ExecContext(ctx, `UPDATE signing_keys SET retired_ms = COALESCE(retired_ms, ?2) WHERE key_id = ?1`,
			keyID, atMs)
	})
}

// DeleteSigningKey implements store.SigningKeys.
func (s *Store) DeleteSigningKey(ctx context.Context, keyID []byte) error {
	const doing = "deleting signing key"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.ID("key id", keyID); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return s.oneRow(ctx, doing, keyID, func(ctx context.Context, tx *sql.Tx) (sql.Result, error) {
		return tx.ExecContext(ctx, `DELETE FROM signing_keys WHERE key_id = ?1`, keyID)
	})
}

// oneRow runs exec, a statement on the signing key keyID, as one op of the
// writer, and turns zero changed rows into store.ErrNotFound.
func (s *Store) oneRow(ctx context.Context, doing string, keyID []byte, exec func(context.Context, *sql.Tx) (sql.Result, error)) error {
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := exec(ctx, tx)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("no key with id %x: %w", keyID, store.ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

func scanPeerKey(sc scanner) (store.PeerKey, error) {
	var (
		k                                  store.PeerKey
		scheme                             int64
		notBefore, notAfter, fetched, till int64
	)
	if err := sc.Scan(&k.Domain, &k.KeyID, &scheme, &k.PublicKey, &notBefore, &notAfter, &fetched, &till); err != nil {
		return k, err
	}
	k.Scheme = uint16(scheme) // the table's CHECK keeps it in range
	k.NotBefore, k.NotAfter = check.Time(notBefore), check.Time(notAfter)
	k.FetchedAt, k.CacheUntil = check.Time(fetched), check.Time(till)
	return k, nil
}

// ReplacePeerKeys implements store.PeerKeyCache.
func (s *Store) ReplacePeerKeys(ctx context.Context, domain string, keys []store.PeerKey) error {
	const doing = "caching peer keys"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.PeerKeys(domain, keys); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	// The deletes and inserts run in one op: its savepoint makes them
	// atomic even inside a batch.
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM peer_keys WHERE domain = ?1`, domain); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM peer_key_failures WHERE domain = ?1`, domain); err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		ins, err := tx.PrepareContext(ctx, `INSERT INTO peer_keys (`+peerKeyColumns+`)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		for _, k := range keys {
			if _, err := ins.ExecContext(ctx, domain, k.KeyID, int64(k.Scheme), k.PublicKey,
				check.Millis(k.NotBefore), check.Millis(k.NotAfter), check.Millis(k.FetchedAt),
				check.ExpiryMillis(k.CacheUntil)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// LookupPeerKey implements store.PeerKeyCache.
func (s *Store) LookupPeerKey(ctx context.Context, domain string, keyID []byte) (store.PeerKey, error) {
	const doing = "looking up peer key"
	if err := s.checkOpen(doing); err != nil {
		return store.PeerKey{}, err
	}
	if err := check.Domain("peer domain", domain); err != nil {
		return store.PeerKey{}, fmt.Errorf("%s: %w", doing, err)
	}
	if err := check.ID("key id", keyID); err != nil {
		return store.PeerKey{}, fmt.Errorf("%s: %w", doing, err)
	}
	k, err := scanPeerKey(s.rs.peerKey.QueryRowContext(ctx, domain, keyID, check.Millis(s.now())))
	if errors.Is(err, sql.ErrNoRows) {
		return store.PeerKey{}, fmt.Errorf("%s: no cached key %x for %s: %w", doing, keyID, domain, store.ErrNotFound)
	}
	if err != nil {
		return store.PeerKey{}, s.fail(doing, err)
	}
	return k, nil
}

// ListPeerKeys implements store.PeerKeyCache.
func (s *Store) ListPeerKeys(ctx context.Context, domain string) ([]store.PeerKey, error) {
	const doing = "listing peer keys"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.Domain("peer domain", domain); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	rows, err := s.rs.peerKeys.QueryContext(ctx, domain, check.Millis(s.now()))
	if err != nil {
		return nil, s.fail(doing, err)
	}
	keys, err := collectRows(rows, scanPeerKey)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return keys, nil
}

// RecordPeerFailure implements store.PeerKeyCache.
func (s *Store) RecordPeerFailure(ctx context.Context, f store.PeerFailure) error {
	const doing = "recording peer key fetch failure"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.PeerFailure(f); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO peer_key_failures (domain, failed_ms, retry_ms, reason)
			VALUES (?1, ?2, ?3, ?4)
			ON CONFLICT (domain) DO UPDATE
			SET failed_ms = excluded.failed_ms, retry_ms = excluded.retry_ms, reason = excluded.reason`,
			f.Domain, check.Millis(f.FailedAt), check.ExpiryMillis(f.RetryAt), f.Reason)
		return err
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// LookupPeerFailure implements store.PeerKeyCache.
func (s *Store) LookupPeerFailure(ctx context.Context, domain string) (store.PeerFailure, error) {
	const doing = "looking up peer key fetch failure"
	if err := s.checkOpen(doing); err != nil {
		return store.PeerFailure{}, err
	}
	if err := check.Domain("peer domain", domain); err != nil {
		return store.PeerFailure{}, fmt.Errorf("%s: %w", doing, err)
	}
	var (
		f               store.PeerFailure
		failed, retryAt int64
	)
	err := s.rs.peerFailure.QueryRowContext(ctx, domain, check.Millis(s.now())).Scan(&f.Domain, &failed, &retryAt, &f.Reason)
	if errors.Is(err, sql.ErrNoRows) {
		return store.PeerFailure{}, fmt.Errorf("%s: no failure recorded for %s: %w", doing, domain, store.ErrNotFound)
	}
	if err != nil {
		return store.PeerFailure{}, s.fail(doing, err)
	}
	f.FailedAt, f.RetryAt = check.Time(failed), check.Time(retryAt)
	return f, nil
}
