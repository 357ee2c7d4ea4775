package privacypass

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/cloudflare/circl/blindsign/blindrsa"
	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
)

// Media types of RFC 9578 §4 and §5.
const (
	MediaTypeTokenRequest    = "application/private-token-request"
	MediaTypeTokenResponse   = "application/private-token-response"
	MediaTypeIssuerDirectory = "application/private-token-issuer-directory"
	// DirectoryPath is the well-known path of the issuer directory.
	DirectoryPath = "/.well-known/private-token-issuer-directory"
)

// IssuerKey is a key an Issuer signs with, and when clients may start
// using it.
type IssuerKey struct {
	// Key must hold the private key.
	Key *Key
	// NotBefore, when non-zero, is published as not-before in the directory.
	NotBefore time.Time
}

// Issuer is the issuer role of RFC 9578 for token types 0x0001 and 0x0002:
// it answers TokenRequests with TokenResponses and publishes its directory.
// It does not attest clients: rate-limit issuance in front of it. An Issuer
// is immutable and safe for concurrent use.
type Issuer struct {
	keys    []IssuerKey
	byTrunc map[TokenType]map[byte]*Key
}

// NewIssuer builds an Issuer. Every key must hold its private key, and no two
// keys of one type may share a truncated key id (the last byte of
// token_key_id), since requests name the key only by that byte; rotate to a
// key whose last id byte differs.
func NewIssuer(keys ...IssuerKey) (*Issuer, error) {
	if len(keys) == 0 {
		return nil, newError(ReasonInvalidConfig, "no issuer keys")
	}
	is := &Issuer{byTrunc: make(map[TokenType]map[byte]*Key)}
	for i, ik := range keys {
		k := ik.Key
		if k == nil || !k.HasPrivate() {
			return nil, newError(ReasonInvalidConfig, "issuer key %d has no private key", i)
		}
		m := is.byTrunc[k.typ]
		if m == nil {
			m = make(map[byte]*Key)
			is.byTrunc[k.typ] = m
		}
		if _, dup := m[k.TruncatedID()]; dup {
			return nil, newError(ReasonInvalidConfig, "issuer key %d: truncated key id %#02x collides with another %s key", i, k.TruncatedID(), k.typ)
		}
		m[k.TruncatedID()] = k
		is.keys = append(is.keys, ik)
	}
	return is, nil
}

// Issue answers an encoded TokenRequest with an encoded TokenResponse
// (RFC 9578 §5.2, §6.2). Every error is an unprocessable request: ReasonUnsupportedType
// (token type not served), ReasonUnknownKey (no key with that truncated id)
// or ReasonMalformed (wrong size, or a blinded message that is not a valid
// group element or not below the RSA modulus).
func (is *Issuer) Issue(request []byte) ([]byte, error) {
	req, err := ParseTokenRequest(request)
	if err != nil {
		return nil, err
	}
	m := is.byTrunc[req.TokenType]
	if m == nil {
		return nil, newError(ReasonUnsupportedType, "issuing token: token type %s is not served", req.TokenType)
	}
	k := m[req.TruncatedKeyID]
	if k == nil {
		return nil, newError(ReasonUnknownKey, "issuing token: no %s key with truncated id %#02x", req.TokenType, req.TruncatedKeyID)
	}
	switch req.TokenType {
	case TypeBlindRSA:
		if err := checkBelowModulus(req.BlindedMsg, k.rsaPriv.N); err != nil {
			return nil, wrapError(ReasonMalformed, "issuing token", err)
		}
		sig, err := blindrsa.NewSigner(k.rsaPriv).BlindSign(req.BlindedMsg)
		if err != nil {
			return nil, wrapError(ReasonMalformed, "blind signing", err)
		}
		return sig, nil
	case TypeVOPRF:
		e := group.P384.NewElement()
		if err := e.UnmarshalBinary(req.BlindedMsg); err != nil {
			return nil, wrapError(ReasonMalformed, "parsing blinded element", err)
		}
		if e.IsIdentity() {
			return nil, newError(ReasonMalformed, "parsing blinded element: identity")
		}
		ev, err := k.server.Evaluate(&oprf.EvaluationRequest{Elements: []oprf.Blinded{e}})
		if err != nil {
			return nil, fmt.Errorf("evaluating voprf: %w", err)
		}
		out, err := ev.Elements[0].MarshalBinaryCompress()
		if err != nil {
			return nil, fmt.Errorf("encoding evaluated element: %w", err)
		}
		proof, err := ev.Proof.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("encoding dleq proof: %w", err)
		}
		return append(out, proof...), nil
	}
	return nil, newError(ReasonUnsupportedType, "issuing token: token type %s", req.TokenType)
}

