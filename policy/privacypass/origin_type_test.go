package privacypass_test

import (
	"context"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// TestOriginRandomContextChecksType checks that in random mode a token is
// accepted only for a challenge of its own token type: a type 2 token
// carrying the digest of the type 1 challenge minted with it is refused at
// the digest check.
func TestOriginRandomContextChecksType(t *testing.T) {
	k2, k1, _ := testKeys(t)
	ctx := context.Background()
	for _, mode := range []privacypass.ContextMode{privacypass.ContextRandom, privacypass.ContextWindow} {
		t.Run(mode.String(), func(t *testing.T) {
			o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2, k1}, Mode: mode})
			cs, err := o.Challenges()
			if err != nil {
				t.Fatal(err)
			}
			var rsa, voprf []byte
			for _, c := range cs {
				switch c.TokenType() {
				case privacypass.TypeBlindRSA:
					rsa = c.TokenChallenge
				case privacypass.TypeVOPRF:
					voprf = c.TokenChallenge
				}
			}
			tok := mint(t, k2, rsa)
			tok.ChallengeDigest = privacypass.ChallengeDigest(voprf)
			_, err = o.RedeemToken(ctx, tok)
			wantReason(t, err, privacypass.ReasonChallengeDigest)
		})
	}
}
