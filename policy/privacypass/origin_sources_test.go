package privacypass_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// challengeFrom mints challenges for a client at source and returns the one
// of type typ.
func challengeFrom(t testing.TB, o *privacypass.Origin, source netip.Addr, typ privacypass.TokenType) privacypass.Challenge {
	t.Helper()
	cs, err := o.ChallengesFor(t.Context(), source)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.TokenType() == typ {
			return c
		}
	}
	t.Fatalf("no challenge of type %s", typ)
	return privacypass.Challenge{}
}

// TestOriginRandomContextFloodFromOthers checks that clients requesting
// challenges in bulk (many 401s) cannot evict the outstanding challenges of
// honest clients at other sources: eviction pressure lands on the sources
// that hold the most challenges.
func TestOriginRandomContextFloodFromOthers(t *testing.T) {
	k2, _, _ := testKeys(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		attackers int
		each      int
	}{
		{"one source", 1, 2000},
		{"one IPv6 /64, many addresses", 1, 2000},
		{"many sources", 200, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, MaxChallenges: 256, MaxChallengesPerSource: 16})
			var honest []privacypass.Challenge
			for i := 0; i < 40; i++ {
				src := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
				honest = append(honest, challengeFrom(t, o, src, privacypass.TypeBlindRSA))
			}
			for i := 0; i < tc.each; i++ {
				for a := 0; a < tc.attackers; a++ {
					src := netip.AddrFrom4([4]byte{198, 51, byte(a >> 8), byte(a)})
					if tc.name == "one IPv6 /64, many addresses" {
						src = netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%x", i+1))
					}
					if _, err := o.ChallengesFor(t.Context(), src); err != nil {
						t.Fatal(err)
					}
				}
			}
			for i, c := range honest {
				if _, err := o.RedeemToken(ctx, mint(t, k2, c.TokenChallenge)); err != nil {
					t.Fatalf("honest client %d lost its challenge: %v", i, err)
				}
			}
		})
	}
	t.Run("own oldest first", func(t *testing.T) {
		o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, MaxChallenges: 256, MaxChallengesPerSource: 4})
		src := netip.MustParseAddr("203.0.113.5")
		var cs []privacypass.Challenge
		for i := 0; i < 10; i++ {
			cs = append(cs, challengeFrom(t, o, src, privacypass.TypeBlindRSA))
		}
		for i, c := range cs {
			_, err := o.RedeemToken(ctx, mint(t, k2, c.TokenChallenge))
			if i < 6 {
				wantReason(t, err, privacypass.ReasonChallengeDigest)
			} else if err != nil {
				t.Fatalf("challenge %d (among the source's newest 4): %v", i, err)
			}
		}
	})
}
