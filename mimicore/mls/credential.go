package mls

import (
	"bytes"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// CredentialType identifies a credential format (RFC 9420 §17.5).
type CredentialType uint16

// The credential types of RFC 9420 §17.5.
const (
	CredentialBasic CredentialType = 1
	CredentialX509  CredentialType = 2
)

// Credential binds an identity to a signature key (RFC 9420 §5.3).
//
// A basic credential fills Identity, an X.509 credential fills Certificates
// (leaf first). Any other type, including GREASE, is carried as one opaque<V>
// body in Data.
type Credential struct {
	Type         CredentialType
	Identity     []byte
	Certificates [][]byte
	Data         []byte
}

// certificate is one opaque<V> certificate of an X.509 credential.
type certificate struct{ data []byte }

func (c *certificate) MarshalWire(b *cryptobyte.Builder)       { wire.AddOpaque(b, c.data) }
func (c *certificate) UnmarshalWire(s *cryptobyte.String) bool { return wire.ReadOpaque(s, &c.data) }

// MarshalWire implements wire.Marshaler.
func (c *Credential) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(uint16(c.Type))
	switch c.Type {
	case CredentialBasic:
		wire.AddOpaque(b, c.Identity)
	case CredentialX509:
		certs := make([]certificate, len(c.Certificates))
		for i, d := range c.Certificates {
			certs[i].data = d
		}
		addList(b, certs)
	default:
		wire.AddOpaque(b, c.Data)
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (c *Credential) UnmarshalWire(s *cryptobyte.String) bool {
	*c = Credential{}
	if !s.ReadUint16((*uint16)(&c.Type)) {
		return false
	}
	switch c.Type {
	case CredentialBasic:
		return wire.ReadOpaque(s, &c.Identity)
	case CredentialX509:
		var certs []certificate
		if !readList(s, &certs, maxListItems) {
			return false
		}
		c.Certificates = make([][]byte, len(certs))
		for i := range certs {
			c.Certificates[i] = certs[i].data
		}
		return true
	default:
		return wire.ReadOpaque(s, &c.Data)
	}
}

// Equal reports whether c and o encode to the same bytes.
func (c *Credential) Equal(o *Credential) bool {
	if c.Type != o.Type || !bytes.Equal(c.Identity, o.Identity) || !bytes.Equal(c.Data, o.Data) ||
		len(c.Certificates) != len(o.Certificates) {
		return false
	}
	for i := range c.Certificates {
		if !bytes.Equal(c.Certificates[i], o.Certificates[i]) {
			return false
		}
	}
	return true
}

// clone returns a deep copy of c.
func (c *Credential) clone() Credential {
	out := Credential{Type: c.Type, Identity: cloneBytes(c.Identity), Data: cloneBytes(c.Data)}
	if c.Certificates != nil {
		out.Certificates = make([][]byte, len(c.Certificates))
		for i, d := range c.Certificates {
			out.Certificates[i] = cloneBytes(d)
		}
	}
	return out
}
