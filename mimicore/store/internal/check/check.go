// Package check validates the arguments of store methods, so that every
// backend refuses exactly the same inputs with store.ErrInvalid.
package check

import (
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Domain checks a sender or peer domain.
func Domain(what, d string) error {
	if d == "" || len(d) > store.MaxDomainSize {
		return fmt.Errorf("%s is %d bytes, want 1..%d: %w", what, len(d), store.MaxDomainSize, store.ErrInvalid)
	}
	return nil
}

// ID checks a binary identifier.
func ID(what string, id []byte) error {
	if len(id) == 0 || len(id) > store.MaxIDSize {
		return fmt.Errorf("%s is %d bytes, want 1..%d: %w", what, len(id), store.MaxIDSize, store.ErrInvalid)
	}
	return nil
}

// PublicKey checks an encoded public key.
func PublicKey(k []byte) error {
	if len(k) == 0 || len(k) > store.MaxPublicKeySize {
		return fmt.Errorf("public key is %d bytes, want 1..%d: %w", len(k), store.MaxPublicKeySize, store.ErrInvalid)
	}
	return nil
}

// Answer checks a replay-cache answer.
func Answer(a store.Answer) error {
	if len(a.Body) > store.MaxAnswerSize {
		return fmt.Errorf("answer body is %d bytes, over the %d byte limit: %w", len(a.Body), store.MaxAnswerSize, store.ErrInvalid)
	}
	return nil
}

// Validity checks that a key's validity is not empty.
func Validity(notBefore, notAfter time.Time) error {
	if notAfter.Before(notBefore) {
		return fmt.Errorf("key validity ends before it starts: %w", store.ErrInvalid)
	}
	return nil
}

// SigningKey checks the metadata of a signing key.
func SigningKey(k store.SigningKey) error {
	if err := ID("key id", k.KeyID); err != nil {
		return err
	}
	if err := PublicKey(k.PublicKey); err != nil {
		return err
	}
	if err := Validity(k.NotBefore, k.NotAfter); err != nil {
		return err
	}
	if !store.ValidFileName(k.File) {
		return fmt.Errorf("key file name %q is not a plain base name: %w", k.File, store.ErrInvalid)
	}
	return nil
}

// PeerKeys checks the key set of one fetch from domain.
func PeerKeys(domain string, keys []store.PeerKey) error {
	if err := Domain("peer domain", domain); err != nil {
		return err
	}
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		if k.Domain != "" && k.Domain != domain {
			return fmt.Errorf("key %d names domain %q, not %q: %w", i, k.Domain, domain, store.ErrInvalid)
		}
		if err := ID("key id", k.KeyID); err != nil {
			return err
		}
		if seen[string(k.KeyID)] {
			return fmt.Errorf("key id %x appears twice: %w", k.KeyID, store.ErrInvalid)
		}
		seen[string(k.KeyID)] = true
		if err := PublicKey(k.PublicKey); err != nil {
			return err
		}
		if err := Validity(k.NotBefore, k.NotAfter); err != nil {
			return err
		}
	}
	return nil
}

// PeerFailure checks a failed-fetch record.
func PeerFailure(f store.PeerFailure) error {
	if err := Domain("peer domain", f.Domain); err != nil {
		return err
	}
	if len(f.Reason) > store.MaxReasonSize {
		return fmt.Errorf("failure reason is %d bytes, over the %d byte limit: %w", len(f.Reason), store.MaxReasonSize, store.ErrInvalid)
	}
	return nil
}

// ExpiryMillis converts an expiry to Unix milliseconds, rounding up so a
// record lives at least until t.
func ExpiryMillis(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.Nanosecond()%int(time.Millisecond) != 0 {
		ms++
	}
	return ms
}

// Millis converts a time to Unix milliseconds, rounding down.
func Millis(t time.Time) int64 { return t.UnixMilli() }

// Time converts Unix milliseconds back to a UTC time.
func Time(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// GroupID checks an MLS group id.
func GroupID(id []byte) error { return ID("group id", id) }

// Proposal checks a pending proposal.
func Proposal(p store.PendingProposal) error {
	if err := ID("proposal ref", p.Ref); err != nil {
		return err
	}
	if len(p.Message) == 0 || len(p.Message) > store.MaxProposalSize {
		return fmt.Errorf("proposal message is %d bytes, want 1..%d: %w", len(p.Message), store.MaxProposalSize, store.ErrInvalid)
	}
	return nil
}
