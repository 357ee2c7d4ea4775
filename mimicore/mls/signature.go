package mls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
)

// ErrInvalidSignature is wrapped by every signature verification failure.
var ErrInvalidSignature = errors.New("mls: invalid signature")

// ParseSignaturePrivateKey parses a signature private key in the encoding of
// the MLS test vectors: the 32-byte seed for Ed25519, the big-endian scalar
// for ECDSA.
func (cs CipherSuite) ParseSignaturePrivateKey(raw []byte) (crypto.Signer, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	switch s.sig {
	case sigEd25519:
		if len(raw) != ed25519.SeedSize {
			return nil, fmt.Errorf("parsing ed25519 private key: %d bytes, want %d", len(raw), ed25519.SeedSize)
		}
		return ed25519.NewKeyFromSeed(raw), nil
	default:
		// Some encoders drop leading zero bytes of the scalar; pad it to
		// the curve's size.
		size := (s.ecCurve.Params().BitSize + 7) / 8
		if len(raw) < size {
			raw = append(make([]byte, size-len(raw)), raw...)
		}
		k, err := ecdsa.ParseRawPrivateKey(s.ecCurve, raw)
		if err != nil {
			return nil, fmt.Errorf("parsing ecdsa private key: %w", err)
		}
		return k, nil
	}
}

// GenerateSignatureKey returns a fresh signature key pair for cs and the
// public key in its MLS encoding.
func (cs CipherSuite) GenerateSignatureKey() (crypto.Signer, []byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, nil, err
	}
	if s.sig == sigEd25519 {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("generating ed25519 key: %w", err)
		}
		return priv, pub, nil
	}
	k, err := ecdsa.GenerateKey(s.ecCurve, rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating ecdsa key: %w", err)
	}
	pub, err := k.PublicKey.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("encoding ecdsa public key: %w", err)
	}
	return k, pub, nil
}

// SignWithLabel signs SignContent{"MLS 1.0 "+label, content} (RFC 9420
// §5.1.2). ECDSA signatures are DER encoded.
func (cs CipherSuite) SignWithLabel(signer crypto.Signer, label string, content []byte) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.signWithLabel(signer, label, content)
}

func (s *suite) signWithLabel(signer crypto.Signer, label string, content []byte) ([]byte, error) {
	tbs, err := encodeLabelled(labelPrefix+label, content)
	if err != nil {
		return nil, fmt.Errorf("encoding sign content: %w", err)
	}
	var sig []byte
	if s.sig == sigEd25519 {
		sig, err = signer.Sign(rand.Reader, tbs, crypto.Hash(0))
	} else {
		sig, err = signer.Sign(rand.Reader, s.hashSig(tbs), s.hashID)
	}
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", label, err)
	}
	return sig, nil
}

// hashSig hashes a message with the suite's signature hash.
func (s *suite) hashSig(msg []byte) []byte {
	h := s.hashID.New()
	h.Write(msg)
	return h.Sum(nil)
}

// VerifyWithLabel verifies a signature made by SignWithLabel with the
// public key pub in its MLS encoding.
func (cs CipherSuite) VerifyWithLabel(pub []byte, label string, content, sig []byte) error {
	s, err := cs.params()
	if err != nil {
		return err
	}
	return s.verifyWithLabel(pub, label, content, sig)
}

func (s *suite) verifyWithLabel(pub []byte, label string, content, sig []byte) error {
	tbs, err := encodeLabelled(labelPrefix+label, content)
	if err != nil {
		return fmt.Errorf("encoding sign content: %w", err)
	}
	switch s.sig {
	case sigEd25519:
		if len(pub) != ed25519.PublicKeySize {
			return fmt.Errorf("verifying %s: %w: ed25519 public key of %d bytes", label, ErrInvalidSignature, len(pub))
		}
		if !ed25519.Verify(ed25519.PublicKey(pub), tbs, sig) {
			return fmt.Errorf("verifying %s: %w", label, ErrInvalidSignature)
		}
	default:
		k, err := s.parseECDSAPublicKey(pub)
		if err != nil {
			return fmt.Errorf("verifying %s: %w: %v", label, ErrInvalidSignature, err)
		}
		if !ecdsa.VerifyASN1(k, s.hashSig(tbs), sig) {
			return fmt.Errorf("verifying %s: %w", label, ErrInvalidSignature)
		}
	}
	return nil
}

// parseECDSAPublicKey parses a SEC1 point. RFC 9420 and its vectors use the
// uncompressed form; some implementations (ts-mls) send the compressed
// form, which is accepted too.
func (s *suite) parseECDSAPublicKey(pub []byte) (*ecdsa.PublicKey, error) {
	size := (s.ecCurve.Params().BitSize + 7) / 8
	if len(pub) == 1+size && (pub[0] == 2 || pub[0] == 3) {
		un, err := decompressPoint(s.ecCurve, pub, size)
		if err != nil {
			return nil, err
		}
		pub = un
	}
	return ecdsa.ParseUncompressedPublicKey(s.ecCurve, pub)
}

// decompressPoint turns a compressed SEC1 point on a NIST curve into its
// uncompressed form. The curve check is left to ParseUncompressedPublicKey.
func decompressPoint(curve elliptic.Curve, pub []byte, size int) ([]byte, error) {
	p := curve.Params().P
	x := new(big.Int).SetBytes(pub[1:])
	if x.Cmp(p) >= 0 {
		return nil, errors.New("compressed point: x out of range")
	}
	// y² = x³ - 3x + b (mod p)
	y2 := new(big.Int).Mul(x, x)
	y2.Mul(y2, x)
	x3 := new(big.Int).Lsh(x, 1)
	x3.Add(x3, x)
	y2.Sub(y2, x3)
	y2.Add(y2, curve.Params().B)
	y2.Mod(y2, p)
	y := new(big.Int).ModSqrt(y2, p)
	if y == nil {
		return nil, errors.New("compressed point: not on the curve")
	}
	if y.Bit(0) != uint(pub[0]&1) {
		y.Sub(p, y)
	}
	out := make([]byte, 1+2*size)
	out[0] = 4
	x.FillBytes(out[1 : 1+size])
	y.FillBytes(out[1+size:])
	return out, nil
}
