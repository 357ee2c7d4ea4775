package privacypass_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

var (
	keysOnce       sync.Once
	keyRSA, keyOPR *privacypass.Key
	keyRSA2        *privacypass.Key
	keysErr        error
)

// testKeys returns issuer keys generated once per test binary run.
func testKeys(t testing.TB) (rsaKey, voprfKey, rsaKey2 *privacypass.Key) {
	t.Helper()
	keysOnce.Do(func() {
		if keyRSA, keysErr = privacypass.GenerateKey(privacypass.TypeBlindRSA); keysErr != nil {
			return
		}
		if keyOPR, keysErr = privacypass.GenerateKey(privacypass.TypeVOPRF); keysErr != nil {
			return
		}
		// A second RSA key whose truncated id differs from the first.
		for {
			if keyRSA2, keysErr = privacypass.GenerateKey(privacypass.TypeBlindRSA); keysErr != nil {
				return
			}
			if keyRSA2.TruncatedID() != keyRSA.TruncatedID() {
				return
			}
		}
	})
	if keysErr != nil {
		t.Fatalf("generating keys: %v", keysErr)
	}
	return keyRSA, keyOPR, keyRSA2
}

// mint runs client and issuer in process and returns a token for challenge.
func mint(t testing.TB, k *privacypass.Key, challenge []byte) *privacypass.Token {
	t.Helper()
	is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	p, err := privacypass.NewTokenRequest(challenge, k.Public())
	if err != nil {
		t.Fatalf("NewTokenRequest: %v", err)
	}
	resp, err := is.Issue(p.Request)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	tok, err := p.Finalize(resp)
	if err != nil {
		t.Fatalf("Finalize: %v", err)
	}
	return tok
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newOrigin(t testing.TB, cfg privacypass.OriginConfig) *privacypass.Origin {
	t.Helper()
	if cfg.IssuerName == "" {
		cfg.IssuerName = "issuer.example"
	}
	if cfg.OriginInfo == nil {
		cfg.OriginInfo = []string{"ds.example"}
	}
	if cfg.Spent == nil {
		cfg.Spent = newMemStore()
	}
	o, err := privacypass.NewOrigin(cfg)
	if err != nil {
		t.Fatalf("NewOrigin: %v", err)
	}
	return o
}

// challengeFor mints challenges at o and returns the one of type typ, as a
// client reads it from the WWW-Authenticate value.
func challengeFor(t testing.TB, o *privacypass.Origin, typ privacypass.TokenType) privacypass.Challenge {
	t.Helper()
	hdr, err := o.WWWAuthenticate()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := privacypass.ParseWWWAuthenticate(hdr)
	if err != nil {
		t.Fatalf("parsing our own header %q: %v", hdr, err)
	}
	for _, c := range cs {
		if c.TokenType() == typ {
			return c
		}
	}
	t.Fatalf("no challenge of type %s in %q", typ, hdr)
	return privacypass.Challenge{}
}

func TestOriginRedeem(t *testing.T) {
	k2, k1, _ := testKeys(t)
	for _, mode := range []privacypass.ContextMode{privacypass.ContextRandom, privacypass.ContextWindow} {
		for _, k := range []*privacypass.Key{k2, k1} {
			t.Run(mode.String()+"/"+k.Type().String(), func(t *testing.T) {
				o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2, k1}, Mode: mode})
				other := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2, k1}, Mode: mode, OriginInfo: []string{"other.example"}})
				ctx := context.Background()

				c := challengeFor(t, o, k.Type())
				if !bytes.Equal(c.TokenKey, k.TokenKey()) {
					t.Fatal("challenge does not advertise the key")
				}
				if c.MaxAge < 300 {
					t.Fatalf("max-age %d, want at least the 5 minute lifetime", c.MaxAge)
				}
				pc, err := privacypass.ParseTokenChallenge(c.TokenChallenge)
				if err != nil {
					t.Fatal(err)
				}
				if pc.IssuerName != "issuer.example" || len(pc.OriginInfo) != 1 || pc.OriginInfo[0] != "ds.example" || len(pc.RedemptionContext) != 32 {
					t.Fatalf("unexpected challenge %+v", pc)
				}
				tok := mint(t, k, c.TokenChallenge)
				auth := privacypass.FormatAuthorization(tok)

				// A modified token is refused and not recorded.
				bad := tok.Marshal()
				bad[len(bad)-1] ^= 0x80
				badTok, err := privacypass.ParseToken(bad)
				if err != nil {
					t.Fatal(err)
				}
				_, err = o.Redeem(ctx, privacypass.FormatAuthorization(badTok))
				wantReason(t, err, privacypass.ReasonAuthenticator)

				// A token for another origin's challenge is refused.
				_, err = o.RedeemToken(ctx, mint(t, k, challengeFor(t, other, k.Type()).TokenChallenge))
				wantReason(t, err, privacypass.ReasonChallengeDigest)

				// The token itself is accepted once...
				r, err := o.Redeem(ctx, auth)
				if err != nil {
					t.Fatalf("Redeem: %v", err)
				}
				if r.Key.ID() != k.ID() || r.Key.HasPrivate() || r.Token.Nonce != tok.Nonce {
					t.Fatal("redemption reports the wrong key or token")
				}
				// ... and refused when replayed, in any header form.
				_, err = o.Redeem(ctx, auth)
				wantReason(t, err, privacypass.ReasonReplay)
				if !errors.Is(err, privacypass.ErrReplay) {
					t.Fatal("errors.Is(err, ErrReplay) is false")
				}
				unquoted := "privatetoken token=" + strings.TrimRight(strings.Split(auth, `"`)[1], "=")
				_, err = o.Redeem(ctx, unquoted)
				wantReason(t, err, privacypass.ReasonReplay)

				// The other origin refuses it: not its challenge.
				_, err = other.RedeemToken(ctx, tok)
				wantReason(t, err, privacypass.ReasonChallengeDigest)
			})
		}
	}
}

