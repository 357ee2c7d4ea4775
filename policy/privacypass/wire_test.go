package privacypass_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// rfcPkS is the RFC 9578 A.2 token key (342 bytes).
const rfcPkS = "30820152303d06092a864886f70d01010a3030a00d300b0609608648016503040202a11a301806092a864886f70d010108300b0609608648016503040202a203020130"

func rfcTokenKey(t testing.TB) []byte {
	var f struct{ Vectors []issuanceVector }
	loadJSON(t, "rfc9578-type2-blindrsa.json", &f)
	return unhex(t, f.Vectors[0].PkS)
}

func TestTokenChallengeMalformed(t *testing.T) {
	good := privacypass.TokenChallenge{TokenType: 2, IssuerName: "issuer.example", RedemptionContext: bytes.Repeat([]byte{1}, 32), OriginInfo: []string{"a.example", "b.example"}}
	raw, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":            {},
		"type only":        raw[:2],
		"truncated":        raw[:len(raw)-1],
		"trailing":         append(bytes.Clone(raw), 0),
		"empty issuer":     unhex(t, "0002000000000000"),
		"context 31":       append(unhex(t, "00020001611f"), append(make([]byte, 31), 0, 0)...),
		"context 33":       append(unhex(t, "000200016121"), append(make([]byte, 33), 0, 0)...),
		"issuer space":     unhex(t, "0002000361206200000000"),
		"issuer nonascii":  unhex(t, "00020001ff000000"),
		"origin empty el":  unhex(t, "00020001610000032c2c61"),
		"origin trailing,": unhex(t, "0002000161000002612c"),
		"length overflow":  unhex(t, "0002ffff61"),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := privacypass.ParseTokenChallenge(b)
			wantReason(t, err, privacypass.ReasonMalformed)
		})
	}
	for name, c := range map[string]privacypass.TokenChallenge{
		"empty issuer": {TokenType: 2},
		"context 16":   {TokenType: 2, IssuerName: "i", RedemptionContext: make([]byte, 16)},
		"origin comma": {TokenType: 2, IssuerName: "i", OriginInfo: []string{"a,b"}},
		"long issuer":  {TokenType: 2, IssuerName: strings.Repeat("a", 1<<16)},
	} {
		t.Run("marshal "+name, func(t *testing.T) {
			_, err := c.Marshal()
			wantReason(t, err, privacypass.ReasonMalformed)
		})
	}
}

func TestParseTokenMalformed(t *testing.T) {
	for name, c := range map[string]struct {
		b      []byte
		reason privacypass.Reason
	}{
		"empty":          {nil, privacypass.ReasonMalformed},
		"one byte":       {[]byte{0}, privacypass.ReasonMalformed},
		"grease type":    {append([]byte{0x2e, 0x96}, make([]byte, 352)...), privacypass.ReasonUnsupportedType},
		"type 3":         {append([]byte{0, 3}, make([]byte, 352)...), privacypass.ReasonUnsupportedType},
		"type 2 short":   {append([]byte{0, 2}, make([]byte, 351)...), privacypass.ReasonMalformed},
		"type 2 long":    {append([]byte{0, 2}, make([]byte, 353)...), privacypass.ReasonMalformed},
		"type 1 short":   {append([]byte{0, 1}, make([]byte, 143)...), privacypass.ReasonMalformed},
		"type 1 as 2":    {append([]byte{0, 2}, make([]byte, 144)...), privacypass.ReasonMalformed},
		"type 2 as 1":    {append([]byte{0, 1}, make([]byte, 352)...), privacypass.ReasonMalformed},
		"type 1 long":    {append([]byte{0, 1}, make([]byte, 145)...), privacypass.ReasonMalformed},
		"header only":    {make([]byte, 98), privacypass.ReasonUnsupportedType},
		"type 2 no auth": {append([]byte{0, 2}, make([]byte, 96)...), privacypass.ReasonMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := privacypass.ParseToken(c.b)
			wantReason(t, err, c.reason)
		})
	}
	// Exact sizes parse and round-trip without aliasing the input.
	for _, typ := range []privacypass.TokenType{1, 2} {
		b := make([]byte, 98+typ.AuthenticatorSize())
		b[1] = byte(typ)
		if _, err := rand.Read(b[2:]); err != nil {
			t.Fatal(err)
		}
		tok, err := privacypass.ParseToken(b)
		if err != nil {
			t.Fatalf("type %s: %v", typ, err)
		}
		orig := bytes.Clone(b)
		b[200%len(b)] ^= 0xff
		if !bytes.Equal(tok.Marshal(), orig) {
			t.Fatalf("type %s: token aliases its input or does not round-trip", typ)
		}
	}
}

