package client

import (
	"context"
	"crypto/hpke"
	"crypto/rand"
	"fmt"
	"net/url"
	"slices"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// seedSize is the size of the seeds the client's HPKE key pairs are
// derived from.
const seedSize = 32

// leafTemplate returns the client's LeafNode fields that every leaf it
// signs carries: its credential, capabilities and client binding. The
// caller fills in keys, source and lifetime, and signs it.
func (c *Client) leafTemplate() (mls.LeafNode, error) {
	leaf := mls.LeafNode{
		SignatureKey: c.sigPub,
		Credential:   mls.Credential{Type: mls.CredentialBasic, Identity: slices.Clone(c.rec.clientURI)},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{c.rec.suite},
			Credentials: []mls.CredentialType{mls.CredentialBasic}},
	}
	if err := binding.Attach(&leaf, c.binding); err != nil {
		return mls.LeafNode{}, fmt.Errorf("attaching the client binding: %w", err)
	}
	return leaf, nil
}

// deriveKey returns the HPKE key pair of the client's suite derived from
// seed.
func (c *Client) deriveKey(seed []byte) (hpke.PrivateKey, []byte, error) {
	priv, pub, err := c.rec.suite.DeriveKeyPair(seed)
	if err != nil {
		return nil, nil, fmt.Errorf("deriving an hpke key: %w", err)
	}
	return priv, pub, nil
}

// newSeed returns a fresh random seed.
func newSeed() ([]byte, error) {
	s := make([]byte, seedSize)
	if _, err := rand.Read(s); err != nil {
		return nil, err
	}
	return s, nil
}

// newKeyPackage makes a KeyPackage of the client, valid from an hour ago
// until the binding expires, with the seeds of its keys.
func (c *Client) newKeyPackage(lastResort bool) (*mls.KeyPackage, storedKeyPackage, error) {
	initSeed, err := newSeed()
	if err != nil {
		return nil, storedKeyPackage{}, err
	}
	leafSeed, err := newSeed()
	if err != nil {
		return nil, storedKeyPackage{}, err
	}
	_, initPub, err := c.deriveKey(initSeed)
	if err != nil {
		return nil, storedKeyPackage{}, err
	}
	_, encPub, err := c.deriveKey(leafSeed)
	if err != nil {
		return nil, storedKeyPackage{}, err
	}
	leaf, err := c.leafTemplate()
	if err != nil {
		return nil, storedKeyPackage{}, err
	}
	leaf.EncryptionKey, leaf.Source = encPub, mls.SourceKeyPackage
	leaf.Lifetime = mls.Lifetime{NotBefore: uint64(max(c.now().Unix()-3600, 0)), NotAfter: c.binding.NotAfter}
	if err := leaf.Sign(c.rec.suite, c.signer, nil, 0); err != nil {
		return nil, storedKeyPackage{}, fmt.Errorf("signing a leaf: %w", err)
	}
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: c.rec.suite, InitKey: initPub, LeafNode: leaf}
	if err := kp.Sign(c.signer); err != nil {
		return nil, storedKeyPackage{}, fmt.Errorf("signing a KeyPackage: %w", err)
	}
	enc, err := wire.Marshal(kp)
	if err != nil {
		return nil, storedKeyPackage{}, fmt.Errorf("encoding a KeyPackage: %w", err)
	}
	ref, err := kp.Ref()
	if err != nil {
		return nil, storedKeyPackage{}, fmt.Errorf("computing a KeyPackageRef: %w", err)
	}
	return kp, storedKeyPackage{ref: ref, keyPackage: enc, initSeed: initSeed, leafSeed: leafSeed, lastResort: lastResort}, nil
}

// Publish makes n single-use KeyPackages, and a last-resort one when
// lastResort is set (replacing the client's previous one at the gateway),
// keeps their private keys and publishes them through the local API. The
// private keys are on disk before the KeyPackages leave; when the gateway
// refuses the publish (a 4xx DSError) they are forgotten again, and when
// the answer is anything else (a transport error, a proxy's 502) they are
// kept, since the gateway may have published them. The keys of the
// previous last-resort KeyPackages are kept when a new one is published:
// a Welcome for one claimed before the replacement may be on its way, and
// which one the gateway held is not known after an answer was lost. They
// go, as every KeyPackage's keys, when the KeyPackage's lifetime (that of
// the client's binding) is over: each Publish deletes those.
func (c *Client) Publish(ctx context.Context, n int, lastResort bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n < 0 || n+1 > localapi.MaxPublish {
		return fmt.Errorf("publishing KeyPackages: %d is out of range", n)
	}
	if err := c.freshBinding(ctx); err != nil {
		return fmt.Errorf("publishing KeyPackages: %w", err)
	}
	return c.publish(ctx, n, lastResort, false)
}

