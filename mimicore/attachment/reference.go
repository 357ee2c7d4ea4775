package attachment

import (
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// MediaType is the media type of an attachment reference.
const MediaType = "message/external-body"

// Bounds of a reference's fields.
const (
	// MaxTokenLen bounds a token: the DS issues 32 bytes (docs/protocol.md §6).
	MaxTokenLen = moh.MaxTokenLen
	// MinDigestLen and MaxDigestLen bound a nonce and a hash: KDF.Nh and
	// the suite's hash size, 32 to 64 bytes in the suites MLS defines.
	MinDigestLen = 32
	MaxDigestLen = 64
)

// Reference is what a message carries for an attachment: the DS token to
// download it with, and the nonce and plaintext hash its key derives from.
// Key, when not empty, is the attachment_secret itself (docs/protocol.md
// §6.1): a copy's reference carries it, since the members of the group it
// was copied to cannot derive it from their own exporter.
type Reference struct {
	Token, Nonce, Hash []byte
	Key                []byte
}

// b64 is unpadded base64url that refuses non-canonical encodings.
var b64 = base64.RawURLEncoding.Strict()

// String returns the reference as its content type:
// `message/external-body; access-type=token; token=<b64url>; nonce=<b64url>; hash=<b64url>`,
// followed by `; key=<b64url>` when r has a Key, base64url without padding.
func (r Reference) String() string {
	s := MediaType + "; access-type=token; token=" + b64.EncodeToString(r.Token) +
		"; nonce=" + b64.EncodeToString(r.Nonce) + "; hash=" + b64.EncodeToString(r.Hash)
	if len(r.Key) > 0 {
		s += "; key=" + b64.EncodeToString(r.Key)
	}
	return s
}

// ParseReference parses a reference as String writes it. The media type and
// parameter names are case-insensitive (RFC 2045); access-type must be
// token; token, nonce and hash must each appear once, be unpadded base64url
// and within their bounds; key is optional, and when present must appear
// once, be unpadded base64url and of MinDigestLen to MaxDigestLen bytes;
// any other parameter is refused, so that a reference has one meaning. RFC 2231 continuations and encoded values
// (`token*0=`, `token*=utf-8”...`) are refused: a reference never needs
// them, and mime.ParseMediaType would let one replace a plain field. No
// valid reference holds a '*', so any is refused.
func ParseReference(s string) (Reference, error) {
	if strings.Contains(s, "*") {
		return Reference{}, errors.New("attachment reference: an RFC 2231 continuation or encoded value ('*')")
	}
	mt, params, err := mime.ParseMediaType(s)
	if err != nil {
		return Reference{}, fmt.Errorf("attachment reference: %w", err)
	}
	if mt != MediaType {
		return Reference{}, fmt.Errorf("attachment reference: media type %q, want %s", mt, MediaType)
	}
	if params["access-type"] != "token" {
		return Reference{}, errors.New("attachment reference: access-type is not token")
	}
	var r Reference
	fields := []struct {
		name     string
		out      *[]byte
		min, max int
		optional bool
	}{{"token", &r.Token, 1, MaxTokenLen, false}, {"nonce", &r.Nonce, MinDigestLen, MaxDigestLen, false},
		{"hash", &r.Hash, MinDigestLen, MaxDigestLen, false}, {"key", &r.Key, MinDigestLen, MaxDigestLen, true}}
	known := 1 // access-type
	for _, f := range fields {
		v, ok := params[f.name]
		if !ok {
			if f.optional {
				continue
			}
			return Reference{}, fmt.Errorf("attachment reference: no %s", f.name)
		}
		known++
		b, err := b64.DecodeString(v)
		if err != nil || len(b) < f.min || len(b) > f.max {
			return Reference{}, fmt.Errorf("attachment reference: %s is not %d to %d bytes of base64url", f.name, f.min, f.max)
		}
		*f.out = b
	}
	if len(params) != known {
		return Reference{}, errors.New("attachment reference: unknown parameters")
	}
	return r, nil
}
