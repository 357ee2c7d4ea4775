package privacypass

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// TokenType is a Privacy Pass token type (RFC 9578 §8.2, IANA "Privacy Pass
// Token Types").
type TokenType uint16

// The token types this package implements.
const (
	// TypeVOPRF is token type 0x0001: VOPRF(P-384, SHA-384), privately
	// verifiable (verification needs the issuer private key).
	TypeVOPRF TokenType = 0x0001
	// TypeBlindRSA is token type 0x0002: Blind RSA 2048 with
	// RSABSSA-SHA384-PSS-Deterministic, publicly verifiable.
	TypeBlindRSA TokenType = 0x0002
)

// Sizes fixed by RFC 9577 and RFC 9578.
const (
	// NonceSize is the size of Token.Nonce.
	NonceSize = 32
	// DigestSize is the size of Token.ChallengeDigest (SHA-256).
	DigestSize = 32
	// KeyIDSize is the size of a token_key_id (SHA-256 of the token key), Nid.
	KeyIDSize = 32
	// RedemptionContextSize is the only non-empty redemption_context length.
	RedemptionContextSize = 32
	// AuthenticatorInputSize is the size of token_type||nonce||challenge_digest||token_key_id.
	AuthenticatorInputSize = 2 + NonceSize + DigestSize + KeyIDSize

	voprfAuthenticatorSize    = 48  // Nk for 0x0001 (SHA-384 output)
	blindRSAAuthenticatorSize = 256 // Nk for 0x0002 (2048-bit modulus)
	voprfElementSize          = 49  // Ne: compressed P-384 point
	voprfProofSize            = 96  // Ns+Ns
)

// String returns the name used in logs and configuration, e.g. "0x0002".
func (t TokenType) String() string {
	s := strconv.FormatUint(uint64(t), 16)
	return "0x" + strings.Repeat("0", 4-len(s)) + s
}

// Supported reports whether this package implements the token type.
func (t TokenType) Supported() bool { return t == TypeVOPRF || t == TypeBlindRSA }

// AuthenticatorSize returns Nk for the token type, or 0 for an unsupported type.
func (t TokenType) AuthenticatorSize() int {
	switch t {
	case TypeVOPRF:
		return voprfAuthenticatorSize
	case TypeBlindRSA:
		return blindRSAAuthenticatorSize
	}
	return 0
}

// TokenChallenge is the TokenChallenge structure of RFC 9577 §2.1.1.
type TokenChallenge struct {
	// TokenType is the requested token type.
	TokenType TokenType
	// IssuerName is the issuer's host[:port], 1 to 65535 ASCII characters.
	IssuerName string
	// RedemptionContext is empty or exactly 32 bytes.
	RedemptionContext []byte
	// OriginInfo lists the origin names the token is bound to; empty means
	// the token is usable at any origin (cross-origin).
	OriginInfo []string
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		// Visible ASCII, no comma (the origin_info separator) and no space.
		if c := s[i]; c <= 0x20 || c >= 0x7f || c == ',' {
			return false
		}
	}
	return true
}

// Marshal encodes the challenge. It refuses values the wire format or RFC 9577
// does not allow (empty or non-ASCII names, a context that is not 0 or 32
// bytes, oversized fields).
func (c *TokenChallenge) Marshal() ([]byte, error) {
	if !validName(c.IssuerName) || len(c.IssuerName) > 0xffff {
		return nil, newError(ReasonMalformed, "encoding token challenge: invalid issuer name %q", c.IssuerName)
	}
	if n := len(c.RedemptionContext); n != 0 && n != RedemptionContextSize {
		return nil, newError(ReasonMalformed, "encoding token challenge: redemption context is %d bytes, want 0 or 32", n)
	}
	for _, o := range c.OriginInfo {
		if !validName(o) {
			return nil, newError(ReasonMalformed, "encoding token challenge: invalid origin name %q", o)
		}
	}
	originInfo := strings.Join(c.OriginInfo, ",")
	if len(originInfo) > 0xffff {
		return nil, newError(ReasonMalformed, "encoding token challenge: origin_info is %d bytes", len(originInfo))
	}
	var b cryptobyte.Builder
	b.AddUint16(uint16(c.TokenType))
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(c.IssuerName)) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.RedemptionContext) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(originInfo)) })
	out, err := b.Bytes()
	if err != nil {
		return nil, wrapError(ReasonMalformed, "encoding token challenge", err)
	}
	return out, nil
}

