package moh

import (
	"bytes"
	"testing"
)

// FuzzIdentifiers checks that the FQDN and URI parsers never panic, that an
// accepted URI's parts are valid and rebuild it exactly, and that no
// accepted name contains a byte outside the profile's alphabet.
func FuzzIdentifiers(f *testing.F) {
	for _, s := range []string{"mimi://b.example/u/bob", "mimi://b.example/d/bob/phone", "example.com",
		"mimi://1.2.3.4/u/x", "mimi://b.example/u/../x", "xn--bcher-kva.example"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if ValidFQDN(data) {
			for _, c := range data {
				if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
					t.Fatalf("FQDN %q accepted with byte %q", data, c)
				}
			}
		}
		if p, u, err := ParseUserURI(data); err == nil {
			if !ValidFQDN(p) || !bytes.Equal([]byte(UserURI(string(p), string(u))), data) {
				t.Fatalf("user URI %q does not rebuild from its parts", data)
			}
		}
		if p, u, d, err := ParseClientURI(data); err == nil {
			if !ValidFQDN(p) || !bytes.Equal([]byte(ClientURI(string(p), string(u), string(d))), data) {
				t.Fatalf("client URI %q does not rebuild from its parts", data)
			}
		}
	})
}