// publish is Publish once the binding is fresh; done clears the record's
// republishDue once the gateway took the KeyPackages. c.mu is held.
func (c *Client) publish(ctx context.Context, n int, lastResort, done bool) error {
	prev := c.rec
	rec := c.rec.clone()
	// KeyPackages whose lifetime is over can no longer be claimed: their
	// private keys go.
	now := uint64(max(c.now().Unix(), 0))
	rec.keyPackages = slices.DeleteFunc(rec.keyPackages, func(k storedKeyPackage) bool {
		var kp mls.KeyPackage
		return wire.Unmarshal(k.keyPackage, &kp, "KeyPackage") == nil && kp.LeafNode.Lifetime.NotAfter < now
	})
	req := &localapi.PublishRequest{ClientURI: rec.clientURI}
	for i := 0; i < n+1; i++ {
		last := i == n
		if last && !lastResort {
			break
		}
		_, st, err := c.newKeyPackage(last)
		if err != nil {
			return fmt.Errorf("publishing KeyPackages: %w", err)
		}
		rec.keyPackages = append(rec.keyPackages, st)
		req.KeyPackages = append(req.KeyPackages, localapi.KeyPackageEntry{LastResort: last, KeyPackage: st.keyPackage})
	}
	if len(req.KeyPackages) == 0 {
		return nil
	}
	if err := c.saveRecord(rec); err != nil {
		return fmt.Errorf("publishing KeyPackages: %w", err)
	}
	var list localapi.KeyPackageList
	if err := c.postLocal(ctx, "/key_packages", req, &list); err != nil {
		if refused(err) {
			// The gateway published none of them: forget their keys.
			if serr := c.saveRecord(prev); serr != nil {
				return fmt.Errorf("publishing KeyPackages: %w (and forgetting them: %v)", err, serr)
			}
		}
		return fmt.Errorf("publishing KeyPackages: %w", err)
	}
	if done {
		rec = c.rec.clone()
		rec.republishDue = false
		if err := c.saveRecord(rec); err != nil {
			return fmt.Errorf("publishing KeyPackages: recording them published: %w", err)
		}
	}
	return nil
}

// DefaultKeyPackages is how many single-use KeyPackages a client
// publishes by default (mimictl's client init and client publish), and
// the fewest it publishes again after renewing its binding.
const DefaultKeyPackages = 10