func TestOriginRefusals(t *testing.T) {
	k2, k1, k2b := testKeys(t)
	ctx := context.Background()
	o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}})
	c := challengeFor(t, o, privacypass.TypeBlindRSA)

	t.Run("missing", func(t *testing.T) {
		for _, h := range []string{"", "  ", "Bearer abc", "Basic dXNlcjpwYXNz", "PrivateTokens token=abc"} {
			_, err := o.Redeem(ctx, h)
			wantReason(t, err, privacypass.ReasonMissing)
		}
	})
	t.Run("unsupported type", func(t *testing.T) {
		// A type 1 token where only type 2 is configured.
		o1 := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k1}})
		tok := mint(t, k1, challengeFor(t, o1, privacypass.TypeVOPRF).TokenChallenge)
		_, err := o.RedeemToken(ctx, tok)
		wantReason(t, err, privacypass.ReasonUnsupportedType)
	})
	t.Run("unknown key", func(t *testing.T) {
		tok := mint(t, k2b, c.TokenChallenge)
		_, err := o.RedeemToken(ctx, tok)
		wantReason(t, err, privacypass.ReasonUnknownKey)
	})
	t.Run("key rotation", func(t *testing.T) {
		// Both keys accepted; the first is advertised.
		or := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2, k2b}})
		cr := challengeFor(t, or, privacypass.TypeBlindRSA)
		if !bytes.Equal(cr.TokenKey, k2.TokenKey()) {
			t.Fatal("first key not advertised")
		}
		for _, k := range []*privacypass.Key{k2, k2b} {
			if _, err := or.RedeemToken(ctx, mint(t, k, cr.TokenChallenge)); err != nil {
				t.Fatalf("key %x: %v", k.ID(), err)
			}
		}
	})
	t.Run("store failure", func(t *testing.T) {
		st := newMemStore()
		st.fail = errors.New("database is locked")
		os := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, Spent: st})
		tok := mint(t, k2, challengeFor(t, os, privacypass.TypeBlindRSA).TokenChallenge)
		_, err := os.RedeemToken(ctx, tok)
		wantReason(t, err, privacypass.ReasonStoreUnavailable)
		if !strings.Contains(err.Error(), "database is locked") {
			t.Fatalf("cause lost: %v", err)
		}
		// Not redeemed: it works once the store recovers.
		st.mu.Lock()
		st.fail = nil
		st.mu.Unlock()
		if _, err := os.RedeemToken(ctx, tok); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	})
	t.Run("forged tokens are not recorded", func(t *testing.T) {
		st := newMemStore()
		of := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, Spent: st})
		tok := mint(t, k2, challengeFor(t, of, privacypass.TypeBlindRSA).TokenChallenge)
		tok.Authenticator[0] ^= 1
		_, err := of.RedeemToken(ctx, tok)
		wantReason(t, err, privacypass.ReasonAuthenticator)
		if st.len() != 0 {
			t.Fatal("a forged token reached the spent store")
		}
	})
}

