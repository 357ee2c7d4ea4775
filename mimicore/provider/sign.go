// Package provider holds the identity of a provider on the federation: its
// signing keys and their rotation, the signing and verification of
// provider-signed requests (docs/protocol.md §4), and the fetching and caching
// of peers' verification keys through discovery.
package provider

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// MaxKeyLifetime is the longest validity a verification key may claim
// (docs/protocol.md §4).
const MaxKeyLifetime = 90 * 24 * time.Hour

// maxUnixSeconds is the latest instant a key's validity may name: the last
// second of year 9999. Later bounds (up to 2^64-1 on the wire) are not
// meaningful times; they would overflow int64 seconds and time.Duration.
const maxUnixSeconds = 253402300799

// unixTime converts wire seconds to a time, clamping at maxUnixSeconds so
// that no uint64 wraps to a negative int64.
func unixTime(sec uint64) time.Time {
	return time.Unix(int64(min(sec, maxUnixSeconds)), 0)
}

// unixSeconds converts a time to wire seconds; times before 1970 become 0.
func unixSeconds(t time.Time) uint64 {
	return uint64(max(t.Unix(), 0))
}

// validLifetime reports whether a validity of notBefore..notAfter (wire
// seconds) is well formed and at most MaxKeyLifetime. It compares whole
// seconds, never nanoseconds, so no bound can overflow into a short
// lifetime.
func validLifetime(notBefore, notAfter uint64) bool {
	return notBefore <= notAfter && notAfter <= maxUnixSeconds &&
		notAfter-notBefore <= uint64(MaxKeyLifetime/time.Second)
}

// ErrBadSignature is wrapped by every signature verification failure.
var ErrBadSignature = errors.New("signature does not verify")

// PrivateKey is one of the provider's signing keys.
type PrivateKey struct {
	ID        []byte
	Scheme    moh.SignatureScheme
	NotBefore time.Time
	NotAfter  time.Time
	signer    crypto.Signer
	public    []byte
}

// GenerateKey creates a signing key of scheme valid from notBefore to
// notAfter.
func GenerateKey(scheme moh.SignatureScheme, notBefore, notAfter time.Time) (*PrivateKey, error) {
	var signer crypto.Signer
	switch scheme {
	case moh.SchemeEd25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating ed25519 key: %w", err)
		}
		signer = priv
	case moh.SchemeECDSAP256SHA256:
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating p-256 key: %w", err)
		}
		signer = priv
	default:
		return nil, fmt.Errorf("generating key: unsupported signature scheme 0x%04x", uint16(scheme))
	}
	return newPrivateKey(scheme, signer, notBefore, notAfter)
}

func newPrivateKey(scheme moh.SignatureScheme, signer crypto.Signer, notBefore, notAfter time.Time) (*PrivateKey, error) {
	pub, err := publicKeyBytes(scheme, signer.Public())
	if err != nil {
		return nil, err
	}
	return &PrivateKey{
		ID:        KeyID(scheme, pub),
		Scheme:    scheme,
		NotBefore: notBefore.Truncate(time.Second),
		NotAfter:  notAfter.Truncate(time.Second),
		signer:    signer,
		public:    pub,
	}, nil
}

// KeyID derives the key_id of a public key: the first 16 bytes of
// SHA-256(scheme || public_key). It is stable, so a key keeps its id across
// restarts without extra state.
func KeyID(scheme moh.SignatureScheme, public []byte) []byte {
	h := sha256.New()
	h.Write([]byte{byte(scheme >> 8), byte(scheme)})
	h.Write(public)
	return h.Sum(nil)[:16]
}

