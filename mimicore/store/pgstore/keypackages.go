package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// Statements of the KeyPackage directory.
const (
	// kpLockSQL serialises the publishes of one client (in every gateway),
	// so that the count check of one sees the packages of the other: a
	// transaction-scoped advisory lock on a hash of the client URI (a
	// collision only serialises two clients' publishes).
	kpLockSQL = `SELECT pg_advisory_xact_lock(hashtextextended($1, 7))`
	// kpClaimLockSQL takes kpLockSQL's lock shared: a claim that marks a
	// last-resort package handed out (kpHandOutSQL) holds it, so that no
	// publish replaces the package between the claim's read and its mark.
	kpClaimLockSQL = `SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 7))`
	// kpUserLockSQL serialises the publishes of the clients of one user
	// prefix, for its count check, as kpLockSQL does those of one client.
	// A publish takes it before the client's lock.
	kpUserLockSQL = `SELECT pg_advisory_xact_lock(hashtextextended($1, 19))`
	// kpDropReplacedSQL deletes client $1's available last-resort
	// package for suite $2 unless it is $3, when no claim handed it out:
	// no Welcome can name it, so nothing needs it once replaced. The
	// publish holds kpLockSQL, so no claim marks it meanwhile
	// (kpClaimLockSQL).
	kpDropReplacedSQL = `DELETE FROM key_packages
		WHERE client = $1 AND suite = $2 AND last_resort AND claimed_ms IS NULL AND ref <> $3 AND NOT handed_out`
	// kpRetireSQL retires client $1's available last-resort package for
	// suite $2 unless it is $3 (after kpDropReplacedSQL, one that was
	// handed out): $4 is now, $5 now plus the retention. The row stays
	// until its NotAfter (expires_ms), its bytes until retained_ms.
	kpRetireSQL = `UPDATE key_packages SET claimed_ms = $4, retained_ms = LEAST(not_after_ms, $5)
		WHERE client = $1 AND suite = $2 AND last_resort AND claimed_ms IS NULL AND ref <> $3`
	// kpInsertSQL stores a package, replacing an expired row with its
	// ref; no row returned means an alive row holds the ref (and ON
	// CONFLICT locked it). $7 is now.
	kpInsertSQL = `INSERT INTO key_packages AS k
		(ref, client, suite, key_package, not_after_ms, last_resort, published_ms, claimed_ms, expires_ms)
		VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $5)
		ON CONFLICT (ref) DO UPDATE SET client = excluded.client, suite = excluded.suite,
			key_package = excluded.key_package, not_after_ms = excluded.not_after_ms,
			last_resort = excluded.last_resort, published_ms = excluded.published_ms,
			claimed_ms = NULL, expires_ms = excluded.expires_ms, handed_out = false, retained_ms = NULL
		WHERE k.expires_ms <= $7
		RETURNING true`
	// kpGetSQL reads the row with ref $1 that is alive at $2: a claimed
	// one until its NotAfter, its bytes dropped after the retention, so
	// that a publish of it is refused until then.
	kpGetSQL = `SELECT client, suite, key_package, not_after_ms, last_resort, claimed_ms IS NOT NULL
		FROM key_packages WHERE ref = $1 AND expires_ms > $2`
	// kpByRefSQL reads the package with ref $1 for KeyPackageByRef: an
	// available one, or a claimed one within its retention.
	kpByRefSQL = `SELECT client, suite, key_package, not_after_ms, last_resort, claimed_ms IS NOT NULL
		FROM key_packages WHERE ref = $1 AND expires_ms > $2 AND (claimed_ms IS NULL OR retained_ms > $2)`
	kpCountSQL = `SELECT count(*) FROM key_packages WHERE client = $1 AND claimed_ms IS NULL AND not_after_ms > $2`
	// kpDropExpiredSQL and kpDropExpiredRangeSQL delete the packages of
	// client $1, or of the clients in [$1, $2), that expired unclaimed
	// (by time $2 or $3), as DeleteExpired would: a publish clears what
	// its count no longer counts, so that short-lived packages published
	// again and again do not pile up beside the bound until the sweep.
	kpDropExpiredSQL      = `DELETE FROM key_packages WHERE client = $1 AND claimed_ms IS NULL AND not_after_ms <= $2`
	kpDropExpiredRangeSQL = `DELETE FROM key_packages
		WHERE client >= $1 AND client < $2 AND claimed_ms IS NULL AND not_after_ms <= $3`
	// kpCountRangeSQL counts the available packages of the clients in
	// [$1, $2) (those of a user prefix, see check.PrefixEnd), by the
	// key_packages_available index.
	kpCountRangeSQL = `SELECT count(*) FROM key_packages
		WHERE client >= $1 AND client < $2 AND claimed_ms IS NULL AND not_after_ms > $3`
	// kpClaimSQL takes client $1's single-use package for suite $2 (0:
	// the lowest suite with one) that expires first: $3 is now, $4 now
	// plus the retention. The suite is chosen and the row locked in one
	// statement. SKIP LOCKED lets concurrent claims take different
	// packages instead of queueing behind one another; FOR UPDATE
	// rechecks the row, so a package claimed by a transaction that
	// committed meanwhile is not taken.
	kpClaimSQL = `UPDATE key_packages SET claimed_ms = $3, retained_ms = LEAST(not_after_ms, $4)
		WHERE ref = (SELECT ref FROM key_packages
			WHERE client = $1 AND ($2 = 0 OR suite = $2) AND NOT last_resort AND claimed_ms IS NULL AND not_after_ms > $3
			ORDER BY suite, not_after_ms, ref LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING ref, suite, key_package, not_after_ms`
	// kpClaimWaitSQL is kpClaimSQL for when every single-use package left
	// is locked by concurrent claims: it waits for them (FOR UPDATE
	// without SKIP LOCKED) and takes one whose claim rolled back, or
	// none when each was claimed.
	kpClaimWaitSQL = `UPDATE key_packages SET claimed_ms = $3, retained_ms = LEAST(not_after_ms, $4)
		WHERE ref = (SELECT ref FROM key_packages
			WHERE client = $1 AND ($2 = 0 OR suite = $2) AND NOT last_resort AND claimed_ms IS NULL AND not_after_ms > $3
			ORDER BY suite, not_after_ms, ref LIMIT 1 FOR UPDATE)
		RETURNING ref, suite, key_package, not_after_ms`
	// kpLastResortSQL reads client $1's last-resort package for suite $2
	// (0: of the lowest suite with one).
	kpLastResortSQL = `SELECT ref, suite, key_package, not_after_ms, handed_out FROM key_packages
		WHERE client = $1 AND ($2 = 0 OR suite = $2) AND last_resort AND claimed_ms IS NULL AND not_after_ms > $3
		ORDER BY suite LIMIT 1`
	// kpHandOutSQL marks the available last-resort package $1 handed out
	// (see kpDropReplacedSQL) the first time a claim answers it, under
	// kpClaimLockSQL.
	kpHandOutSQL = `UPDATE key_packages SET handed_out = true WHERE ref = $1 AND last_resort AND claimed_ms IS NULL`
	kpListSQL    = `SELECT ref, suite, key_package, not_after_ms, last_resort FROM key_packages
		WHERE client = $1 AND claimed_ms IS NULL AND not_after_ms > $2
		ORDER BY suite, not_after_ms, ref`
)

