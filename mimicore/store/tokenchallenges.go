package store

import (
	"context"
	"time"
)

// TokenChallenge is a Privacy Pass challenge (RFC 9577 TokenChallenge)
// that an origin minted with a random redemption context, remembered by its
// digest so that a token answering it can be redeemed later, on any gateway
// sharing the store.
type TokenChallenge struct {
	// Digest is the key of the challenge, TokenChallengeDigestSize bytes:
	// privacypass.Origin stores a hash of the challenge's digest (what a
	// token carries as challenge_digest) scoped to its issuer name and
	// origin_info, so that origins of one store keep disjoint keys.
	Digest []byte
	// TokenType is the challenge's token_type.
	TokenType uint16
	// Expires is when the origin stops accepting tokens answering it.
	Expires time.Time
}

// TokenChallengeDigestSize is the size of TokenChallenge.Digest.
const TokenChallengeDigestSize = 32

// MaxTokenChallenges bounds how many challenges one AddTokenChallenges call
// records: an origin records one per token type it accepts, a handful.
const MaxTokenChallenges = 16

// TokenChallenges remembers the Privacy Pass challenges minted with random
// redemption contexts (privacypass.ContextRandom), so that on several
// gateways sharing one database a client may take a challenge from one
// gateway and redeem its token on another. It holds digests only, never
// tokens. Double spending is prevented by SpentNonces, not here: a
// challenge stays acceptable until it expires, however many tokens answer
// it (each is spent once).
type TokenChallenges interface {
	// AddTokenChallenges records cs, all or none: each Digest
	// TokenChallengeDigestSize bytes and at most MaxTokenChallenges of
	// them, else ErrInvalid. A digest already recorded and alive keeps its
	// first record (a random context of 32 bytes repeats only by
	// accident); an expired one is replaced. It may delete expired
	// challenges on the way.
	AddTokenChallenges(ctx context.Context, cs []TokenChallenge) error

	// LookupTokenChallenge returns the challenge with digest whose Expires
	// is after the store's clock, or ErrNotFound.
	LookupTokenChallenge(ctx context.Context, digest []byte) (TokenChallenge, error)
}
