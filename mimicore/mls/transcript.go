package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// confirmedTranscriptHash returns Hash(interim_transcript_hash ||
// ConfirmedTranscriptHashInput) for a commit (RFC 9420 §8.2). The input is
// the AuthenticatedContent without the confirmation tag.
func (s *suite) confirmedTranscriptHash(interim []byte, ac *AuthenticatedContent) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 1024))
	b.AddUint16(uint16(ac.WireFormat))
	ac.Content.MarshalWire(b)
	wire.AddOpaque(b, ac.Auth.Signature)
	in, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding confirmed transcript hash input: %w", err)
	}
	return s.hash(interim, in), nil
}

// interimTranscriptHash returns Hash(confirmed_transcript_hash ||
// InterimTranscriptHashInput{confirmation_tag}) (RFC 9420 §8.2).
func (s *suite) interimTranscriptHash(confirmed, confirmationTag []byte) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 80))
	wire.AddOpaque(b, confirmationTag)
	in, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding interim transcript hash input: %w", err)
	}
	return s.hash(confirmed, in), nil
}

// ConfirmedTranscriptHash returns the confirmed transcript hash that the
// commit ac yields after an epoch whose interim transcript hash is interim.
func (cs CipherSuite) ConfirmedTranscriptHash(interim []byte, ac *AuthenticatedContent) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.confirmedTranscriptHash(interim, ac)
}

// InterimTranscriptHash returns the interim transcript hash that follows a
// confirmed transcript hash and its confirmation tag.
func (cs CipherSuite) InterimTranscriptHash(confirmed, confirmationTag []byte) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.interimTranscriptHash(confirmed, confirmationTag)
}

// ConfirmationTag returns MAC(confirmation_key, confirmed_transcript_hash)
// (RFC 9420 §8.1).
func (cs CipherSuite) ConfirmationTag(confirmationKey, confirmed []byte) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	return s.mac(confirmationKey, confirmed), nil
}
