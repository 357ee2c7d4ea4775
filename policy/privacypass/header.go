package privacypass

import (
	"errors"
	"strconv"
	"strings"
)

// Scheme is the HTTP authentication scheme of RFC 9577.
const Scheme = "PrivateToken"

// maxHeaderLen bounds the header values this package parses. A type 0x0002
// Authorization value is about 490 bytes; a WWW-Authenticate value with a few
// challenges and token keys stays under 4 KiB.
const maxHeaderLen = 16 << 10

// authParam is one auth-param; name is lowercased.
type authParam struct{ name, value string }

// authItem is one challenge or credential: a scheme with a token68 or params.
type authItem struct {
	scheme  string
	token68 string
	params  []authParam
}

func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isToken68(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-._~+/", c) >= 0
}

type authLexer struct {
	s string
	i int
}

func (l *authLexer) ows() {
	for l.i < len(l.s) && (l.s[l.i] == ' ' || l.s[l.i] == '\t') {
		l.i++
	}
}

func (l *authLexer) token() string {
	start := l.i
	for l.i < len(l.s) && isTchar(l.s[l.i]) {
		l.i++
	}
	return l.s[start:l.i]
}

// quoted reads a quoted-string (RFC 9110 §5.6.4) starting at '"'.
func (l *authLexer) quoted() (string, bool) {
	if l.i >= len(l.s) || l.s[l.i] != '"' {
		return "", false
	}
	var b strings.Builder
	for j := l.i + 1; j < len(l.s); j++ {
		c := l.s[j]
		switch {
		case c == '"':
			l.i = j + 1
			return b.String(), true
		case c == '\\':
			j++
			if j >= len(l.s) || (l.s[j] < 0x20 && l.s[j] != '\t') || l.s[j] == 0x7f {
				return "", false
			}
			b.WriteByte(l.s[j])
		case (c < 0x20 && c != '\t') || c == 0x7f:
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return "", false
}

// param tries to read name BWS "=" BWS value at the current position. The
// value is a quoted-string or, leniently, an unquoted run of tchar, '/' and
// '=' that does not start with '='. That accepts privacypass-ts's unquoted
// padded base64url (token=AAIA...==). On failure the position is unchanged.
func (l *authLexer) param() (authParam, bool) {
	save := l.i
	name := l.token()
	if name == "" {
		l.i = save
		return authParam{}, false
	}
	l.ows()
	if l.i >= len(l.s) || l.s[l.i] != '=' {
		l.i = save
		return authParam{}, false
	}
	l.i++
	l.ows()
	if l.i < len(l.s) && l.s[l.i] == '"' {
		v, ok := l.quoted()
		if !ok {
			l.i = save
			return authParam{}, false
		}
		return authParam{strings.ToLower(name), v}, true
	}
	start := l.i
	for l.i < len(l.s) && (isTchar(l.s[l.i]) || l.s[l.i] == '/' || (l.s[l.i] == '=' && l.i > start)) {
		l.i++
	}
	if l.i == start {
		l.i = save
		return authParam{}, false
	}
	return authParam{strings.ToLower(name), l.s[start:l.i]}, true
}

// startsParam reports whether a param (token BWS "=") starts here, which
// tells a following auth-param from the scheme of a new challenge.
func (l *authLexer) startsParam() bool {
	save := l.i
	defer func() { l.i = save }()
	if l.token() == "" {
		return false
	}
	l.ows()
	return l.i < len(l.s) && l.s[l.i] == '='
}

// token68 tries to read a token68 followed by OWS and the end or a comma.
func (l *authLexer) token68() (string, bool) {
	save := l.i
	for l.i < len(l.s) && isToken68(l.s[l.i]) {
		l.i++
	}
	if l.i == save {
		return "", false
	}
	for l.i < len(l.s) && l.s[l.i] == '=' {
		l.i++
	}
	v := l.s[save:l.i]
	l.ows()
	if l.i < len(l.s) && l.s[l.i] != ',' {
		l.i = save
		return "", false
	}
	return v, true
}

// parseAuthList parses a WWW-Authenticate (1#challenge) or Authorization
// (credentials) field value as RFC 9110 §11 defines them, leniently about
// unquoted parameter values as described at param.
func parseAuthList(s string) ([]authItem, error) {
	if len(s) > maxHeaderLen {
		return nil, errors.New("header value too long")
	}
	l := &authLexer{s: s}
	var items []authItem
	for {
		// Skip empty list elements.
		for {
			l.ows()
			if l.i < len(l.s) && l.s[l.i] == ',' {
				l.i++
				continue
			}
			break
		}
		if l.i >= len(l.s) {
			return items, nil
		}
		scheme := l.token()
		if scheme == "" {
			return nil, errors.New("expected an authentication scheme at offset " + strconv.Itoa(l.i))
		}
		item := authItem{scheme: scheme}
		hadSpace := l.i < len(l.s) && (l.s[l.i] == ' ' || l.s[l.i] == '\t')
		l.ows()
		if l.i < len(l.s) && l.s[l.i] != ',' {
			if !hadSpace {
				return nil, errors.New("expected a space after the scheme at offset " + strconv.Itoa(l.i))
			}
			if p, ok := l.param(); ok {
				item.params = append(item.params, p)
				// More params follow as long as each comma is followed by name=.
				for {
					l.ows()
					if l.i >= len(l.s) {
						break
					}
					if l.s[l.i] != ',' {
						return nil, errors.New("expected a comma at offset " + strconv.Itoa(l.i))
					}
					save := l.i
					for l.i < len(l.s) && (l.s[l.i] == ',' || l.s[l.i] == ' ' || l.s[l.i] == '\t') {
						l.i++
					}
					if !l.startsParam() {
						l.i = save
						break
					}
					p, ok := l.param()
					if !ok {
						return nil, errors.New("invalid auth-param at offset " + strconv.Itoa(l.i))
					}
					item.params = append(item.params, p)
				}
			} else if t, ok := l.token68(); ok {
				item.token68 = t
			} else {
				return nil, errors.New("invalid auth-param or token68 at offset " + strconv.Itoa(l.i))
			}
		}
		items = append(items, item)
	}
}

// Challenge is one PrivateToken challenge of a WWW-Authenticate field
// (RFC 9577 §2.1.2).
type Challenge struct {
	// TokenChallenge holds the encoded TokenChallenge exactly as sent; a
	// client hashes these bytes into the token's challenge_digest.
	TokenChallenge []byte
	// TokenKey is the token-key parameter (the issuer key encoding), or nil.
	TokenKey []byte
	// MaxAge is the max-age parameter in seconds, or -1 when absent.
	MaxAge int
}

// TokenType returns the token type the challenge asks for, read from its
// first two bytes; it is 0 (a greased value) when the challenge is shorter.
func (c *Challenge) TokenType() TokenType {
	if len(c.TokenChallenge) < 2 {
		return 0
	}
	return TokenType(uint16(c.TokenChallenge[0])<<8 | uint16(c.TokenChallenge[1]))
}

// String formats the challenge as a WWW-Authenticate challenge with quoted,
// padded base64url values, the form every known client accepts.
func (c *Challenge) String() string {
	var b strings.Builder
	b.WriteString(Scheme)
	b.WriteString(` challenge="`)
	b.WriteString(encodeB64(c.TokenChallenge))
	b.WriteByte('"')
	if len(c.TokenKey) > 0 {
		b.WriteString(`, token-key="`)
		b.WriteString(encodeB64(c.TokenKey))
		b.WriteByte('"')
	}
	if c.MaxAge >= 0 {
		b.WriteString(`, max-age="`)
		b.WriteString(strconv.Itoa(c.MaxAge))
		b.WriteByte('"')
	}
	return b.String()
}

// FormatWWWAuthenticate joins challenges into one WWW-Authenticate field
// value. The first challenge is the origin's preference.
func FormatWWWAuthenticate(challenges ...Challenge) string {
	parts := make([]string, len(challenges))
	for i := range challenges {
		parts[i] = challenges[i].String()
	}
	return strings.Join(parts, ", ")
}

// ParseWWWAuthenticate returns the PrivateToken challenges in a
// WWW-Authenticate field value, in order. The scheme is matched
// case-insensitively and unknown parameters and other schemes are ignored. A
// PrivateToken challenge without a decodable challenge parameter, or with an
// undecodable token-key, is skipped, as RFC 9577 asks clients to ignore what
// they cannot use; an invalid max-age is treated as absent. Only a field that
// is not valid challenge syntax gives an error (ReasonMalformed).
func ParseWWWAuthenticate(value string) ([]Challenge, error) {
	items, err := parseAuthList(value)
	if err != nil {
		return nil, wrapError(ReasonMalformed, "parsing www-authenticate", err)
	}
	var out []Challenge
	for _, it := range items {
		if !strings.EqualFold(it.scheme, Scheme) {
			continue
		}
		c := Challenge{MaxAge: -1}
		ok, seenChallenge, seenKey := true, false, false
		for _, p := range it.params {
			switch p.name {
			case "challenge":
				b, err := decodeB64(p.value)
				if err != nil || seenChallenge {
					ok = false
				}
				c.TokenChallenge, seenChallenge = b, true
			case "token-key":
				b, err := decodeB64(p.value)
				if err != nil || seenKey {
					ok = false
				}
				c.TokenKey, seenKey = b, true
			case "max-age":
				if n, err := strconv.Atoi(p.value); err == nil && n >= 0 && p.value[0] != '+' {
					c.MaxAge = n
				}
			}
		}
		if ok && seenChallenge {
			out = append(out, c)
		}
	}
	return out, nil
}

// FormatAuthorization returns the Authorization field value for a token:
// PrivateToken token="<padded base64url>".
func FormatAuthorization(t *Token) string {
	return Scheme + ` token="` + encodeB64(t.Marshal()) + `"`
}

// ParseAuthorization decodes the token in an Authorization field value
// (RFC 9577 §2.2.2). The scheme is matched case-insensitively; the token
// parameter may be quoted or unquoted, base64url with or without padding;
// other parameters are ignored. It returns ReasonMissing when the value holds
// no PrivateToken credential, ReasonUnsupportedType for a token type this
// package does not implement, and ReasonMalformed for anything else wrong.
func ParseAuthorization(value string) (*Token, error) {
	raw, err := authorizationToken(value)
	if err != nil {
		return nil, err
	}
	t, err := ParseToken(raw)
	if err != nil {
		return nil, err
	}
	return t, nil
}

func authorizationToken(value string) ([]byte, error) {
	if strings.TrimSpace(value) == "" {
		return nil, newError(ReasonMissing, "no credentials")
	}
	items, err := parseAuthList(value)
	if err != nil {
		// A different scheme with odd syntax is still "no PrivateToken".
		if !hasSchemePrefix(value) {
			return nil, newError(ReasonMissing, "no %s credentials", Scheme)
		}
		return nil, wrapError(ReasonMalformed, "parsing authorization", err)
	}
	var found *authItem
	for i := range items {
		if strings.EqualFold(items[i].scheme, Scheme) {
			if found != nil {
				return nil, newError(ReasonMalformed, "parsing authorization: more than one %s credential", Scheme)
			}
			found = &items[i]
		}
	}
	if found == nil {
		return nil, newError(ReasonMissing, "no %s credentials", Scheme)
	}
	var tok string
	seen := false
	for _, p := range found.params {
		if p.name == "token" {
			if seen {
				return nil, newError(ReasonMalformed, "parsing authorization: duplicate token parameter")
			}
			tok, seen = p.value, true
		}
	}
	if !seen {
		return nil, newError(ReasonMalformed, "parsing authorization: no token parameter")
	}
	raw, err := decodeB64(tok)
	if err != nil {
		return nil, wrapError(ReasonMalformed, "decoding token parameter", err)
	}
	return raw, nil
}

func hasSchemePrefix(value string) bool {
	v := strings.TrimLeft(value, " \t,")
	return len(v) >= len(Scheme) && strings.EqualFold(v[:len(Scheme)], Scheme) &&
		(len(v) == len(Scheme) || !isTchar(v[len(Scheme)]))
}
