package provider

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Defaults of a KeyRing.
const (
	DefaultRotateEvery = 30 * 24 * time.Hour
	// DefaultOverlap is how long a key stays valid after its successor
	// took over: longer than any peer caches keys (24 h), so requests in
	// flight and cached keys never break.
	DefaultOverlap = 48 * time.Hour
)

const keyFileSuffix = ".key.pem"

// KeyRing holds the provider's signing keys. The newest key signs; older
// keys are published until they expire, then deleted. It runs in one of
// two modes:
//
//   - file mode (the embedded default): the keys live in a directory, one
//     0600 PEM file per key, named by key id, written atomically. When a
//     metadata store is given, every key's id, scheme, public key,
//     validity, retirement and file name are recorded there too.
//   - store mode (KeyRingOptions.Sealer set): the keys live in the store,
//     sealed under the admin's secret (KeySealer), so that every gateway
//     on one database signs as one provider. The store is the source of
//     truth: Rotate reloads it first, and of gateways that find a
//     successor due at once, the one holding the store.LeaseKeyRotation
//     lease creates it and the others load it at their next Rotate. The
//     caller calls Rotate at least every StoreReloadEvery so that keys
//     another gateway created are picked up (the service does). A
//     successor is created SuccessorLead ahead of its NotBefore: every
//     gateway publishes it once it has reloaded, and none signs with it
//     (Current) before NotBefore, so a peer that sees a signature under it
//     finds it on whichever gateway it asks, even if it looked the id up
//     earlier on a gateway that did not publish it yet.
//
// A KeyRing is safe for concurrent use.
type KeyRing struct {
	dir         string
	scheme      moh.SignatureScheme
	rotateEvery time.Duration
	overlap     time.Duration
	meta        store.SigningKeys

	// Store mode only: sealer is nil in file mode.
	sealer *KeySealer
	leases store.Leases
	holder string                 // this ring's lease holder id, random
	opened map[string]*PrivateKey // keys opened so far, by key id; under rotMu
	// loadedSuperseded is the set of superseded keys (see superseded) of
	// the last load; under rotMu.
	loadedSuperseded map[string]bool
	rotMu            sync.Mutex // serialises Rotate in store mode

	mu   sync.RWMutex
	keys []*PrivateKey // by NotBefore, oldest first
	// schemeSince is, in store mode, the time of the first Rotate after
	// the ring was opened or its scheme changed (schemeStamp is set until
	// then): a key of another scheme created later than that was made by
	// a gateway configured later, which this one leaves alone (see
	// dueShared).
	schemeSince time.Time
	schemeStamp bool
	// superseded holds, in store mode, the ids of the keys in keys that
	// were replaced while they waited for their NotBefore (see
	// createShared): they never sign, and are published only while the
	// list has room, for a gateway that has not reloaded since.
	superseded map[string]bool
}

// Store mode's timing.
const (
	// StoreReloadEvery is how often a key ring in store mode must be
	// reloaded (Rotate) for keys other gateways created to be published
	// and used here.
	StoreReloadEvery = 30 * time.Second
	// SuccessorLead is how long before it signs a successor key is created
	// in store mode (its NotBefore lies this far after its creation). Every
	// gateway publishes the successor within maxPublishLag of its
	// creation, but a peer may look its id up before that (a forged
	// request can name it, since the gateways that reloaded publish it):
	// if that peer's fetch reaches a gateway that has not reloaded yet, it
	// answers the id 401 unknown_key for up to peerMissLag after that
	// gateway's answer. The lead is twice (maxPublishLag + peerMissLag)
	// (250 s), so that the successor signs only once every peer can have
	// fetched it, with room for a slow reload and for gateways' clocks
	// that differ. The predecessor signs meanwhile. The first key, and a
	// successor of a key that expires within the lead, sign at once,
	// since nothing else could.
	SuccessorLead = 2 * (maxPublishLag + peerMissLag)
	// maxPublishLag is how long after its creation every gateway in store
	// mode publishes a key another gateway created: two reload intervals,
	// when one reload fails.
	maxPublishLag = 2 * StoreReloadEvery
	// peerMissLag is how long after a gateway answered without a key a
	// peer may keep refusing requests under it: its fetch may take the
	// fetch timeout (docs/protocol.md §4.1, 5 s by default), and PROFILE §4
	// lets it wait a minute (MinInterval) before fetching again, as a
	// KeyFetcher does for a key_id its fetch did not contain.
	peerMissLag = defaultFetchLimit + defaultMinInterval
	// RotationLeaseTTL is how long the rotation lease is held at most: a
	// gateway that dies while creating a key holds up the others' rotation
	// this long. Creating a key takes milliseconds.
	RotationLeaseTTL = 30 * time.Second
	// openWait bounds how long OpenKeyRing in store mode waits for another
	// gateway, which holds the rotation lease, to create the first key.
	openWait = 2 * RotationLeaseTTL
)

