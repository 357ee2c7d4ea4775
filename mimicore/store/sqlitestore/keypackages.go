package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// Statements of the KeyPackage directory. MIN(a, b) of two values is
// LEAST(a, b) in PostgreSQL; the subquery of kpClaimSQL takes FOR UPDATE
// SKIP LOCKED there.
const (
	// kpDropReplacedSQL deletes client ?1's available last-resort
	// package for suite ?2 unless it is ?3, when no claim handed it out:
	// no Welcome can name it, so nothing needs it once replaced.
	kpDropReplacedSQL = `DELETE FROM key_packages
		WHERE client = ?1 AND suite = ?2 AND last_resort = 1 AND claimed_ms IS NULL AND ref <> ?3 AND handed_out = 0`
	// kpRetireSQL retires client ?1's available last-resort package for
	// suite ?2 unless it is ?3 (after kpDropReplacedSQL, one that was
	// handed out): ?4 is now, ?5 now plus the retention. The row stays
	// until its NotAfter (expires_ms), its bytes until retained_ms.
	kpRetireSQL = `UPDATE key_packages SET claimed_ms = ?4, retained_ms = MIN(not_after_ms, ?5)
		WHERE client = ?1 AND suite = ?2 AND last_resort = 1 AND claimed_ms IS NULL AND ref <> ?3`
	// kpInsertSQL stores a package, replacing an expired row with its
	// ref; zero rows changed means an alive row holds the ref. ?7 is now.
	kpInsertSQL = `INSERT INTO key_packages
		(ref, client, suite, key_package, not_after_ms, last_resort, published_ms, claimed_ms, expires_ms)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?5)
		ON CONFLICT (ref) DO UPDATE SET client = excluded.client, suite = excluded.suite,
			key_package = excluded.key_package, not_after_ms = excluded.not_after_ms,
			last_resort = excluded.last_resort, published_ms = excluded.published_ms,
			claimed_ms = NULL, expires_ms = excluded.expires_ms, handed_out = 0, retained_ms = NULL
		WHERE key_packages.expires_ms <= ?7`
	// kpGetSQL reads the row with ref ?1 that is alive at ?2: a claimed
	// one until its NotAfter, its bytes dropped after the retention, so
	// that a publish of it is refused until then.
	kpGetSQL = `SELECT client, suite, key_package, not_after_ms, last_resort, claimed_ms IS NOT NULL
		FROM key_packages WHERE ref = ?1 AND expires_ms > ?2`
	// kpByRefSQL reads the package with ref ?1 for KeyPackageByRef: an
	// available one, or a claimed one within its retention.
	kpByRefSQL = `SELECT client, suite, key_package, not_after_ms, last_resort, claimed_ms IS NOT NULL
		FROM key_packages WHERE ref = ?1 AND expires_ms > ?2 AND (claimed_ms IS NULL OR retained_ms > ?2)`
	kpCountSQL = `SELECT count(*) FROM key_packages WHERE client = ?1 AND claimed_ms IS NULL AND not_after_ms > ?2`
	// kpDropExpiredSQL and kpDropExpiredRangeSQL delete the packages of
	// client ?1, or of the clients in [?1, ?2), that expired unclaimed
	// (by time ?2 or ?3), as DeleteExpired would: a publish clears what
	// its count no longer counts, so that short-lived packages published
	// again and again do not pile up beside the bound until the sweep.
	kpDropExpiredSQL      = `DELETE FROM key_packages WHERE client = ?1 AND claimed_ms IS NULL AND not_after_ms <= ?2`
	kpDropExpiredRangeSQL = `DELETE FROM key_packages
		WHERE client >= ?1 AND client < ?2 AND claimed_ms IS NULL AND not_after_ms <= ?3`
	// kpCountRangeSQL counts the available packages of the clients in
	// [?1, ?2) (those of a user prefix, see check.PrefixEnd), by the
	// key_packages_available index.
	kpCountRangeSQL = `SELECT count(*) FROM key_packages
		WHERE client >= ?1 AND client < ?2 AND claimed_ms IS NULL AND not_after_ms > ?3`
	// kpClaimSQL takes client ?1's single-use package for suite ?2 that
	// expires first: ?3 is now, ?4 now plus the retention (see
	// kpRetireSQL).
	kpClaimSQL = `UPDATE key_packages SET claimed_ms = ?3, retained_ms = MIN(not_after_ms, ?4)
		WHERE ref = (SELECT ref FROM key_packages
			WHERE client = ?1 AND suite = ?2 AND last_resort = 0 AND claimed_ms IS NULL AND not_after_ms > ?3
			ORDER BY not_after_ms, ref LIMIT 1)
		RETURNING ref, key_package, not_after_ms`
	// kpLastResortSQL hands out client ?1's last-resort package for
	// suite ?2, marking it handed out (see kpDropReplacedSQL).
	kpLastResortSQL = `UPDATE key_packages SET handed_out = 1
		WHERE client = ?1 AND suite = ?2 AND last_resort = 1 AND claimed_ms IS NULL AND not_after_ms > ?3
		RETURNING ref, key_package, not_after_ms`
	kpListSQL = `SELECT ref, suite, key_package, not_after_ms, last_resort FROM key_packages
		WHERE client = ?1 AND claimed_ms IS NULL AND not_after_ms > ?2
		ORDER BY suite, not_after_ms, ref`
)

