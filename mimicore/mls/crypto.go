package mls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/hpke"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"math/big"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// labelPrefix is prepended to every label of RFC 9420 §5 except RefHash's.
const labelPrefix = "MLS 1.0 "

// ErrInvalidSignature is wrapped by every signature verification failure.
var ErrInvalidSignature = errors.New("mls: invalid signature")

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

// checkHPKEPublicKey reports whether pub is a valid HPKE public key for the
// suite.
func (s *suite) checkHPKEPublicKey(pub []byte) error {
	_, err := s.kem.NewPublicKey(pub)
	return err
}

// ParseHPKEPrivateKey parses an HPKE private key in its RFC 9180
// SerializePrivateKey form.
func (cs CipherSuite) ParseHPKEPrivateKey(raw []byte) (hpke.PrivateKey, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	if s.ecCurve != nil {
		// As for ECDSA keys, restore leading zero bytes some encoders drop.
		if size := (s.ecCurve.Params().BitSize + 7) / 8; len(raw) < size {
			raw = append(make([]byte, size-len(raw)), raw...)
		}
	}
	k, err := s.kem.NewPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing hpke private key: %w", err)
	}
	return k, nil
}

// DeriveKeyPair derives an HPKE key pair from ikm (RFC 9180 DeriveKeyPair)
// and returns the private key and the encoded public key.
func (cs CipherSuite) DeriveKeyPair(ikm []byte) (hpke.PrivateKey, []byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, nil, err
	}
	return s.deriveKeyPair(ikm)
}

func (s *suite) deriveKeyPair(ikm []byte) (hpke.PrivateKey, []byte, error) {
	k, err := s.kem.DeriveKeyPair(ikm)
	if err != nil {
		return nil, nil, fmt.Errorf("deriving hpke key pair: %w", err)
	}
	return k, k.PublicKey().Bytes(), nil
}

// HPKECiphertext is an HPKE encapsulated key and ciphertext (RFC 9420 §5.1.3).
type HPKECiphertext struct {
	KEMOutput  []byte
	Ciphertext []byte
}

// MarshalWire implements wire.Marshaler.
func (c *HPKECiphertext) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, c.KEMOutput)
	wire.AddOpaque(b, c.Ciphertext)
}

// UnmarshalWire implements wire.Unmarshaler.
func (c *HPKECiphertext) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadOpaque(s, &c.KEMOutput) && wire.ReadOpaque(s, &c.Ciphertext)
}

// EncryptWithLabel encrypts plaintext to the HPKE public key pub in base
// mode with info EncryptContext{"MLS 1.0 "+label, context} (RFC 9420
// §5.1.3).
func (cs CipherSuite) EncryptWithLabel(pub []byte, label string, context, plaintext []byte) (HPKECiphertext, error) {
	s, err := cs.params()
	if err != nil {
		return HPKECiphertext{}, err
	}
	return s.encryptWithLabel(pub, label, context, plaintext)
}

func (s *suite) encryptWithLabel(pub []byte, label string, context, plaintext []byte) (HPKECiphertext, error) {
	info, err := encodeLabelled(labelPrefix+label, context)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("encoding encrypt context: %w", err)
	}
	pk, err := s.kem.NewPublicKey(pub)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("encrypting %s: parsing hpke public key: %w", label, err)
	}
	enc, sender, err := hpke.NewSender(pk, s.kdf, s.aead, info)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("encrypting %s: %w", label, err)
	}
	ct, err := sender.Seal(nil, plaintext)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("encrypting %s: %w", label, err)
	}
	return HPKECiphertext{KEMOutput: enc, Ciphertext: ct}, nil
}

// DecryptWithLabel decrypts a ciphertext made by EncryptWithLabel.
func (cs CipherSuite) DecryptWithLabel(priv hpke.PrivateKey, label string, context []byte, ct HPKECiphertext) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.decryptWithLabel(priv, label, context, ct)
}

func (s *suite) decryptWithLabel(priv hpke.PrivateKey, label string, context []byte, ct HPKECiphertext) ([]byte, error) {
	info, err := encodeLabelled(labelPrefix+label, context)
	if err != nil {
		return nil, fmt.Errorf("encoding encrypt context: %w", err)
	}
	r, err := hpke.NewRecipient(ct.KEMOutput, priv, s.kdf, s.aead, info)
	if err != nil {
		return nil, fmt.Errorf("decrypting %s: %w", label, err)
	}
	pt, err := r.Open(nil, ct.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("decrypting %s: %w", label, err)
	}
	return pt, nil
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
