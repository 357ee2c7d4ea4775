package privacypass_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// brokenChallenges is a TokenChallenges whose every call fails, as a store
// that lost its database does.
type brokenChallenges struct{}

func (brokenChallenges) AddTokenChallenges(context.Context, []store.TokenChallenge) error {
	return errors.New("database unreachable")
}

func (brokenChallenges) LookupTokenChallenge(context.Context, []byte) (store.TokenChallenge, error) {
	return store.TokenChallenge{}, errors.New("database unreachable")
}

// TestOriginSharedChallenges has two origins (two gateways) keep their
// random-context challenges and spent tokens in one store, a real SQLite
// file: a challenge minted by one is accepted by the other until its
// lifetime ends, and a token is redeemed once across both. A failing challenge store fails minting and
// redemption with ReasonStoreUnavailable, never a refusal of the token.
func TestOriginSharedChallenges(t *testing.T) {
	k2, k1, _ := testKeys(t)
	ctx := context.Background()
	clock := &fakeClock{t: time.Now().Truncate(time.Second)}
	st, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "mimi.db"), sqlitestore.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := privacypass.OriginConfig{Keys: []*privacypass.Key{k2, k1}, Lifetime: time.Minute, Now: clock.Now,
		Spent: st, Challenges: st}
	a, b := newOrigin(t, cfg), newOrigin(t, cfg)

	c := challengeFor(t, a, privacypass.TypeBlindRSA)
	c1 := challengeFor(t, a, privacypass.TypeVOPRF)
	t1, t2, late := mint(t, k2, c.TokenChallenge), mint(t, k2, c.TokenChallenge), mint(t, k2, c.TokenChallenge)
	for _, step := range []struct {
		name  string
		o     *privacypass.Origin
		tok   *privacypass.Token
		after time.Duration
		want  privacypass.Reason
	}{
		{"minted on a, redeemed on b", b, t1, 0, ""},
		{"replayed on b", b, t1, 0, privacypass.ReasonReplay},
		{"replayed on a", a, t1, 0, privacypass.ReasonReplay},
		{"another token for the challenge, on a", a, t2, 0, ""},
		{"type 1 minted on a, redeemed on b", b, mint(t, k1, c1.TokenChallenge), 0, ""},
		{"after the lifetime", b, late, time.Minute, privacypass.ReasonChallengeDigest},
	} {
		t.Run(step.name, func(t *testing.T) {
			clock.Add(step.after)
			_, err := step.o.RedeemToken(ctx, step.tok)
			if step.want == "" {
				if err != nil {
					t.Fatalf("RedeemToken: %v", err)
				}
				return
			}
			wantReason(t, err, step.want)
		})
	}

	t.Run("failing store", func(t *testing.T) {
		broken := cfg
		broken.Challenges = brokenChallenges{}
		o := newOrigin(t, broken)
		_, err := o.WWWAuthenticate()
		wantReason(t, err, privacypass.ReasonStoreUnavailable)
		_, err = o.RedeemToken(ctx, mint(t, k2, challengeFor(t, a, privacypass.TypeBlindRSA).TokenChallenge))
		wantReason(t, err, privacypass.ReasonStoreUnavailable)
	})
}

// TestOriginRekeyed checks that an origin rebuilt with other keys (after
// an issuer directory refresh) accepts the challenges the old one sent, in
// both context modes (window with a generated secret), and refuses tokens
// under a key it no longer has.
func TestOriginRekeyed(t *testing.T) {
	k2, _, k2b := testKeys(t)
	ctx := context.Background()
	for _, mode := range []privacypass.ContextMode{privacypass.ContextRandom, privacypass.ContextWindow} {
		t.Run(mode.String(), func(t *testing.T) {
			o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, Mode: mode})
			c := challengeFor(t, o, privacypass.TypeBlindRSA)
			n, err := o.Rekeyed([]*privacypass.Key{k2b})
			if err != nil {
				t.Fatalf("Rekeyed: %v", err)
			}
			if _, err := n.RedeemToken(ctx, mint(t, k2b, c.TokenChallenge)); err != nil {
				t.Fatalf("token under the new key for the old origin's challenge: %v", err)
			}
			_, err = n.RedeemToken(ctx, mint(t, k2, c.TokenChallenge))
			wantReason(t, err, privacypass.ReasonUnknownKey)
		})
	}
}

// TestOriginSharedChallengesScoped has two origins of other names (two
// sites of one data_dir, for two ds_domains) keep their random-context
// challenges in one store, a real SQLite file or a real PostgreSQL
// database, and trust one issuer: a token answering a challenge of one is
// refused by the other, whose challenges bind tokens to another
// origin_info (RFC 9577 §2.1.1), while each accepts its own.
func TestOriginSharedChallengesScoped(t *testing.T) {
	k2, _, _ := testKeys(t)
	ctx := context.Background()
	for _, backend := range []struct {
		name string
		open func(t *testing.T) sharedStore
	}{
		{"sqlite", func(t *testing.T) sharedStore {
			st, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "mimi.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}},
		{"postgres", func(t *testing.T) sharedStore {
			st, err := pgstore.Open(ctx, pgtest.NewDB(t), pgstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}},
	} {
		t.Run(backend.name, func(t *testing.T) {
			st := backend.open(t)
			cfg := privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, Spent: st, Challenges: st}
			cfgA, cfgB, cfgC := cfg, cfg, cfg
			cfgA.OriginInfo = []string{"ds.a.example"}
			cfgB.OriginInfo = []string{"ds.b.example"}
			cfgC.OriginInfo, cfgC.IssuerName = []string{"ds.a.example"}, "other-issuer.example"
			a, b, c := newOrigin(t, cfgA), newOrigin(t, cfgB), newOrigin(t, cfgC)
			a2 := newOrigin(t, cfgA) // another gateway of site a
			for _, tc := range []struct {
				name       string
				minted, at *privacypass.Origin
				want       privacypass.Reason
			}{
				{"challenge of a redeemed on b (other origin_info)", a, b, privacypass.ReasonChallengeDigest},
				{"challenge of b redeemed on a", b, a, privacypass.ReasonChallengeDigest},
				{"challenge of a redeemed on c (other issuer_name)", a, c, privacypass.ReasonChallengeDigest},
				{"challenge of a redeemed on a", a, a, ""},
				{"challenge of a redeemed on another gateway of a", a, a2, ""},
				{"challenge of b redeemed on b", b, b, ""},
			} {
				t.Run(tc.name, func(t *testing.T) {
					tok := mint(t, k2, challengeFor(t, tc.minted, privacypass.TypeBlindRSA).TokenChallenge)
					_, err := tc.at.RedeemToken(ctx, tok)
					if tc.want == "" {
						if err != nil {
							t.Fatalf("RedeemToken: %v", err)
						}
						return
					}
					wantReason(t, err, tc.want)
				})
			}
		})
	}
}

// sharedStore is a store that keeps both spent tokens and challenges.
type sharedStore interface {
	privacypass.SpentStore
	store.TokenChallenges
}