func TestOriginRandomContextLifetime(t *testing.T) {
	k2, _, _ := testKeys(t)
	ctx := context.Background()
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, Lifetime: time.Minute, Now: clock.Now, ClockSkew: 10 * time.Second})
	c := challengeFor(t, o, privacypass.TypeBlindRSA)
	if c.MaxAge != 60 {
		t.Fatalf("max-age %d, want 60", c.MaxAge)
	}
	t1, t2 := mint(t, k2, c.TokenChallenge), mint(t, k2, c.TokenChallenge)
	clock.Add(59 * time.Second)
	r, err := o.RedeemToken(ctx, t1)
	if err != nil {
		t.Fatalf("within lifetime: %v", err)
	}
	if want := time.Unix(1_800_000_000+70, 0); !r.SpentUntil.Equal(want) {
		t.Fatalf("SpentUntil %v, want %v (issue + lifetime + skew)", r.SpentUntil, want)
	}
	clock.Add(time.Second)
	_, err = o.RedeemToken(ctx, t2)
	wantReason(t, err, privacypass.ReasonChallengeDigest)

	// A restarted origin (new process, same keys and store) does not know
	// the earlier challenges.
	c2 := challengeFor(t, o, privacypass.TypeBlindRSA)
	restarted := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, Lifetime: time.Minute, Now: clock.Now})
	_, err = restarted.RedeemToken(ctx, mint(t, k2, c2.TokenChallenge))
	wantReason(t, err, privacypass.ReasonChallengeDigest)
}

func TestOriginRandomContextBounded(t *testing.T) {
	k2, _, _ := testKeys(t)
	ctx := context.Background()
	o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, MaxChallenges: 4})
	var cs []privacypass.Challenge
	for i := 0; i < 10; i++ {
		cs = append(cs, challengeFor(t, o, privacypass.TypeBlindRSA))
	}
	for i, c := range cs {
		_, err := o.RedeemToken(ctx, mint(t, k2, c.TokenChallenge))
		if i < 6 {
			wantReason(t, err, privacypass.ReasonChallengeDigest)
		} else if err != nil {
			t.Fatalf("challenge %d (among the newest 4): %v", i, err)
		}
	}
}

func TestOriginWindowContext(t *testing.T) {
	k2, k1, _ := testKeys(t)
	ctx := context.Background()
	secret := bytes.Repeat([]byte{7}, 32)
	// Start 10 s into a 60 s slot.
	clock := &fakeClock{t: time.Unix(1_800_000_000-1_800_000_000%60+10, 0)}
	store := newMemStore()
	cfg := privacypass.OriginConfig{Keys: []*privacypass.Key{k2, k1}, Mode: privacypass.ContextWindow, Secret: secret, Lifetime: time.Minute, Now: clock.Now, Spent: store, ClockSkew: 5 * time.Second}
	a, b := newOrigin(t, cfg), newOrigin(t, cfg)

	c := challengeFor(t, a, privacypass.TypeBlindRSA)
	if c.MaxAge != 110 {
		t.Fatalf("max-age %d, want 110 (rest of this slot and the next)", c.MaxAge)
	}
	// Same slot, same challenge, on every node sharing the secret.
	if c2 := challengeFor(t, b, privacypass.TypeBlindRSA); !bytes.Equal(c.TokenChallenge, c2.TokenChallenge) {
		t.Fatal("nodes with one secret minted different challenges")
	}
	tokA, tokB, tokC := mint(t, k2, c.TokenChallenge), mint(t, k2, c.TokenChallenge), mint(t, k2, c.TokenChallenge)
	r, err := b.RedeemToken(ctx, tokA) // redeemed at another node
	if err != nil {
		t.Fatalf("cross-node redeem: %v", err)
	}
	if want := clock.Now().Add(110*time.Second + 5*time.Second); !r.SpentUntil.Equal(want) {
		t.Fatalf("SpentUntil %v, want %v", r.SpentUntil, want)
	}
	_, err = a.RedeemToken(ctx, tokA)
	wantReason(t, err, privacypass.ReasonReplay)

	// Next slot: still accepted, also by a restarted node.
	clock.Add(60 * time.Second)
	restarted := newOrigin(t, cfg)
	if _, err := restarted.RedeemToken(ctx, tokB); err != nil {
		t.Fatalf("previous slot after restart: %v", err)
	}
	// Two slots later: refused.
	clock.Add(50 * time.Second)
	_, err = a.RedeemToken(ctx, tokC)
	wantReason(t, err, privacypass.ReasonChallengeDigest)

	// Another secret means other challenges.
	cfg.Secret = bytes.Repeat([]byte{8}, 32)
	other := newOrigin(t, cfg)
	_, err = other.RedeemToken(ctx, mint(t, k2, challengeFor(t, a, privacypass.TypeBlindRSA).TokenChallenge))
	wantReason(t, err, privacypass.ReasonChallengeDigest)
	// And the type 1 challenge of the same slot works too.
	c1 := challengeFor(t, a, privacypass.TypeVOPRF)
	if _, err := a.RedeemToken(ctx, mint(t, k1, c1.TokenChallenge)); err != nil {
		t.Fatalf("type 1 window token: %v", err)
	}
}

