package mls

import (
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ProposalType identifies a proposal (RFC 9420 §17.4).
type ProposalType uint16

// The proposal types of RFC 9420 §17.4.
const (
	ProposalAdd                    ProposalType = 1
	ProposalUpdate                 ProposalType = 2
	ProposalRemove                 ProposalType = 3
	ProposalPSK                    ProposalType = 4
	ProposalReInit                 ProposalType = 5
	ProposalExternalInit           ProposalType = 6
	ProposalGroupContextExtensions ProposalType = 7
)

// isDefaultProposal reports whether t is one of the RFC 9420 proposals
// every client supports without listing it (§7.2).
func isDefaultProposal(t ProposalType) bool {
	return t >= ProposalAdd && t <= ProposalGroupContextExtensions
}

// Proposal is a proposed change to a group (RFC 9420 §12.1). Which field is
// set depends on Type:
//
//	ProposalAdd                    KeyPackage
//	ProposalUpdate                 LeafNode
//	ProposalRemove                 Removed
//	ProposalPSK                    PSK
//	ProposalReInit                 ReInit
//	ProposalExternalInit           KEMOutput
//	ProposalGroupContextExtensions Extensions
//	any other type                 Data (the opaque<V> body)
type Proposal struct {
	Type       ProposalType
	KeyPackage *KeyPackage
	LeafNode   *LeafNode
	Removed    uint32
	PSK        *PreSharedKeyID
	ReInit     *ReInit
	KEMOutput  []byte
	Extensions Extensions
	Data       []byte
}

// MarshalWire implements wire.Marshaler.
func (p *Proposal) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint16(uint16(p.Type))
	p.marshalBody(b)
}

// marshalBody writes the proposal body without its type.
func (p *Proposal) marshalBody(b *cryptobyte.Builder) {
	switch p.Type {
	case ProposalAdd:
		if p.KeyPackage == nil {
			b.SetError(errEncoding)
			return
		}
		p.KeyPackage.MarshalWire(b)
	case ProposalUpdate:
		if p.LeafNode == nil {
			b.SetError(errEncoding)
			return
		}
		p.LeafNode.MarshalWire(b)
	case ProposalRemove:
		b.AddUint32(p.Removed)
	case ProposalPSK:
		if p.PSK == nil {
			b.SetError(errEncoding)
			return
		}
		p.PSK.MarshalWire(b)
	case ProposalReInit:
		if p.ReInit == nil {
			b.SetError(errEncoding)
			return
		}
		p.ReInit.MarshalWire(b)
	case ProposalExternalInit:
		wire.AddOpaque(b, p.KEMOutput)
	case ProposalGroupContextExtensions:
		p.Extensions.MarshalWire(b)
	default:
		wire.AddOpaque(b, p.Data)
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (p *Proposal) UnmarshalWire(s *cryptobyte.String) bool {
	*p = Proposal{}
	if !s.ReadUint16((*uint16)(&p.Type)) {
		return false
	}
	return p.unmarshalBody(s)
}

// unmarshalBody reads the body of a proposal of type p.Type.
func (p *Proposal) unmarshalBody(s *cryptobyte.String) bool {
	switch p.Type {
	case ProposalAdd:
		p.KeyPackage = new(KeyPackage)
		return p.KeyPackage.UnmarshalWire(s)
	case ProposalUpdate:
		p.LeafNode = new(LeafNode)
		return p.LeafNode.UnmarshalWire(s)
	case ProposalRemove:
		return s.ReadUint32(&p.Removed)
	case ProposalPSK:
		p.PSK = new(PreSharedKeyID)
		return p.PSK.UnmarshalWire(s)
	case ProposalReInit:
		p.ReInit = new(ReInit)
		return p.ReInit.UnmarshalWire(s)
	case ProposalExternalInit:
		return wire.ReadOpaque(s, &p.KEMOutput)
	case ProposalGroupContextExtensions:
		return p.Extensions.UnmarshalWire(s)
	default:
		return wire.ReadOpaque(s, &p.Data)
	}
}

// wellFormed reports whether the body field matching p.Type is set, as it
// always is after decoding; hand-built values may lack it.
func (p *Proposal) wellFormed() bool {
	switch p.Type {
	case ProposalAdd:
		return p.KeyPackage != nil
	case ProposalUpdate:
		return p.LeafNode != nil
	case ProposalPSK:
		return p.PSK != nil
	case ProposalReInit:
		return p.ReInit != nil
	}
	return true
}

// ProposalBody encodes or decodes a proposal body alone, without its type,
// as the messages test vectors hold them. Type must be set before decoding.
type ProposalBody struct{ *Proposal }

// MarshalWire implements wire.Marshaler.
func (p ProposalBody) MarshalWire(b *cryptobyte.Builder) { p.marshalBody(b) }

// UnmarshalWire implements wire.Unmarshaler.
func (p ProposalBody) UnmarshalWire(s *cryptobyte.String) bool {
	t := p.Type
	*p.Proposal = Proposal{Type: t}
	return p.unmarshalBody(s)
}

// PSKType is the kind of a pre-shared key (RFC 9420 §8.4).
type PSKType uint8

// The PSK types of RFC 9420 §8.4.
const (
	PSKExternal   PSKType = 1
	PSKResumption PSKType = 2
)

// ResumptionPSKUsage says why a resumption PSK is used (RFC 9420 §8.4).
type ResumptionPSKUsage uint8

// The resumption PSK usages of RFC 9420 §8.4.
const (
	ResumptionApplication ResumptionPSKUsage = 1
	ResumptionReInit      ResumptionPSKUsage = 2
	ResumptionBranch      ResumptionPSKUsage = 3
)

// PreSharedKeyID names a PSK (RFC 9420 §8.4). PSKID is set for external
// PSKs; Usage, PSKGroupID and PSKEpoch for resumption PSKs.
type PreSharedKeyID struct {
	Type       PSKType
	PSKID      []byte
	Usage      ResumptionPSKUsage
	PSKGroupID []byte
	PSKEpoch   uint64
	Nonce      []byte
}

// MarshalWire implements wire.Marshaler.
func (p *PreSharedKeyID) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint8(uint8(p.Type))
	switch p.Type {
	case PSKExternal:
		wire.AddOpaque(b, p.PSKID)
	case PSKResumption:
		b.AddUint8(uint8(p.Usage))
		wire.AddOpaque(b, p.PSKGroupID)
		b.AddUint64(p.PSKEpoch)
	default:
		b.SetError(errEncoding)
	}
	wire.AddOpaque(b, p.Nonce)
}

// UnmarshalWire implements wire.Unmarshaler.
func (p *PreSharedKeyID) UnmarshalWire(s *cryptobyte.String) bool {
	*p = PreSharedKeyID{}
	if !s.ReadUint8((*uint8)(&p.Type)) {
		return false
	}
	switch p.Type {
	case PSKExternal:
		if !wire.ReadOpaque(s, &p.PSKID) {
			return false
		}
	case PSKResumption:
		if !s.ReadUint8((*uint8)(&p.Usage)) || !wire.ReadOpaque(s, &p.PSKGroupID) || !s.ReadUint64(&p.PSKEpoch) {
			return false
		}
	default:
		return false
	}
	return wire.ReadOpaque(s, &p.Nonce)
}

// ReInit proposes to restart the group with new parameters (RFC 9420
// §12.1.5).
type ReInit struct {
	GroupID     []byte
	Version     ProtocolVersion
	CipherSuite CipherSuite
	Extensions  Extensions
}

// MarshalWire implements wire.Marshaler.
func (r *ReInit) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, r.GroupID)
	b.AddUint16(uint16(r.Version))
	b.AddUint16(uint16(r.CipherSuite))
	r.Extensions.MarshalWire(b)
}

