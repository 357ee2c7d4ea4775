package mls

import (
	"crypto"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// KeyPackage is a signed bundle that lets others add a client to a group
// (RFC 9420 §10).
type KeyPackage struct {
	Version     ProtocolVersion
	CipherSuite CipherSuite
	InitKey     []byte
	LeafNode    LeafNode
	Extensions  Extensions
	Signature   []byte
}

func (k *KeyPackage) marshalTBS(b *cryptobyte.Builder) {
	b.AddUint16(uint16(k.Version))
	b.AddUint16(uint16(k.CipherSuite))
	wire.AddOpaque(b, k.InitKey)
	k.LeafNode.MarshalWire(b)
	k.Extensions.MarshalWire(b)
}

// MarshalWire implements wire.Marshaler.
func (k *KeyPackage) MarshalWire(b *cryptobyte.Builder) {
	k.marshalTBS(b)
	wire.AddOpaque(b, k.Signature)
}

// UnmarshalWire implements wire.Unmarshaler.
func (k *KeyPackage) UnmarshalWire(s *cryptobyte.String) bool {
	return s.ReadUint16((*uint16)(&k.Version)) && s.ReadUint16((*uint16)(&k.CipherSuite)) &&
		wire.ReadOpaque(s, &k.InitKey) && k.LeafNode.UnmarshalWire(s) &&
		k.Extensions.UnmarshalWire(s) && wire.ReadOpaque(s, &k.Signature)
}

// Ref returns the KeyPackageRef, RefHash("MLS 1.0 KeyPackage Reference",
// KeyPackage) (RFC 9420 §5.2).
func (k *KeyPackage) Ref() ([]byte, error) {
	enc, err := marshal(k)
	if err != nil {
		return nil, err
	}
	return k.CipherSuite.RefHash("MLS 1.0 KeyPackage Reference", enc)
}

// Sign sets k.Signature over KeyPackageTBS. The leaf node must already be
// signed.
func (k *KeyPackage) Sign(signer crypto.Signer) error {
	b := cryptobyte.NewBuilder(nil)
	k.marshalTBS(b)
	tbs, err := b.Bytes()
	if err != nil {
		return fmt.Errorf("encoding key package tbs: %w", err)
	}
	sig, err := k.CipherSuite.SignWithLabel(signer, "KeyPackageTBS", tbs)
	if err != nil {
		return err
	}
	k.Signature = sig
	return nil
}

// Verify validates k as RFC 9420 §10.1 requires of a KeyPackage received
// outside a group: supported version and cipher suite, both signatures with
// the leaf's signature key, a key_package leaf source, valid public keys,
// init_key different from the encryption key, unique extensions of types
// allowed there (RFC 9420 §17.3, in the KeyPackage and its leaf), and a
// leaf whose capabilities list its own credential type, its extensions
// and the KeyPackage's (those RFC 9420 does not make default). It does not require the leaf's
// capabilities to list the KeyPackage's own version and cipher suite
// (the KeyPackage of suite 7 in RFC 9420's welcome.json test vector omits
// it), nor check the lifetime against a clock (see VerifyAt and
// GroupState.ApplyCommitWith) or the credential's identity, which is the
// application's job.
func (k *KeyPackage) Verify() error {
	if k.Version != MLS10 {
		return fmt.Errorf("verifying key package: unsupported version %d", k.Version)
	}
	s, err := k.CipherSuite.params()
	if err != nil {
		return fmt.Errorf("verifying key package: %w", err)
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, 512))
	k.marshalTBS(b)
	tbs, err := b.Bytes()
	if err != nil {
		return fmt.Errorf("verifying key package: encoding tbs: %w", err)
	}
	if err := s.verifyWithLabel(k.LeafNode.SignatureKey, "KeyPackageTBS", tbs, k.Signature); err != nil {
		return fmt.Errorf("verifying key package: %w", err)
	}
	if k.LeafNode.Source != SourceKeyPackage {
		return fmt.Errorf("verifying key package: leaf node source %d, want key_package", k.LeafNode.Source)
	}
	if err := s.checkHPKEPublicKey(k.InitKey); err != nil {
		return fmt.Errorf("verifying key package: init key: %w", err)
	}
	if string(k.InitKey) == string(k.LeafNode.EncryptionKey) {
		return fmt.Errorf("verifying key package: init key equals the leaf encryption key")
	}
	if err := k.Extensions.checkUnique(); err != nil {
		return fmt.Errorf("verifying key package: %w", err)
	}
	if err := k.Extensions.checkPlace(inKeyPackage); err != nil {
		return fmt.Errorf("verifying key package: %w", err)
	}
	for _, e := range k.Extensions {
		if !isDefaultExtension(e.Type) && !contains(k.LeafNode.Capabilities.Extensions, e.Type) {
			return fmt.Errorf("verifying key package: extension %d not in its leaf's capabilities", e.Type)
		}
	}
	if err := validateLeafStandalone(s, &k.LeafNode, nil, 0); err != nil {
		return fmt.Errorf("verifying key package: %w", err)
	}
	return nil
}

// VerifyAt is Verify plus a check that now (seconds since the Unix epoch)
// lies within the leaf node's lifetime.
func (k *KeyPackage) VerifyAt(now uint64) error {
	if err := k.Verify(); err != nil {
		return err
	}
	lt := k.LeafNode.Lifetime
	if now < lt.NotBefore || now > lt.NotAfter {
		return fmt.Errorf("verifying key package: outside its lifetime [%d, %d]", lt.NotBefore, lt.NotAfter)
	}
	return nil
}
