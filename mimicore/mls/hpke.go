package mls

import (
	"crypto/hpke"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

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
