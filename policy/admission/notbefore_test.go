package admission

import (
	"bytes"
	"context"
	"encoding/base64"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// TestDirectoryNotBefore serves, from a real TLS server on loopback, an
// issuer directory that announces a rotation in advance (RFC 9578 §4): the
// next key listed first with a not-before in the future. Challenges must
// name the current key until that time and the next key after it, with no
// refetch, while tokens under both are accepted; and a directory that only
// postpones the not-before must be installed.
func TestDirectoryNotBefore(t *testing.T) {
	f := newPPFixture(t)
	ctx := context.Background()
	clk := newClock()
	current := f.keys[privacypass.TypeBlindRSA]
	next, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
	if err != nil {
		t.Fatal(err)
	}
	nextIss, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: next})
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		key       *privacypass.Key
		notBefore time.Time
	}
	dirOf := func(entries ...entry) *[]byte {
		d := &privacypass.Directory{IssuerRequestURI: DefaultRequestPath}
		for _, e := range entries {
			dk := privacypass.DirectoryKey{TokenType: e.key.Type(), TokenKey: base64.URLEncoding.EncodeToString(e.key.TokenKey())}
			if !e.notBefore.IsZero() {
				dk.NotBefore = e.notBefore.Unix()
			}
			d.TokenKeys = append(d.TokenKeys, dk)
		}
		b, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return &b
	}
	rotation := clk.Now().Add(time.Hour)
	var served atomic.Pointer[[]byte]
	served.Store(dirOf(entry{next, rotation}, entry{current, time.Time{}}))
	url, pol := directoryServer(t, &served)
	o, err := NewOrigin(ctx, OriginConfig{
		OriginConfig: privacypass.OriginConfig{IssuerName: "example.com", OriginInfo: []string{"ds.example.com"},
			Spent: f.store, Now: clk.Now},
		DirectoryURL: url, Fetch: pol,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	challenge := func(t *testing.T) privacypass.Challenge {
		t.Helper()
		cs, err := o.Current().Challenges()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.TokenType() == privacypass.TypeBlindRSA {
				return c
			}
		}
		t.Fatal("no type 2 challenge")
		return privacypass.Challenge{}
	}
	advertises := func(t *testing.T, want *privacypass.Key) {
		t.Helper()
		if c := challenge(t); !bytes.Equal(c.TokenKey, want.TokenKey()) {
			t.Fatalf("challenge names key %x, want %x", truncatedID(c.TokenKey), want.TruncatedID())
		}
	}
	redeem := func(t *testing.T, issue func([]byte) ([]byte, error), k *privacypass.Key) {
		t.Helper()
		if _, err := o.Current().Redeem(ctx, mintWith(t, issue, k, challenge(t).TokenChallenge)); err != nil {
			t.Fatalf("token under key %x: %v", k.TruncatedID(), err)
		}
	}

	t.Run("before the rotation", func(t *testing.T) {
		advertises(t, current)
		redeem(t, f.issuer.Issue, current)
		redeem(t, nextIss.Issue, next) // trial verification of a listed key
	})
	t.Run("a postponed rotation is installed", func(t *testing.T) {
		rotation = rotation.Add(time.Hour)
		served.Store(dirOf(entry{next, rotation}, entry{current, time.Time{}}))
		if err := o.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Hour + time.Minute)
		advertises(t, current)
	})
	t.Run("after the rotation, without a refetch", func(t *testing.T) {
		clk.Advance(time.Hour)
		advertises(t, next)
		redeem(t, nextIss.Issue, next)
		redeem(t, f.issuer.Issue, current)
	})
}

// truncatedID is the last byte of SHA-256 of a token key: its truncated id.
func truncatedID(tokenKey []byte) byte {
	k, err := privacypass.ParseTokenKey(privacypass.TypeBlindRSA, tokenKey)
	if err != nil {
		return 0
	}
	return k.TruncatedID()
}
