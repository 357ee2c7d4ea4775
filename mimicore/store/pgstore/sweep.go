package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// sweepBatch is how many rows one DELETE of DeleteExpired removes: each
// DELETE is a transaction of its own, so no sweep holds locks long.
const sweepBatch = 500

// sweeps are the DELETE statements of DeleteExpired, one batch each, keyed
// on the primary key. $1 is now, $2 the batch size. SKIP LOCKED leaves the
// rows a write holds to the next sweep.
var sweeps = []struct{ table, sql string }{
	{"replay_requests", `DELETE FROM replay_requests WHERE (sender, request_id) IN
		(SELECT sender, request_id FROM replay_requests WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`},
	{"seen_signatures", `DELETE FROM seen_signatures WHERE digest IN
		(SELECT digest FROM seen_signatures WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`},
	{"spent_tokens", `DELETE FROM spent_tokens WHERE key IN
		(SELECT key FROM spent_tokens WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`},
	{"peer_keys", `DELETE FROM peer_keys WHERE (domain, key_id) IN
		(SELECT domain, key_id FROM peer_keys WHERE cache_until_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`},
	{"peer_key_failures", `DELETE FROM peer_key_failures WHERE domain IN
		(SELECT domain FROM peer_key_failures WHERE retry_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`},
	{"mls_group_welcomes", `DELETE FROM mls_group_welcomes WHERE (gid, epoch) IN
		(SELECT gid, epoch FROM mls_group_welcomes WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`},
	// Old tree versions that no Welcome tree left needs: those replaced
	// at or before the group's oldest Welcome epoch, all without one
	// (see CommitEpoch). $1 is unused: every version kept was needed by
	// a Welcome tree, whose expiry the previous sweep applied.
	{"mls_group_node_history", `DELETE FROM mls_group_node_history WHERE (gid, node_index, from_epoch) IN
		(SELECT h.gid, h.node_index, h.from_epoch FROM mls_group_node_history h
		WHERE h.to_epoch <= COALESCE((SELECT MIN(w.epoch) FROM mls_group_welcomes w WHERE w.gid = h.gid), h.to_epoch)
		AND $1::bigint IS NOT NULL LIMIT $2 FOR UPDATE SKIP LOCKED)`},
	{"key_packages", `DELETE FROM key_packages WHERE ref IN
		(SELECT ref FROM key_packages WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`},
	// The bytes (and client) of the claimed packages past their
	// retention: the ref and NotAfter stay, so that publishing one again
	// is refused until its NotAfter.
	{"key_packages", `UPDATE key_packages SET key_package = ''::bytea, client = '', retained_ms = NULL WHERE ref IN
		(SELECT ref FROM key_packages WHERE retained_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`},
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
			tag, err := s.pool.Exec(ctx, sw.sql, ms, sweepBatch)
			if err != nil {
				return total, s.fail(fmt.Sprintf("%s from %s", doing, sw.table), err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < sweepBatch {
				break
			}
		}
	}
	n, err := s.sweepQueues(ctx, ms)
	total += n
	if err != nil {
		return total, s.fail(doing+" from the queues", err)
	}
	return total, nil
}