// republish replaces, after a renewal of the binding, the KeyPackages
// published under a previous binding, which can be claimed only until it
// expires: it publishes as many single-use ones as are stored, not used
// yet and not carrying the current binding (at least
// DefaultKeyPackages), less those carrying it that the gateway already
// has available (GET key_packages: an earlier attempt whose answer was
// lost), at most as many as the gateway's MaxPublish takes besides those
// it holds, and a last-resort one when one such is stored and the
// gateway has none carrying the current binding. The
// private keys of the old ones are kept until they expire: they may still
// be claimed, and a Welcome for them may come. It does nothing unless
// the record says a republish is due, and clears that once the gateway
// took them. c.mu is held.
func (c *Client) republish(ctx context.Context) error {
	if !c.rec.republishDue {
		return nil
	}
	n, lastResort, current := 0, false, 0
	now := uint64(max(c.now().Unix(), 0))
	for _, k := range c.rec.keyPackages {
		var kp mls.KeyPackage
		if wire.Unmarshal(k.keyPackage, &kp, "KeyPackage") != nil {
			continue
		}
		na := kp.LeafNode.Lifetime.NotAfter
		if na < now {
			continue
		}
		if na >= c.binding.NotAfter {
			current++
			continue
		}
		if k.lastResort {
			lastResort = true
		} else {
			n++
		}
	}
	// An earlier attempt whose answer was lost (a 503, a connection
	// reset) may have been taken: the KeyPackages the gateway holds that
	// carry the current binding count, so that a retry publishes only
	// what is missing rather than as many again each time (each
	// attempt's keys are kept, since the gateway may hold its
	// KeyPackages). The old ones stay available at the gateway until they
	// expire, and it takes no more than MaxPublish of a client's at once:
	// the new ones are as many as fit besides those it holds, and the
	// keys kept of those carrying the current binding stay under
	// MaxPublish too.
	var list localapi.KeyPackageList
	if err := c.localRequest(ctx, "GET", "/key_packages", url.Values{"client": {string(c.rec.clientURI)}}, nil, &list); err != nil {
		return fmt.Errorf("replacing the KeyPackages of the previous binding: listing the published ones: %w", err)
	}
	have := 0
	for _, e := range list.KeyPackages {
		var kp mls.KeyPackage
		if wire.Unmarshal(e.KeyPackage, &kp, "KeyPackage") != nil || kp.LeafNode.Lifetime.NotAfter < c.binding.NotAfter {
			continue
		}
		if e.LastResort {
			lastResort = false
		} else {
			have++
		}
	}
	want := max(n, DefaultKeyPackages) - have
	if want <= 0 && !lastResort {
		// The gateway has them all: the republish is done.
		rec := c.rec.clone()
		rec.republishDue = false
		if err := c.saveRecord(rec); err != nil {
			return fmt.Errorf("replacing the KeyPackages of the previous binding: %w", err)
		}
		return nil
	}
	// With no room for any now, the republish stays due: a later one
	// publishes them once claims or expiries have made room.
	n = max(min(want, localapi.MaxPublish-1-len(list.KeyPackages), localapi.MaxPublish-1-current), 0)
	if n == 0 && !lastResort {
		return nil
	}
	if err := c.publish(ctx, n, lastResort, true); err != nil {
		return fmt.Errorf("replacing the KeyPackages of the previous binding: %w", err)
	}
	return nil
}

// PublishedKeyPackages returns how many of the client's KeyPackages the
// gateway still has available, the last-resort one included.
func (c *Client) PublishedKeyPackages(ctx context.Context) (int, error) {
	c.mu.Lock()
	uri := string(c.rec.clientURI)
	c.mu.Unlock()
	var list localapi.KeyPackageList
	if err := c.localRequest(ctx, "GET", "/key_packages", url.Values{"client": {uri}}, nil, &list); err != nil {
		return 0, fmt.Errorf("listing KeyPackages: %w", err)
	}
	return len(list.KeyPackages), nil
}

// claim claims KeyPackages of target (a user or client URI of this
// provider) of the client's suite through the local API, and checks each:
// it decodes and verifies, and its leaf names a client of target.
func (c *Client) claim(ctx context.Context, target string) ([]*mls.KeyPackage, error) {
	var list localapi.KeyPackageList
	if err := c.postLocal(ctx, "/claim_key_packages", &localapi.ClaimRequest{CipherSuite: uint16(c.rec.suite), Target: []byte(target)}, &list); err != nil {
		return nil, fmt.Errorf("claiming KeyPackages of %s: %w", target, err)
	}
	if len(list.KeyPackages) == 0 {
		return nil, fmt.Errorf("claiming KeyPackages of %s: none available", target)
	}
	now := uint64(max(c.now().Unix(), 0))
	var out []*mls.KeyPackage
	for i, e := range list.KeyPackages {
		kp := new(mls.KeyPackage)
		if err := wire.Unmarshal(e.KeyPackage, kp, "KeyPackage"); err != nil {
			return nil, fmt.Errorf("claimed KeyPackage %d of %s: %w", i, target, err)
		}
		if err := kp.VerifyAt(now); err != nil {
			return nil, fmt.Errorf("claimed KeyPackage %d of %s: %w", i, target, err)
		}
		id := kp.LeafNode.Credential.Identity
		if string(id) != target && userOf(id) != target {
			return nil, fmt.Errorf("claimed KeyPackage %d of %s is of %q", i, target, id)
		}
		if kp.CipherSuite != c.rec.suite {
			return nil, fmt.Errorf("claimed KeyPackage %d of %s is of suite %d", i, target, uint16(kp.CipherSuite))
		}
		out = append(out, kp)
	}
	return out, nil
}
