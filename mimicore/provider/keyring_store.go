package provider

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// openStoreRing opens a key ring in store mode (see KeyRing): it loads the
// keys, failing on one that does not open, and makes sure a key covers
// now, creating it or waiting up to openWait for the gateway that holds
// the rotation lease to create it.
func openStoreRing(ctx context.Context, opts KeyRingOptions, now time.Time) (*KeyRing, error) {
	holder := make([]byte, 16)
	if _, err := rand.Read(holder); err != nil {
		return nil, fmt.Errorf("opening key ring: %w", err)
	}
	r := &KeyRing{scheme: opts.Scheme, rotateEvery: opts.RotateEvery, overlap: opts.Overlap, meta: opts.Metadata,
		sealer: opts.Sealer, leases: opts.Leases, holder: hex.EncodeToString(holder), opened: make(map[string]*PrivateKey),
		schemeStamp: true}
	start := time.Now()
	for {
		at := now.Add(time.Since(start))
		if _, err := r.Rotate(ctx, at); err != nil {
			return nil, fmt.Errorf("opening key ring: %w", err)
		}
		if _, err := r.Current(at); err == nil {
			return r, nil
		}
		if time.Since(start) > openWait {
			return nil, fmt.Errorf("opening key ring: no signing key after %s: another gateway holds the rotation lease but created none", openWait)
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("opening key ring: waiting for another gateway's key: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// LoadSharedKeyRing reads the keys sealed in keys (a store-mode ring's,
// see KeyRing) without creating, retiring or deleting any: a read-only view
// for tools that sign as the provider while its gateways own the keys, the
// counterpart of LoadKeyRing for gateways with key_secret. sealer must hold
// the gateways' secret: a key that does not open fails the load with
// ErrWrongKeySecret, and a store without sealed keys is an error, never an
// empty ring. The view's Rotate only reloads the keys (a tool that runs
// longer than StoreReloadEvery calls it as often, to sign with the
// successors the gateways create); its Current, like theirs, signs with a
// successor only from its NotBefore.
func LoadSharedKeyRing(ctx context.Context, keys store.SigningKeys, sealer *KeySealer) (*KeyRing, error) {
	if keys == nil || sealer == nil {
		return nil, errors.New("loading shared key ring: a store and a key sealer are required")
	}
	r := &KeyRing{meta: keys, sealer: sealer, opened: make(map[string]*PrivateKey)}
	if _, err := r.Rotate(ctx, time.Now()); err != nil {
		return nil, fmt.Errorf("loading shared key ring: %w", err)
	}
	r.mu.RLock()
	n := len(r.keys)
	r.mu.RUnlock()
	if n == 0 {
		return nil, errors.New("loading shared key ring: the store holds no sealed signing key (is this the gateways' store, and do they run with key_secret?)")
	}
	return r, nil
}

// rotateShared is Rotate in store mode. A read-only ring (LoadSharedKeyRing:
// no leases) only reloads the keys still valid at now.
func (r *KeyRing) rotateShared(ctx context.Context, now time.Time) (bool, error) {
	r.rotMu.Lock()
	defer r.rotMu.Unlock()
	keys, err := r.loadShared(ctx)
	if err != nil {
		return false, err
	}
	if r.leases == nil {
		kept := keys[:0:0]
		for _, k := range keys {
			if !now.After(k.NotAfter) {
				kept = append(kept, k)
			}
		}
		r.mu.Lock()
		r.keys, r.superseded = kept, r.loadedSuperseded
		r.mu.Unlock()
		return false, nil
	}
	created := false
	if r.dueShared(r.live(keys), now) {
		won, err := r.leases.AcquireLease(ctx, store.LeaseKeyRotation, r.holder, now, RotationLeaseTTL)
		if err != nil {
			return false, fmt.Errorf("rotating signing keys: %w", err)
		}
		if won {
			keys, created, err = r.createShared(ctx, now)
			// Released even when the creation failed, so that another
			// gateway may try at once; with a context of its own, since a
			// cancelled ctx must not keep the lease held for its ttl.
			relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			relErr := r.leases.ReleaseLease(relCtx, store.LeaseKeyRotation, r.holder)
			cancel()
			if err := errors.Join(err, relErr); err != nil {
				return false, fmt.Errorf("rotating signing keys: %w", err)
			}
		}
	}
	kept := keys[:0:0]
	var errs []error
	for _, k := range keys {
		if !now.After(k.NotAfter) {
			kept = append(kept, k)
			continue
		}
		// Any gateway may forget an expired key: it signs nothing and is
		// published nowhere any more.
		if err := r.meta.DeleteSigningKey(ctx, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
		}
		delete(r.opened, string(k.ID))
	}
	r.mu.Lock()
	r.keys, r.superseded = kept, r.loadedSuperseded
	r.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return created, fmt.Errorf("deleting expired keys: %w", err)
	}
	return created, nil
}

// live returns keys without the superseded ones of the last load. The
// caller holds r.rotMu.
func (r *KeyRing) live(keys []*PrivateKey) []*PrivateKey {
	out := make([]*PrivateKey, 0, len(keys))
	for _, k := range keys {
		if !r.loadedSuperseded[string(k.ID)] {
			out = append(out, k)
		}
	}
	return out
}

// dueShared reports whether keys, oldest first, need a successor at now:
// there is none; or the newest is pending (its NotBefore, SuccessorLead
// after its creation, is still ahead) and is not of the configured scheme;
// or the newest is not pending and due (see due).
//
// But a newest key of another scheme that was created after this ring's
// scheme was set (schemeSince: its open, or its last scheme change) is
// due only by its age: another gateway, configured later, made it. Two
// gateways briefly on different schemes (a rolling key_scheme change, or
// one forgotten on the old scheme) would otherwise replace each other's
// keys at every reload, none of them signing, each kept for its whole
// lifetime. So the gateway whose scheme was set last decides: a change
// (or a restart) takes effect at once, a gateway left on another scheme
// makes no key until the regular rotation, and at a rotation the
// gateway that rotates makes the successor in its own scheme.
func (r *KeyRing) dueShared(keys []*PrivateKey, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.schemeStamp {
		r.schemeSince, r.schemeStamp = now, false
	}
	if len(keys) == 0 {
		return true
	}
	newest := keys[len(keys)-1]
	otherScheme := r.scheme != 0 && newest.Scheme != r.scheme
	// A successor is created SuccessorLead before its NotBefore (a first
	// key signs at once: this puts its creation up to SuccessorLead too
	// early, which only makes this ring treat it as older).
	if otherScheme && newest.NotBefore.Add(-SuccessorLead).After(r.schemeSince) {
		otherScheme = false
	}
	if now.Before(newest.NotBefore) {
		return otherScheme
	}
	return otherScheme || !now.Before(r.succeedAt(newest)) || !newest.Covers(now)
}

// successorStart returns the NotBefore of a key created at now after keys
// (oldest first): now plus SuccessorLead, so that the other gateways
// publish it before it signs, when a key signs until then; now itself
// when none covers now (the first key, or all expired) or the one that
// does expires within the lead, since a gap in signing is worse than a
// key some gateway does not publish yet.
func successorStart(keys []*PrivateKey, now time.Time) time.Time {
	at := now.Add(SuccessorLead)
	for i := len(keys) - 1; i >= 0; i-- {
		if keys[i].Covers(now) {
			if keys[i].Covers(at) {
				return at
			}
			break
		}
	}
	return now
}

// createShared runs while the ring holds the rotation lease: it reloads
// the keys, since the previous holder may have created the successor
// between this ring's first load and its taking the lease, and if one is
// still due, creates, seals and records it, valid from successorStart, and
// retires its predecessor as of then. A predecessor that still waits for
// its NotBefore (the options changed again within SuccessorLead) has
// signed nothing: the new key replaces it, and it is retired as of its own
// NotBefore instead, which makes it superseded: every ring that loads it
// so skips it in Current, and the key that signs keeps signing until the
// new key's NotBefore. So a ring holds at most one waiting successor,
// however often the scheme changes. It returns the keys and whether it
// created one.
func (r *KeyRing) createShared(ctx context.Context, now time.Time) ([]*PrivateKey, bool, error) {
	keys, err := r.loadShared(ctx)
	if err != nil {
		return keys, false, err
	}
	live := r.live(keys)
	if !r.dueShared(live, now) {
		return keys, false, nil
	}
	r.mu.RLock()
	scheme, lifetime := r.scheme, r.rotateEvery+r.overlap
	r.mu.RUnlock()
	start := successorStart(live, now)
	k, err := GenerateKey(scheme, start, start.Add(lifetime))
	if err != nil {
		return keys, false, err
	}
	sealed, err := r.sealer.Seal(k)
	if err != nil {
		return keys, false, err
	}
	if err := r.meta.InsertSigningKey(ctx, store.SigningKey{
		KeyID: k.ID, Scheme: uint16(k.Scheme), PublicKey: k.public,
		NotBefore: k.NotBefore, NotAfter: k.NotAfter, File: keyFileName(k), Sealed: sealed,
	}); err != nil {
		return keys, false, fmt.Errorf("recording signing key %x: %w", k.ID, err)
	}
	if n := len(live); n > 0 {
		prev, retired := live[n-1], k.NotBefore
		if now.Before(prev.NotBefore) {
			retired = prev.NotBefore
		}
		if err := r.meta.RetireSigningKey(ctx, prev.ID, retired); err != nil {
			return keys, false, fmt.Errorf("retiring signing key %x: %w", prev.ID, err)
		}
		if retired.Equal(prev.NotBefore) {
			r.loadedSuperseded[string(prev.ID)] = true
		}
	}
	r.opened[string(k.ID)] = k
	// Ordered as loadShared orders: k starts last, unless it signs at
	// once (successorStart returned now) before a superseded key's start.
	keys = append(keys, k)
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].NotBefore.Before(keys[j].NotBefore) })
	return keys, true, nil
}

