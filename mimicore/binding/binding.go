// Package binding implements client bindings (docs/protocol.md §5.6): the
// LeafNode extension by which a provider vouches that a client URI belongs to
// the MLS signature key of a leaf. A provider issues bindings to its own
// clients (Issuer); the Delivery Service checks the binding of every leaf that
// enters or changes a group (Checker), with the verification keys of the
// provider named in the leaf's URI, fetched as docs/protocol.md §4.1 does.
//
// The package does not depend on Caddy.
package binding

import (
	"fmt"
	"slices"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ExtensionType is the private-use LeafNode extension type of the client
// binding.
const ExtensionType mls.ExtensionType = 0xF0A1

// Label is the SignWithLabel label of the binding signature; the signed
// SignContent carries it as "MLS 1.0 MIMI client binding".
const Label = "MIMI client binding"

// Field limits of a ClientBinding (docs/protocol.md §1.2).
const (
	MaxKeyIDLen     = 64
	MaxSignatureLen = 256
)

// ClientBinding is the extension_data of a client binding extension:
//
//	struct { uint64 not_after; opaque key_id<V>; opaque signature<V>; } ClientBinding;
//
// Signature is SignWithLabel(provider_key, Label, ClientBindingTBS) made with
// the provider key named by KeyID (see SignedContent).
type ClientBinding struct {
	// NotAfter is the last second, in Unix seconds, at which the binding
	// is valid.
	NotAfter uint64
	// KeyID names the provider's verification key (1-64 bytes).
	KeyID []byte
	// Signature is the provider's signature (1-256 bytes).
	Signature []byte
}

// MarshalWire implements wire.Marshaler.
func (c *ClientBinding) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint64(c.NotAfter)
	wire.AddOpaque(b, c.KeyID)
	wire.AddOpaque(b, c.Signature)
}

// UnmarshalWire implements wire.Unmarshaler. It refuses a key_id or a
// signature that is empty or over its limit. The slices alias s.
func (c *ClientBinding) UnmarshalWire(s *cryptobyte.String) bool {
	return s.ReadUint64(&c.NotAfter) &&
		wire.ReadOpaqueMax(s, &c.KeyID, MaxKeyIDLen) && len(c.KeyID) > 0 &&
		wire.ReadOpaqueMax(s, &c.Signature, MaxSignatureLen) && len(c.Signature) > 0
}

// Decode decodes extension_data as a ClientBinding that must fill it
// exactly. Failures wrap wire.ErrMalformed. The result does not alias data.
func Decode(data []byte) (*ClientBinding, error) {
	var c ClientBinding
	if err := wire.Unmarshal(data, &c, "client binding"); err != nil {
		return nil, err
	}
	c.KeyID = append([]byte(nil), c.KeyID...)
	c.Signature = append([]byte(nil), c.Signature...)
	return &c, nil
}

// Extension returns c as a LeafNode extension of type ExtensionType.
func (c *ClientBinding) Extension() (mls.Extension, error) {
	data, err := wire.Marshal(c)
	if err != nil {
		return mls.Extension{}, fmt.Errorf("encoding client binding: %w", err)
	}
	return mls.Extension{Type: ExtensionType, Data: data}, nil
}

// SignedContent returns ClientBindingTBS, the content the binding signature
// covers:
//
//	struct { ClientURI client_uri; opaque signature_key<V>; uint64 not_after; } ClientBindingTBS;
//
// where client_uri is the identity of the leaf's BasicCredential and
// signature_key the leaf's signature_key, both as the leaf carries them.
func SignedContent(clientURI, signatureKey []byte, notAfter uint64) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, len(clientURI)+len(signatureKey)+16))
	wire.AddOpaque(b, clientURI)
	wire.AddOpaque(b, signatureKey)
	b.AddUint64(notAfter)
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding ClientBindingTBS: %w", err)
	}
	return out, nil
}

// Attach puts c into leaf as its client binding extension, replacing any
// binding it had, and lists ExtensionType in the leaf's capabilities (RFC
// 9420 §7.2 requires a leaf to list the non-default extensions it carries).
// The leaf's signature is then stale: the caller signs the leaf afterwards
// (mls.LeafNode.Sign, or the KeyPackage's Sign for a KeyPackage leaf).
func Attach(leaf *mls.LeafNode, c *ClientBinding) error {
	ext, err := c.Extension()
	if err != nil {
		return err
	}
	exts := make(mls.Extensions, 0, len(leaf.Extensions)+1)
	for _, e := range leaf.Extensions {
		if e.Type != ExtensionType {
			exts = append(exts, e)
		}
	}
	leaf.Extensions = append(exts, ext)
	if !slices.Contains(leaf.Capabilities.Extensions, ExtensionType) {
		leaf.Capabilities.Extensions = append(slices.Clip(leaf.Capabilities.Extensions), ExtensionType)
	}
	return nil
}

// providerOf checks that identity is a MIMI client URI and returns the
// provider it names. Failures wrap moh.ErrBadClientURI.
func providerOf(identity []byte) (string, error) {
	provider, _, _, err := moh.ParseClientURI(identity)
	if err != nil {
		return "", err
	}
	return string(provider), nil
}
