package store

import (
	"context"
	"path/filepath"
	"strings"
	"time"
)

// KeyStore holds provider key metadata: the gateway's own signing keys and
// the verification keys fetched from peers, and the leases that let one of
// several gateways on one database rotate the signing keys alone.
type KeyStore interface {
	SigningKeys
	PeerKeyCache
	Leases
}

// SigningKey is one of the gateway's own signing keys. Where its private
// key lives depends on the key ring's mode:
//
//   - file mode (the embedded default): a 0600 file named File in the key
//     directory beside the database, written by the key ring; Sealed is
//     empty and the store holds the metadata only;
//   - store mode (several gateways on one database): Sealed, the private
//     key encrypted by the key ring under a secret the admin supplies. The
//     store never sees the secret or the plaintext; it keeps the bytes as
//     given. File is then the name the key's file would have, unused.
type SigningKey struct {
	// KeyID identifies the key, 1..MaxIDSize bytes.
	KeyID []byte
	// Scheme is the TLS SignatureScheme code point (0x0807 Ed25519).
	Scheme uint16
	// PublicKey is the encoded public key, 1..MaxPublicKeySize bytes.
	PublicKey []byte
	// NotBefore and NotAfter bound the key's validity.
	NotBefore, NotAfter time.Time
	// RetiredAt is when a newer key took over signing; zero while the key
	// is current. A retired key is still published until NotAfter.
	RetiredAt time.Time
	// File is the base name of the private key file: a plain name, no
	// directory, at most MaxFileNameSize bytes. The key ring joins it to
	// its own directory; the store never opens it.
	File string
	// Sealed is the private key encrypted at rest, 1..MaxSealedKeySize
	// bytes, or empty for a key kept in a file. Its format is the key
	// ring's (provider.KeySealer); the store treats it as opaque.
	Sealed []byte
}

// SigningKeys is the metadata of the gateway's own signing keys.
type SigningKeys interface {
	// InsertSigningKey records k. Inserting a key equal to a stored one in
	// every field but RetiredAt (Sealed included) is a no-op, so a key ring that crashed
	// between writing the key file and recording it can simply retry.
	// Another key with the same KeyID or File fails with ErrConflict.
	InsertSigningKey(ctx context.Context, k SigningKey) error

	// ListSigningKeys returns every recorded key, ordered by NotBefore,
	// then KeyID.
	ListSigningKeys(ctx context.Context) ([]SigningKey, error)

	// RetireSigningKey marks the key as retired at at. Retiring a retired
	// key keeps the first time and succeeds. An unknown key fails with
	// ErrNotFound.
	RetireSigningKey(ctx context.Context, keyID []byte, at time.Time) error

	// DeleteSigningKey forgets the key. The key ring calls it after it
	// deleted the key file of an expired key, or for an expired sealed
	// key; DeleteExpired never removes signing keys, so metadata never
	// disappears under a file that is still there. An unknown key fails
	// with ErrNotFound.
	DeleteSigningKey(ctx context.Context, keyID []byte) error
}

// Leases are named locks with an expiry, held by one holder at a time, so
// that of several gateways on one database exactly one does a job (the key
// ring's rotation: LeaseKeyRotation). A holder is an id random per process.
// A holder that dies keeps its lease until it expires; the others then take
// it over. Expiry is decided by the caller's clock (now): the gateways'
// clocks must agree to well within the lease's ttl.
type Leases interface {
	// AcquireLease gives the lease name to holder until now+ttl and
	// reports true when the lease was free, had expired at now, or was
	// already holder's (a renewal); otherwise it reports false and
	// changes nothing. Of holders racing for a free lease exactly one
	// gets it. name and holder are 1..MaxLeaseNameSize bytes and ttl is
	// positive, else ErrInvalid.
	AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error)

	// ReleaseLease frees the lease name if holder holds it, so another
	// holder may take it at once; otherwise it does nothing.
	ReleaseLease(ctx context.Context, name, holder string) error
}

// LeaseKeyRotation is the name of the lease a key ring in store mode holds
// while it creates a successor key.
const LeaseKeyRotation = "signing_key_rotation"

// PeerKey is a verification key of a peer provider, as fetched from its
// /verification_key endpoint.
type PeerKey struct {
	// Domain is the peer's provider FQDN.
	Domain string
	// KeyID identifies the key, 1..MaxIDSize bytes.
	KeyID []byte
	// Scheme is the TLS SignatureScheme code point.
	Scheme uint16
	// PublicKey is the encoded public key, 1..MaxPublicKeySize bytes.
	PublicKey []byte
	// NotBefore and NotAfter are the validity the peer announced.
	NotBefore, NotAfter time.Time
	// FetchedAt is when the key was fetched.
	FetchedAt time.Time
	// CacheUntil is when the cache entry expires: at most min(NotAfter,
	// FetchedAt + 24 h), which the caller computes.
	CacheUntil time.Time
}

// PeerFailure is a cached failure to fetch a peer's keys: no fetch is
// attempted before RetryAt.
type PeerFailure struct {
	// Domain is the peer's provider FQDN.
	Domain string
	// FailedAt is when the fetch failed.
	FailedAt time.Time
	// RetryAt is when the entry expires and a new fetch may be tried.
	RetryAt time.Time
	// Reason says why, for logs and operators, at most MaxReasonSize
	// bytes. It must not hold secrets.
	Reason string
}

// PeerKeyCache caches peers' verification keys and failed fetches, so a
// restart neither refetches every peer nor forgets that a peer is failing.
type PeerKeyCache interface {
	// ReplacePeerKeys makes keys, the result of one successful fetch, the
	// cached key set of domain: keys cached before for domain are
	// forgotten and a recorded failure for domain is cleared, atomically.
	// Every key's Domain must be domain or empty, key ids must be distinct
	// and no key's NotAfter may precede its NotBefore, else ErrInvalid and
	// nothing changes; the caller drops malformed keys of a peer's answer
	// first. An empty keys forgets domain's keys. Lookups fill in Domain.
	ReplacePeerKeys(ctx context.Context, domain string, keys []PeerKey) error

	// LookupPeerKey returns domain's alive cached key with keyID, or
	// ErrNotFound.
	LookupPeerKey(ctx context.Context, domain string, keyID []byte) (PeerKey, error)

	// ListPeerKeys returns domain's alive cached keys, ordered by
	// NotBefore, then KeyID; none is not an error.
	ListPeerKeys(ctx context.Context, domain string) ([]PeerKey, error)

	// RecordPeerFailure records a failed fetch, replacing any earlier
	// failure of the same domain. Cached keys are kept: a failing peer's
	// keys stay usable until they expire.
	RecordPeerFailure(ctx context.Context, f PeerFailure) error

	// LookupPeerFailure returns domain's alive failure (RetryAt not yet
	// reached), or ErrNotFound.
	LookupPeerFailure(ctx context.Context, domain string) (PeerFailure, error)
}

// ValidFileName reports whether name is acceptable as SigningKey.File: a
// non-empty local base name with no separator, no parent reference and no
// NUL or control byte, so joining it to a directory cannot leave that
// directory.
func ValidFileName(name string) bool {
	if name == "" || len(name) > MaxFileNameSize || name == "." || name == ".." {
		return false
	}
	if strings.ContainsAny(name, `/\`) || filepath.Base(name) != name || !filepath.IsLocal(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] < 0x20 || name[i] == 0x7f {
			return false
		}
	}
	return true
}
