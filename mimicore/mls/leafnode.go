package mls

import (
	"crypto"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ProtocolVersion is an MLS protocol version (RFC 9420 §6).
type ProtocolVersion uint16

// MLS10 is the protocol version of RFC 9420.
const MLS10 ProtocolVersion = 1

// Capabilities lists what a client supports (RFC 9420 §7.2).
type Capabilities struct {
	Versions     []ProtocolVersion
	CipherSuites []CipherSuite
	Extensions   []ExtensionType
	Proposals    []ProposalType
	Credentials  []CredentialType
}

// MarshalWire implements wire.Marshaler.
func (c *Capabilities) MarshalWire(b *cryptobyte.Builder) {
	addUint16List(b, c.Versions)
	addUint16List(b, c.CipherSuites)
	addUint16List(b, c.Extensions)
	addUint16List(b, c.Proposals)
	addUint16List(b, c.Credentials)
}

// UnmarshalWire implements wire.Unmarshaler.
func (c *Capabilities) UnmarshalWire(s *cryptobyte.String) bool {
	return readUint16List(s, &c.Versions) && readUint16List(s, &c.CipherSuites) &&
		readUint16List(s, &c.Extensions) && readUint16List(s, &c.Proposals) &&
		readUint16List(s, &c.Credentials)
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// Lifetime is the validity window of a KeyPackage leaf, in seconds since the
// Unix epoch (RFC 9420 §7.2).
type Lifetime struct {
	NotBefore, NotAfter uint64
}

// Contains reports whether the lifetime contains the time now, give or
// take skew: not_before - skew <= now <= not_after + skew, both in seconds
// since the Unix epoch and inclusive. A lifetime whose not_after precedes
// its not_before contains no time, whatever the skew.
func (l Lifetime) Contains(now, skew uint64) bool {
	if l.NotBefore > l.NotAfter {
		return false
	}
	// Written so that neither side overflows near 2^64.
	return (l.NotBefore <= now || l.NotBefore-now <= skew) &&
		(now <= l.NotAfter || now-l.NotAfter <= skew)
}

// DefaultMaxLifetime is a maximum total lifetime (not_after - not_before)
// of a LeafNode for applications to adopt, as RFC 9420 §7.2 has each
// define one: 366 days. It accepts the longest lifetimes common MLS
// libraries give their KeyPackages by default (mls-rs: 365 days from now;
// OpenMLS: 84 days from an hour ago, and it refuses more than 84 days and
// an hour) with a day for a not_before set back against clock skew, and
// refuses lifetimes that amount to none (0 to 2^64-1, a century). Nothing
// in this package applies a maximum unless asked (ApplyOptions.MaxLifetime,
// Lifetime.SpanAtMost): the test vectors of RFC 9420 use such lifetimes.
const DefaultMaxLifetime = 366 * 24 * time.Hour

// Span returns the total lifetime, not_after - not_before, in seconds
// (RFC 9420 §7.2), and false for a lifetime whose not_after precedes its
// not_before, which has none (and contains no time). The difference of
// two uint64 values in that order never overflows.
func (l Lifetime) Span() (uint64, bool) {
	if l.NotBefore > l.NotAfter {
		return 0, false
	}
	return l.NotAfter - l.NotBefore, true
}

// SpanAtMost reports whether the total lifetime is at most limit: RFC 9420
// §7.2 has applications define the longest total lifetime they accept
// and reject any LeafNode whose lifetime is longer. A lifetime whose
// not_after precedes its not_before has no length and passes (Contains
// refuses it). A negative limit counts as zero; fractions of a second
// are dropped.
func (l Lifetime) SpanAtMost(limit time.Duration) bool {
	span, _ := l.Span()
	return span <= uint64(max(limit/time.Second, 0))
}

// CheckMaxLifetime refuses a lifetime longer in total than limit
// (SpanAtMost), with an error that names both, for its callers to prefix
// with what the lifetime is of. A limit of zero or less is no maximum.
func (l Lifetime) CheckMaxLifetime(limit time.Duration) error {
	if limit <= 0 || l.SpanAtMost(limit) {
		return nil
	}
	return fmt.Errorf("lifetime [%d, %d] is longer than the %d s accepted", l.NotBefore, l.NotAfter, uint64(limit/time.Second))
}

// LeafNodeSource says how a leaf node was made (RFC 9420 §7.2).
type LeafNodeSource uint8

// The leaf node sources of RFC 9420 §7.2.
const (
	SourceKeyPackage LeafNodeSource = 1
	SourceUpdate     LeafNodeSource = 2
	SourceCommit     LeafNodeSource = 3
)

// LeafNode is a member's leaf in the ratchet tree (RFC 9420 §7.2).
// Lifetime is meaningful for SourceKeyPackage, ParentHash for SourceCommit.
type LeafNode struct {
	EncryptionKey []byte
	SignatureKey  []byte
	Credential    Credential
	Capabilities  Capabilities
	Source        LeafNodeSource
	Lifetime      Lifetime
	ParentHash    []byte
	Extensions    Extensions
	Signature     []byte
}

// marshalTBSFields writes the fields shared by LeafNode and LeafNodeTBS.
func (l *LeafNode) marshalTBSFields(b *cryptobyte.Builder) {
	wire.AddOpaque(b, l.EncryptionKey)
	wire.AddOpaque(b, l.SignatureKey)
	l.Credential.MarshalWire(b)
	l.Capabilities.MarshalWire(b)
	b.AddUint8(uint8(l.Source))
	switch l.Source {
	case SourceKeyPackage:
		b.AddUint64(l.Lifetime.NotBefore)
		b.AddUint64(l.Lifetime.NotAfter)
	case SourceUpdate:
	case SourceCommit:
		wire.AddOpaque(b, l.ParentHash)
	default:
		b.SetError(fmt.Errorf("%w: leaf node source %d", errEncoding, l.Source))
	}
	l.Extensions.MarshalWire(b)
}

// MarshalWire implements wire.Marshaler.
func (l *LeafNode) MarshalWire(b *cryptobyte.Builder) {
	l.marshalTBSFields(b)
	wire.AddOpaque(b, l.Signature)
}

// UnmarshalWire implements wire.Unmarshaler.
func (l *LeafNode) UnmarshalWire(s *cryptobyte.String) bool {
	*l = LeafNode{}
	if !wire.ReadOpaque(s, &l.EncryptionKey) || !wire.ReadOpaque(s, &l.SignatureKey) ||
		!l.Credential.UnmarshalWire(s) || !l.Capabilities.UnmarshalWire(s) ||
		!s.ReadUint8((*uint8)(&l.Source)) {
		return false
	}
	switch l.Source {
	case SourceKeyPackage:
		if !s.ReadUint64(&l.Lifetime.NotBefore) || !s.ReadUint64(&l.Lifetime.NotAfter) {
			return false
		}
	case SourceUpdate:
	case SourceCommit:
		if !wire.ReadOpaque(s, &l.ParentHash) {
			return false
		}
	default:
		return false
	}
	return l.Extensions.UnmarshalWire(s) && wire.ReadOpaque(s, &l.Signature)
}

// tbs returns the LeafNodeTBS encoding. groupID and leafIndex are used for
// the update and commit sources only.
func (l *LeafNode) tbs(groupID []byte, leafIndex uint32) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 256))
	l.marshalTBSFields(b)
	if l.Source == SourceUpdate || l.Source == SourceCommit {
		wire.AddOpaque(b, groupID)
		b.AddUint32(leafIndex)
	}
	return b.Bytes()
}