// PublishKeyPackages implements store.KeyPackages: the deletion of the
// expired packages under its bound, every package, the deletion or
// retirement of replaced last-resort packages and the count checks are one
// transaction, under the publish locks of the user (with a bound per user)
// and of the client, so a refused publish leaves nothing behind and two
// publishes, on any gateways, never both pass a count that counts neither.
func (s *Store) PublishKeyPackages(ctx context.Context, client string, kps []store.KeyPackage, lim store.KeyPackageLimits) error {
	const doing = "publishing KeyPackages"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.KeyPackages(client, kps, lim); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	perClient := lim.PerClient
	if perClient == 0 {
		perClient = store.MaxKeyPackagesPerClient
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if lim.PerUser > 0 {
			if _, err := tx.Exec(ctx, kpUserLockSQL, lim.UserPrefix); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, kpLockSQL, client); err != nil {
			return err
		}
		now := s.nowMs()
		retired := now + store.ClaimedKeyPackageRetention.Milliseconds()
		var err error
		if lim.PerUser > 0 {
			_, err = tx.Exec(ctx, kpDropExpiredRangeSQL, lim.UserPrefix, check.PrefixEnd(lim.UserPrefix), now)
		} else {
			_, err = tx.Exec(ctx, kpDropExpiredSQL, client, now)
		}
		if err != nil {
			return err
		}
		for _, kp := range kps {
			notAfter := check.ExpiryMillis(kp.NotAfter)
			if kp.LastResort {
				if _, err := tx.Exec(ctx, kpDropReplacedSQL, client, int32(kp.Suite), kp.Ref); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, kpRetireSQL, client, int32(kp.Suite), kp.Ref, now, retired); err != nil {
					return err
				}
			}
			wrote, err := firstUse(ctx, tx, kpInsertSQL,
				kp.Ref, client, int32(kp.Suite), kp.KeyPackage, notAfter, kp.LastResort, now)
			if err != nil {
				return err
			}
			if wrote {
				continue
			}
			old, err := getKeyPackage(ctx, tx, kpGetSQL, kp.Ref, now)
			if err != nil {
				return err
			}
			if old.Claimed || old.Client != client || old.Suite != kp.Suite || old.LastResort != kp.LastResort ||
				check.ExpiryMillis(old.NotAfter) != notAfter || !bytes.Equal(old.KeyPackage, kp.KeyPackage) {
				return fmt.Errorf("KeyPackageRef %x is already stored: %w", kp.Ref, store.ErrConflict)
			}
		}
		var n int
		if err := tx.QueryRow(ctx, kpCountSQL, client, now).Scan(&n); err != nil {
			return err
		}
		if n > perClient {
			return fmt.Errorf("%d available: %w", n, store.ErrTooManyKeyPackages)
		}
		if lim.PerUser == 0 {
			return nil
		}
		if err := tx.QueryRow(ctx, kpCountRangeSQL, lim.UserPrefix, check.PrefixEnd(lim.UserPrefix), now).Scan(&n); err != nil {
			return err
		}
		if n > lim.PerUser {
			return fmt.Errorf("%d available for the user: %w", n, store.ErrTooManyUserKeyPackages)
		}
		return nil
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// getKeyPackage reads the alive package with ref.
func getKeyPackage(ctx context.Context, q querier, sql string, ref []byte, now int64) (store.KeyPackage, error) {
	kp := store.KeyPackage{Ref: bytes.Clone(ref)}
	var suite int32
	var notAfter int64
	err := q.QueryRow(ctx, sql, ref, now).Scan(&kp.Client, &suite, &kp.KeyPackage, &notAfter, &kp.LastResort, &kp.Claimed)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.KeyPackage{}, fmt.Errorf("no KeyPackage with this ref: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.KeyPackage{}, fmt.Errorf("reading KeyPackage: %w", err)
	}
	kp.Suite = uint16(suite)
	kp.NotAfter = check.Time(notAfter)
	return kp, nil
}

// ClaimKeyPackage implements store.KeyPackages: the claim and, when no
// single-use package is left, the read of the last-resort package are one
// transaction.
func (s *Store) ClaimKeyPackage(ctx context.Context, client string, suite uint16) (store.KeyPackage, error) {
	const doing = "claiming KeyPackage"
	if err := s.checkOpen(doing); err != nil {
		return store.KeyPackage{}, err
	}
	if err := check.ClientURI("client", client); err != nil {
		return store.KeyPackage{}, fmt.Errorf("%s: %w", doing, err)
	}
	var kp store.KeyPackage
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		kp, err = claimTx(ctx, tx, client, suite, s.nowMs())
		return err
	})
	if err != nil {
		return store.KeyPackage{}, s.fail(doing, err)
	}
	return kp, nil
}