// PublishKeyPackages implements store.KeyPackages: the deletion of the
// expired packages under its bound, every package, the deletion or
// retirement of replaced last-resort packages and the count checks are one op of the
// single writer, so a refused publish leaves nothing behind and
// no other publish runs between a count and the writes it checks.
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
	// Copied now: the op may run after the caller changed its slices.
	type row struct {
		suite      int64
		ref, kp    []byte
		notAfter   int64
		lastResort bool
	}
	rows := make([]row, len(kps))
	for i, kp := range kps {
		rows[i] = row{int64(kp.Suite), bytes.Clone(kp.Ref), bytes.Clone(kp.KeyPackage),
			check.ExpiryMillis(kp.NotAfter), kp.LastResort}
	}
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := check.Millis(s.now())
		retired := now + store.ClaimedKeyPackageRetention.Milliseconds()
		var err error
		if lim.PerUser > 0 {
			_, err = tx.ExecContext(ctx, kpDropExpiredRangeSQL, lim.UserPrefix, check.PrefixEnd(lim.UserPrefix), now)
		} else {
			_, err = tx.ExecContext(ctx, kpDropExpiredSQL, client, now)
		}
		if err != nil {
			return err
		}
		for _, r := range rows {
			if r.lastResort {
				if _, err := tx.ExecContext(ctx, kpDropReplacedSQL, client, r.suite, r.ref); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, kpRetireSQL, client, r.suite, r.ref, now, retired); err != nil {
					return err
				}
			}
			res, err := tx.StmtContext(ctx, s.ks.insert).ExecContext(ctx,
				r.ref, client, r.suite, r.kp, r.notAfter, r.lastResort, now)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				continue
			}
			old, err := getKeyPackage(ctx, tx.StmtContext(ctx, s.ks.get), r.ref, now)
			if err != nil {
				return err
			}
			if old.Claimed || old.Client != client || int64(old.Suite) != r.suite || old.LastResort != r.lastResort ||
				check.ExpiryMillis(old.NotAfter) != r.notAfter || !bytes.Equal(old.KeyPackage, r.kp) {
				return fmt.Errorf("KeyPackageRef %x is already stored: %w", r.ref, store.ErrConflict)
			}
		}
		var n int
		if err := tx.QueryRowContext(ctx, kpCountSQL, client, now).Scan(&n); err != nil {
			return err
		}
		if n > perClient {
			return fmt.Errorf("%d available: %w", n, store.ErrTooManyKeyPackages)
		}
		if lim.PerUser == 0 {
			return nil
		}
		if err := tx.QueryRowContext(ctx, kpCountRangeSQL, lim.UserPrefix, check.PrefixEnd(lim.UserPrefix), now).Scan(&n); err != nil {
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

// getKeyPackage reads the alive package with ref through stmt (kpGetSQL).
func getKeyPackage(ctx context.Context, stmt *sql.Stmt, ref []byte, now int64) (store.KeyPackage, error) {
	kp := store.KeyPackage{Ref: bytes.Clone(ref)}
	var suite, notAfter int64
	err := stmt.QueryRowContext(ctx, ref, now).Scan(&kp.Client, &suite, &kp.KeyPackage, &notAfter, &kp.LastResort, &kp.Claimed)
	if errors.Is(err, sql.ErrNoRows) {
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
// op.
func (s *Store) ClaimKeyPackage(ctx context.Context, client string, suite uint16) (store.KeyPackage, error) {
	const doing = "claiming KeyPackage"
	if err := s.checkOpen(doing); err != nil {
		return store.KeyPackage{}, err
	}
	if err := check.ClientURI("client", client); err != nil {
		return store.KeyPackage{}, fmt.Errorf("%s: %w", doing, err)
	}
	// Suite 0 is any suite (store.KeyPackages); every other value names
	// one.
	var kp store.KeyPackage
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		kp, err = s.claimTx(ctx, tx, client, suite, check.Millis(s.now()))
		return err
	})
	if err != nil {
		return store.KeyPackage{}, s.fail(doing, err)
	}
	return kp, nil
}

// claimTx claims a package of client for suite inside tx at time now
// (Unix ms).
func (s *Store) claimTx(ctx context.Context, tx *sql.Tx, client string, suite uint16, now int64) (store.KeyPackage, error) {
	if suite == 0 {
		// Any suite: single-use packages first, then the lowest suite.
		var any int64
		err := tx.QueryRowContext(ctx, `SELECT suite FROM key_packages
			WHERE client = ?1 AND claimed_ms IS NULL AND not_after_ms > ?2
			ORDER BY last_resort, suite LIMIT 1`, client, now).Scan(&any)
		if errors.Is(err, sql.ErrNoRows) {
			return store.KeyPackage{}, fmt.Errorf("client has no KeyPackage: %w", store.ErrNotFound)
		}
		if err != nil {
			return store.KeyPackage{}, err
		}
		suite = uint16(any)
	}
	kp := store.KeyPackage{Client: client, Suite: suite}
	var notAfter int64
	err := tx.StmtContext(ctx, s.ks.claim).QueryRowContext(ctx, client, int64(suite), now,
		now+store.ClaimedKeyPackageRetention.Milliseconds()).Scan(&kp.Ref, &kp.KeyPackage, &notAfter)
	if errors.Is(err, sql.ErrNoRows) {
		kp.LastResort = true
		err = tx.StmtContext(ctx, s.ks.lastResort).QueryRowContext(ctx, client, int64(suite), now).
			Scan(&kp.Ref, &kp.KeyPackage, &notAfter)
		if errors.Is(err, sql.ErrNoRows) {
			return store.KeyPackage{}, fmt.Errorf("client has no KeyPackage for suite %d: %w", suite, store.ErrNotFound)
		}
	}
	if err != nil {
		return store.KeyPackage{}, err
	}
	kp.NotAfter = check.Time(notAfter)
	return kp, nil
}

// claimUsableTx is claimTx handing out only a package usable accepts (nil:
// any), as store.KeyPackageClaim.Usable says: a single-use package it
// refuses stays claimed, and the next is taken; a last-resort one it
// refuses leaves the client without a package (marked handed out by
// kpLastResortSQL all the same, which only keeps its ref until its
// NotAfter once it is replaced). Each turn consumes a package, so the
// loop ends.
func (s *Store) claimUsableTx(ctx context.Context, tx *sql.Tx, client string, suite uint16, now int64, usable func(store.KeyPackage) bool) (store.KeyPackage, error) {
	for {
		kp, err := s.claimTx(ctx, tx, client, suite, now)
		if err != nil || usable == nil || usable(kp) {
			return kp, err
		}
		if kp.LastResort {
			return store.KeyPackage{}, fmt.Errorf("the client's last-resort KeyPackage is not usable: %w", store.ErrNotFound)
		}
	}
}

// ClaimKeyPackagesByPrefix implements store.KeyPackages: the clients with
// an available package are found and each claims one, in one op.
func (s *Store) ClaimKeyPackagesByPrefix(ctx context.Context, clientPrefix string, suite uint16) ([]store.KeyPackage, error) {
	const doing = "claiming KeyPackages by prefix"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.ClientURI("client prefix", clientPrefix); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	var kps []store.KeyPackage
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		kps, err = s.claimPrefixTx(ctx, tx, clientPrefix, suite, check.Millis(s.now()), nil)
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
func (s *Store) claimPrefixTx(ctx context.Context, tx *sql.Tx, clientPrefix string, suite uint16, now int64,
	usable func(store.KeyPackage) bool) ([]store.KeyPackage, error) {
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT client FROM key_packages
		WHERE client >= ?1 AND client < ?2 AND (?3 = 0 OR suite = ?3) AND claimed_ms IS NULL AND not_after_ms > ?4
		ORDER BY client LIMIT ?5`, clientPrefix, check.PrefixEnd(clientPrefix), int64(suite), now, store.MaxClaimClients)
	if err != nil {
		return nil, err
	}
	var clients []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			rows.Close()
			return nil, err
		}
		clients = append(clients, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	kps := make([]store.KeyPackage, 0, len(clients))
	for _, c := range clients {
		kp, err := s.claimUsableTx(ctx, tx, c, suite, now, usable)
		if errors.Is(err, store.ErrNotFound) {
			continue // none of its packages was usable
		}
		if err != nil {
			return nil, err
		}
		kps = append(kps, kp)
	}
	return kps, nil
}

// ClaimKeyPackages implements store.KeyPackages: the claims, with the
// checks of c.Usable, and the replay record are one op.
func (s *Store) ClaimKeyPackages(ctx context.Context, c store.KeyPackageClaim) ([]store.KeyPackage, error) {
	const doing = "claiming KeyPackages"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if err := check.KeyPackageClaim(c); err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	// Copied now: the op may run after the caller changed its slice.
	clients := slices.Clone(c.Clients)
	var kps []store.KeyPackage
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := check.Millis(s.now())
		var err error
		if c.Prefix != "" {
			kps, err = s.claimPrefixTx(ctx, tx, c.Prefix, c.Suite, now, c.Usable)
		} else {
			kps = make([]store.KeyPackage, len(clients))
			for i, client := range clients {
				kps[i], err = s.claimUsableTx(ctx, tx, client, c.Suite, now, c.Usable)
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
		return s.recordReplayTx(ctx, tx, newReplayRow(r), now)
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
	rows, err := s.ks.list.QueryContext(ctx, client, check.Millis(s.now()))
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	kps := []store.KeyPackage{}
	for rows.Next() {
		kp := store.KeyPackage{Client: client}
		var suite, notAfter int64
		if err := rows.Scan(&kp.Ref, &suite, &kp.KeyPackage, &notAfter, &kp.LastResort); err != nil {
			return nil, s.fail(doing, err)
		}
		kp.Suite = uint16(suite)
		kp.NotAfter = check.Time(notAfter)
		kps = append(kps, kp)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
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
	kp, err := getKeyPackage(ctx, s.ks.getR, ref, check.Millis(s.now()))
	if err != nil {
		return store.KeyPackage{}, s.fail(doing, err)
	}
	return kp, nil
}
