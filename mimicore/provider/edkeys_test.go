package provider

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"sync"
	"testing"
)

// edKeyPair returns a deterministic Ed25519 key pair number i.
func edKeyPair(i int) (ed25519.PublicKey, ed25519.PrivateKey) {
	seed := make([]byte, ed25519.SeedSize)
	binary.BigEndian.PutUint64(seed, uint64(i))
	priv := ed25519.NewKeyFromSeed(seed)
	return priv.Public().(ed25519.PublicKey), priv
}

func TestEdKeysVerdicts(t *testing.T) {
	var c edKeys
	pub, priv := edKeyPair(1)
	for i := range 20 {
		msg := []byte{byte(i), 'm'}
		sig := ed25519.Sign(priv, msg)
		if !c.verify(pub, msg, sig) {
			t.Fatalf("valid signature %d rejected", i)
		}
		bad := bytes.Clone(sig)
		bad[i%64] ^= 4
		if got, want := c.verify(pub, msg, bad), ed25519.Verify(pub, msg, bad); got != want {
			t.Fatalf("altered signature %d: %v, crypto/ed25519 says %v", i, got, want)
		}
		if c.verify(pub, append(msg, 0), sig) {
			t.Fatalf("signature %d accepted on another message", i)
		}
	}
	if n := c.len(); n != 1 {
		t.Fatalf("%d keys cached, want 1", n)
	}
	// A string that is not a point is refused and not cached.
	notPoint := bytes.Repeat([]byte{0xff}, 32)
	notPoint[31] = 0x7f
	notPoint[0] = 0x02
	if ed25519.Verify(notPoint, []byte("m"), make([]byte, 64)) {
		t.Fatal("crypto/ed25519 accepts the test's non-point")
	}
	if c.verify(notPoint, []byte("m"), make([]byte, 64)) {
		t.Fatal("a key that is not a point verified")
	}
	if n := c.len(); n != 1 {
		t.Fatalf("%d keys cached, want 1", n)
	}
}

func TestEdKeysBound(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a hundred tables")
	}
	var c edKeys
	msg := []byte("m")
	use := func(i int) bool {
		pub, priv := edKeyPair(i)
		return c.verify(pub, msg, ed25519.Sign(priv, msg))
	}
	for i := range maxEdKeys {
		if !use(i) {
			t.Fatalf("key %d rejected", i)
		}
	}
	if n := c.len(); n != maxEdKeys {
		t.Fatalf("%d keys cached, want %d", n, maxEdKeys)
	}
	// Full, and every key used since the last sweep: a new key is verified
	// without a table, and the sweep marks the others unused.
	if !use(maxEdKeys) {
		t.Fatal("key beyond the bound rejected")
	}
	if n := c.len(); n != maxEdKeys {
		t.Fatalf("%d keys cached after a key beyond the bound, want %d", n, maxEdKeys)
	}
	// Key 0 is used again, so it stays; the others leave at the next
	// sweep, which the next new key causes.
	if !use(0) {
		t.Fatal("key 0 rejected")
	}
	if !use(maxEdKeys + 1) {
		t.Fatal("new key rejected after the sweep")
	}
	if n := c.len(); n != 2 {
		t.Fatalf("%d keys cached after the sweep, want 2 (key 0 and the new one)", n)
	}
	pub0, _ := edKeyPair(0)
	if c.keys[string(pub0)] == nil {
		t.Fatal("the key used since the sweep was evicted")
	}
}

func TestEdKeysConcurrent(t *testing.T) {
	var c edKeys
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			pub, priv := edKeyPair(g % 3)
			for i := range 20 {
				msg := []byte{byte(g), byte(i)}
				sig := ed25519.Sign(priv, msg)
				if !c.verify(pub, msg, sig) {
					t.Errorf("goroutine %d: valid signature rejected", g)
				}
				sig[0] ^= 1
				if c.verify(pub, msg, sig) {
					t.Errorf("goroutine %d: altered signature accepted", g)
				}
			}
		})
	}
	wg.Wait()
	if n := c.len(); n != 3 {
		t.Fatalf("%d keys cached, want 3", n)
	}
}
