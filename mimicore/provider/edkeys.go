package provider

import (
	"crypto/ed25519"
	"sync"
	"sync/atomic"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider/internal/edverify"
)

// maxEdKeys bounds the Ed25519 keys a Verifier keeps decoded, with their
// precomputed tables of about 100 KiB each (package edverify): 10 MiB at
// most.
const maxEdKeys = 100

// edKeys keeps senders' Ed25519 keys decoded with their precomputed tables,
// so that verifying a provider request costs about a third of
// crypto/ed25519.Verify; the verdicts are crypto/ed25519's. A key's table is
// built on its first use (the cost of a few verifications); the keys come
// from the sender's verification_key list, so each new one has cost a key
// fetch first. When the cache is full, the keys not used since the
// previous sweep make room (a clock, approximating least recently used);
// if every key was used since, a new key is verified without a table
// rather than evicting a busy one.
type edKeys struct {
	mu   sync.RWMutex
	keys map[string]*edKey
}

// edKey is a cached key and whether it was used since the last sweep.
type edKey struct {
	key  *edverify.PublicKey
	used atomic.Bool
}

// verify reports whether sig is an Ed25519 signature of msg by pub (32
// bytes), exactly as crypto/ed25519.Verify does.
func (c *edKeys) verify(pub, msg, sig []byte) bool {
	c.mu.RLock()
	e := c.keys[string(pub)]
	c.mu.RUnlock()
	if e != nil {
		if !e.used.Load() {
			e.used.Store(true)
		}
		return e.key.Verify(msg, sig)
	}
	if !c.room() {
		return ed25519.Verify(pub, msg, sig)
	}
	k, err := edverify.NewPublicKey(pub)
	if err != nil {
		return false // not a point: crypto/ed25519 rejects every signature
	}
	e = &edKey{key: k}
	e.used.Store(true)
	c.mu.Lock()
	if c.keys == nil {
		c.keys = make(map[string]*edKey)
	}
	if len(c.keys) < maxEdKeys {
		c.keys[string(pub)] = e // or a concurrent first use's equal key
	}
	c.mu.Unlock()
	return k.Verify(msg, sig)
}

// room reports whether the cache can take a key, sweeping it when full:
// keys used since the previous sweep stay and are marked unused, the
// others leave.
func (c *edKeys) room() bool {
	c.mu.RLock()
	ok := len(c.keys) < maxEdKeys
	c.mu.RUnlock()
	if ok {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for pub, e := range c.keys {
		if !e.used.Swap(false) {
			delete(c.keys, pub)
		}
	}
	return len(c.keys) < maxEdKeys
}

// len reports how many keys are cached (tests).
func (c *edKeys) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.keys)
}