// KeyRingOptions configures OpenKeyRing and KeyRing.SetOptions. Zero
// fields take the defaults.
type KeyRingOptions struct {
	// Scheme is the signature scheme of the keys the ring creates. Default
	// Ed25519. When the signing key's scheme differs, the next Rotate
	// creates a key of this scheme at once.
	Scheme moh.SignatureScheme
	// RotateEvery is how long a key signs before a successor is created.
	// Default 30 days.
	RotateEvery time.Duration
	// Overlap is how long a key stays valid after its successor took over.
	// Default 48 hours. RotateEvery + Overlap is a new key's lifetime and
	// may not exceed MaxKeyLifetime.
	Overlap time.Duration
	// Metadata, when set, records the keys' metadata (the private keys stay
	// in the files). Only OpenKeyRing reads it: SetOptions keeps the store
	// the ring was opened with.
	Metadata store.SigningKeys
	// Sealer, when set, selects store mode: the keys live sealed in
	// Metadata, which is then required, as is Leases, and the directory is
	// not used. Only OpenKeyRing reads it.
	Sealer *KeySealer
	// Leases holds the rotation lease in store mode. Only OpenKeyRing
	// reads it.
	Leases store.Leases
}

// withDefaults fills in the zero fields of o and checks the result.
func (o KeyRingOptions) withDefaults() (KeyRingOptions, error) {
	if o.Scheme == 0 {
		o.Scheme = moh.SchemeEd25519
	}
	if o.Scheme != moh.SchemeEd25519 && o.Scheme != moh.SchemeECDSAP256SHA256 {
		return o, fmt.Errorf("unsupported signature scheme 0x%04x", uint16(o.Scheme))
	}
	if o.RotateEvery < 0 || o.Overlap < 0 {
		return o, fmt.Errorf("negative rotation interval %s or overlap %s", o.RotateEvery, o.Overlap)
	}
	if o.RotateEvery == 0 {
		o.RotateEvery = DefaultRotateEvery
	}
	if o.Overlap == 0 {
		o.Overlap = DefaultOverlap
	}
	if o.RotateEvery+o.Overlap > MaxKeyLifetime {
		return o, fmt.Errorf("rotation interval %s plus overlap %s exceeds the %s key lifetime limit",
			o.RotateEvery, o.Overlap, MaxKeyLifetime)
	}
	if o.Sealer != nil && (o.Metadata == nil || o.Leases == nil) {
		return o, errors.New("keys sealed in the store need a store for them and for the rotation lease")
	}
	return o, nil
}

// OpenKeyRing loads the keys in dir (created 0700 if missing), reconciles
// the metadata store with the files (a crash between writing a file and
// recording it, or between deleting a file and forgetting it, is repaired)
// and makes sure a current key of opts.Scheme exists, creating one at now
// if needed. It refuses key files that are not regular files or that group
// or others may access (see load).
//
// In store mode (opts.Sealer set) dir is not used: the keys are loaded from
// the store, and a key that does not open under the sealer's secret fails
// the opening (ErrWrongKeySecret) rather than making a new identity. When
// no key covers now, the ring creates one, or, if another gateway holds
// the rotation lease, waits for that gateway's key.
func OpenKeyRing(ctx context.Context, dir string, opts KeyRingOptions, now time.Time) (*KeyRing, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("opening key ring: %w", err)
	}
	if opts.Sealer != nil {
		return openStoreRing(ctx, opts, now)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening key ring: %w", err)
	}
	r := &KeyRing{dir: dir, scheme: opts.Scheme, rotateEvery: opts.RotateEvery, overlap: opts.Overlap, meta: opts.Metadata}
	if err := r.load(); err != nil {
		return nil, err
	}
	if err := r.reconcile(ctx); err != nil {
		return nil, err
	}
	if _, err := r.Rotate(ctx, now); err != nil {
		return nil, err
	}
	return r, nil
}

