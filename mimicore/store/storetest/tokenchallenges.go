package storetest

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// testTokenChallenges checks store.TokenChallenges: recorded challenges
// are found until they expire, a live one keeps its first record, an
// expired one is replaced, invalid arguments change nothing, and
// concurrent writers lose no challenge.
func testTokenChallenges(t *testing.T, open func(t *testing.T) store.Store) {
	digest := func() []byte { return randBytes(t, store.TokenChallengeDigestSize) }
	t.Run("add and look up", func(t *testing.T) {
		s := open(t)
		live, expired := digest(), digest()
		exp := time.Now().Add(future).Truncate(time.Millisecond)
		noErr(t, "AddTokenChallenges", s.AddTokenChallenges(ctx(), []store.TokenChallenge{
			{Digest: live, TokenType: 2, Expires: exp},
			{Digest: expired, TokenType: 1, Expires: time.Now().Add(past)},
		}))
		got, err := s.LookupTokenChallenge(ctx(), live)
		noErr(t, "LookupTokenChallenge", err)
		if !bytes.Equal(got.Digest, live) || got.TokenType != 2 || !got.Expires.Equal(exp) {
			t.Fatalf("LookupTokenChallenge = %x type %d until %v, want %x type 2 until %v", got.Digest, got.TokenType, got.Expires, live, exp)
		}
		_, err = s.LookupTokenChallenge(ctx(), expired)
		wantErr(t, "LookupTokenChallenge of an expired challenge", err, store.ErrNotFound)
		_, err = s.LookupTokenChallenge(ctx(), digest())
		wantErr(t, "LookupTokenChallenge of an unknown challenge", err, store.ErrNotFound)
	})
	t.Run("first record kept, expired replaced", func(t *testing.T) {
		s := open(t)
		d, e := digest(), digest()
		noErr(t, "AddTokenChallenges", s.AddTokenChallenges(ctx(), []store.TokenChallenge{
			{Digest: d, TokenType: 2, Expires: time.Now().Add(future)},
			{Digest: e, TokenType: 2, Expires: time.Now().Add(past)},
		}))
		noErr(t, "AddTokenChallenges again", s.AddTokenChallenges(ctx(), []store.TokenChallenge{
			{Digest: d, TokenType: 1, Expires: time.Now().Add(2 * future)},
			{Digest: e, TokenType: 1, Expires: time.Now().Add(future)},
		}))
		for _, c := range []struct {
			name string
			d    []byte
			typ  uint16
		}{{"live", d, 2}, {"expired", e, 1}} {
			t.Run(c.name, func(t *testing.T) {
				got, err := s.LookupTokenChallenge(ctx(), c.d)
				noErr(t, "LookupTokenChallenge", err)
				if got.TokenType != c.typ {
					t.Fatalf("token type %d, want %d", got.TokenType, c.typ)
				}
			})
		}
	})
	t.Run("invalid", func(t *testing.T) {
		s := open(t)
		ok := store.TokenChallenge{Digest: digest(), TokenType: 2, Expires: time.Now().Add(future)}
		many := make([]store.TokenChallenge, store.MaxTokenChallenges+1)
		for i := range many {
			many[i] = store.TokenChallenge{Digest: digest(), Expires: time.Now().Add(future)}
		}
		for _, c := range []struct {
			name string
			cs   []store.TokenChallenge
		}{
			{"short digest", []store.TokenChallenge{ok, {Digest: digest()[:31], Expires: time.Now().Add(future)}}},
			{"no digest", []store.TokenChallenge{ok, {Expires: time.Now().Add(future)}}},
			{"too many", append([]store.TokenChallenge{ok}, many...)},
		} {
			t.Run(c.name, func(t *testing.T) {
				wantErr(t, "AddTokenChallenges", s.AddTokenChallenges(ctx(), c.cs), store.ErrInvalid)
				_, err := s.LookupTokenChallenge(ctx(), ok.Digest)
				wantErr(t, "LookupTokenChallenge after a refused add", err, store.ErrNotFound)
			})
		}
		_, err := s.LookupTokenChallenge(ctx(), digest()[:5])
		wantErr(t, "LookupTokenChallenge of a short digest", err, store.ErrInvalid)
	})
	t.Run("concurrent", func(t *testing.T) {
		s := open(t)
		const writers, each = 4, 10
		ds := make([][]byte, writers*each)
		for i := range ds {
			ds[i] = digest()
		}
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for _, d := range ds[w*each : (w+1)*each] {
					if err := s.AddTokenChallenges(ctx(), []store.TokenChallenge{{Digest: d, TokenType: 2, Expires: time.Now().Add(future)}}); err != nil {
						t.Errorf("AddTokenChallenges: %v", err)
					}
				}
			})
		}
		wg.Wait()
		for _, d := range ds {
			if _, err := s.LookupTokenChallenge(ctx(), d); err != nil {
				t.Fatalf("LookupTokenChallenge of a recorded challenge: %v", err)
			}
		}
	})
}