// claimTx claims a package of client for suite (0: any) inside tx at time
// now (Unix ms). Single-use packages come first even under concurrent
// claims: when every one left is locked by another transaction, the
// claim waits for them rather than hand out the last-resort package while
// one may yet be released (kpClaimWaitSQL).
func claimTx(ctx context.Context, tx pgx.Tx, client string, suite uint16, now int64) (store.KeyPackage, error) {
	kp := store.KeyPackage{Client: client}
	var (
		got      int32
		notAfter int64
	)
	retired := now + store.ClaimedKeyPackageRetention.Milliseconds()
	err := tx.QueryRow(ctx, kpClaimSQL, client, int32(suite), now, retired).Scan(&kp.Ref, &got, &kp.KeyPackage, &notAfter)
	if errors.Is(err, pgx.ErrNoRows) {
		err = tx.QueryRow(ctx, kpClaimWaitSQL, client, int32(suite), now, retired).Scan(&kp.Ref, &got, &kp.KeyPackage, &notAfter)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		kp.LastResort = true
		var handedOut bool
		err = tx.QueryRow(ctx, kpLastResortSQL, client, int32(suite), now).Scan(&kp.Ref, &got, &kp.KeyPackage, &notAfter, &handedOut)
		if err == nil && !handedOut {
			// The first claim of it marks it handed out (later ones
			// only read, so they do not queue on its row). Under the
			// client's publish lock, shared, no publish replaces it
			// between the read and the mark: read it again under it.
			if _, err := tx.Exec(ctx, kpClaimLockSQL, client); err != nil {
				return store.KeyPackage{}, err
			}
			err = tx.QueryRow(ctx, kpLastResortSQL, client, int32(suite), now).Scan(&kp.Ref, &got, &kp.KeyPackage, &notAfter, &handedOut)
			if err == nil && !handedOut {
				var tag pgconn.CommandTag
				if tag, err = tx.Exec(ctx, kpHandOutSQL, kp.Ref); err == nil && tag.RowsAffected() != 1 {
					err = fmt.Errorf("marking last-resort KeyPackage %x handed out: %w", kp.Ref, errRetry)
				}
			}
		}
		if errors.Is(err, pgx.ErrNoRows) {
			if suite == 0 {
				return store.KeyPackage{}, fmt.Errorf("client has no KeyPackage: %w", store.ErrNotFound)
			}
			return store.KeyPackage{}, fmt.Errorf("client has no KeyPackage for suite %d: %w", suite, store.ErrNotFound)
		}
	}
	if err != nil {
		return store.KeyPackage{}, err
	}
	kp.Suite = uint16(got)
	kp.NotAfter = check.Time(notAfter)
	return kp, nil
}