// SetOptions replaces the ring's scheme, rotation interval and overlap
// while it is in use; opts.Metadata, opts.Sealer and opts.Leases are
// ignored. The new values take effect at the next Rotate: a different scheme makes it create a key of the new
// scheme at once (the previous key stays published until its not_after,
// as after any rotation), and a different interval or overlap moves the
// next rotation (NextRotation) so that the signing key is succeeded after
// at most RotateEvery and at least Overlap before it expires. Keys already
// created keep their validity. Invalid options are refused and change
// nothing. SetOptions is safe for concurrent use with every other method.
func (r *KeyRing) SetOptions(opts KeyRingOptions) error {
	opts, err := opts.withDefaults()
	if err != nil {
		return fmt.Errorf("setting key ring options: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if opts.Scheme != r.scheme {
		r.schemeStamp = true
	}
	r.scheme, r.rotateEvery, r.overlap = opts.Scheme, opts.RotateEvery, opts.Overlap
	return nil
}

// Options returns the options in effect, defaults filled in, with the
// metadata store the ring was opened with.
func (r *KeyRing) Options() KeyRingOptions {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return KeyRingOptions{Scheme: r.scheme, RotateEvery: r.rotateEvery, Overlap: r.overlap, Metadata: r.meta,
		Sealer: r.sealer, Leases: r.leases}
}

// Shared reports whether the ring is in store mode, where keys other
// gateways create are picked up by Rotate, to be called at least every
// StoreReloadEvery.
func (r *KeyRing) Shared() bool { return r.sealer != nil }

// reconcile makes the metadata store list exactly the key files: it
// records every file's key and forgets the file keys recorded without a
// file. It never forgets a sealed key (store mode's, which another gateway
// may have created and which has no file by design).
func (r *KeyRing) reconcile(ctx context.Context) error {
	if r.meta == nil {
		return nil
	}
	stored, err := r.meta.ListSigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("listing signing key metadata: %w", err)
	}
	onDisk := make(map[string]bool, len(r.keys))
	for i, k := range r.keys {
		onDisk[string(k.ID)] = true
		var retired time.Time
		if i+1 < len(r.keys) {
			retired = r.keys[i+1].NotBefore
		}
		if err := r.record(ctx, k, retired); err != nil {
			return err
		}
	}
	for _, m := range stored {
		if len(m.Sealed) == 0 && !onDisk[string(m.KeyID)] {
			if err := r.meta.DeleteSigningKey(ctx, m.KeyID); err != nil && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("forgetting signing key %x: %w", m.KeyID, err)
			}
		}
	}
	return nil
}

// record inserts k's metadata (a no-op when it is already there) and marks
// it retired at retired, if set.
func (r *KeyRing) record(ctx context.Context, k *PrivateKey, retired time.Time) error {
	if r.meta == nil {
		return nil
	}
	err := r.meta.InsertSigningKey(ctx, store.SigningKey{
		KeyID: k.ID, Scheme: uint16(k.Scheme), PublicKey: k.public,
		NotBefore: k.NotBefore, NotAfter: k.NotAfter, File: keyFileName(k),
	})
	if err != nil {
		return fmt.Errorf("recording signing key %x: %w", k.ID, err)
	}
	if !retired.IsZero() {
		if err := r.meta.RetireSigningKey(ctx, k.ID, retired); err != nil {
			return fmt.Errorf("retiring signing key %x: %w", k.ID, err)
		}
	}
	return nil
}

// LoadKeyRing reads the keys in dir without creating or deleting any: a
// read-only view for tools that sign as the provider while its gateway owns
// the directory. It reads key files only: a gateway with key_secret keeps
// its keys sealed in its store, and a tool loads them with
// LoadSharedKeyRing; a directory without key files is an error that says
// so, never an empty ring.
func LoadKeyRing(dir string) (*KeyRing, error) {
	r := &KeyRing{dir: dir}
	if err := r.load(); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("loading key ring: %w (a gateway with key_secret keeps its keys in its store: load them with LoadSharedKeyRing)", err)
		}
		return nil, err
	}
	if len(r.keys) == 0 {
		return nil, fmt.Errorf("loading key ring: no key files in %s (a gateway with key_secret keeps its keys in its store: load them with LoadSharedKeyRing)", dir)
	}
	return r, nil
}