// clone returns a deep copy of r, nil for nil.
func (r *ReInit) clone() *ReInit {
	if r == nil {
		return nil
	}
	return &ReInit{GroupID: cloneBytes(r.GroupID), Version: r.Version, CipherSuite: r.CipherSuite,
		Extensions: r.Extensions.clone()}
}

// UnmarshalWire implements wire.Unmarshaler.
func (r *ReInit) UnmarshalWire(s *cryptobyte.String) bool {
	return wire.ReadOpaque(s, &r.GroupID) && s.ReadUint16((*uint16)(&r.Version)) &&
		s.ReadUint16((*uint16)(&r.CipherSuite)) && r.Extensions.UnmarshalWire(s)
}

// ProposalOrRefType says whether a commit carries a proposal by value or by
// reference (RFC 9420 §12.4).
type ProposalOrRefType uint8

// The ProposalOrRef types of RFC 9420 §12.4.
const (
	ProposalByValue     ProposalOrRefType = 1
	ProposalByReference ProposalOrRefType = 2
)

// ProposalOrRef is one entry of a commit's proposal list: Proposal when
// Type is ProposalByValue, Ref (a ProposalRef) when ProposalByReference.
type ProposalOrRef struct {
	Type     ProposalOrRefType
	Proposal *Proposal
	Ref      []byte
}

// MarshalWire implements wire.Marshaler.
func (p *ProposalOrRef) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint8(uint8(p.Type))
	switch p.Type {
	case ProposalByValue:
		if p.Proposal == nil {
			b.SetError(errEncoding)
			return
		}
		p.Proposal.MarshalWire(b)
	case ProposalByReference:
		wire.AddOpaque(b, p.Ref)
	default:
		b.SetError(errEncoding)
	}
}

// UnmarshalWire implements wire.Unmarshaler.
func (p *ProposalOrRef) UnmarshalWire(s *cryptobyte.String) bool {
	*p = ProposalOrRef{}
	if !s.ReadUint8((*uint8)(&p.Type)) {
		return false
	}
	switch p.Type {
	case ProposalByValue:
		p.Proposal = new(Proposal)
		return p.Proposal.UnmarshalWire(s)
	case ProposalByReference:
		return wire.ReadOpaque(s, &p.Ref)
	default:
		return false
	}
}