// claimUsableTx is claimTx handing out only a package usable accepts (nil:
// any), as store.KeyPackageClaim.Usable says: a single-use package it
// refuses stays claimed in tx, and the next is taken; a last-resort one it
// refuses leaves the client without a package (marked handed out by
// claimTx all the same, which only keeps its ref until its NotAfter once
// it is replaced). Each turn consumes a package, so the loop ends.
func claimUsableTx(ctx context.Context, tx pgx.Tx, client string, suite uint16, now int64, usable func(store.KeyPackage) bool) (store.KeyPackage, error) {
	for {
		kp, err := claimTx(ctx, tx, client, suite, now)
		if err != nil || usable == nil || usable(kp) {
			return kp, err
		}
		if kp.LastResort {
			return store.KeyPackage{}, fmt.Errorf("the client's last-resort KeyPackage is not usable: %w", store.ErrNotFound)
		}
	}
}

// ClaimKeyPackagesByPrefix implements store.KeyPackages: the clients with
// an available package are found and each claims one, in one transaction.
func (s *Store) ClaimKeyPackagesByPrefix(ctx context.Context, clientPrefix string, suite uint16) ([]store.KeyPackage, error) {
	const doing = "claiming KeyPackages by prefix"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.ClientURI("client prefix", clientPrefix); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	var kps []store.KeyPackage
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		kps, err = claimPrefixTx(ctx, tx, clientPrefix, suite, s.nowMs(), nil)
		return err
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return kps, nil
}

