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

const signingKeyColumns = "key_id, scheme, public_key, not_before_ms, not_after_ms, retired_ms, file_name, sealed"

func scanSigningKey(row pgx.CollectableRow) (store.SigningKey, error) {
	var (
		k                   store.SigningKey
		scheme              int32
		notBefore, notAfter int64
		retired             *int64
	)
	if err := row.Scan(&k.KeyID, &scheme, &k.PublicKey, &notBefore, &notAfter, &retired, &k.File, &k.Sealed); err != nil {
		return k, err
	}
	k.Scheme = uint16(scheme) // the table's CHECK keeps it in range
	k.NotBefore, k.NotAfter = check.Time(notBefore), check.Time(notAfter)
	if retired != nil {
		k.RetiredAt = check.Time(*retired)
	}
	return k, nil
}

// InsertSigningKey implements store.SigningKeys. The check for an existing
// key and the insert run in one transaction; two gateways inserting the
// same key at once meet on the primary key, and the loser runs again and
// finds the key there.
func (s *Store) InsertSigningKey(ctx context.Context, k store.SigningKey) error {
	const doing = "recording signing key"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.SigningKey(k); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	var retired *int64
	if !k.RetiredAt.IsZero() {
		ms := check.Millis(k.RetiredAt)
		retired = &ms
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT `+signingKeyColumns+` FROM signing_keys
			WHERE key_id = $1 OR file_name = $2 FOR UPDATE`, k.KeyID, k.File)
		existing, err := pgx.CollectRows(rows, scanSigningKey)
		if err != nil {
			return err
		}
		switch {
		case len(existing) == 1 && sameSigningKey(existing[0], k):
			return nil
		case len(existing) > 0:
			return fmt.Errorf("another key has key id %x or file %q: %w", k.KeyID, k.File, store.ErrConflict)
		}
		_, err = tx.Exec(ctx, `INSERT INTO signing_keys (`+signingKeyColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			k.KeyID, int32(k.Scheme), k.PublicKey, check.Millis(k.NotBefore), check.Millis(k.NotAfter), retired, k.File, sealedOrNull(k.Sealed))
		if uniqueViolation(err) {
			return fmt.Errorf("inserted concurrently: %w", errRetry)
		}
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

// sealedOrNull is the sealed column's value of a key: NULL for a key kept
// in a file.
func sealedOrNull(sealed []byte) []byte {
	if len(sealed) == 0 {
		return nil
	}
	return sealed
}

// ListSigningKeys implements store.SigningKeys.
func (s *Store) ListSigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	const doing = "listing signing keys"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	rows, _ := s.pool.Query(ctx, `SELECT `+signingKeyColumns+` FROM signing_keys ORDER BY not_before_ms, key_id`)
	keys, err := pgx.CollectRows(rows, scanSigningKey)
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
	return s.oneKey(ctx, doing, keyID, `UPDATE signing_keys SET retired_ms = COALESCE(retired_ms, $2) WHERE key_id = $1`,
		keyID, check.Millis(at))
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
	return s.oneKey(ctx, doing, keyID, `DELETE FROM signing_keys WHERE key_id = $1`, keyID)
}

// oneKey runs sql, a statement on the signing key keyID, and turns zero
// changed rows into store.ErrNotFound.
func (s *Store) oneKey(ctx context.Context, doing string, keyID []byte, sql string, args ...any) error {
	tag, err := s.pool.Exec(ctx, sql, args...)
	if err != nil {
		return s.fail(doing, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s: no key with id %x: %w", doing, keyID, store.ErrNotFound)
	}
	return nil
}

const peerKeyColumns = "domain, key_id, scheme, public_key, not_before_ms, not_after_ms, fetched_ms, cache_until_ms"

func scanPeerKey(row pgx.CollectableRow) (store.PeerKey, error) {
	var (
		k                                  store.PeerKey
		scheme                             int32
		notBefore, notAfter, fetched, till int64
	)
	if err := row.Scan(&k.Domain, &k.KeyID, &scheme, &k.PublicKey, &notBefore, &notAfter, &fetched, &till); err != nil {
		return k, err
	}
	k.Scheme = uint16(scheme) // the table's CHECK keeps it in range
	k.NotBefore, k.NotAfter = check.Time(notBefore), check.Time(notAfter)
	k.FetchedAt, k.CacheUntil = check.Time(fetched), check.Time(till)
	return k, nil
}

// peerKeysLockSQL is the transaction-scoped advisory lock on a hash of the
// peer domain $1 that a replacement of its keys takes first: two
// replacements at once (two gateways that missed the cache) then run one
// after the other, where the inserts of the second would collide with the
// first's uncommitted rows, which its deletes did not see.
const peerKeysLockSQL = `SELECT pg_advisory_xact_lock(hashtextextended($1, 17))`

// ReplacePeerKeys implements store.PeerKeyCache: under the domain's
// advisory lock, the deletes and the inserts are one transaction, sent as
// one batch.
func (s *Store) ReplacePeerKeys(ctx context.Context, domain string, keys []store.PeerKey) error {
	const doing = "caching peer keys"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.PeerKeys(domain, keys); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(peerKeysLockSQL, domain)
		b.Queue(`DELETE FROM peer_keys WHERE domain = $1`, domain)
		b.Queue(`DELETE FROM peer_key_failures WHERE domain = $1`, domain)
		for _, k := range keys {
			b.Queue(`INSERT INTO peer_keys (`+peerKeyColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
				domain, k.KeyID, int32(k.Scheme), k.PublicKey,
				check.Millis(k.NotBefore), check.Millis(k.NotAfter), check.Millis(k.FetchedAt),
				check.ExpiryMillis(k.CacheUntil))
		}
		return tx.SendBatch(ctx, b).Close()
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
	rows, _ := s.pool.Query(ctx, `SELECT `+peerKeyColumns+` FROM peer_keys
		WHERE domain = $1 AND key_id = $2 AND cache_until_ms > $3`, domain, keyID, s.nowMs())
	k, err := pgx.CollectExactlyOneRow(rows, scanPeerKey)
	if errors.Is(err, pgx.ErrNoRows) {
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
	rows, _ := s.pool.Query(ctx, `SELECT `+peerKeyColumns+` FROM peer_keys
		WHERE domain = $1 AND cache_until_ms > $2 ORDER BY not_before_ms, key_id`, domain, s.nowMs())
	keys, err := pgx.CollectRows(rows, scanPeerKey)
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
	_, err := s.pool.Exec(ctx, `INSERT INTO peer_key_failures (domain, failed_ms, retry_ms, reason)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (domain) DO UPDATE
		SET failed_ms = excluded.failed_ms, retry_ms = excluded.retry_ms, reason = excluded.reason`,
		f.Domain, check.Millis(f.FailedAt), check.ExpiryMillis(f.RetryAt), f.Reason)
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
	err := s.pool.QueryRow(ctx, `SELECT domain, failed_ms, retry_ms, reason FROM peer_key_failures
		WHERE domain = $1 AND retry_ms > $2`, domain, s.nowMs()).Scan(&f.Domain, &failed, &retryAt, &f.Reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.PeerFailure{}, fmt.Errorf("%s: no failure recorded for %s: %w", doing, domain, store.ErrNotFound)
	}
	if err != nil {
		return store.PeerFailure{}, s.fail(doing, err)
	}
	f.FailedAt, f.RetryAt = check.Time(failed), check.Time(retryAt)
	return f, nil
}