// ParseTokenChallenge decodes a TokenChallenge strictly: every length must be
// in range, names must be visible ASCII, the redemption context must be 0 or
// 32 bytes, and no byte may follow the structure. Parsing then marshaling
// gives back the input bytes. The token type is not checked, so greased
// challenges with a valid structure parse.
func ParseTokenChallenge(data []byte) (*TokenChallenge, error) {
	s := cryptobyte.String(data)
	var (
		typ                    uint16
		issuer, ctx, originRaw cryptobyte.String
	)
	if !s.ReadUint16(&typ) ||
		!s.ReadUint16LengthPrefixed(&issuer) ||
		!s.ReadUint8LengthPrefixed(&ctx) ||
		!s.ReadUint16LengthPrefixed(&originRaw) ||
		!s.Empty() {
		return nil, newError(ReasonMalformed, "parsing token challenge: truncated or trailing data")
	}
	c := &TokenChallenge{TokenType: TokenType(typ), IssuerName: string(issuer)}
	if !validName(c.IssuerName) {
		return nil, newError(ReasonMalformed, "parsing token challenge: invalid issuer name")
	}
	switch len(ctx) {
	case 0:
	case RedemptionContextSize:
		c.RedemptionContext = append([]byte(nil), ctx...)
	default:
		return nil, newError(ReasonMalformed, "parsing token challenge: redemption context is %d bytes, want 0 or 32", len(ctx))
	}
	if len(originRaw) > 0 {
		c.OriginInfo = strings.Split(string(originRaw), ",")
		for _, o := range c.OriginInfo {
			if !validName(o) {
				return nil, newError(ReasonMalformed, "parsing token challenge: invalid origin_info")
			}
		}
	}
	return c, nil
}

// ChallengeDigest returns SHA-256 of the encoded challenge, the value a Token
// carries in challenge_digest.
func ChallengeDigest(challenge []byte) [DigestSize]byte { return sha256.Sum256(challenge) }

// Token is the Token structure of RFC 9577 §2.2.1.
type Token struct {
	// TokenType is 0x0001 or 0x0002.
	TokenType TokenType
	// Nonce is the client's random nonce.
	Nonce [NonceSize]byte
	// ChallengeDigest is SHA-256 of the TokenChallenge the token answers.
	ChallengeDigest [DigestSize]byte
	// TokenKeyID is SHA-256 of the issuer's token key as published.
	TokenKeyID [KeyIDSize]byte
	// Authenticator is Nk bytes: 48 for 0x0001, 256 for 0x0002.
	Authenticator []byte
}

// ParseToken decodes a Token strictly: the type must be one this package
// implements (else the error has ReasonUnsupportedType) and the length must be
// exactly 98+Nk (else ReasonMalformed). The returned token does not alias data.
func ParseToken(data []byte) (*Token, error) {
	if len(data) < 2 {
		return nil, newError(ReasonMalformed, "parsing token: %d bytes", len(data))
	}
	t := &Token{TokenType: TokenType(uint16(data[0])<<8 | uint16(data[1]))}
	nk := t.TokenType.AuthenticatorSize()
	if nk == 0 {
		return nil, newError(ReasonUnsupportedType, "parsing token: token type %s", t.TokenType)
	}
	if len(data) != AuthenticatorInputSize+nk {
		return nil, newError(ReasonMalformed, "parsing token: %d bytes for token type %s, want %d", len(data), t.TokenType, AuthenticatorInputSize+nk)
	}
	copy(t.Nonce[:], data[2:34])
	copy(t.ChallengeDigest[:], data[34:66])
	copy(t.TokenKeyID[:], data[66:98])
	t.Authenticator = append([]byte(nil), data[98:]...)
	return t, nil
}