// claimPrefixTx claims, inside tx at time now (Unix ms), a package of
// suite for each client whose URI starts with clientPrefix, as
// ClaimKeyPackagesByPrefix does, handing out only packages usable accepts
// (claimUsableTx).
func claimPrefixTx(ctx context.Context, tx pgx.Tx, clientPrefix string, suite uint16, now int64,
	usable func(store.KeyPackage) bool) ([]store.KeyPackage, error) {
	// client >= prefix bounds the index range; starts_with decides.
	// The column is COLLATE "C", so the order is bytewise.
	rows, _ := tx.Query(ctx, `SELECT DISTINCT client FROM key_packages
		WHERE client >= $1 AND starts_with(client, $1) AND ($2 = 0 OR suite = $2)
			AND claimed_ms IS NULL AND not_after_ms > $3
		ORDER BY client LIMIT $4`, clientPrefix, int32(suite), now, store.MaxClaimClients)
	clients, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	kps := make([]store.KeyPackage, 0, len(clients))
	for _, c := range clients {
		kp, err := claimUsableTx(ctx, tx, c, suite, now, usable)
		if errors.Is(err, store.ErrNotFound) {
			continue // its last package was claimed since the listing, or none was usable
		}
		if err != nil {
			return nil, err
		}
		kps = append(kps, kp)
	}
	return kps, nil
}

// ClaimKeyPackages implements store.KeyPackages: the claims, with the
// checks of c.Usable, and the replay record are one transaction. The record is written last, so a
// concurrent copy of the request (the same replay key) waits on the
// record's row for this transaction's outcome, and the claims of the one
// that loses roll back with it.
func (s *Store) ClaimKeyPackages(ctx context.Context, c store.KeyPackageClaim) ([]store.KeyPackage, error) {
	const doing = "claiming KeyPackages"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.KeyPackageClaim(c); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	var kps []store.KeyPackage
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		now := s.nowMs()
		var err error
		if c.Prefix != "" {
			kps, err = claimPrefixTx(ctx, tx, c.Prefix, c.Suite, now, c.Usable)
		} else {
			kps = make([]store.KeyPackage, len(c.Clients))
			for i, client := range c.Clients {
				kps[i], err = claimUsableTx(ctx, tx, client, c.Suite, now, c.Usable)
				if errors.Is(err, store.ErrNotFound) {
					kps[i], err = store.KeyPackage{Client: client}, nil
				}
				if err != nil {
					break
				}
			}
		}
		if err != nil || c.Replay == nil {
			return err
		}
		r, err := c.Replay(kps)
		if err != nil {
			return fmt.Errorf("building the replay record: %w", err)
		}
		if err := check.ReplayRecord(r); err != nil {
			return err
		}
		return s.recordReplayTx(ctx, tx, r)
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return kps, nil
}

// ListKeyPackages implements store.KeyPackages.
func (s *Store) ListKeyPackages(ctx context.Context, client string) ([]store.KeyPackage, error) {
	const doing = "listing KeyPackages"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.ClientURI("client", client); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	rows, _ := s.pool.Query(ctx, kpListSQL, client, s.nowMs())
	kps, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.KeyPackage, error) {
		kp := store.KeyPackage{Client: client}
		var suite int32
		var notAfter int64
		if err := row.Scan(&kp.Ref, &suite, &kp.KeyPackage, &notAfter, &kp.LastResort); err != nil {
			return kp, err
		}
		kp.Suite = uint16(suite)
		kp.NotAfter = check.Time(notAfter)
		return kp, nil
	})
	if err != nil {
		return nil, s.fail(doing, err)
	}
	if kps == nil {
		kps = []store.KeyPackage{}
	}
	return kps, nil
}

// KeyPackageByRef implements store.KeyPackages.
func (s *Store) KeyPackageByRef(ctx context.Context, ref []byte) (store.KeyPackage, error) {
	const doing = "looking up KeyPackage"
	if err := s.checkOpen(doing); err != nil {
		return store.KeyPackage{}, err
	}
	if err := check.ID("KeyPackageRef", ref); err != nil {
		return store.KeyPackage{}, fmt.Errorf("%s: %w", doing, err)
	}
	kp, err := getKeyPackage(ctx, s.pool, kpByRefSQL, ref, s.nowMs())
	if err != nil {
		return store.KeyPackage{}, s.fail(doing, err)
	}
	return kp, nil
}
