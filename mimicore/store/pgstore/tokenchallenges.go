package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// AddTokenChallenges implements store.TokenChallenges in one round trip:
// a batch that deletes the expired challenges (through the expiry index),
// then inserts cs.
func (s *Store) AddTokenChallenges(ctx context.Context, cs []store.TokenChallenge) error {
	const doing = "recording token challenges"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.TokenChallenges(cs); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	if len(cs) == 0 {
		return nil
	}
	digests := make([][]byte, len(cs))
	types := make([]int32, len(cs))
	exps := make([]int64, len(cs))
	for i, c := range cs {
		digests[i], types[i], exps[i] = c.Digest, int32(c.TokenType), check.ExpiryMillis(c.Expires)
	}
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM token_challenges WHERE expires_ms <= $1`, s.nowMs())
	b.Queue(`INSERT INTO token_challenges AS t (digest, token_type, expires_ms)
		SELECT * FROM unnest($1::bytea[], $2::integer[], $3::bigint[])
		ON CONFLICT (digest) DO UPDATE SET token_type = excluded.token_type, expires_ms = excluded.expires_ms
		WHERE t.expires_ms <= $4`, digests, types, exps, s.nowMs())
	err := s.pool.SendBatch(ctx, b).Close()
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// LookupTokenChallenge implements store.TokenChallenges.
func (s *Store) LookupTokenChallenge(ctx context.Context, digest []byte) (store.TokenChallenge, error) {
	const doing = "looking up token challenge"
	if err := s.checkOpen(doing); err != nil {
		return store.TokenChallenge{}, err
	}
	if err := check.TokenChallengeDigest(digest); err != nil {
		return store.TokenChallenge{}, fmt.Errorf("%s: %w", doing, err)
	}
	var typ int32
	var exp int64
	err := s.pool.QueryRow(ctx, `SELECT token_type, expires_ms FROM token_challenges WHERE digest = $1 AND expires_ms > $2`,
		digest, s.nowMs()).Scan(&typ, &exp)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.TokenChallenge{}, fmt.Errorf("%s: %w", doing, store.ErrNotFound)
	}
	if err != nil {
		return store.TokenChallenge{}, s.fail(doing, err)
	}
	return store.TokenChallenge{Digest: append([]byte(nil), digest...), TokenType: uint16(typ), Expires: check.Time(exp)}, nil
}

// Interface guard.
var _ store.TokenChallenges = (*Store)(nil)