func TestParseAuthorization(t *testing.T) {
	// A type 1 token: 146 bytes, so padded base64url ends in "=".
	tok := &privacypass.Token{TokenType: 1, Authenticator: make([]byte, 48)}
	tok.TokenKeyID[5] = 0xff
	copy(tok.Nonce[1:], []byte{0xfb, 0xff, 0xbf}) // base64url "-_-_"
	raw := tok.Marshal()
	padded := base64.URLEncoding.EncodeToString(raw)
	unpadded := base64.RawURLEncoding.EncodeToString(raw)
	if padded == unpadded || !strings.Contains(padded, "-_-_") {
		t.Fatal("test token needs padding and URL-alphabet characters")
	}
	accept := []string{
		`PrivateToken token="` + padded + `"`,
		`PrivateToken token=` + padded,
		`PrivateToken token=` + unpadded,
		`PrivateToken token="` + unpadded + `"`,
		`privatetoken token=` + padded,
		`PRIVATETOKEN   token = "` + padded + `"`,
		`PrivateToken foo=bar, token="` + padded + `", baz="q\"x"`,
		`PrivateToken token=` + padded + `, realm=x`,
		`PrivateToken TOKEN=` + padded,
		`  PrivateToken token=` + padded + `  `,
		`PrivateToken token="` + strings.Replace(padded, "A", `\A`, 1) + `"`, // quoted-pair
	}
	for i, h := range accept {
		got, err := privacypass.ParseAuthorization(h)
		if err != nil {
			t.Errorf("accept %d %q: %v", i, h, err)
			continue
		}
		if !bytes.Equal(got.Marshal(), raw) {
			t.Errorf("accept %d: wrong token", i)
		}
	}
	reject := map[string]privacypass.Reason{
		``:                              privacypass.ReasonMissing,
		`Bearer xyz`:                    privacypass.ReasonMissing,
		`Basic a, Bearer b=c`:           privacypass.ReasonMissing,
		`PrivateToken`:                  privacypass.ReasonMalformed,
		`PrivateToken ` + padded:        privacypass.ReasonMalformed, // token68 form
		`PrivateToken foo=bar`:          privacypass.ReasonMalformed,
		`PrivateToken token=`:           privacypass.ReasonMalformed,
		`PrivateToken token=""`:         privacypass.ReasonMalformed,
		`PrivateToken token="` + padded: privacypass.ReasonMalformed, // unterminated
		`PrivateToken token=a token=b`:  privacypass.ReasonMalformed,
		`PrivateToken token=` + padded + `, token=` + padded:                 privacypass.ReasonMalformed,
		`PrivateToken token=` + padded + `, PrivateToken token=` + padded:    privacypass.ReasonMalformed,
		`PrivateToken token=` + strings.ReplaceAll(padded, "-", "+"):         privacypass.ReasonMalformed,
		`PrivateToken token="` + padded[:10] + "\n" + padded[10:] + `"`:      privacypass.ReasonMalformed,
		`PrivateToken token="` + padded[:10] + " " + padded[10:] + `"`:       privacypass.ReasonMalformed,
		`PrivateToken token=` + padded + `=`:                                 privacypass.ReasonMalformed,
		`PrivateToken token=` + padded[:len(padded)-4]:                       privacypass.ReasonMalformed,
		`PrivateToken token=` + base64.URLEncoding.EncodeToString(raw[:140]): privacypass.ReasonMalformed,
		`PrivateToken token=AAMA`:                                            privacypass.ReasonUnsupportedType,
		`PrivateToken token="x` + "\x00" + `"`:                               privacypass.ReasonMalformed,
		`PrivateToken token=` + strings.Repeat("A", 20000):                   privacypass.ReasonMalformed,
	}
	for h, want := range reject {
		_, err := privacypass.ParseAuthorization(h)
		if got := privacypass.ReasonOf(err); got != want {
			t.Errorf("reject %.60q (len %d): reason %q (%v), want %q", h, len(h), got, err, want)
		}
	}
}