// Directory returns the issuer directory (RFC 9578 §4) listing every key in
// the order given to NewIssuer (the issuer's preference). requestURI is the
// issuer-request-uri, absolute or relative to the directory.
func (is *Issuer) Directory(requestURI string) *Directory {
	d := &Directory{IssuerRequestURI: requestURI, TokenKeys: make([]DirectoryKey, 0, len(is.keys))}
	for _, ik := range is.keys {
		dk := DirectoryKey{TokenType: ik.Key.typ, TokenKey: encodeB64(ik.Key.encoded)}
		if !ik.NotBefore.IsZero() {
			dk.NotBefore = ik.NotBefore.Unix()
		}
		d.TokenKeys = append(d.TokenKeys, dk)
	}
	return d
}

// Directory is the JSON issuer directory of RFC 9578 §4.
type Directory struct {
	// IssuerRequestURI is where TokenRequests are POSTed.
	IssuerRequestURI string `json:"issuer-request-uri"`
	// TokenKeys lists the keys, most preferred first.
	TokenKeys []DirectoryKey `json:"token-keys"`
}

// DirectoryKey is one entry of Directory.TokenKeys.
type DirectoryKey struct {
	// TokenType is the key's token type.
	TokenType TokenType `json:"token-type"`
	// TokenKey is the token-key encoding, base64url with padding.
	TokenKey string `json:"token-key"`
	// NotBefore is a UNIX time before which clients should not use the key;
	// 0 when absent.
	NotBefore int64 `json:"not-before,omitempty"`
}

// Marshal encodes the directory as JSON.
func (d *Directory) Marshal() ([]byte, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encoding issuer directory: %w", err)
	}
	return b, nil
}

// ParseDirectory decodes an issuer directory. It requires token-keys; unknown
// members are ignored, as RFC 9578 §4 asks.
func ParseDirectory(data []byte) (*Directory, error) {
	var raw struct {
		IssuerRequestURI string `json:"issuer-request-uri"`
		TokenKeys        *[]struct {
			TokenType *uint16 `json:"token-type"`
			TokenKey  *string `json:"token-key"`
			NotBefore *int64  `json:"not-before"`
		} `json:"token-keys"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, wrapError(ReasonMalformed, "parsing issuer directory", err)
	}
	if raw.TokenKeys == nil {
		return nil, newError(ReasonMalformed, "parsing issuer directory: no token-keys")
	}
	d := &Directory{IssuerRequestURI: raw.IssuerRequestURI}
	for i, k := range *raw.TokenKeys {
		if k.TokenType == nil || k.TokenKey == nil {
			return nil, newError(ReasonMalformed, "parsing issuer directory: token-keys[%d] lacks token-type or token-key", i)
		}
		dk := DirectoryKey{TokenType: TokenType(*k.TokenType), TokenKey: *k.TokenKey}
		if k.NotBefore != nil {
			dk.NotBefore = *k.NotBefore
		}
		d.TokenKeys = append(d.TokenKeys, dk)
	}
	return d, nil
}

// Keys parses the directory's keys of supported token types, in directory
// order; keys of other types are skipped. Each key carries its not-before
// (Key.NotBefore). An origin trusting this issuer accepts tokens under any
// of them (RFC 9578 §4: origins may try every listed key, which absorbs
// clock skew around not-before), and its challenges name the first key of
// each type whose not-before has passed. A key of a supported type that
// fails to parse is an error.
func (d *Directory) Keys() ([]*Key, error) {
	var out []*Key
	for i, dk := range d.TokenKeys {
		if !dk.TokenType.Supported() {
			continue
		}
		b, err := decodeB64(dk.TokenKey)
		if err != nil {
			return nil, wrapError(ReasonMalformed, fmt.Sprintf("decoding token-keys[%d]", i), err)
		}
		k, err := ParseTokenKey(dk.TokenType, b)
		if err != nil {
			return nil, fmt.Errorf("parsing token-keys[%d]: %w", i, err)
		}
		if dk.NotBefore != 0 {
			k = k.WithNotBefore(time.Unix(dk.NotBefore, 0))
		}
		out = append(out, k)
	}
	return out, nil
}
