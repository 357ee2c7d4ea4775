package service

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func secret(b byte) []byte { return bytes.Repeat([]byte{b}, provider.KeySecretSize) }

// samePublished reports whether a and b publish the same key ids, in order.
func samePublished(a, b []moh.VerificationKey) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].KeyID, b[i].KeyID) {
			return false
		}
	}
	return true
}

// TestSharedStore has two services (two gateways) on one PostgreSQL
// database: they sign as one provider, a rotation both decide on at once
// (a new key scheme applied to both) creates one key, which both publish
// at once and sign with from its not_before (SuccessorLead later), and a
// third gateway with a wrong secret refuses to start instead of making a
// new identity.
func TestSharedStore(t *testing.T) {
	dsn := pgtest.NewDB(t)
	shared := Options{Store: StoreOptions{Postgres: dsn, MaxConns: 4}, KeySecret: secret(1),
		Keys: provider.KeyRingOptions{RotateEvery: 10 * day, Overlap: 2 * day}}
	a := open(t, t.TempDir(), shared)
	b := open(t, t.TempDir(), shared)
	now := time.Now()
	if pa, pb := a.Keys().Published(now), b.Keys().Published(now); len(pa) != 1 || !samePublished(pa, pb) {
		t.Fatalf("the gateways publish %d and %d keys, want the same one", len(pa), len(pb))
	}
	old, err := a.Keys().Current(now)
	if err != nil {
		t.Fatal(err)
	}

	next := shared
	next.Keys.Scheme = moh.SchemeECDSAP256SHA256
	var wg sync.WaitGroup
	for _, s := range []*Service{a, b} {
		wg.Go(func() {
			opts := next
			opts.DataDir, opts.Logger = s.Options().DataDir, s.Options().Logger
			if err := s.Apply(opts); err != nil {
				t.Errorf("Apply: %v", err)
			}
		})
	}
	wg.Wait()
	// The gateway that lost the lease loads the winner's key at its next
	// rotation attempt, a second later; until the new key's not_before
	// both keep signing with the old one.
	deadline := time.Now().Add(30 * time.Second)
	for {
		now = time.Now()
		pa, pb := a.Keys().Published(now), b.Keys().Published(now)
		if len(pa) == 2 && samePublished(pa, pb) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateways publish %d and %d keys (same: %t) 30 s after the rotation", len(pa), len(pb), samePublished(pa, pb))
		}
		time.Sleep(50 * time.Millisecond)
	}
	succ := a.Keys().Published(now)[0]
	if succ.Scheme != moh.SchemeECDSAP256SHA256 {
		t.Fatalf("the new key has scheme 0x%04x, want the new one", uint16(succ.Scheme))
	}
	signsFrom := time.Unix(int64(succ.NotBefore), 0)
	if lead := signsFrom.Sub(now); lead <= 0 || lead > provider.SuccessorLead {
		t.Fatalf("the new key signs %s from now, want within SuccessorLead", lead)
	}
	for _, at := range []time.Time{now, signsFrom.Add(-time.Second), signsFrom} {
		ca, errA := a.Keys().Current(at)
		cb, errB := b.Keys().Current(at)
		if errA != nil || errB != nil || !bytes.Equal(ca.ID, cb.ID) {
			t.Fatalf("at %v the gateways sign with different keys (%v, %v)", at, errA, errB)
		}
		if newKey := !at.Before(signsFrom); newKey != bytes.Equal(ca.ID, succ.KeyID) || !newKey && !bytes.Equal(ca.ID, old.ID) {
			t.Fatalf("at %v the gateways sign with %x; the new key %x signs from %v", at, ca.ID, succ.KeyID, signsFrom)
		}
	}
	now = signsFrom
	rows, err := a.Store().ListSigningKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("the store holds %d keys, want 2: exactly one rotation", len(rows))
	}
	// What one gateway signs, the other's published key verifies.
	cur, _ := a.Keys().Current(now)
	sig, err := cur.SignWithLabel("test", []byte("content"))
	if err != nil {
		t.Fatal(err)
	}
	pub := b.Keys().Published(now)[0]
	if !bytes.Equal(pub.KeyID, cur.ID) {
		t.Fatalf("gateway b publishes %x first, gateway a signs with %x", pub.KeyID, cur.ID)
	}
	if err := provider.VerifyWithLabel(&pub, "test", []byte("content"), sig); err != nil {
		t.Fatalf("gateway b's key does not verify gateway a's signature: %v", err)
	}

	wrong := shared
	wrong.DataDir, wrong.KeySecret = t.TempDir(), secret(2)
	if s, err := Open(t.Context(), wrong); !errors.Is(err, provider.ErrWrongKeySecret) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open with a wrong key secret = %v, want ErrWrongKeySecret", err)
	}
}

// TestSharedOptions checks the store and key secret options: refused when
// invalid, and never changed by Apply.
func TestSharedOptions(t *testing.T) {
	dsn := pgtest.NewDB(t)
	for _, c := range []struct {
		name string
		opts Options
	}{
		{"postgres without a key secret", Options{Store: StoreOptions{Postgres: dsn}}},
		{"short key secret", Options{KeySecret: make([]byte, 16)}},
		{"negative pool", Options{Store: StoreOptions{Postgres: dsn, MaxConns: -1}, KeySecret: secret(1)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.opts.DataDir = t.TempDir()
			if s, err := Open(t.Context(), c.opts); err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
		})
	}

	dir := t.TempDir()
	s := open(t, dir, Options{Store: StoreOptions{Postgres: dsn}, KeySecret: secret(1)})
	for _, c := range []struct {
		name string
		opts Options
	}{
		{"sqlite instead", Options{KeySecret: secret(1)}},
		{"other pool size", Options{Store: StoreOptions{Postgres: dsn, MaxConns: 3}, KeySecret: secret(1)}},
		{"other secret", Options{Store: StoreOptions{Postgres: dsn}, KeySecret: secret(2)}},
	} {
		t.Run("Apply "+c.name, func(t *testing.T) {
			c.opts.DataDir = dir
			if err := s.Apply(c.opts); err == nil {
				t.Fatal("Apply succeeded")
			}
		})
	}
	if got := s.Options().Store.String(); got != "postgres (pool of 16)" {
		t.Fatalf("store is %q", got)
	}
}

// TestSQLiteSealedKeys runs the embedded store with a key secret: the keys
// are sealed in the database, and no key file is written.
func TestSQLiteSealedKeys(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{KeySecret: secret(1)})
	rows, err := s.Store().ListSigningKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || len(rows[0].Sealed) == 0 {
		t.Fatalf("store holds %d keys, want one sealed key", len(rows))
	}
	if entries, _ := os.ReadDir(dir + "/" + KeysDir); len(entries) != 0 {
		t.Fatalf("%d entries in the key directory, want none", len(entries))
	}
}