func TestParseWWWAuthenticate(t *testing.T) {
	chal := []byte{0, 2, 0, 1, 'i', 0, 0, 0}
	key := []byte{0xfb, 0xff, 0xfe}
	enc := base64.URLEncoding.EncodeToString
	cases := []struct {
		hdr  string
		want []privacypass.Challenge
	}{
		{`PrivateToken challenge="` + enc(chal) + `", token-key="` + enc(key) + `", max-age="10"`,
			[]privacypass.Challenge{{TokenChallenge: chal, TokenKey: key, MaxAge: 10}}},
		{`PrivateToken challenge=` + enc(chal) + `,token-key=` + enc(key) + `,max-age=10`,
			[]privacypass.Challenge{{TokenChallenge: chal, TokenKey: key, MaxAge: 10}}},
		{`Basic realm="x", privatetoken challenge="` + enc(chal) + `"`,
			[]privacypass.Challenge{{TokenChallenge: chal, MaxAge: -1}}},
		{`PrivateToken challenge="` + enc(chal) + `", max-age="ten", PrivateToken challenge="` + enc(chal[:4]) + `", max-age=5`,
			[]privacypass.Challenge{{TokenChallenge: chal, MaxAge: -1}, {TokenChallenge: chal[:4], MaxAge: 5}}},
		{`Negotiate abc==, PrivateToken challenge="` + enc(chal) + `"`,
			[]privacypass.Challenge{{TokenChallenge: chal, MaxAge: -1}}},
		// Undecodable or missing challenge: that challenge is ignored.
		{`PrivateToken challenge="!!", PrivateToken token-key="` + enc(key) + `", PrivateToken challenge="` + enc(chal) + `"`,
			[]privacypass.Challenge{{TokenChallenge: chal, MaxAge: -1}}},
		{`PrivateToken challenge="` + enc(chal) + `", challenge="` + enc(chal) + `"`, nil},
		{`Basic realm="x"`, nil},
		{``, nil},
		{`,, ,`, nil},
	}
	for i, c := range cases {
		got, err := privacypass.ParseWWWAuthenticate(c.hdr)
		if err != nil {
			t.Errorf("case %d: %v", i, err)
			continue
		}
		if len(got) != len(c.want) {
			t.Errorf("case %d: %d challenges, want %d", i, len(got), len(c.want))
			continue
		}
		for j := range got {
			if !bytes.Equal(got[j].TokenChallenge, c.want[j].TokenChallenge) || !bytes.Equal(got[j].TokenKey, c.want[j].TokenKey) || got[j].MaxAge != c.want[j].MaxAge {
				t.Errorf("case %d challenge %d: %+v, want %+v", i, j, got[j], c.want[j])
			}
		}
	}
	for _, bad := range []string{`PrivateToken challenge="abc`, `"quoted"`, `PrivateToken challenge=abc def`, `PrivateToken,=x`, "PrivateToken challenge=\"a\x01\""} {
		_, err := privacypass.ParseWWWAuthenticate(bad)
		wantReason(t, err, privacypass.ReasonMalformed)
	}
}

