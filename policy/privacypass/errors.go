package privacypass

import (
	"errors"
	"fmt"
)

// Reason is a machine-readable code naming the check a Privacy Pass operation
// failed. The HTTP layer maps reasons to statuses and DSError codes; this
// package never does.
type Reason string

// Reasons returned by this package. Each names exactly one failed check.
const (
	// ReasonMissing: the request carried no PrivateToken credential. The
	// origin answers with a fresh challenge.
	ReasonMissing Reason = "token_required"
	// ReasonMalformed: a header, token, challenge, key or message could not
	// be decoded, or had the wrong length.
	ReasonMalformed Reason = "malformed"
	// ReasonUnsupportedType: the token type is unknown or not configured. The
	// origin answers with a fresh challenge, the issuer with an issuance
	// error.
	ReasonUnsupportedType Reason = "unsupported_type"
	// ReasonUnknownKey: no configured key has the token's token_key_id (or,
	// for issuance, the request's truncated key id).
	ReasonUnknownKey Reason = "unknown_key"
	// ReasonChallengeDigest: the token's challenge_digest is not the digest
	// of a challenge this origin accepts now (wrong origin, issuer, context,
	// or an expired challenge).
	ReasonChallengeDigest Reason = "challenge_digest"
	// ReasonAuthenticator: the token's authenticator does not verify under
	// the issuer key.
	ReasonAuthenticator Reason = "authenticator"
	// ReasonReplay: the token was already redeemed (double spend).
	ReasonReplay Reason = "replay"
	// ReasonStoreUnavailable: a store failed (the double-spend record, or
	// the shared challenges of OriginConfig.Challenges), so the token
	// could not be redeemed safely; the request may be retried.
	ReasonStoreUnavailable Reason = "backend_unavailable"
	// ReasonInvalidConfig: a configuration or key was refused when building
	// an Origin, Verifier or Issuer.
	ReasonInvalidConfig Reason = "invalid_config"
)

// Error is the error type returned by this package. Reason says which check
// failed; Err, when set, carries the detail. Error values never contain
// secrets, keys or token bytes.
type Error struct {
	Reason Reason
	Err    error
}

// Error implements error.
func (e *Error) Error() string {
	if e.Err == nil {
		return "privacy pass: " + string(e.Reason)
	}
	return "privacy pass: " + string(e.Reason) + ": " + e.Err.Error()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same Reason, so that
// errors.Is(err, privacypass.ErrReplay) works on wrapped errors.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Reason == e.Reason
}

// Sentinel errors, one per Reason, for use with errors.Is.
var (
	ErrMissing          = &Error{Reason: ReasonMissing}
	ErrMalformed        = &Error{Reason: ReasonMalformed}
	ErrUnsupportedType  = &Error{Reason: ReasonUnsupportedType}
	ErrUnknownKey       = &Error{Reason: ReasonUnknownKey}
	ErrChallengeDigest  = &Error{Reason: ReasonChallengeDigest}
	ErrAuthenticator    = &Error{Reason: ReasonAuthenticator}
	ErrReplay           = &Error{Reason: ReasonReplay}
	ErrStoreUnavailable = &Error{Reason: ReasonStoreUnavailable}
	ErrInvalidConfig    = &Error{Reason: ReasonInvalidConfig}
)

// ReasonOf returns the Reason carried by err, or "" when err is nil or did not
// come from this package.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func newError(r Reason, format string, args ...any) error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}

func wrapError(r Reason, context string, err error) error {
	return &Error{Reason: r, Err: fmt.Errorf("%s: %w", context, err)}
}
