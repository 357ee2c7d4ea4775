// Package mlstest makes MLS clients-to-be for tests, examples and load
// generators: a fresh signature key, leaf and init keys, and a signed
// KeyPackage whose BasicCredential holds the client's identity, bound by a
// provider's key ring when asked. It has one job: the dozen places that
// need such a client build it one way.
package mlstest

import (
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// Client is a client-to-be: its KeyPackage and the private keys behind it.
type Client struct {
	// Identity is the BasicCredential identity (for MIMI, the client URI).
	Identity string
	// Signer holds the private key of SignatureKey.
	Signer       crypto.Signer
	SignatureKey []byte
	// KeyPackage is signed; its leaf node too.
	KeyPackage *mls.KeyPackage
	// LeafKey and InitKey are the private keys of the leaf's encryption
	// key and of the KeyPackage's init key.
	LeafKey, InitKey hpke.PrivateKey
}

// Options shape the leaf node.
type Options struct {
	// Lifetime is the leaf's; zero means from an hour ago to 84 days
	// from now, as OpenMLS and this project's client make them (a
	// Delivery Service refuses lifetimes longer than
	// mls.DefaultMaxLifetime by default).
	Lifetime mls.Lifetime
	// Issuer, when set, issues the leaf's client binding (PROFILE §6),
	// valid until BindingNotAfter (zero: one hour from now).
	Issuer          *binding.Issuer
	BindingNotAfter time.Time
	// BindingCapability lists the binding extension in the leaf's
	// capabilities, as a bound leaf does, also without an Issuer (a leaf
	// that claims to carry a binding but has none).
	BindingCapability bool
	// Edit, when set, changes the leaf last, before it is signed.
	Edit func(leaf *mls.LeafNode, signatureKey []byte)
}

// NewClient makes a client of suite cs with the given identity.
func NewClient(cs mls.CipherSuite, identity string, o Options) (*Client, error) {
	signer, pub, err := cs.GenerateSignatureKey()
	if err != nil {
		return nil, fmt.Errorf("generating the signature key: %w", err)
	}
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	leafKey, encPub, err := cs.DeriveKeyPair(seed[:32])
	if err != nil {
		return nil, fmt.Errorf("deriving the leaf key: %w", err)
	}
	initKey, initPub, err := cs.DeriveKeyPair(seed[32:])
	if err != nil {
		return nil, fmt.Errorf("deriving the init key: %w", err)
	}
	lifetime := o.Lifetime
	if lifetime == (mls.Lifetime{}) {
		now := time.Now().Unix()
		lifetime = mls.Lifetime{NotBefore: uint64(now - 3600), NotAfter: uint64(now + 84*24*3600)}
	}
	leaf := mls.LeafNode{
		EncryptionKey: encPub, SignatureKey: pub,
		Credential: mls.Credential{Type: mls.CredentialBasic, Identity: []byte(identity)},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{cs},
			Credentials: []mls.CredentialType{mls.CredentialBasic}},
		Source: mls.SourceKeyPackage, Lifetime: lifetime,
	}
	if o.Issuer != nil || o.BindingCapability {
		leaf.Capabilities.Extensions = []mls.ExtensionType{binding.ExtensionType}
	}
	if o.Issuer != nil {
		notAfter := o.BindingNotAfter
		if notAfter.IsZero() {
			notAfter = time.Now().Add(time.Hour)
		}
		b, err := o.Issuer.Issue([]byte(identity), pub, notAfter)
		if err != nil {
			return nil, fmt.Errorf("issuing the binding: %w", err)
		}
		if err := binding.Attach(&leaf, b); err != nil {
			return nil, err
		}
	}
	if o.Edit != nil {
		o.Edit(&leaf, pub)
	}
	if err := leaf.Sign(cs, signer, nil, 0); err != nil {
		return nil, fmt.Errorf("signing the leaf: %w", err)
	}
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: cs, InitKey: initPub, LeafNode: leaf}
	if err := kp.Sign(signer); err != nil {
		return nil, fmt.Errorf("signing the KeyPackage: %w", err)
	}
	return &Client{Identity: identity, Signer: signer, SignatureKey: pub, KeyPackage: kp, LeafKey: leafKey, InitKey: initKey}, nil
}
