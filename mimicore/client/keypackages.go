package client

import (
	"context"
	"crypto/hpke"
	"crypto/rand"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
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
		rec.republishDue, rec.republishAfter = false, time.Time{}
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
// lost, after those of such attempts it does not list were sent again,
// settleUnlisted), at most as many as the gateway's MaxPublish takes besides those
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
	// An earlier attempt whose answer was lost (a 503, a connection
	// reset) may have been taken, or not: the KeyPackages the gateway
	// holds that carry the current binding count (below), and those it
	// does not list are settled first (settleUnlisted), so that a retry
	// publishes only what is missing rather than as many again each time.
	// The old ones stay available at the gateway until they expire, and
	// it takes no more than MaxPublish of a client's at once: the new ones
	// are as many as fit besides those it holds, and the keys kept of
	// those carrying the current binding stay under MaxPublish too.
	list, err := c.listKeyPackages(ctx)
	if err != nil {
		return fmt.Errorf("replacing the KeyPackages of the previous binding: %w", err)
	}
	settled, err := c.settleUnlisted(ctx, list)
	if err != nil {
		return fmt.Errorf("replacing the KeyPackages of the previous binding: %w", err)
	}
	if settled {
		if list, err = c.listKeyPackages(ctx); err != nil {
			return fmt.Errorf("replacing the KeyPackages of the previous binding: %w", err)
		}
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
		rec.republishDue, rec.republishAfter = false, time.Time{}
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

// listKeyPackages answers the client's KeyPackages the gateway has
// available (GET key_packages). c.mu is held.
func (c *Client) listKeyPackages(ctx context.Context) (*localapi.KeyPackageList, error) {
	var list localapi.KeyPackageList
	if err := c.localRequest(ctx, "GET", "/key_packages", url.Values{"client": {string(c.rec.clientURI)}}, nil, &list); err != nil {
		return nil, fmt.Errorf("listing the published KeyPackages: %w", err)
	}
	return &list, nil
}

// unlistedWindow is how recently a KeyPackage must have been made for
// settleUnlisted to publish it again. A gateway answers a KeyPackage
// published before and claimed since with 409 replay (docs/protocol.md
// §10.4) only while its store remembers the claim: this gateway's until
// the KeyPackage's end of availability, but earlier versions only for 14
// days (store.ClaimedKeyPackageRetention), after which they took the
// same bytes as new. One made within the window was claimed, if at all,
// within it, so the answer tells, and publishing it again never hands it
// out twice.
const unlistedWindow = 7 * 24 * time.Hour

// settleUnlisted settles the KeyPackages carrying the current binding
// whose keys the client keeps but the gateway does not list (list): those
// of a publish whose answer was lost, which the gateway took (and handed
// out since) or not. It publishes them again, as they are: the gateway
// takes those it never took (a retry of a publish whose KeyPackages are
// still available changes nothing, docs/protocol.md §10.4) and answers
// 409 replay for one it took and handed out since, whose keys stay, since
// a Welcome for it may come. A refusal of them together is sorted out
// one by one, and the keys of one the gateway refuses as over its quota
// (never taken: one it took is available or claimed) are deleted. So a
// retried republish finds the gateway holding what an earlier attempt
// sent rather than keeping, at each lost answer, the keys of as many
// again that the gateway never took. A rate_limited refusal stops it
// there, the keys kept: every further request would be refused too, and
// the republish stays due. A KeyPackage made more than
// unlistedWindow ago, or a last-resort one while the gateway lists one
// carrying the current binding (publishing it would replace that one), is
// left as it is. It reports whether it published any; an answer lost
// again, or a rate limit, is an error, and the next republish settles
// them again. c.mu is held.
func (c *Client) settleUnlisted(ctx context.Context, list *localapi.KeyPackageList) (bool, error) {
	now := uint64(max(c.now().Unix(), 0))
	listed, listedLastResort := make(map[string]bool), false
	for _, e := range list.KeyPackages {
		listed[string(e.KeyPackage)] = true
		var kp mls.KeyPackage
		if e.LastResort && wire.Unmarshal(e.KeyPackage, &kp, "KeyPackage") == nil && kp.LeafNode.Lifetime.NotAfter >= c.binding.NotAfter {
			listedLastResort = true
		}
	}
	var unlisted []storedKeyPackage
	for _, k := range c.rec.keyPackages {
		var kp mls.KeyPackage
		if listed[string(k.keyPackage)] || wire.Unmarshal(k.keyPackage, &kp, "KeyPackage") != nil {
			continue
		}
		lt := kp.LeafNode.Lifetime
		// newKeyPackage dates not_before an hour back.
		made := lt.NotBefore + uint64(time.Hour/time.Second)
		if lt.NotAfter < now || lt.NotAfter < c.binding.NotAfter || made+uint64(unlistedWindow/time.Second) < now ||
			(k.lastResort && listedLastResort) {
			continue
		}
		unlisted = append(unlisted, k)
	}
	if len(unlisted) == 0 {
		return false, nil
	}
	post := func(ks ...storedKeyPackage) error {
		req := &localapi.PublishRequest{ClientURI: c.rec.clientURI}
		for _, k := range ks {
			req.KeyPackages = append(req.KeyPackages, localapi.KeyPackageEntry{LastResort: k.lastResort, KeyPackage: k.keyPackage})
		}
		var answer localapi.KeyPackageList
		return c.postLocal(ctx, "/key_packages", req, &answer)
	}
	if len(unlisted) <= localapi.MaxPublish {
		err := post(unlisted...)
		if err == nil {
			return true, nil
		}
		if code, _ := CodeOf(err); !refused(err) || code == moh.CodeRateLimited {
			// A rate limit refuses each of them alone too: the keys stay,
			// and the republish, still due, settles them later.
			return false, fmt.Errorf("publishing again the KeyPackages a lost answer left unsettled: %w", err)
		}
	}
	// Refused together (one of them was handed out since, two last-resort
	// ones, the quota), or more than one request takes: one by one.
	drop := make(map[string]bool)
	var lost error
	for _, k := range unlisted {
		err := post(k)
		code, _ := CodeOf(err)
		switch {
		case err == nil, code == moh.CodeReplay:
			// Available now, or taken before and handed out since.
		case refused(err) && code == moh.CodeQuotaExceeded:
			drop[string(k.ref)] = true
		case refused(err) && code == moh.CodeRateLimited:
			// The rest would be refused as well: stop, keeping the keys
			// of this one and of those not sent yet; the republish stays
			// due and settles them later.
			lost = fmt.Errorf("publishing again a KeyPackage a lost answer left unsettled: %w", err)
		case refused(err):
			// Refused for another reason (its binding, its lifetime):
			// whether the gateway took it before is not known; kept.
		default:
			lost = fmt.Errorf("publishing again a KeyPackage a lost answer left unsettled: %w", err)
		}
		if lost != nil {
			break
		}
	}
	if len(drop) > 0 {
		rec := c.rec.clone()
		rec.keyPackages = slices.DeleteFunc(rec.keyPackages, func(k storedKeyPackage) bool { return drop[string(k.ref)] })
		if err := c.saveRecord(rec); err != nil {
			return false, fmt.Errorf("deleting the keys of KeyPackages the gateway never took: %w", err)
		}
	}
	if lost != nil {
		return false, lost
	}
	return true, nil
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
