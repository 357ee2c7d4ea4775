package moh

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ErrUnsupportedVersion is wrapped by the errors of CheckVersion, PeekHeader
// and the Decode functions when the input starts with a protocol_version
// other than ProtocolVersion. Those errors are *Error values with
// CodeUnsupportedVersion, so DSErrorOf answers them unsupported_version.
var ErrUnsupportedVersion = errors.New("unsupported protocol version")

// MaxProviderRequestOverhead is the largest number of bytes a ProviderRequest
// adds around its payload (docs/protocol.md §1.2): version, type, two FQDNs,
// timestamp, request id, key id and signature at their limits, and the
// length prefix of a MaxPayloadLen payload.
const MaxProviderRequestOverhead = 2 + 1 + (2 + MaxFQDNLen) + (2 + MaxFQDNLen) + 8 +
	(2 + MaxRequestIDLen) + (2 + MaxKeyIDLen) + 4 + (2 + MaxSignatureLen)

// unsupportedVersion is the error for a request of protocol version v.
func unsupportedVersion(v uint16) error {
	return &Error{
		Code:    CodeUnsupportedVersion,
		Message: fmt.Sprintf("protocol_version %d is not supported; this gateway speaks %d", v, ProtocolVersion),
		Err:     ErrUnsupportedVersion,
	}
}

// malformed is the error for input that does not decode as name; it wraps
// wire.ErrMalformed.
func malformed(name, reason string) error {
	err := fmt.Errorf("decoding %s: %w: %s", name, wire.ErrMalformed, reason)
	return &Error{Code: CodeMalformed, Message: err.Error(), Err: err}
}

// asMalformed turns an error of wire.Unmarshal into a coded *Error.
func asMalformed(err error) error {
	return &Error{Code: CodeMalformed, Message: err.Error(), Err: err}
}

// CheckVersion reads the uint16 protocol_version that starts every request
// body (DSRequest, ProviderRequest, VerificationKeyRequest). It returns nil
// for ProtocolVersion; an error wrapping ErrUnsupportedVersion for any
// other value, whatever follows it; and an error wrapping wire.ErrMalformed
// when data is shorter than two bytes.
func CheckVersion(data []byte) error {
	if len(data) < 2 {
		return malformed("protocol_version", "truncated")
	}
	if v := binary.BigEndian.Uint16(data); v != ProtocolVersion {
		return unsupportedVersion(v)
	}
	return nil
}

// Header is the prefix that every DSRequest and ProviderRequest starts with.
type Header struct {
	Version uint16 // protocol_version
	Type    uint8  // request_type: a RequestType or a ProviderRequestType
}

// PeekHeader reads the protocol_version and the request type at the start of
// an encoded DSRequest or ProviderRequest without decoding the rest. For a
// version other than ProtocolVersion it returns the header with the version
// read (Type 0) and an error wrapping ErrUnsupportedVersion; for input too
// short to hold the version, or holding version 1 but no type, an error
// wrapping wire.ErrMalformed. The type is not checked against the known
// ones.
func PeekHeader(data []byte) (Header, error) {
	if err := CheckVersion(data); err != nil {
		var h Header
		if len(data) >= 2 {
			h.Version = binary.BigEndian.Uint16(data)
		}
		return h, err
	}
	if len(data) < 3 {
		return Header{Version: ProtocolVersion}, malformed("request header", "no request type")
	}
	return Header{Version: ProtocolVersion, Type: data[2]}, nil
}

// DecodeProviderRequest decodes data as one complete ProviderRequest. Every
// error is an *Error: unsupported_version (wrapping ErrUnsupportedVersion)
// when the version is not ProtocolVersion, malformed (wrapping
// wire.ErrMalformed) for anything else that does not decode.
func DecodeProviderRequest(data []byte) (*ProviderRequest, error) {
	if err := CheckVersion(data); err != nil {
		return nil, err
	}
	req := new(ProviderRequest)
	if err := wire.Unmarshal(data, req, "ProviderRequest"); err != nil {
		return nil, asMalformed(err)
	}
	return req, nil
}

// DecodeDSRequest decodes data as one complete DSRequest, with the errors of
// DecodeProviderRequest. The provider-only types 11..13 and unknown types
// are malformed: check the type with PeekHeader first to tell them apart.
func DecodeDSRequest(data []byte) (*DSRequest, error) {
	if err := CheckVersion(data); err != nil {
		return nil, err
	}
	req := new(DSRequest)
	if err := wire.Unmarshal(data, req, "DSRequest"); err != nil {
		return nil, asMalformed(err)
	}
	return req, nil
}

// DecodeDSRequestPrefix decodes the DSRequest at the start of data and
// returns it with the number of bytes it took; the bytes after it (an
// upload's content) are left alone. Errors are those of DecodeDSRequest.
func DecodeDSRequestPrefix(data []byte) (*DSRequest, int, error) {
	if err := CheckVersion(data); err != nil {
		return nil, 0, err
	}
	req := new(DSRequest)
	s := cryptobyte.String(data)
	if !req.UnmarshalWire(&s) {
		return nil, 0, malformed("DSRequest", "truncated or invalid field")
	}
	return req, len(data) - len(s), nil
}