func TestBlindRSATokenKeyParsing(t *testing.T) {
	pkS := rfcTokenKey(t)
	if !strings.HasPrefix(hex.EncodeToString(pkS), rfcPkS) || len(pkS) != 342 {
		t.Fatal("unexpected RFC key")
	}
	pk, err := privacypass.ParseBlindRSATokenKey(pkS)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := func(p *rsa.PublicKey) []byte {
		b, _ := asn1.Marshal(struct{ N, E any }{p.N, p.E})
		return b
	}(pk)
	spki := func(alg []byte, key []byte) []byte {
		b, err := asn1.Marshal(struct {
			Alg asn1.RawValue
			Key asn1.BitString
		}{asn1.RawValue{FullBytes: alg}, asn1.BitString{Bytes: key, BitLength: 8 * len(key)}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pssAlg := func(params string) []byte {
		return unhex(t, "30"+hex.EncodeToString([]byte{byte(11 + len(params)/2)})+"06092a864886f70d01010a"+params)
	}
	goodParams := "3030a00d300b0609608648016503040202a11a301806092a864886f70d010108300b0609608648016503040202a203020130"
	if !bytes.Equal(spki(pssAlg(goodParams), pkcs1), pkS) {
		t.Fatal("test SPKI builder does not reproduce the RFC key")
	}
	accept := map[string][]byte{
		"legacy rsaEncryption": spki(unhex(t, "300d06092a864886f70d0101010500"), pkcs1),
		"legacy no params":     spki(unhex(t, "300b06092a864886f70d010101"), pkcs1),
		"null hash params":     spki(pssAlg("3034a00f300d06096086480165030402020500a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130"), pkcs1),
		"explicit trailer":     spki(pssAlg("3035a00d300b0609608648016503040202a11a301806092a864886f70d010108300b0609608648016503040202a203020130a303020101"), pkcs1),
	}
	for name, b := range accept {
		got, err := privacypass.ParseBlindRSATokenKey(b)
		if err != nil || got.N.Cmp(pk.N) != 0 {
			t.Errorf("%s: %v", name, err)
		}
		// The id is over the bytes as published, not a re-encoding.
		k, err := privacypass.ParseTokenKey(privacypass.TypeBlindRSA, b)
		if err != nil || bytes.Equal(k.TokenKey(), pkS) {
			t.Errorf("%s: key not kept as published (%v)", name, err)
		}
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	reject := map[string][]byte{
		"empty":          nil,
		"truncated":      pkS[:len(pkS)-1],
		"trailing":       append(bytes.Clone(pkS), 0),
		"salt 32":        spki(pssAlg("3030a00d300b0609608648016503040202a11a301806092a864886f70d010108300b0609608648016503040202a203020120"), pkcs1),
		"sha256":         spki(pssAlg("3030a00d300b0609608648016503040201a11a301806092a864886f70d010108300b0609608648016503040201a203020130"), pkcs1),
		"mgf sha256":     spki(pssAlg("3030a00d300b0609608648016503040202a11a301806092a864886f70d010108300b0609608648016503040201a203020130"), pkcs1),
		"no salt":        spki(pssAlg("302ba00d300b0609608648016503040202a11a301806092a864886f70d010108300b0609608648016503040202"), pkcs1),
		"no params":      spki(unhex(t, "300b06092a864886f70d01010a"), pkcs1),
		"trailer 2":      spki(pssAlg("3035a00d300b0609608648016503040202a11a301806092a864886f70d010108300b0609608648016503040202a203020130a303020102"), pkcs1),
		"ecdsa oid":      spki(unhex(t, "301306072a8648ce3d020106082a8648ce3d030107"), pkcs1),
		"1024-bit":       spki(pssAlg(goodParams), x509PKCS1(small)),
		"legacy params":  spki(unhex(t, "300f06092a864886f70d0101010402abcd"), pkcs1),
		"garbage key":    spki(pssAlg(goodParams), []byte{1, 2, 3}),
		"unaligned bits": unalignedKey(t, pssAlg(goodParams), pkcs1),
	}
	for name, b := range reject {
		_, err := privacypass.ParseBlindRSATokenKey(b)
		if privacypass.ReasonOf(err) != privacypass.ReasonMalformed {
			t.Errorf("%s: got %v, want malformed", name, err)
		}
	}
	if _, err := privacypass.MarshalBlindRSATokenKey(&small.PublicKey); !errors.Is(err, privacypass.ErrInvalidConfig) {
		t.Errorf("1024-bit key encoded: %v", err)
	}
	// Type 1 keys: 49-byte compressed points only.
	_, k1, _ := testKeys(t)
	for name, b := range map[string][]byte{
		"48 bytes":     k1.TokenKey()[:48],
		"prefix 04":    append([]byte{4}, k1.TokenKey()[1:]...),
		"not on curve": append([]byte{2}, bytes.Repeat([]byte{0xff}, 48)...),
		"empty":        nil,
	} {
		_, err := privacypass.ParseTokenKey(privacypass.TypeVOPRF, b)
		wantReason(t, err, privacypass.ReasonMalformed)
		_ = name
	}
	_, err = privacypass.ParseTokenKey(0x2e96, pkS)
	wantReason(t, err, privacypass.ReasonUnsupportedType)
}

func x509PKCS1(k *rsa.PrivateKey) []byte {
	b, _ := asn1.Marshal(struct{ N, E any }{k.N, k.E})
	return b
}

func unalignedKey(t *testing.T, alg, key []byte) []byte {
	b, err := asn1.Marshal(struct {
		Alg asn1.RawValue
		Key asn1.BitString
	}{asn1.RawValue{FullBytes: alg}, asn1.BitString{Bytes: key, BitLength: 8*len(key) - 1}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKeyFiles(t *testing.T) {
	k2, k1, k2b := testKeys(t)
	dir := t.TempDir()
	for _, k := range []*privacypass.Key{k2, k1} {
		path := filepath.Join(dir, k.Type().String()+".json")
		if err := privacypass.WriteKeyFile(path, k); err != nil {
			t.Fatal(err)
		}
		if err := privacypass.WriteKeyFile(path, k); err == nil {
			t.Fatal("WriteKeyFile overwrote an existing file")
		}
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("key file mode %v (%v)", st.Mode(), err)
		}
		back, err := privacypass.ReadKeyFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if back.ID() != k.ID() || !back.HasPrivate() || back.Type() != k.Type() {
			t.Fatal("key file round trip lost data")
		}
		pub, err := privacypass.MarshalKeyFile(k, false)
		if err != nil || bytes.Contains(pub, []byte("private_key")) {
			t.Fatalf("public key file holds a private key (%v)", err)
		}
		pk, err := privacypass.ParseKeyFile(pub)
		if err != nil || pk.HasPrivate() || pk.ID() != k.ID() {
			t.Fatalf("public key file: %v", err)
		}
	}
	full, _ := privacypass.MarshalKeyFile(k2, true)
	other, _ := privacypass.MarshalKeyFile(k2b, true)
	var a, b map[string]any
	_ = json.Unmarshal(full, &a)
	_ = json.Unmarshal(other, &b)
	mutate := func(f func(m map[string]any)) []byte {
		m := map[string]any{}
		for k, v := range a {
			m[k] = v
		}
		f(m)
		out, _ := json.Marshal(m)
		return out
	}
	bad := map[string][]byte{
		"not json":      []byte("{"),
		"type 3":        mutate(func(m map[string]any) { m["token_type"] = 3 }),
		"wrong id":      mutate(func(m map[string]any) { m["token_key_id"] = strings.Repeat("00", 32) }),
		"mismatch":      mutate(func(m map[string]any) { m["private_key"] = b["private_key"] }),
		"bad pem":       mutate(func(m map[string]any) { m["private_key"] = "-----BEGIN NOTHING-----" }),
		"bad token key": mutate(func(m map[string]any) { m["token_key"] = "AAAA" }),
		"empty":         mutate(func(m map[string]any) { delete(m, "private_key"); delete(m, "token_key") }),
		"type mismatch": mutate(func(m map[string]any) { m["token_type"] = 1 }),
	}
	for name, data := range bad {
		if _, err := privacypass.ParseKeyFile(data); err == nil {
			t.Errorf("%s: key file accepted", name)
		}
	}
	// A private key alone is enough; the token key is derived.
	k, err := privacypass.ParseKeyFile(mutate(func(m map[string]any) { delete(m, "token_key"); delete(m, "token_key_id") }))
	if err != nil || k.ID() != k2.ID() {
		t.Fatalf("private-only key file: %v", err)
	}
}

func TestIssuer(t *testing.T) {
	k2, k1, k2b := testKeys(t)
	if _, err := privacypass.NewIssuer(); err == nil {
		t.Fatal("issuer without keys")
	}
	if _, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k2.Public()}); !errors.Is(err, privacypass.ErrInvalidConfig) {
		t.Fatal("issuer accepted a public key")
	}
	if _, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k2}, privacypass.IssuerKey{Key: k2}); !errors.Is(err, privacypass.ErrInvalidConfig) {
		t.Fatal("issuer accepted colliding truncated ids")
	}
	nb := time.Unix(1_800_000_000, 0)
	is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k2, NotBefore: nb}, privacypass.IssuerKey{Key: k1}, privacypass.IssuerKey{Key: k2b})
	if err != nil {
		t.Fatal(err)
	}
	dj, err := is.Directory("/token-request").Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(dj, &raw); err != nil {
		t.Fatal(err)
	}
	keys := raw["token-keys"].([]any)
	first := keys[0].(map[string]any)
	if raw["issuer-request-uri"] != "/token-request" || len(keys) != 3 || first["token-type"] != 2.0 ||
		first["not-before"] != 1_800_000_000.0 || first["token-key"] != base64.URLEncoding.EncodeToString(k2.TokenKey()) {
		t.Fatalf("unexpected directory %s", dj)
	}
	if _, ok := keys[1].(map[string]any)["not-before"]; ok {
		t.Fatal("not-before present for a key without one")
	}
	d, err := privacypass.ParseDirectory(dj)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := d.Keys()
	if err != nil || len(parsed) != 3 || parsed[0].ID() != k2.ID() || parsed[1].ID() != k1.ID() || parsed[2].ID() != k2b.ID() {
		t.Fatalf("directory keys: %v", err)
	}
	// Unknown members and token types are ignored; bad entries are errors.
	d2, err := privacypass.ParseDirectory([]byte(`{"x":1,"token-keys":[{"token-type":11,"token-key":"AA=="},{"token-type":2,"token-key":"` + base64.URLEncoding.EncodeToString(k2.TokenKey()) + `","extra":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if ks, err := d2.Keys(); err != nil || len(ks) != 1 {
		t.Fatalf("filtering directory keys: %v", err)
	}
	for _, bad := range []string{`{}`, `[]`, `{"token-keys":[{"token-type":2}]}`, `{"token-keys":[{"token-key":"AA"}]}`, `{"token-keys":[{"token-type":70000,"token-key":"AA"}]}`} {
		if _, err := privacypass.ParseDirectory([]byte(bad)); err == nil {
			t.Errorf("directory %s accepted", bad)
		}
	}
	if d3, err := privacypass.ParseDirectory([]byte(`{"token-keys":[{"token-type":2,"token-key":"AAAA"}]}`)); err != nil {
		t.Fatal(err)
	} else if _, err := d3.Keys(); err == nil {
		t.Error("invalid directory key accepted")
	}

	// Issuance errors carry the reason an issuer answers 422 with.
	p, err := privacypass.NewTokenRequest([]byte{0, 2, 0, 1, 'i', 0, 0, 0}, k2.Public())
	if err != nil {
		t.Fatal(err)
	}
	req := p.Request
	n := k2.RSAPublicKey().N.FillBytes(make([]byte, 256))
	for name, c := range map[string]struct {
		req    []byte
		reason privacypass.Reason
	}{
		"short":           {req[:100], privacypass.ReasonMalformed},
		"long":            {append(bytes.Clone(req), 0), privacypass.ReasonMalformed},
		"grease":          {append([]byte{0x2e, 0x96}, req[2:]...), privacypass.ReasonUnsupportedType},
		"unknown key":     {append([]byte{0, 2, k2.TruncatedID() ^ k2b.TruncatedID() ^ 0x5a}, req[3:]...), privacypass.ReasonUnknownKey},
		"msg == n":        {append([]byte{0, 2, k2.TruncatedID()}, n...), privacypass.ReasonMalformed},
		"msg > n":         {append([]byte{0, 2, k2.TruncatedID()}, bytes.Repeat([]byte{0xff}, 256)...), privacypass.ReasonMalformed},
		"type1 bad point": {append([]byte{0, 1, k1.TruncatedID(), 2}, bytes.Repeat([]byte{0xff}, 48)...), privacypass.ReasonMalformed},
		"type1 identity":  {append([]byte{0, 1, k1.TruncatedID()}, make([]byte, 49)...), privacypass.ReasonMalformed},
		"type1 short":     {[]byte{0, 1, k1.TruncatedID()}, privacypass.ReasonMalformed},
		"empty":           {nil, privacypass.ReasonMalformed},
	} {
		if c.reason == privacypass.ReasonUnknownKey && (c.req[2] == k2.TruncatedID() || c.req[2] == k2b.TruncatedID()) {
			continue
		}
		_, err := is.Issue(c.req)
		if got := privacypass.ReasonOf(err); got != c.reason {
			t.Errorf("%s: reason %q (%v), want %q", name, got, err, c.reason)
		}
	}
	// Responses the client cannot use are refused at Finalize.
	resp, err := is.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Finalize(resp[:255]); err == nil {
		t.Error("short response finalized")
	}
	bad := bytes.Clone(resp)
	bad[10] ^= 1
	_, err = p.Finalize(bad)
	wantReason(t, err, privacypass.ReasonAuthenticator)
	if _, err := p.Finalize(resp); err != nil {
		t.Fatalf("Finalize: %v", err)
	}
	// Type 1: a tampered proof is refused.
	p1, err := privacypass.NewTokenRequest([]byte{0, 1, 0, 1, 'i', 0, 0, 0}, k1.Public())
	if err != nil {
		t.Fatal(err)
	}
	r1, err := is.Issue(p1.Request)
	if err != nil {
		t.Fatal(err)
	}
	bad1 := bytes.Clone(r1)
	bad1[100] ^= 1
	if _, err := p1.Finalize(bad1); err == nil {
		t.Error("tampered DLEQ proof accepted")
	}
	if _, err := p1.Finalize(r1); err != nil {
		t.Fatalf("type 1 Finalize: %v", err)
	}
	// A challenge of the wrong type is refused by the client.
	if _, err := privacypass.NewTokenRequest([]byte{0, 1, 0, 1, 'i', 0, 0, 0}, k2.Public()); err == nil {
		t.Error("client accepted a type 1 challenge for a type 2 key")
	}
}

func TestTokenTypeString(t *testing.T) {
	for typ, want := range map[privacypass.TokenType]string{1: "0x0001", 2: "0x0002", 0xf057: "0xf057", 0: "0x0000"} {
		if got := typ.String(); got != want {
			t.Errorf("%d: %q, want %q", typ, got, want)
		}
	}
}
