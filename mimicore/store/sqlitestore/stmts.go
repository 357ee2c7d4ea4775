package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
)

// writeStmts are prepared on the writer connection. Parameters are
// numbered (?N) so that the PostgreSQL port only swaps ?N for $N.
type writeStmts struct {
	replayInsert   *sql.Stmt
	replayGet      *sql.Stmt
	replayComplete *sql.Stmt
	replayRelease  *sql.Stmt
	replayRecord   *sql.Stmt
	replayFind     *sql.Stmt
	seenInsert     *sql.Stmt
	spentInsert    *sql.Stmt
}

// readStmts are prepared on the read-only pool.
type readStmts struct {
	replayFind  *sql.Stmt
	peerKey     *sql.Stmt
	peerKeys    *sql.Stmt
	peerFailure *sql.Stmt
	signingKeys *sql.Stmt
}

const (
	// replayInsertSQL claims a key, replacing an expired entry; zero rows
	// changed means an alive entry exists. ?5 is now.
	replayInsertSQL = `INSERT INTO replay_requests (sender, request_id, digest, expires_ms, body)
		VALUES (?1, ?2, ?3, ?4, NULL)
		ON CONFLICT (sender, request_id) DO UPDATE
		SET digest = excluded.digest, expires_ms = excluded.expires_ms, body = NULL
		WHERE replay_requests.expires_ms <= ?5`
	replayGetSQL = `SELECT digest, expires_ms, body IS NULL, body FROM replay_requests
		WHERE sender = ?1 AND request_id = ?2`
	replayCompleteSQL = `UPDATE replay_requests SET body = ?4
		WHERE sender = ?1 AND request_id = ?2 AND digest = ?3 AND body IS NULL AND expires_ms > ?5`
	replayReleaseSQL = `DELETE FROM replay_requests
		WHERE sender = ?1 AND request_id = ?2 AND digest = ?3 AND body IS NULL AND expires_ms > ?4`
	// seenInsertSQL and spentInsertSQL record a key, replacing an expired
	// record; zero rows changed means an alive record exists. ?3 is now.
	// An expired signature replaced loses its answer.
	seenInsertSQL = `INSERT INTO seen_signatures (digest, expires_ms) VALUES (?1, ?2)
		ON CONFLICT (digest) DO UPDATE SET expires_ms = excluded.expires_ms, answer = NULL
		WHERE seen_signatures.expires_ms <= ?3`
	spentInsertSQL = `INSERT INTO spent_tokens (key, expires_ms) VALUES (?1, ?2)
		ON CONFLICT (key) DO UPDATE SET expires_ms = excluded.expires_ms
		WHERE spent_tokens.expires_ms <= ?3`

	peerKeyColumns = `domain, key_id, scheme, public_key, not_before_ms, not_after_ms, fetched_ms, cache_until_ms`
	peerKeySQL     = `SELECT ` + peerKeyColumns + ` FROM peer_keys
		WHERE domain = ?1 AND key_id = ?2 AND cache_until_ms > ?3`
	peerKeysSQL = `SELECT ` + peerKeyColumns + ` FROM peer_keys
		WHERE domain = ?1 AND cache_until_ms > ?2 ORDER BY not_before_ms, key_id`
	peerFailureSQL = `SELECT domain, failed_ms, retry_ms, reason FROM peer_key_failures
		WHERE domain = ?1 AND retry_ms > ?2`
	// signingKeyColumns are signing_keys' columns, sealed (the private
	// key of a key kept in the store) since version 11.
	signingKeyColumns = `key_id, scheme, public_key, not_before_ms, not_after_ms, retired_ms, file_name, sealed`
	signingKeysSQL    = `SELECT ` + signingKeyColumns + ` FROM signing_keys ORDER BY not_before_ms, key_id`
)

// prepare prepares the hot-path statements.
func (s *Store) prepare(ctx context.Context) error {
	for _, p := range []struct {
		db  *sql.DB
		dst **sql.Stmt
		sql string
	}{
		{s.w, &s.ws.replayInsert, replayInsertSQL},
		{s.w, &s.ws.replayGet, replayGetSQL},
		{s.w, &s.ws.replayComplete, replayCompleteSQL},
		{s.w, &s.ws.replayRelease, replayReleaseSQL},
		{s.w, &s.ws.replayRecord, replayRecordSQL},
		{s.w, &s.ws.replayFind, replayFindSQL},
		{s.r, &s.rs.replayFind, replayFindSQL},
		{s.w, &s.ws.seenInsert, seenInsertSQL},
		{s.w, &s.ws.spentInsert, spentInsertSQL},
		{s.r, &s.rs.peerKey, peerKeySQL},
		{s.r, &s.rs.peerKeys, peerKeysSQL},
		{s.r, &s.rs.peerFailure, peerFailureSQL},
		{s.r, &s.rs.signingKeys, signingKeysSQL},
	} {
		st, err := p.db.PrepareContext(ctx, p.sql)
		if err != nil {
			return fmt.Errorf("preparing statement: %w", err)
		}
		*p.dst = st
	}
	return nil
}

// allStmts lists the prepared statements, some nil if prepare failed.
func (s *Store) allStmts() []*sql.Stmt {
	return []*sql.Stmt{
		s.ws.replayInsert, s.ws.replayGet, s.ws.replayComplete, s.ws.replayRelease,
		s.ws.replayRecord, s.ws.replayFind, s.rs.replayFind,
		s.ws.seenInsert, s.ws.spentInsert,
		s.rs.peerKey, s.rs.peerKeys, s.rs.peerFailure, s.rs.signingKeys,
	}
}
