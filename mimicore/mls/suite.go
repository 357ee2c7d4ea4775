package mls

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"

	"golang.org/x/crypto/chacha20poly1305"
)

// CipherSuite is an MLS cipher suite identifier (RFC 9420 §17.1).
type CipherSuite uint16

// The cipher suites of RFC 9420 §17.1.
const (
	X25519AES128GCMSHA256Ed25519        CipherSuite = 1
	P256AES128GCMSHA256P256             CipherSuite = 2
	X25519ChaCha20Poly1305SHA256Ed25519 CipherSuite = 3
	X448AES256GCMSHA512Ed448            CipherSuite = 4
	P521AES256GCMSHA512P521             CipherSuite = 5
	X448ChaCha20Poly1305SHA512Ed448     CipherSuite = 6
	P384AES256GCMSHA384P384             CipherSuite = 7
)

// ErrUnsupportedCipherSuite is returned for a cipher suite this package does
// not implement: suites 4 and 6 (X448/Ed448) and unknown identifiers.
var ErrUnsupportedCipherSuite = errors.New("mls: unsupported cipher suite")

type sigScheme uint8

const (
	sigEd25519 sigScheme = iota + 1
	sigECDSA
)

// suite holds the primitives of one supported cipher suite.
type suite struct {
	id      CipherSuite
	newHash func() hash.Hash
	hashID  crypto.Hash
	nh      int
	kem     hpke.KEM
	kdf     hpke.KDF
	aead    hpke.AEAD
	curve   ecdh.Curve
	nk, nn  int
	chacha  bool
	sig     sigScheme
	ecCurve elliptic.Curve
}

var suites = map[CipherSuite]*suite{
	1: {id: 1, newHash: sha256.New, hashID: crypto.SHA256, nh: 32, kem: hpke.DHKEM(ecdh.X25519()), kdf: hpke.HKDFSHA256(), aead: hpke.AES128GCM(), curve: ecdh.X25519(), nk: 16, nn: 12, sig: sigEd25519},
	2: {id: 2, newHash: sha256.New, hashID: crypto.SHA256, nh: 32, kem: hpke.DHKEM(ecdh.P256()), kdf: hpke.HKDFSHA256(), aead: hpke.AES128GCM(), curve: ecdh.P256(), nk: 16, nn: 12, sig: sigECDSA, ecCurve: elliptic.P256()},
	3: {id: 3, newHash: sha256.New, hashID: crypto.SHA256, nh: 32, kem: hpke.DHKEM(ecdh.X25519()), kdf: hpke.HKDFSHA256(), aead: hpke.ChaCha20Poly1305(), curve: ecdh.X25519(), nk: 32, nn: 12, chacha: true, sig: sigEd25519},
	5: {id: 5, newHash: sha512.New, hashID: crypto.SHA512, nh: 64, kem: hpke.DHKEM(ecdh.P521()), kdf: hpke.HKDFSHA512(), aead: hpke.AES256GCM(), curve: ecdh.P521(), nk: 32, nn: 12, sig: sigECDSA, ecCurve: elliptic.P521()},
	7: {id: 7, newHash: sha512.New384, hashID: crypto.SHA384, nh: 48, kem: hpke.DHKEM(ecdh.P384()), kdf: hpke.HKDFSHA384(), aead: hpke.AES256GCM(), curve: ecdh.P384(), nk: 32, nn: 12, sig: sigECDSA, ecCurve: elliptic.P384()},
}

// params returns the primitives of cs or ErrUnsupportedCipherSuite.
func (cs CipherSuite) params() (*suite, error) {
	s, ok := suites[cs]
	if !ok {
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedCipherSuite, uint16(cs))
	}
	return s, nil
}

// Supported reports whether this package implements cs.
func (cs CipherSuite) Supported() bool {
	_, ok := suites[cs]
	return ok
}

// String returns the RFC 9420 name of cs.
func (cs CipherSuite) String() string {
	switch cs {
	case 1:
		return "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"
	case 2:
		return "MLS_128_DHKEMP256_AES128GCM_SHA256_P256"
	case 3:
		return "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519"
	case 4:
		return "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448"
	case 5:
		return "MLS_256_DHKEMP521_AES256GCM_SHA512_P521"
	case 6:
		return "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448"
	case 7:
		return "MLS_256_DHKEMP384_AES256GCM_SHA384_P384"
	default:
		return fmt.Sprintf("cipher suite 0x%04x", uint16(cs))
	}
}

// HashSize returns Nh, the output size of the suite's hash (and of its KDF),
// or 0 for an unsupported suite.
func (cs CipherSuite) HashSize() int {
	if s, err := cs.params(); err == nil {
		return s.nh
	}
	return 0
}

// AEADKeySize returns Nk, the suite's AEAD key size, or 0 for an unsupported
// suite.
func (cs CipherSuite) AEADKeySize() int {
	if s, err := cs.params(); err == nil {
		return s.nk
	}
	return 0
}

// AEADNonceSize returns Nn, the suite's AEAD nonce size, or 0 for an
// unsupported suite.
func (cs CipherSuite) AEADNonceSize() int {
	if s, err := cs.params(); err == nil {
		return s.nn
	}
	return 0
}

// NewAEAD returns the suite's AEAD keyed with key (AEADKeySize bytes), for
// constructions on top of MLS such as attachment encryption.
func (cs CipherSuite) NewAEAD(key []byte) (cipher.AEAD, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.newAEAD(key)
}

func (s *suite) hash(data ...[]byte) []byte {
	h := s.newHash()
	for _, d := range data {
		h.Write(d)
	}
	return h.Sum(nil)
}

// newAEAD returns the suite's AEAD keyed with key.
func (s *suite) newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != s.nk {
		return nil, fmt.Errorf("aead key of %d bytes, want %d", len(key), s.nk)
	}
	if s.chacha {
		return chacha20poly1305.New(key)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