// AuthenticatorInput returns token_type||nonce||challenge_digest||token_key_id
// (RFC 9577 §2.2.3), the message the authenticator covers.
func (t *Token) AuthenticatorInput() []byte {
	return t.appendAuthenticatorInput(make([]byte, 0, AuthenticatorInputSize+len(t.Authenticator)))
}

func (t *Token) appendAuthenticatorInput(b []byte) []byte {
	b = append(b, byte(t.TokenType>>8), byte(t.TokenType))
	b = append(b, t.Nonce[:]...)
	b = append(b, t.ChallengeDigest[:]...)
	return append(b, t.TokenKeyID[:]...)
}

// Marshal encodes the token.
func (t *Token) Marshal() []byte {
	return append(t.appendAuthenticatorInput(make([]byte, 0, AuthenticatorInputSize+len(t.Authenticator))), t.Authenticator...)
}

// TokenRequest is an issuance request of RFC 9578 §5.1 and §6.1.
type TokenRequest struct {
	// TokenType is 0x0001 or 0x0002.
	TokenType TokenType
	// TruncatedKeyID is the last byte of the token_key_id.
	TruncatedKeyID byte
	// BlindedMsg is Ne = 49 bytes (0x0001) or Nk = 256 bytes (0x0002).
	BlindedMsg []byte
}

func blindedMsgSize(t TokenType) int {
	switch t {
	case TypeVOPRF:
		return voprfElementSize
	case TypeBlindRSA:
		return blindRSAAuthenticatorSize
	}
	return 0
}

// ParseTokenRequest decodes a TokenRequest strictly. An unknown type gives
// ReasonUnsupportedType, a wrong length ReasonMalformed; the issuer refuses
// both as unprocessable.
func ParseTokenRequest(data []byte) (*TokenRequest, error) {
	if len(data) < 3 {
		return nil, newError(ReasonMalformed, "parsing token request: %d bytes", len(data))
	}
	r := &TokenRequest{TokenType: TokenType(uint16(data[0])<<8 | uint16(data[1])), TruncatedKeyID: data[2]}
	n := blindedMsgSize(r.TokenType)
	if n == 0 {
		return nil, newError(ReasonUnsupportedType, "parsing token request: token type %s", r.TokenType)
	}
	if len(data) != 3+n {
		return nil, newError(ReasonMalformed, "parsing token request: %d bytes for token type %s, want %d", len(data), r.TokenType, 3+n)
	}
	r.BlindedMsg = append([]byte(nil), data[3:]...)
	return r, nil
}

// Marshal encodes the request.
func (r *TokenRequest) Marshal() []byte {
	out := make([]byte, 0, 3+len(r.BlindedMsg))
	out = append(out, byte(r.TokenType>>8), byte(r.TokenType), r.TruncatedKeyID)
	return append(out, r.BlindedMsg...)
}

// encodeB64 returns padded base64url (RFC 4648 §5), the form RFC 9577 sends.
func encodeB64(b []byte) string { return base64.URLEncoding.EncodeToString(b) }

// decodeB64 accepts base64url with or without padding. Standard-alphabet
// characters ('+', '/') and whitespace are refused.
func decodeB64(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("empty base64url value")
	}
	// encoding/base64 silently skips CR and LF; a header value must not.
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("line break in base64url value")
	}
	if strings.HasSuffix(s, "=") {
		return base64.URLEncoding.Strict().DecodeString(s)
	}
	return base64.RawURLEncoding.Strict().DecodeString(s)
}
