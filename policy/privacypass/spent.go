package privacypass

import (
	"context"
	"crypto/sha256"
	"time"
)

// SpentStore records redeemed tokens so that none is redeemed twice (RFC 9577
// §2.2.2, RFC 9576 §7.1). Implementations: an SQLite table for one node, a
// PostgreSQL table for a cluster, both keyed by the 32-byte key with
// INSERT ... ON CONFLICT DO NOTHING, where zero affected rows means a double
// spend, and pruned by expiry. Package spenttest checks the contract.
//
// Contract:
//   - MarkSpent atomically inserts key if it is absent and reports
//     firstUse = true, or reports firstUse = false if key is present with an
//     expiry that has not passed. Concurrent calls with the same key return
//     true to at most one caller.
//   - A recorded key is kept at least until expires; it may be forgotten
//     after. If the record of key has expired, MarkSpent may treat key as
//     absent again.
//   - key is SpentKeySize bytes; the store must not keep a reference to it.
//   - On any error the caller treats the token as not redeemed; the store
//     must not report firstUse = true unless the record is durable to the
//     degree the store promises (e.g. committed for SQL).
//   - MarkSpent honours ctx cancellation where it blocks.
type SpentStore interface {
	MarkSpent(ctx context.Context, key []byte, expires time.Time) (firstUse bool, err error)
}

// SpentKeySize is the size of the keys Origin passes to a SpentStore.
const SpentKeySize = sha256.Size

// spentKeyLabel separates this use of SHA-256 from any other.
const spentKeyLabel = "caddy-mimi privacypass spent token v1\x00"

// SpentKey returns the double-spend key of a token:
//
//	SHA-256("caddy-mimi privacypass spent token v1" || 0x00 || token_type (2 bytes) || token_key_id (32) || nonce (32))
//
// It scopes spending to (token_key_id, nonce), as RFC 9577 §2.2.2 and the
// project's store design ask: a nonce is spent once per issuer key whatever
// challenge it answered. The challenge digest is deliberately left out, which
// makes the check strictly stronger: replaying the same token is refused, and
// so is a second token that reuses a nonce for another challenge (an honest
// client never reuses a nonce: it is 32 random bytes). Changing this
// definition invalidates every stored record, so it is versioned by the label.
func SpentKey(t *Token) [SpentKeySize]byte {
	h := sha256.New()
	h.Write([]byte(spentKeyLabel))
	h.Write([]byte{byte(t.TokenType >> 8), byte(t.TokenType)})
	h.Write(t.TokenKeyID[:])
	h.Write(t.Nonce[:])
	var out [SpentKeySize]byte
	h.Sum(out[:0])
	return out
}