// load reads every key file of the directory. It refuses, naming the file,
// a key file that is not a regular file (a symbolic link, a device) and,
// except on Windows, one whose permissions let group or others access it:
// the ring writes its keys 0600, so a wider mode means someone changed it
// or the files were copied in carelessly, and the private key must be
// assumed exposed to other local users.
func (r *KeyRing) load() error {
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return fmt.Errorf("reading key directory: %w", err)
	}
	var keys []*PrivateKey
	written := make(map[*PrivateKey]time.Time)
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), keyFileSuffix) {
			continue
		}
		data, mtime, err := readKeyFile(filepath.Join(r.dir, e.Name()))
		if err != nil {
			return fmt.Errorf("reading key %s: %w", e.Name(), err)
		}
		k, err := ParsePEM(data)
		if err != nil {
			return fmt.Errorf("loading key %s: %w", e.Name(), err)
		}
		if keyFileName(k) != e.Name() {
			return fmt.Errorf("loading key %s: file name does not match key id %x", e.Name(), k.ID)
		}
		keys = append(keys, k)
		written[k] = mtime
	}
	// The files keep NotBefore to the second, so keys created within one
	// second (a scheme change right after a rotation) are ordered by when
	// their files were written and, if the clock could not tell them
	// apart, with a key of the configured scheme last (it was the newest
	// unless the scheme changed again since).
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if !a.NotBefore.Equal(b.NotBefore) {
			return a.NotBefore.Before(b.NotBefore)
		}
		if !written[a].Equal(written[b]) {
			return written[a].Before(written[b])
		}
		return a.Scheme != r.scheme && b.Scheme == r.scheme
	})
	r.keys = keys
	return nil
}

// maxKeyFileSize bounds a key file read: a PEM private key of any
// supported scheme is far smaller.
const maxKeyFileSize = 64 << 10

// readKeyFile reads the private key file at path, after checking on the
// open file that it is a regular file only its owner may access, and
// returns its modification time too.
func readKeyFile(path string) ([]byte, time.Time, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, time.Time{}, err
	}
	if !fi.Mode().IsRegular() {
		return nil, time.Time{}, fmt.Errorf("%s is not a regular file (mode %s); replace it with the key file itself", path, fi.Mode())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, err
	}
	if !os.SameFile(fi, st) || !st.Mode().IsRegular() {
		return nil, time.Time{}, fmt.Errorf("%s was replaced while being opened", path)
	}
	if perm := st.Mode().Perm(); runtime.GOOS != "windows" && perm&0o077 != 0 {
		return nil, time.Time{}, fmt.Errorf("%s has mode %04o, which lets group or others access a private key; run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, time.Time{}, err
	}
	if len(data) > maxKeyFileSize {
		return nil, time.Time{}, fmt.Errorf("%s is larger than %d bytes", path, maxKeyFileSize)
	}
	return data, st.ModTime(), nil
}

func keyFileName(k *PrivateKey) string { return hex.EncodeToString(k.ID) + keyFileSuffix }

// Current returns the key that signs now: the newest key whose validity
// covers now, other than a superseded one (store mode).
func (r *KeyRing) Current(now time.Time) (*PrivateKey, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if i := r.signing(now); i >= 0 {
		return r.keys[i], nil
	}
	return nil, errors.New("no signing key covers the current time")
}

// signing returns the index in r.keys of the key that signs at now, or -1.
// The caller holds r.mu.
func (r *KeyRing) signing(now time.Time) int {
	for i := len(r.keys) - 1; i >= 0; i-- {
		if r.keys[i].Covers(now) && !r.superseded[string(r.keys[i].ID)] {
			return i
		}
	}
	return -1
}

// Published returns the verification keys to serve on /verification_key at
// now: every key that has not expired, newest first, at most
// moh.MaxVerifyKeys of them, since peers refuse a longer list. Settings keep
// a ring under that bound (key_overlap < 15 key_rotation); only scheme
// changes in quick succession, each of which retires a key early, can
// exceed it, and then keys that no longer sign are left out: first the
// superseded ones (store mode), which never signed, then the oldest
// retired ones. The key that signs at now (Current) and its successor
// waiting for its NotBefore (store mode) are always in the list.
func (r *KeyRing) Published(now time.Time) []moh.VerificationKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	keep := make([]bool, len(r.keys))
	n := 0
	add := func(i int) {
		if n < moh.MaxVerifyKeys && !keep[i] && !now.After(r.keys[i].NotAfter) {
			keep[i] = true
			n++
		}
	}
	if i := r.signing(now); i >= 0 {
		add(i)
	}
	for _, superseded := range []bool{false, true} {
		for i := len(r.keys) - 1; i >= 0; i-- {
			if r.superseded[string(r.keys[i].ID)] == superseded {
				add(i)
			}
		}
	}
	out := make([]moh.VerificationKey, 0, n)
	for i := len(r.keys) - 1; i >= 0; i-- {
		if keep[i] {
			out = append(out, r.keys[i].Public())
		}
	}
	return out
}

