package moh

import (
	"bytes"
	"errors"
	"fmt"
)

// Identifier errors, wrapped with the offending kind of value (never the
// value itself when it may be long).
var (
	ErrBadFQDN      = errors.New("not a lowercase A-label FQDN")
	ErrBadUserURI   = errors.New("not a MIMI user URI (mimi://<provider>/u/<user>)")
	ErrBadClientURI = errors.New("not a MIMI client URI (mimi://<provider>/d/<user>/<device>)")
)

// ValidFQDN reports whether name is a provider or DS domain as the profile
// allows: lowercase ASCII letters, digits and hyphens in labels of 1-63
// bytes, no trailing dot, at most 253 bytes, and not an IPv4 literal (a
// top-level label that is all digits). IPv6 literals fail the character
// check.
func ValidFQDN(name []byte) bool {
	if len(name) == 0 || len(name) > MaxFQDNLen {
		return false
	}
	labelStart := 0
	allDigits := true
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			n := i - labelStart
			if n == 0 || n > 63 || name[labelStart] == '-' || name[i-1] == '-' {
				return false
			}
			if i == len(name) && allDigits {
				return false
			}
			labelStart = i + 1
			allDigits = true
			continue
		}
		c := name[i]
		switch {
		case c >= '0' && c <= '9':
		case c >= 'a' && c <= 'z', c == '-':
			allDigits = false
		default:
			return false
		}
	}
	return true
}

// validLocalPart reports whether p is a user or device name: 1-64 bytes of
// [a-z0-9._-].
func validLocalPart(p []byte) bool {
	if len(p) == 0 || len(p) > 64 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

var uriScheme = []byte("mimi://")

// splitURI returns the provider and the path segments after it.
func splitURI(uri []byte) (provider []byte, segs [][]byte, ok bool) {
	if len(uri) > MaxURILen || !bytes.HasPrefix(uri, uriScheme) {
		return nil, nil, false
	}
	rest := uri[len(uriScheme):]
	slash := bytes.IndexByte(rest, '/')
	if slash < 0 {
		return nil, nil, false
	}
	provider = rest[:slash]
	if !ValidFQDN(provider) {
		return nil, nil, false
	}
	return provider, bytes.Split(rest[slash+1:], []byte{'/'}), true
}

// ParseUserURI checks that uri is `mimi://<provider>/u/<user>` and returns the
// provider domain and user name (both alias uri).
func ParseUserURI(uri []byte) (provider, user []byte, err error) {
	provider, segs, ok := splitURI(uri)
	if !ok || len(segs) != 2 || string(segs[0]) != "u" || !validLocalPart(segs[1]) {
		return nil, nil, fmt.Errorf("parsing user id: %w", ErrBadUserURI)
	}
	return provider, segs[1], nil
}

// ParseClientURI checks that uri is `mimi://<provider>/d/<user>/<device>` and
// returns its parts (all alias uri).
func ParseClientURI(uri []byte) (provider, user, device []byte, err error) {
	provider, segs, ok := splitURI(uri)
	if !ok || len(segs) != 3 || string(segs[0]) != "d" || !validLocalPart(segs[1]) || !validLocalPart(segs[2]) {
		return nil, nil, nil, fmt.Errorf("parsing client id: %w", ErrBadClientURI)
	}
	return provider, segs[1], segs[2], nil
}

// UserURI builds the user URI of user at provider.
func UserURI(provider, user string) string {
	return "mimi://" + provider + "/u/" + user
}

// ClientURI builds the client URI of device of user at provider.
func ClientURI(provider, user, device string) string {
	return "mimi://" + provider + "/d/" + user + "/" + device
}
