package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// sweepBatch is how many rows one DELETE of DeleteExpired removes. Each
// DELETE is one op of the writer, queued behind the writes already waiting,
// so a sweep adds at most one DELETE of this size to a batch and hot writes
// wait for at most one of them.
const sweepBatch = 500

// sweeps are the DELETE statements of DeleteExpired for the tables with an
// index on their expiry (the others are swept by scans: see scansweep.go),
// one batch each, keyed
// on the primary key so that they work on WITHOUT ROWID tables (and, as
// written, on PostgreSQL). ?1 is now, ?2 the batch size.
var sweeps = []struct{ table, sql string }{
	{"peer_keys", `DELETE FROM peer_keys WHERE (domain, key_id) IN
		(SELECT domain, key_id FROM peer_keys WHERE cache_until_ms <= ?1 LIMIT ?2)`},
	{"peer_key_failures", `DELETE FROM peer_key_failures WHERE domain IN
		(SELECT domain FROM peer_key_failures WHERE retry_ms <= ?1 LIMIT ?2)`},
	{"mls_group_welcomes", `DELETE FROM mls_group_welcomes WHERE (gid, epoch) IN
		(SELECT gid, epoch FROM mls_group_welcomes WHERE expires_ms <= ?1 LIMIT ?2)`},
	// Old tree versions that no Welcome tree left needs: those replaced
	// at or before the group's oldest Welcome epoch, all without one
	// (see CommitEpoch). ?1 is unused: every version kept was needed by
	// a Welcome tree, whose expiry the previous sweep applied.
	{"mls_group_node_history", `DELETE FROM mls_group_node_history WHERE (gid, node_index, from_epoch) IN
		(SELECT h.gid, h.node_index, h.from_epoch FROM mls_group_node_history h
		WHERE h.to_epoch <= COALESCE((SELECT MIN(w.epoch) FROM mls_group_welcomes w WHERE w.gid = h.gid), h.to_epoch)
		AND ?1 IS NOT NULL LIMIT ?2)`},
	{"key_packages", `DELETE FROM key_packages WHERE ref IN
		(SELECT ref FROM key_packages WHERE expires_ms <= ?1 LIMIT ?2)`},
	// The bytes (and client) of the claimed packages past their
	// retention: the ref and NotAfter stay, so that publishing one again
	// is refused until its NotAfter.
	{"key_packages", `UPDATE key_packages SET key_package = x'', client = '', retained_ms = NULL WHERE ref IN
		(SELECT ref FROM key_packages WHERE retained_ms <= ?1 LIMIT ?2)`},
}

// DeleteExpired implements store.Sweeper.
func (s *Store) DeleteExpired(ctx context.Context, now time.Time) (int64, error) {
	const doing = "deleting expired records"
	if err := s.checkOpen(doing); err != nil {
		return 0, err
	}
	ms := check.Millis(now)
	var total int64
	for _, sw := range sweeps {
		for {
			if err := ctx.Err(); err != nil {
				return total, s.fail(doing, err)
			}
			var n int64
			err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
				res, err := tx.ExecContext(ctx, sw.sql, ms, sweepBatch)
				if err != nil {
					return err
				}
				n, err = res.RowsAffected()
				return err
			})
			if err != nil {
				return total, s.fail(fmt.Sprintf("%s from %s", doing, sw.table), err)
			}
			total += n
			if n < sweepBatch {
				break
			}
		}
	}
	for i := range scanSweeps {
		sw := &scanSweeps[i]
		n, err := s.sweepByScan(ctx, sw, ms)
		total += n
		if err != nil {
			return total, s.fail(fmt.Sprintf("%s from %s", doing, sw.table), err)
		}
	}
	n, err := s.sweepGroupLog(ctx, ms)
	total += n
	if err != nil {
		return total, s.fail(doing+" from group_log", err)
	}
	return total, nil
}