// publicKeyBytes encodes pub as the profile publishes it: 32 raw bytes for
// Ed25519, an uncompressed SEC1 point for ECDSA P-256.
func publicKeyBytes(scheme moh.SignatureScheme, pub crypto.PublicKey) ([]byte, error) {
	switch scheme {
	case moh.SchemeEd25519:
		k, ok := pub.(ed25519.PublicKey)
		if !ok {
			return nil, errors.New("encoding public key: not an ed25519 key")
		}
		return []byte(k), nil
	case moh.SchemeECDSAP256SHA256:
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok || k.Curve != elliptic.P256() {
			return nil, errors.New("encoding public key: not a p-256 key")
		}
		b, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("encoding public key: %w", err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("encoding public key: unsupported signature scheme 0x%04x", uint16(scheme))
}

// Public returns the VerificationKey that peers use to check k's signatures.
func (k *PrivateKey) Public() moh.VerificationKey {
	return moh.VerificationKey{
		KeyID:     k.ID,
		Scheme:    k.Scheme,
		PublicKey: k.public,
		NotBefore: unixSeconds(k.NotBefore),
		NotAfter:  unixSeconds(k.NotAfter),
	}
}

// Covers reports whether t lies within k's validity.
func (k *PrivateKey) Covers(t time.Time) bool {
	return !t.Before(k.NotBefore) && !t.After(k.NotAfter)
}

// SignWithLabel signs content under label as RFC 9420 §5.1.2 defines, with
// the "MLS 1.0 " prefix added to label.
func (k *PrivateKey) SignWithLabel(label string, content []byte) ([]byte, error) {
	msg, err := signContent(label, content)
	if err != nil {
		return nil, err
	}
	var sig []byte
	switch k.Scheme {
	case moh.SchemeEd25519:
		sig, err = k.signer.Sign(rand.Reader, msg, crypto.Hash(0))
	case moh.SchemeECDSAP256SHA256:
		digest := sha256.Sum256(msg)
		sig, err = k.signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	default:
		err = fmt.Errorf("unsupported signature scheme 0x%04x", uint16(k.Scheme))
	}
	if err != nil {
		return nil, fmt.Errorf("signing with key %x: %w", k.ID, err)
	}
	return sig, nil
}

// VerifyWithLabel checks sig over content under label with key. Failures
// wrap ErrBadSignature.
func VerifyWithLabel(key *moh.VerificationKey, label string, content, sig []byte) error {
	msg, err := signContent(label, content)
	if err != nil {
		return err
	}
	switch key.Scheme {
	case moh.SchemeEd25519:
		if len(key.PublicKey) != ed25519.PublicKeySize {
			return fmt.Errorf("verifying signature: %w: bad ed25519 key length", ErrBadSignature)
		}
		if !ed25519.Verify(ed25519.PublicKey(key.PublicKey), msg, sig) {
			return fmt.Errorf("verifying signature: %w", ErrBadSignature)
		}
		return nil
	case moh.SchemeECDSAP256SHA256:
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), key.PublicKey)
		if err != nil {
			return fmt.Errorf("verifying signature: %w: bad p-256 key", ErrBadSignature)
		}
		digest := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			return fmt.Errorf("verifying signature: %w", ErrBadSignature)
		}
		return nil
	}
	return fmt.Errorf("verifying signature: %w: unsupported scheme 0x%04x", ErrBadSignature, uint16(key.Scheme))
}

// signContent encodes SignContent { opaque label<V>; opaque content<V>; }.
func signContent(label string, content []byte) ([]byte, error) {
	return appendSignContent(make([]byte, 0, len(signLabelPrefix)+len(label)+len(content)+16), label, content)
}

// signLabelPrefix starts every SignContent label (RFC 9420 §5.1.2).
const signLabelPrefix = "MLS 1.0 "

// appendSignContent appends the SignContent encoding of label and content
// to dst.
func appendSignContent(dst []byte, label string, content []byte) ([]byte, error) {
	if uint64(len(signLabelPrefix)+len(label)) > wire.MaxVarint || uint64(len(content)) > wire.MaxVarint {
		return nil, errors.New("encoding SignContent: too long")
	}
	dst = wire.AppendVarint(dst, uint64(len(signLabelPrefix)+len(label)))
	dst = append(append(dst, signLabelPrefix...), label...)
	dst = wire.AppendVarint(dst, uint64(len(content)))
	return append(dst, content...), nil
}

// pemType is the PEM block type of stored private keys; the validity window
// travels in PEM headers so a key file is self-describing.
const pemType = "PRIVATE KEY"

// MarshalPEM encodes k as a PKCS#8 PEM block with its validity in headers.
func (k *PrivateKey) MarshalPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.signer)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{
		Type: pemType,
		Headers: map[string]string{
			"Not-Before": k.NotBefore.UTC().Format(time.RFC3339),
			"Not-After":  k.NotAfter.UTC().Format(time.RFC3339),
		},
		Bytes: der,
	}), nil
}

// ParsePEM decodes a key written by MarshalPEM.
func ParsePEM(data []byte) (*PrivateKey, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != pemType || len(rest) != 0 {
		return nil, errors.New("parsing private key: not a single PKCS#8 PEM block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing private key: %w", err)
	}
	nb, err1 := time.Parse(time.RFC3339, block.Headers["Not-Before"])
	na, err2 := time.Parse(time.RFC3339, block.Headers["Not-After"])
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("parsing private key validity: %w", err)
	}
	switch key := parsed.(type) {
	case ed25519.PrivateKey:
		return newPrivateKey(moh.SchemeEd25519, key, nb, na)
	case *ecdsa.PrivateKey:
		if key.Curve != elliptic.P256() {
			return nil, errors.New("parsing private key: ecdsa key is not on p-256")
		}
		return newPrivateKey(moh.SchemeECDSAP256SHA256, key, nb, na)
	}
	return nil, fmt.Errorf("parsing private key: unsupported key type %T", parsed)
}
