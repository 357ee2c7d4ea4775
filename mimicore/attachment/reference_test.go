package attachment

import (
	"bytes"
	"strings"
	"testing"
)

func TestReference(t *testing.T) {
	r := Reference{Token: bytes.Repeat([]byte{0xfb}, 32), Nonce: bytes.Repeat([]byte{0xff}, 32), Hash: bytes.Repeat([]byte{1}, 32)}
	s := r.String()
	want := "message/external-body; access-type=token; token=" + strings.Repeat("-_v7", 10) + "-_s; nonce=" +
		strings.Repeat("_", 42) + "8; hash=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
	if s != want {
		t.Fatalf("String() = %q\nwant       %q", s, want)
	}
	got, err := ParseReference(s)
	if err != nil || !bytes.Equal(got.Token, r.Token) || !bytes.Equal(got.Nonce, r.Nonce) || !bytes.Equal(got.Hash, r.Hash) {
		t.Fatalf("ParseReference(String()) = %+v, %v", got, err)
	}
	if got.Key != nil {
		t.Fatalf("a reference without key parsed with key %x", got.Key)
	}
	// A copy's reference carries the attachment secret as key, last.
	r.Key = bytes.Repeat([]byte{2}, 48)
	withKey := want + "; key=" + strings.Repeat("AgIC", 16)
	if s := r.String(); s != withKey {
		t.Fatalf("String() with key = %q\nwant                %q", s, withKey)
	}
	got, err = ParseReference(withKey)
	if err != nil || !bytes.Equal(got.Token, r.Token) || !bytes.Equal(got.Nonce, r.Nonce) || !bytes.Equal(got.Hash, r.Hash) || !bytes.Equal(got.Key, r.Key) {
		t.Fatalf("ParseReference(String()) with key = %+v, %v", got, err)
	}
	// Case-insensitive names, quoted values and spacing are RFC 2045's.
	if _, err := ParseReference(strings.ToUpper(s[:21]) + s[21:]); err != nil {
		t.Errorf("upper-case media type refused: %v", err)
	}
	tok, nonce, hash := "token="+strings.Repeat("-", 42)+"w", "nonce="+strings.Repeat("_", 42)+"w", "hash=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
	for _, tc := range []struct{ name, in string }{
		{"another media type", "text/plain; access-type=token; " + tok + "; " + nonce + "; " + hash},
		{"another access type", "message/external-body; access-type=url; " + tok + "; " + nonce + "; " + hash},
		{"no token", "message/external-body; access-type=token; " + nonce + "; " + hash},
		{"no nonce", "message/external-body; access-type=token; " + tok + "; " + hash},
		{"no hash", "message/external-body; access-type=token; " + tok + "; " + nonce},
		{"a padded value", "message/external-body; access-type=token; " + tok + "; " + nonce + "; hash=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="},
		{"standard base64", "message/external-body; access-type=token; token=" + strings.Repeat("+", 42) + "w; " + nonce + "; " + hash},
		{"non-canonical trailing bits", "message/external-body; access-type=token; " + tok + "; " + nonce + "; hash=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQF"},
		{"a short nonce", "message/external-body; access-type=token; " + tok + "; nonce=AAAA; " + hash},
		{"a long token", "message/external-body; access-type=token; token=" + strings.Repeat("A", 88) + "; " + nonce + "; " + hash},
		{"an unknown parameter", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash + "; size=3"},
		{"a parameter repeated with another value", "message/external-body; access-type=token; " + tok + "; token=AAAA; " + nonce + "; " + hash},
		{"an RFC 2231 continuation over a plain field", "message/external-body; access-type=token; " + tok + "; token*0=AAAA; " + nonce + "; " + hash},
		{"an RFC 2231 continuation before a plain field", "message/external-body; access-type=token; token*0=AAAA; " + tok + "; " + nonce + "; " + hash},
		{"an RFC 2231 encoded value over a plain field", "message/external-body; access-type=token; " + tok + "; token*=utf-8''AAAA; " + nonce + "; " + hash},
		{"a field split in RFC 2231 continuations", "message/external-body; access-type=token; " + tok + "; " + nonce +
			"; hash*0=AQEBAQEBAQEBAQEBAQEBAQEB; hash*1=AQEBAQEBAQEBAQEBAQEBAQE"},
		{"a short key", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash + "; key=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ"},
		{"a long key", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash + "; key=" + strings.Repeat("A", 88)},
		{"an empty key", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash + "; key="},
		{"a padded key", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash + "; key=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="},
		{"a key in standard base64", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash + "; key=" + strings.Repeat("+", 42) + "w"},
		{"a key given twice with another value", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash +
			"; key=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE; key=AgEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"},
		{"an RFC 2231 encoded key", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash + "; key*=utf-8''AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"},
		{"a key and an unknown parameter", "message/external-body; access-type=token; " + tok + "; " + nonce + "; " + hash +
			"; key=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE; size=3"},
		{"a key without a hash", "message/external-body; access-type=token; " + tok + "; " + nonce + "; key=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"},
		{"garbage", "not a media type;;;"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := ParseReference(tc.in); err == nil {
				t.Fatalf("accepted as %+v", r)
			}
		})
	}
}

// FuzzParseReference parses arbitrary strings: a reference that parses
// writes back to a string that parses to the same fields, key included.
//
//	go test -fuzz FuzzParseReference ./mimicore/attachment
func FuzzParseReference(f *testing.F) {
	f.Add(Reference{Token: []byte("t"), Nonce: make([]byte, 32), Hash: make([]byte, 48)}.String())
	f.Add("message/external-body; access-type=token; token=\"dA\"; nonce=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; hash=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add(Reference{Token: []byte("t"), Nonce: make([]byte, 32), Hash: make([]byte, 48), Key: make([]byte, 64)}.String())
	f.Add("message/external-body; access-type=token; token=dA; nonce=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; hash=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; KEY=\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReference(s)
		if err != nil {
			return
		}
		again, err := ParseReference(r.String())
		if err != nil || !bytes.Equal(again.Token, r.Token) || !bytes.Equal(again.Nonce, r.Nonce) || !bytes.Equal(again.Hash, r.Hash) ||
			!bytes.Equal(again.Key, r.Key) {
			t.Fatalf("%q parsed as %+v, which writes as %q: %+v, %v", s, r, r.String(), again, err)
		}
	})
}