// Rotate creates a new key when the newest one is due for a successor (see
// succeedAt) or does not cover now (or there is none), and deletes the
// files of expired keys. It reports whether a key was created.
//
// In store mode it first reloads the keys from the store (so it also
// picks up keys other gateways created), and creates a key only while it
// holds the rotation lease; when another gateway holds it, it reports
// false and the key that gateway creates is loaded by a later Rotate.
func (r *KeyRing) Rotate(ctx context.Context, now time.Time) (bool, error) {
	if r.sealer != nil {
		return r.rotateShared(ctx, now)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	created := false
	if n := len(r.keys); n == 0 || r.due(r.keys[n-1], now) {
		k, err := GenerateKey(r.scheme, now, now.Add(r.rotateEvery+r.overlap))
		if err != nil {
			return false, err
		}
		pemBytes, err := k.MarshalPEM()
		if err != nil {
			return false, err
		}
		if err := writeFileAtomic(filepath.Join(r.dir, keyFileName(k)), pemBytes, 0o600); err != nil {
			return false, fmt.Errorf("storing new signing key: %w", err)
		}
		if err := r.record(ctx, k, time.Time{}); err != nil {
			return false, err
		}
		if n := len(r.keys); n > 0 {
			if err := r.record(ctx, r.keys[n-1], now); err != nil {
				return false, err
			}
		}
		r.keys = append(r.keys, k)
		created = true
	}
	kept := r.keys[:0]
	var errs []error
	for _, k := range r.keys {
		if now.After(k.NotAfter) {
			if err := os.Remove(filepath.Join(r.dir, keyFileName(k))); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
				kept = append(kept, k)
				continue
			}
			if r.meta != nil {
				if err := r.meta.DeleteSigningKey(ctx, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
					errs = append(errs, err)
				}
			}
			continue
		}
		kept = append(kept, k)
	}
	r.keys = kept
	if err := errors.Join(errs...); err != nil {
		return created, fmt.Errorf("deleting expired keys: %w", err)
	}
	return created, nil
}

// NextRotation returns when Rotate will next have work to do.
func (r *KeyRing) NextRotation() time.Time {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.keys) == 0 {
		return time.Time{}
	}
	newest := r.keys[len(r.keys)-1]
	for i := len(r.keys) - 1; i > 0 && r.superseded[string(newest.ID)]; i-- {
		newest = r.keys[i-1]
	}
	if r.scheme != 0 && newest.Scheme != r.scheme {
		return newest.NotBefore
	}
	next := r.succeedAt(newest)
	for _, k := range r.keys {
		if k.NotAfter.Before(next) {
			next = k.NotAfter.Add(time.Second)
		}
	}
	return next
}

// succeedAt returns when the newest key k must be succeeded: RotateEvery
// after it took over, or earlier if that would leave less than Overlap of
// its validity once its successor signs (after the options were changed
// to a longer interval or overlap than k was created with). The caller
// holds r.mu.
func (r *KeyRing) succeedAt(k *PrivateKey) time.Time {
	at := k.NotBefore.Add(r.rotateEvery)
	if last := k.NotAfter.Add(-r.overlap); last.Before(at) {
		at = last
	}
	return at
}

// due reports whether the newest key k needs a successor at now: its
// scheme is no longer the configured one (a read-only ring, scheme 0,
// has none), it is past succeedAt, or it does not cover now. The caller
// holds r.mu.
func (r *KeyRing) due(k *PrivateKey, now time.Time) bool {
	return (r.scheme != 0 && k.Scheme != r.scheme) || !now.Before(r.succeedAt(k)) || !k.Covers(now)
}

// writeFileAtomic writes data to path so that a crash leaves either the old
// file or the complete new one: temp file, fsync, rename, fsync directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
