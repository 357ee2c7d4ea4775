package mls

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/subtle"
	"fmt"
	"hash"
	"math"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// labelPrefix is prepended to every label of RFC 9420 §5 except RefHash's.
const labelPrefix = "MLS 1.0 "

// encodeLabelled encodes {label<V>, value<V>}, the shape of RefHashInput,
// SignContent and EncryptContext.
func encodeLabelled(label string, value []byte) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, len(label)+len(value)+8))
	wire.AddOpaque(b, []byte(label))
	wire.AddOpaque(b, value)
	return b.Bytes()
}

// Hash returns the suite's hash of data.
func (cs CipherSuite) Hash(data []byte) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.hash(data), nil
}

// NewHash returns a new hash.Hash of the suite's Hash, for data hashed
// as it streams (attachment content).
func (cs CipherSuite) NewHash() (hash.Hash, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.newHash(), nil
}

// RefHash computes Hash(RefHashInput{label, value}) (RFC 9420 §5.2). The
// label is used as given: callers pass the full "MLS 1.0 ..." string.
func (cs CipherSuite) RefHash(label string, value []byte) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.refHash(label, value)
}

func (s *suite) refHash(label string, value []byte) ([]byte, error) {
	in, err := encodeLabelled(label, value)
	if err != nil {
		return nil, fmt.Errorf("encoding ref hash input: %w", err)
	}
	return s.hash(in), nil
}

// Extract is the suite's KDF.Extract (HKDF-Extract) with the given salt and
// input keying material.
func (cs CipherSuite) Extract(salt, ikm []byte) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.extract(salt, ikm)
}

func (s *suite) extract(salt, ikm []byte) ([]byte, error) {
	if len(salt) == 0 {
		salt = make([]byte, s.nh)
	}
	return hkdf.Extract(s.newHash, ikm, salt)
}

// ExpandWithLabel derives length bytes from secret with the KDFLabel
// {length, "MLS 1.0 "+label, context} (RFC 9420 §5.1).
func (cs CipherSuite) ExpandWithLabel(secret []byte, label string, context []byte, length uint16) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.expandWithLabel(secret, label, context, int(length))
}

func (s *suite) expandWithLabel(secret []byte, label string, context []byte, length int) ([]byte, error) {
	if length < 0 || length > math.MaxUint16 {
		return nil, fmt.Errorf("expand with label: length %d out of range", length)
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, 2+len(labelPrefix)+len(label)+len(context)+8))
	b.AddUint16(uint16(length))
	wire.AddOpaque(b, []byte(labelPrefix+label))
	wire.AddOpaque(b, context)
	info, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("expand with label: encoding kdf label: %w", err)
	}
	out, err := hkdf.Expand(s.newHash, secret, string(info), length)
	if err != nil {
		return nil, fmt.Errorf("expand with label %q: %w", label, err)
	}
	return out, nil
}

// DeriveSecret is ExpandWithLabel(secret, label, "", Nh) (RFC 9420 §5.1).
func (cs CipherSuite) DeriveSecret(secret []byte, label string) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.deriveSecret(secret, label)
}

func (s *suite) deriveSecret(secret []byte, label string) ([]byte, error) {
	return s.expandWithLabel(secret, label, nil, s.nh)
}

// DeriveTreeSecret is ExpandWithLabel(secret, label, generation, length)
// with the generation as a big-endian uint32 context (RFC 9420 §9).
func (cs CipherSuite) DeriveTreeSecret(secret []byte, label string, generation uint32, length uint16) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.deriveTreeSecret(secret, label, generation, int(length))
}

func (s *suite) deriveTreeSecret(secret []byte, label string, generation uint32, length int) ([]byte, error) {
	ctx := []byte{byte(generation >> 24), byte(generation >> 16), byte(generation >> 8), byte(generation)}
	return s.expandWithLabel(secret, label, ctx, length)
}

// mac computes the suite's MAC (HMAC with the suite hash).
func (s *suite) mac(key, data []byte) []byte {
	m := hmac.New(s.newHash, key)
	m.Write(data)
	return m.Sum(nil)
}

// verifyMAC checks tag against MAC(key, data) in constant time.
func (s *suite) verifyMAC(key, data, tag []byte) bool {
	return subtle.ConstantTimeCompare(s.mac(key, data), tag) == 1
}