func TestOriginConcurrentReplay(t *testing.T) {
	k2, _, _ := testKeys(t)
	o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}})
	auth := privacypass.FormatAuthorization(mint(t, k2, challengeFor(t, o, privacypass.TypeBlindRSA).TokenChallenge))
	var ok, replay atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := o.Redeem(context.Background(), auth)
			switch privacypass.ReasonOf(err) {
			case "":
				ok.Add(1)
			case privacypass.ReasonReplay:
				replay.Add(1)
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || replay.Load() != 15 {
		t.Fatalf("%d accepted, %d replays; want 1 and 15", ok.Load(), replay.Load())
	}
}

func TestOriginGrease(t *testing.T) {
	k2, _, _ := testKeys(t)
	o := newOrigin(t, privacypass.OriginConfig{Keys: []*privacypass.Key{k2}, Grease: true})
	cs, err := o.Challenges()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].TokenType() != privacypass.TypeBlindRSA {
		t.Fatalf("want the real challenge first, then grease; got %d", len(cs))
	}
	if cs[1].TokenType().Supported() {
		t.Fatalf("grease challenge has real type %s", cs[1].TokenType())
	}
	parsed, err := privacypass.ParseWWWAuthenticate(privacypass.FormatWWWAuthenticate(cs...))
	if err != nil || len(parsed) != 2 {
		t.Fatalf("greased header does not parse: %v", err)
	}
}

func TestNewOriginValidation(t *testing.T) {
	k2, k1, _ := testKeys(t)
	st := newMemStore()
	base := func() privacypass.OriginConfig {
		return privacypass.OriginConfig{IssuerName: "issuer.example", Keys: []*privacypass.Key{k2}, Spent: st}
	}
	cases := map[string]func(*privacypass.OriginConfig){
		"no issuer":               func(c *privacypass.OriginConfig) { c.IssuerName = "" },
		"issuer space":            func(c *privacypass.OriginConfig) { c.IssuerName = "a b" },
		"origin comma":            func(c *privacypass.OriginConfig) { c.OriginInfo = []string{"a,b"} },
		"empty origin":            func(c *privacypass.OriginConfig) { c.OriginInfo = []string{""} },
		"no keys":                 func(c *privacypass.OriginConfig) { c.Keys = nil },
		"nil key":                 func(c *privacypass.OriginConfig) { c.Keys = []*privacypass.Key{nil} },
		"duplicate key":           func(c *privacypass.OriginConfig) { c.Keys = []*privacypass.Key{k2, k2.Public()} },
		"public type 1":           func(c *privacypass.OriginConfig) { c.Keys = []*privacypass.Key{k1.Public()} },
		"no store":                func(c *privacypass.OriginConfig) { c.Spent = nil },
		"short lifetime":          func(c *privacypass.OriginConfig) { c.Lifetime = time.Millisecond },
		"long lifetime":           func(c *privacypass.OriginConfig) { c.Lifetime = 48 * time.Hour },
		"short secret":            func(c *privacypass.OriginConfig) { c.Mode = privacypass.ContextWindow; c.Secret = []byte("short") },
		"bad mode":                func(c *privacypass.OriginConfig) { c.Mode = 9 },
		"negative max":            func(c *privacypass.OriginConfig) { c.MaxChallenges = -1 },
		"negative per-source max": func(c *privacypass.OriginConfig) { c.MaxChallengesPerSource = -1 },
		"negative skew":           func(c *privacypass.OriginConfig) { c.ClockSkew = -time.Second },
	}
	for name, mut := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := base()
			mut(&cfg)
			_, err := privacypass.NewOrigin(cfg)
			wantReason(t, err, privacypass.ReasonInvalidConfig)
		})
	}
	if _, err := privacypass.NewOrigin(base()); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}
