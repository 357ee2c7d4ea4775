package privacypass_test

import (
	"bytes"
	"encoding/base64"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// Every decoder must return a value or an *Error with a Reason, never panic,
// and what it accepts must re-encode to the same bytes.

func checkErr(t *testing.T, err error) {
	t.Helper()
	if err != nil && privacypass.ReasonOf(err) == "" {
		t.Fatalf("error without a reason: %v", err)
	}
}

func FuzzParseTokenChallenge(f *testing.F) {
	f.Add([]byte{0, 2, 0, 1, 'i', 0, 0, 0})
	f.Add(append(append([]byte{0, 1, 0, 1, 'i', 32}, make([]byte, 32)...), 0, 3, 'a', ',', 'b'))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := privacypass.ParseTokenChallenge(data)
		checkErr(t, err)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("parsed challenge does not marshal: %v", err)
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("round trip: %x != %x", out, data)
		}
	})
}

func FuzzParseToken(f *testing.F) {
	f.Add(append([]byte{0, 2}, make([]byte, 352)...))
	f.Add(append([]byte{0, 1}, make([]byte, 144)...))
	f.Add([]byte{0, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		tok, err := privacypass.ParseToken(data)
		checkErr(t, err)
		if err != nil {
			return
		}
		if !bytes.Equal(tok.Marshal(), data) {
			t.Fatal("round trip")
		}
		if len(tok.AuthenticatorInput()) != privacypass.AuthenticatorInputSize {
			t.Fatal("authenticator input size")
		}
	})
}

func FuzzParseAuthorization(f *testing.F) {
	tok := append([]byte{0, 1}, make([]byte, 144)...)
	f.Add(`PrivateToken token="` + base64.URLEncoding.EncodeToString(tok) + `"`)
	f.Add(`privatetoken token=` + base64.RawURLEncoding.EncodeToString(tok) + `, x="y\"z"`)
	f.Add(`Basic abc==, PrivateToken a=b`)
	f.Add(`PrivateToken token=AA==`)
	f.Fuzz(func(t *testing.T, h string) {
		got, err := privacypass.ParseAuthorization(h)
		checkErr(t, err)
		if err != nil {
			return
		}
		// What parses formats and parses back to the same token.
		again, err := privacypass.ParseAuthorization(privacypass.FormatAuthorization(got))
		if err != nil || !bytes.Equal(again.Marshal(), got.Marshal()) {
			t.Fatalf("format+parse: %v", err)
		}
	})
}

func FuzzParseWWWAuthenticate(f *testing.F) {
	f.Add(`PrivateToken challenge="AAIADmlzc3Vlci5leGFtcGxlAAAA", token-key="AAAA", max-age="10"`)
	f.Add(`Basic realm="grease", PrivateToken challenge=AAIA, privatetoken challenge="AAEA",max-age=3`)
	f.Add(`Negotiate abc==, PrivateToken challenge="!!"`)
	f.Fuzz(func(t *testing.T, h string) {
		cs, err := privacypass.ParseWWWAuthenticate(h)
		checkErr(t, err)
		if err != nil {
			return
		}
		for _, c := range cs {
			if len(c.TokenChallenge) == 0 {
				// An empty challenge cannot be sent; formatting it would
				// produce challenge="" which is skipped.
				continue
			}
			again, err := privacypass.ParseWWWAuthenticate(privacypass.FormatWWWAuthenticate(c))
			if err != nil || len(again) != 1 || !bytes.Equal(again[0].TokenChallenge, c.TokenChallenge) ||
				!bytes.Equal(again[0].TokenKey, c.TokenKey) || again[0].MaxAge != c.MaxAge {
				t.Fatalf("format+parse of %+v: %v", c, err)
			}
		}
	})
}

func FuzzParseTokenRequest(f *testing.F) {
	f.Add(append([]byte{0, 2, 7}, make([]byte, 256)...))
	f.Add(append([]byte{0, 1, 7, 2}, make([]byte, 48)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := privacypass.ParseTokenRequest(data)
		checkErr(t, err)
		if err != nil {
			return
		}
		if !bytes.Equal(r.Marshal(), data) {
			t.Fatal("round trip")
		}
	})
}

// FuzzIssue feeds arbitrary requests to a real issuer; only requests for its
// keys reach the cryptography.
func FuzzIssue(f *testing.F) {
	k2, k1, _ := testKeys(f)
	is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k2}, privacypass.IssuerKey{Key: k1})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(append([]byte{0, 2, k2.TruncatedID()}, bytes.Repeat([]byte{0x55}, 256)...))
	f.Add(append([]byte{0, 1, k1.TruncatedID(), 2}, bytes.Repeat([]byte{0x11}, 48)...))
	f.Add(append([]byte{0, 1, k1.TruncatedID(), 3}, bytes.Repeat([]byte{0xff}, 48)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := is.Issue(data)
		checkErr(t, err)
	})
}

func FuzzParseBlindRSATokenKey(f *testing.F) {
	f.Add(rfcTokenKey(f))
	f.Add([]byte{0x30, 0x03, 0x30, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		pk, err := privacypass.ParseBlindRSATokenKey(data)
		checkErr(t, err)
		if err != nil {
			return
		}
		if pk.N.BitLen() != 2048 {
			t.Fatal("accepted a non-2048-bit modulus")
		}
		k, err := privacypass.ParseTokenKey(privacypass.TypeBlindRSA, data)
		if err != nil || !bytes.Equal(k.TokenKey(), data) {
			t.Fatalf("ParseTokenKey disagrees: %v", err)
		}
	})
}

func FuzzParseKeyFile(f *testing.F) {
	_, k1, _ := testKeys(f)
	b, _ := privacypass.MarshalKeyFile(k1, true)
	f.Add(b)
	f.Add([]byte(`{"token_type":2,"token_key":"AAAA"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := privacypass.ParseKeyFile(data)
		checkErr(t, err)
	})
}

func FuzzParseDirectory(f *testing.F) {
	f.Add([]byte(`{"issuer-request-uri":"/r","token-keys":[{"token-type":2,"token-key":"AAAA","not-before":1}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := privacypass.ParseDirectory(data)
		checkErr(t, err)
		if err != nil {
			return
		}
		_, err = d.Keys()
		checkErr(t, err)
	})
}
