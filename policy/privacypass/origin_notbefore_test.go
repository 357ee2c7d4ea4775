package privacypass_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// TestOriginNotBefore checks that challenges name the first key clients may
// use now (RFC 9578 §4: no not-before, or one in the past), switch to a key
// announced in advance once its not-before passes without rebuilding the
// origin, and that tokens under every listed key are accepted meanwhile.
func TestOriginNotBefore(t *testing.T) {
	k2, _, k2b := testKeys(t)
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	ctx := context.Background()
	for _, mode := range []privacypass.ContextMode{privacypass.ContextRandom, privacypass.ContextWindow} {
		t.Run(mode.String(), func(t *testing.T) {
			for _, tc := range []struct {
				name string
				keys []*privacypass.Key
				// want is the key advertised at start, then the one after
				// an hour and a minute.
				want, later *privacypass.Key
			}{
				{"future key listed first",
					[]*privacypass.Key{k2b.Public().WithNotBefore(start.Add(time.Hour)), k2.Public()}, k2, k2b},
				{"not-before in the past",
					[]*privacypass.Key{k2b.Public().WithNotBefore(start.Add(-time.Hour)), k2.Public()}, k2b, k2b},
				{"no key usable yet: the soonest",
					[]*privacypass.Key{k2.Public().WithNotBefore(start.Add(2 * time.Hour)), k2b.Public().WithNotBefore(start.Add(time.Hour))}, k2b, k2b},
			} {
				t.Run(tc.name, func(t *testing.T) {
					clk := &fakeClock{t: start}
					o := newOrigin(t, privacypass.OriginConfig{Keys: tc.keys, Mode: mode, Now: clk.Now})
					c := challengeFor(t, o, privacypass.TypeBlindRSA)
					if !bytes.Equal(c.TokenKey, tc.want.TokenKey()) {
						t.Fatalf("advertised key %x, want %x", c.TokenKey[len(c.TokenKey)-4:], tc.want.TruncatedID())
					}
					// Trial verification: every listed key is accepted,
					// whatever its not-before.
					for _, k := range []*privacypass.Key{k2, k2b} {
						if _, err := o.RedeemToken(ctx, mint(t, k, c.TokenChallenge)); err != nil {
							t.Fatalf("token under key %x: %v", k.TruncatedID(), err)
						}
					}
					clk.Add(time.Hour + time.Minute)
					if c := challengeFor(t, o, privacypass.TypeBlindRSA); !bytes.Equal(c.TokenKey, tc.later.TokenKey()) {
						t.Fatalf("advertised key later %x, want %x", c.TokenKey[len(c.TokenKey)-4:], tc.later.TruncatedID())
					}
				})
			}
		})
	}
}

// TestDirectoryKeysNotBefore checks that Directory.Keys keeps each key's
// not-before, and leaves it zero where the directory has none.
func TestDirectoryKeysNotBefore(t *testing.T) {
	k2, _, k2b := testKeys(t)
	enc := base64.URLEncoding.EncodeToString
	d, err := privacypass.ParseDirectory([]byte(`{"token-keys":[` +
		`{"token-type":2,"token-key":"` + enc(k2b.TokenKey()) + `","not-before":1900000000},` +
		`{"token-type":2,"token-key":"` + enc(k2.TokenKey()) + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := d.Keys()
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		key  *privacypass.Key
		want time.Time
	}{
		{k2b, time.Unix(1_900_000_000, 0)},
		{k2, time.Time{}},
	} {
		if keys[i].ID() != tc.key.ID() || !keys[i].NotBefore().Equal(tc.want) {
			t.Errorf("key %d: id %x not-before %v, want %x %v", i, keys[i].TruncatedID(), keys[i].NotBefore(), tc.key.TruncatedID(), tc.want)
		}
	}
}
