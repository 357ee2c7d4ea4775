package moh

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Code is a machine-readable DSError code (docs/protocol.md, "Error codes").
// The HTTP layer maps each code to exactly one status.
type Code uint16

// The DSError code registry. Values are part of the wire profile: never
// renumber, only append.
const (
	CodeMalformed          Code = 1  // the body does not decode
	CodeBadSignature       Code = 2  // a signature does not verify
	CodeUnknownKey         Code = 3  // the signing key is unknown or does not cover the timestamp
	CodeStaleTimestamp     Code = 4  // the timestamp is outside the accepted window
	CodeReplay             Code = 5  // request_id reused with other bytes, or a replayed signature
	CodeRecipientMismatch  Code = 6  // the payload is addressed to another provider
	CodeNotFound           Code = 7  // unknown object, or the sender may not see it
	CodeStaleEpoch         Code = 8  // the handshake is for an old epoch
	CodeCommitConflict     Code = 9  // another commit for this epoch won
	CodeQuotaExceeded      Code = 10 // a storage quota would be exceeded
	CodeTooLarge           Code = 11 // the body or a field is above its size limit
	CodeRateLimited        Code = 12 // a rate limit refused the request
	CodeTokenRequired      Code = 13 // a Privacy Pass token is required
	CodeBackendUnavailable Code = 14 // the store or the legacy backend is unavailable
	CodeNotImplemented     Code = 15 // the endpoint or request type is not implemented yet
	CodeUnsupportedMedia   Code = 16 // the Content-Type is not application/octet-stream
	CodeWrongRequestType   Code = 17 // the request type does not match the endpoint
	CodeForbidden          Code = 18 // authenticated but not allowed (peer policy, no TLS 1.3)
	CodeMethodNotAllowed   Code = 19 // the HTTP method is not allowed on the endpoint
	CodeUnsupportedVersion Code = 20 // the protocol_version is not 1
	CodeInProgress         Code = 21 // the same request_id is still being processed
	CodeTooEarly           Code = 22 // the request came as TLS early data; retry after the handshake
	CodeBodyTimeout        Code = 23 // the request body did not arrive in time
	CodeInvalidMLS         Code = 24 // the MLS content is not valid for the group's state (RFC 9420)
	CodeGroupExists        Code = 25 // create_group names a group id already in use
	CodeContentMismatch    Code = 26 // an upload's content differs from its header's length or hash
	CodeCertRequired       Code = 27 // mutual TLS is required and the connection carries no client certificate
	CodeBadCertificate     Code = 28 // the client certificate is not valid, not trusted, or does not name the sender's DS authority
)

var codeNames = [...]string{
	CodeMalformed:          "malformed",
	CodeBadSignature:       "bad_signature",
	CodeUnknownKey:         "unknown_key",
	CodeStaleTimestamp:     "stale_timestamp",
	CodeReplay:             "replay",
	CodeRecipientMismatch:  "recipient_mismatch",
	CodeNotFound:           "not_found",
	CodeStaleEpoch:         "stale_epoch",
	CodeCommitConflict:     "commit_conflict",
	CodeQuotaExceeded:      "quota_exceeded",
	CodeTooLarge:           "too_large",
	CodeRateLimited:        "rate_limited",
	CodeTokenRequired:      "token_required",
	CodeBackendUnavailable: "backend_unavailable",
	CodeNotImplemented:     "not_implemented",
	CodeUnsupportedMedia:   "unsupported_media_type",
	CodeWrongRequestType:   "wrong_request_type",
	CodeForbidden:          "forbidden",
	CodeMethodNotAllowed:   "method_not_allowed",
	CodeUnsupportedVersion: "unsupported_version",
	CodeInProgress:         "in_progress",
	CodeTooEarly:           "too_early",
	CodeBodyTimeout:        "body_timeout",
	CodeInvalidMLS:         "invalid_mls",
	CodeGroupExists:        "group_exists",
	CodeContentMismatch:    "content_mismatch",
	CodeCertRequired:       "certificate_required",
	CodeBadCertificate:     "bad_certificate",
}

