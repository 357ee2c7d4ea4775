package provider

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// KeySecretSize is the size of the secret that seals signing keys at rest.
const KeySecretSize = 32

// ErrWrongKeySecret is wrapped by KeySealer.Open when a sealed key does not
// open: the secret differs from the one that sealed it, or the stored bytes
// were changed.
var ErrWrongKeySecret = errors.New("sealed signing key does not open: wrong key secret, or the stored key was altered")

// Format of a sealed key (never sent to peers; the store keeps it as is):
//
//	sealed = version (1 byte, 1) || nonce (12 bytes) || AES-256-GCM ciphertext and tag
//
// The plaintext is the key's PEM (MarshalPEM). The AES key is derived
// from the admin's secret with HKDF-SHA256 (no salt, info sealInfo), and
// the associated data binds the ciphertext to its row: sealAD, the
// key's scheme (2 bytes, big-endian) and its key id. A random nonce per
// seal is safe: a provider seals one key per rotation.
const (
	sealVersion = 1
	sealInfo    = "caddy-mimi signing key seal v1"
	sealAD      = "caddy-mimi signing key v1\x00"
)

// KeySealer encrypts signing keys for the store and decrypts them, under
// a secret all gateways of one provider share. It is safe for concurrent
// use.
type KeySealer struct {
	aead cipher.AEAD
}

// NewKeySealer returns a sealer under secret, which must be KeySecretSize
// bytes.
func NewKeySealer(secret []byte) (*KeySealer, error) {
	if len(secret) != KeySecretSize {
		return nil, fmt.Errorf("creating key sealer: secret is %d bytes, want %d", len(secret), KeySecretSize)
	}
	key, err := hkdf.Key(sha256.New, secret, nil, sealInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("creating key sealer: deriving the key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("creating key sealer: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("creating key sealer: %w", err)
	}
	return &KeySealer{aead: aead}, nil
}

// ParseKeySecret decodes an admin-supplied secret: KeySecretSize bytes as
// hexadecimal or base64 (standard or URL alphabet, padded or not),
// surrounding white space ignored. The error never quotes the value.
func ParseKeySecret(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if b, err := hex.DecodeString(s); err == nil && len(b) == KeySecretSize {
		return b, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == KeySecretSize {
			return b, nil
		}
	}
	return nil, fmt.Errorf("key secret (%d characters) is not %d bytes in hex or base64; create one with: openssl rand -base64 %d",
		len(s), KeySecretSize, KeySecretSize)
}

// associatedData binds a sealed key to its key id and scheme.
func associatedData(id []byte, scheme moh.SignatureScheme) []byte {
	ad := make([]byte, 0, len(sealAD)+2+len(id))
	ad = append(ad, sealAD...)
	ad = binary.BigEndian.AppendUint16(ad, uint16(scheme))
	return append(ad, id...)
}

// Seal encrypts k for the store.
func (s *KeySealer) Seal(k *PrivateKey) ([]byte, error) {
	pemBytes, err := k.MarshalPEM()
	if err != nil {
		return nil, fmt.Errorf("sealing signing key %x: %w", k.ID, err)
	}
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(pemBytes)+s.aead.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("sealing signing key %x: %w", k.ID, err)
	}
	return s.aead.Seal(out, out[1:], pemBytes, associatedData(k.ID, k.Scheme)), nil
}

// Open decrypts a key that Seal sealed and that the store lists with key
// id id and scheme scheme. A secret other than the sealing one, or sealed
// bytes, id or scheme changed since, fail with ErrWrongKeySecret.
func (s *KeySealer) Open(sealed, id []byte, scheme moh.SignatureScheme) (*PrivateKey, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != sealVersion {
		return nil, fmt.Errorf("opening signing key %x: unknown format (%d bytes, version %d)", id, len(sealed), firstByte(sealed))
	}
	pemBytes, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], associatedData(id, scheme))
	if err != nil {
		return nil, fmt.Errorf("opening signing key %x: %w", id, ErrWrongKeySecret)
	}
	k, err := ParsePEM(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("opening signing key %x: %w", id, err)
	}
	if !bytes.Equal(k.ID, id) || k.Scheme != scheme {
		return nil, fmt.Errorf("opening signing key %x: it holds key %x of scheme 0x%04x", id, k.ID, uint16(k.Scheme))
	}
	return k, nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}