// loadShared lists the keys in the store and opens the sealed ones (each
// once: opened keys are kept), ordered oldest first: by NotBefore, then
// retired before not retired, then a key of another scheme before one of
// the configured scheme, then by key id. Keys without a sealed private key
// (a file-mode ring's, recorded before the store was shared) are skipped.
// A key that does not open fails the load, naming it. The caller holds
// r.rotMu.
func (r *KeyRing) loadShared(ctx context.Context) ([]*PrivateKey, error) {
	rows, err := r.meta.ListSigningKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading signing keys: %w", err)
	}
	type loaded struct {
		k       *PrivateKey
		retired bool
	}
	var list []loaded
	superseded := make(map[string]bool)
	for _, row := range rows {
		if len(row.Sealed) == 0 {
			continue
		}
		k := r.opened[string(row.KeyID)]
		if k == nil {
			k, err = r.sealer.Open(row.Sealed, row.KeyID, moh.SignatureScheme(row.Scheme))
			if err != nil {
				return nil, fmt.Errorf("loading signing keys: %w", err)
			}
			r.opened[string(row.KeyID)] = k
		}
		list = append(list, loaded{k, !row.RetiredAt.IsZero()})
		if !row.RetiredAt.IsZero() && !row.RetiredAt.After(row.NotBefore) {
			// Retired before it could sign: replaced while it waited.
			superseded[string(row.KeyID)] = true
		}
	}
	r.loadedSuperseded = superseded
	r.mu.RLock()
	scheme := r.scheme
	r.mu.RUnlock()
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		switch {
		case !a.k.NotBefore.Equal(b.k.NotBefore):
			return a.k.NotBefore.Before(b.k.NotBefore)
		case a.retired != b.retired:
			return a.retired
		case (a.k.Scheme == scheme) != (b.k.Scheme == scheme):
			return b.k.Scheme == scheme
		}
		return bytes.Compare(a.k.ID, b.k.ID) < 0
	})
	keys := make([]*PrivateKey, len(list))
	for i, l := range list {
		keys[i] = l.k
	}
	return keys, nil
}
