package privacypass

import (
	"crypto/subtle"
	"sync"
)

// Verifier checks tokens against a fixed set of issuer keys: it looks the key
// up by the token's full token_key_id, checks the challenge digest and
// verifies the authenticator. It does not track spent tokens; Origin adds
// challenge management and double-spend prevention on top of it. A Verifier
// is safe for concurrent use.
type Verifier struct {
	keys map[[KeyIDSize]byte]*Key
}

// NewVerifier builds a Verifier. Type 0x0001 keys must carry the issuer
// private key (the type is only privately verifiable); type 0x0002 keys need
// only the public token key. Two keys with the same token_key_id are refused.
func NewVerifier(keys ...*Key) (*Verifier, error) {
	v := &Verifier{keys: make(map[[KeyIDSize]byte]*Key, len(keys))}
	for i, k := range keys {
		if k == nil {
			return nil, newError(ReasonInvalidConfig, "key %d is nil", i)
		}
		if k.typ == TypeVOPRF && k.oprfSK == nil {
			return nil, newError(ReasonInvalidConfig, "key %d: token type 0x0001 needs the issuer private key to verify", i)
		}
		if _, dup := v.keys[k.id]; dup {
			return nil, newError(ReasonInvalidConfig, "key %d: duplicate token key id", i)
		}
		v.keys[k.id] = k
	}
	return v, nil
}

// Key returns the key with the given token_key_id.
func (v *Verifier) Key(id [KeyIDSize]byte) (*Key, bool) {
	k, ok := v.keys[id]
	return k, ok
}

// lookup finds the token's key by its full id; the key's type must match
// the token's.
func (v *Verifier) lookup(t *Token) (*Key, error) {
	k, ok := v.keys[t.TokenKeyID]
	if !ok || k.typ != t.TokenType {
		return nil, newError(ReasonUnknownKey, "no %s key with the token's key id", t.TokenType)
	}
	return k, nil
}

var inputPool = sync.Pool{New: func() any { b := make([]byte, 0, AuthenticatorInputSize); return &b }}

func (v *Verifier) verifyWithKey(t *Token, k *Key) error {
	bp := inputPool.Get().(*[]byte)
	defer inputPool.Put(bp)
	return k.verifyAuthenticator(t, *bp)
}

// Verify checks that t answers the encoded challenge and verifies under one
// of the Verifier's keys, returning that key. The checks run in this order
// and the error's Reason names the first that failed: ReasonUnknownKey,
// ReasonChallengeDigest, ReasonAuthenticator.
func (v *Verifier) Verify(t *Token, challenge []byte) (*Key, error) {
	if t == nil {
		return nil, newError(ReasonMalformed, "verifying token: nil token")
	}
	k, err := v.lookup(t)
	if err != nil {
		return nil, err
	}
	d := ChallengeDigest(challenge)
	if subtle.ConstantTimeCompare(d[:], t.ChallengeDigest[:]) != 1 {
		return nil, newError(ReasonChallengeDigest, "token does not answer the given challenge")
	}
	if err := v.verifyWithKey(t, k); err != nil {
		return nil, err
	}
	return k, nil
}
