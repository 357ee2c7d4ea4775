package mls

import (
	"crypto"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// GroupContext is the shared state every member agrees on in an epoch (RFC
// 9420 §8.1).
type GroupContext struct {
	Version                 ProtocolVersion
	CipherSuite             CipherSuite
	GroupID                 []byte
	Epoch                   uint64
	TreeHash                []byte
	ConfirmedTranscriptHash []byte
	Extensions              Extensions
}

// MarshalWire implements wire.Marshaler.
func (g *GroupContext) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(uint16(g.Version))
	b.AddUint16(uint16(g.CipherSuite))
	wire.AddOpaque(b, g.GroupID)
	b.AddUint64(g.Epoch)
	wire.AddOpaque(b, g.TreeHash)
	wire.AddOpaque(b, g.ConfirmedTranscriptHash)
	g.Extensions.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler.
func (g *GroupContext) UnmarshalWire(s *cryptobyte.String) bool {
	return s.ReadUint16((*uint16)(&g.Version)) && s.ReadUint16((*uint16)(&g.CipherSuite)) &&
		wire.ReadOpaque(s, &g.GroupID) && s.ReadUint64(&g.Epoch) && wire.ReadOpaque(s, &g.TreeHash) &&
		wire.ReadOpaque(s, &g.ConfirmedTranscriptHash) && g.Extensions.UnmarshalWire(s)
}

// clone returns a deep copy of g.
func (g *GroupContext) clone() GroupContext {
	c := *g
	c.GroupID = cloneBytes(g.GroupID)
	c.TreeHash = cloneBytes(g.TreeHash)
	c.ConfirmedTranscriptHash = cloneBytes(g.ConfirmedTranscriptHash)
	c.Extensions = g.Extensions.clone()
	return c
}

// GroupInfo describes a group to joiners (RFC 9420 §12.4.3).
type GroupInfo struct {
	GroupContext    GroupContext
	Extensions      Extensions
	ConfirmationTag []byte
	Signer          uint32
	Signature       []byte
}

func (g *GroupInfo) marshalTBS(b *cryptobyte.Builder) {
	g.GroupContext.MarshalWire(b)
	g.Extensions.MarshalWire(b)
	wire.AddOpaque(b, g.ConfirmationTag)
	b.AddUint32(g.Signer)
}

// MarshalWire implements wire.Marshaler.
func (g *GroupInfo) MarshalWire(b *cryptobyte.Builder) {
	g.marshalTBS(b)
	wire.AddOpaque(b, g.Signature)
}

// UnmarshalWire implements wire.Unmarshaler.
func (g *GroupInfo) UnmarshalWire(s *cryptobyte.String) bool {
	return g.GroupContext.UnmarshalWire(s) && g.Extensions.UnmarshalWire(s) &&
		wire.ReadOpaque(s, &g.ConfirmationTag) && s.ReadUint32(&g.Signer) && wire.ReadOpaque(s, &g.Signature)
}

func (g *GroupInfo) tbs() ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 256))
	g.marshalTBS(b)
	return b.Bytes()
}

// Sign sets g.Signature over GroupInfoTBS.
func (g *GroupInfo) Sign(signer crypto.Signer) error {
	tbs, err := g.tbs()
	if err != nil {
		return fmt.Errorf("encoding group info tbs: %w", err)
	}
	sig, err := g.GroupContext.CipherSuite.SignWithLabel(signer, "GroupInfoTBS", tbs)
	if err != nil {
		return err
	}
	g.Signature = sig
	return nil
}

// VerifySignature checks g.Signature with the signer's public key.
func (g *GroupInfo) VerifySignature(signatureKey []byte) error {
	tbs, err := g.tbs()
	if err != nil {
		return fmt.Errorf("encoding group info tbs: %w", err)
	}
	if err := g.GroupContext.CipherSuite.VerifyWithLabel(signatureKey, "GroupInfoTBS", tbs, g.Signature); err != nil {
		return fmt.Errorf("group info: %w", err)
	}
	return nil
}