// Sign sets l.Signature to a signature over LeafNodeTBS. groupID and
// leafIndex are ignored for SourceKeyPackage.
func (l *LeafNode) Sign(cs CipherSuite, signer crypto.Signer, groupID []byte, leafIndex uint32) error {
	tbs, err := l.tbs(groupID, leafIndex)
	if err != nil {
		return fmt.Errorf("encoding leaf node tbs: %w", err)
	}
	sig, err := cs.SignWithLabel(signer, "LeafNodeTBS", tbs)
	if err != nil {
		return err
	}
	l.Signature = sig
	return nil
}

// VerifySignature checks l.Signature with l.SignatureKey. groupID and
// leafIndex are ignored for SourceKeyPackage.
func (l *LeafNode) VerifySignature(cs CipherSuite, groupID []byte, leafIndex uint32) error {
	tbs, err := l.tbs(groupID, leafIndex)
	if err != nil {
		return fmt.Errorf("encoding leaf node tbs: %w", err)
	}
	if err := cs.VerifyWithLabel(l.SignatureKey, "LeafNodeTBS", tbs, l.Signature); err != nil {
		return fmt.Errorf("leaf node: %w", err)
	}
	return nil
}

// clone returns a deep copy of l.
func (l *LeafNode) clone() *LeafNode {
	c := *l
	c.EncryptionKey = cloneBytes(l.EncryptionKey)
	c.SignatureKey = cloneBytes(l.SignatureKey)
	c.ParentHash = cloneBytes(l.ParentHash)
	c.Signature = cloneBytes(l.Signature)
	c.Extensions = l.Extensions.clone()
	c.Credential = l.Credential.clone()
	c.Capabilities = l.Capabilities.clone()
	return &c
}

// clone returns a deep copy of c.
func (c *Capabilities) clone() Capabilities {
	return Capabilities{
		Versions:     append([]ProtocolVersion(nil), c.Versions...),
		CipherSuites: append([]CipherSuite(nil), c.CipherSuites...),
		Extensions:   append([]ExtensionType(nil), c.Extensions...),
		Proposals:    append([]ProposalType(nil), c.Proposals...),
		Credentials:  append([]CredentialType(nil), c.Credentials...),
	}
}
