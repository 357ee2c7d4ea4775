package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// AddTokenChallenges implements store.TokenChallenges: one op of the
// writer that first deletes the expired challenges (through the expiry
// index, so only what expired since the last call), then inserts cs.
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
	now := check.Millis(s.now())
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM token_challenges WHERE expires_ms <= ?1`, now); err != nil {
			return err
		}
		for _, c := range cs {
			if _, err := tx.ExecContext(ctx, `INSERT INTO token_challenges (digest, token_type, expires_ms) VALUES (?1, ?2, ?3)
				ON CONFLICT (digest) DO NOTHING`, c.Digest, int64(c.TokenType), check.ExpiryMillis(c.Expires)); err != nil {
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

// LookupTokenChallenge implements store.TokenChallenges.
func (s *Store) LookupTokenChallenge(ctx context.Context, digest []byte) (store.TokenChallenge, error) {
	const doing = "looking up token challenge"
	if err := s.checkOpen(doing); err != nil {
		return store.TokenChallenge{}, err
	}
	if err := check.TokenChallengeDigest(digest); err != nil {
		return store.TokenChallenge{}, fmt.Errorf("%s: %w", doing, err)
	}
	var typ, exp int64
	err := s.r.QueryRowContext(ctx, `SELECT token_type, expires_ms FROM token_challenges WHERE digest = ?1 AND expires_ms > ?2`,
		digest, check.Millis(s.now())).Scan(&typ, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return store.TokenChallenge{}, fmt.Errorf("%s: %w", doing, store.ErrNotFound)
	}
	if err != nil {
		return store.TokenChallenge{}, s.fail(doing, err)
	}
	return store.TokenChallenge{Digest: append([]byte(nil), digest...), TokenType: uint16(typ), Expires: check.Time(exp)}, nil
}

// Interface guard.
var _ store.TokenChallenges = (*Store)(nil)