// String returns the registry name of c, such as "malformed".
func (c Code) String() string {
	if int(c) < len(codeNames) && codeNames[c] != "" {
		return codeNames[c]
	}
	return fmt.Sprintf("code_%d", uint16(c))
}

// Known reports whether c is in the registry.
func (c Code) Known() bool {
	return int(c) < len(codeNames) && codeNames[c] != ""
}

// Error is an error that carries a DSError code to the HTTP layer. Message is
// safe to send to the peer: it never holds secrets.
type Error struct {
	Code    Code
	Message string
	Err     error // the cause (from Errorf: the full text, wrapping the %w operands), for logs only; never sent
}

// causePlaceholder is what a %w operand of Errorf renders as in the
// peer-visible message.
const causePlaceholder = "internal error"

// placeholder stands in for a %w operand when Errorf renders the message.
type placeholder struct{}

func (placeholder) Error() string { return causePlaceholder }

// Errorf returns an *Error whose peer-visible Message is format rendered
// with args, except that every %w operand renders as "internal error": a
// wrapped cause is internal (paths, addresses, store errors) and never
// reaches the peer. Err then holds the fully formatted error, which wraps
// the causes as fmt.Errorf does, for logs and errors.Is; without %w, Err is
// nil. Operands of other verbs are rendered as given, so callers must not
// pass secrets to them.
func Errorf(code Code, format string, args ...any) *Error {
	wrapped := wrapOperands(format)
	if len(wrapped) == 0 {
		return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
	}
	shown := append([]any(nil), args...)
	for _, i := range wrapped {
		if i < len(shown) {
			shown[i] = placeholder{}
		}
	}
	return &Error{Code: code, Message: fmt.Errorf(format, shown...).Error(), Err: fmt.Errorf(format, args...)}
}

// wrapOperands returns the indexes of the operands that format's %w verbs
// consume, following fmt's rules for flags, explicit argument indexes
// ([n]), and * widths and precisions (which consume an operand).
func wrapOperands(format string) []int {
	var out []int
	arg := 0
	end := len(format)
	// index parses an optional [n] at format[i:] and moves arg to n-1.
	index := func(i int) int {
		if i >= end || format[i] != '[' {
			return i
		}
		j := strings.IndexByte(format[i:], ']')
		if j < 0 {
			return i
		}
		if n, err := strconv.Atoi(format[i+1 : i+j]); err == nil && n > 0 {
			arg = n - 1
		}
		return i + j + 1
	}
	// number skips a * (consuming an operand) or a run of digits.
	number := func(i int) int {
		if i < end && format[i] == '*' {
			arg++
			return i + 1
		}
		for i < end && format[i] >= '0' && format[i] <= '9' {
			i++
		}
		return i
	}
	for i := 0; i < end; i++ {
		if format[i] != '%' {
			continue
		}
		i++
		for i < end && strings.IndexByte("+-# 0", format[i]) >= 0 {
			i++
		}
		i = number(index(i))
		if i < end && format[i] == '.' {
			i = number(index(i + 1))
		}
		i = index(i)
		if i >= end {
			break
		}
		verb, size := utf8.DecodeRuneInString(format[i:])
		switch verb {
		case '%':
		case 'w':
			out = append(out, arg)
			arg++
		default:
			arg++
		}
		i += size - 1
	}
	return out
}

// Error implements error.
func (e *Error) Error() string {
	return e.Code.String() + ": " + e.Message
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// DSErrorOf returns the DSError to send for err: the code and message of the
// first *Error in its chain, CodeMalformed for a wire.ErrMalformed, and
// otherwise a generic backend_unavailable that does not leak the cause.
func DSErrorOf(err error) DSError {
	var e *Error
	if errors.As(err, &e) {
		return DSError{Code: e.Code, Message: []byte(e.Message)}
	}
	if errors.Is(err, wire.ErrMalformed) {
		return DSError{Code: CodeMalformed, Message: []byte(err.Error())}
	}
	return DSError{Code: CodeBackendUnavailable, Message: []byte("internal error")}
}
