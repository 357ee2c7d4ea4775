package privacypass_test

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"

	"github.com/cloudflare/circl/blindsign/blindrsa"
	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
	"github.com/cloudflare/circl/zk/dleq"

	"github.com/caddy-mimi/caddy-mimi/internal/testdir"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

func loadJSON(t testing.TB, name string, v any) {
	t.Helper()
	path, err := testdir.Path("privacypass", name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading vectors: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %s: %v", name, err)
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func b64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		t.Fatalf("bad base64url %q: %v", s, err)
	}
	return b
}

type issuanceVector struct {
	SkS            string `json:"skS"`
	PkS            string `json:"pkS"`
	TokenChallenge string `json:"token_challenge"`
	Nonce          string `json:"nonce"`
	Blind          string `json:"blind"`
	Salt           string `json:"salt"`
	TokenRequest   string `json:"token_request"`
	TokenResponse  string `json:"token_response"`
	Token          string `json:"token"`
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

func wantReason(t testing.TB, err error, r privacypass.Reason) {
	t.Helper()
	if got := privacypass.ReasonOf(err); got != r {
		t.Fatalf("got reason %q (err %v), want %q", got, err, r)
	}
}

func TestRFC9578Type2Vectors(t *testing.T) {
	var f struct{ Vectors []issuanceVector }
	loadJSON(t, "rfc9578-type2-blindrsa.json", &f)
	if len(f.Vectors) != 5 {
		t.Fatalf("%d vectors, want 5", len(f.Vectors))
	}
	for i, v := range f.Vectors {
		t.Run(string(rune('1'+i)), func(t *testing.T) {
			pkS := unhex(t, v.PkS)
			block, _ := pem.Decode(unhex(t, v.SkS))
			if block == nil {
				t.Fatal("skS is not PEM")
			}
			parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				t.Fatalf("parsing skS: %v", err)
			}
			sk := parsed.(*rsa.PrivateKey)

			// SPKI parse and byte-exact re-encode; key id over published bytes.
			pk, err := privacypass.ParseBlindRSATokenKey(pkS)
			if err != nil {
				t.Fatalf("ParseBlindRSATokenKey: %v", err)
			}
			if pk.N.Cmp(sk.N) != 0 || pk.E != sk.E {
				t.Fatal("pkS does not match skS")
			}
			enc, err := privacypass.MarshalBlindRSATokenKey(pk)
			if err != nil || !bytes.Equal(enc, pkS) {
				t.Fatalf("re-encoded key differs from pkS (err %v)", err)
			}
			key, err := privacypass.NewBlindRSAKey(sk)
			if err != nil {
				t.Fatalf("NewBlindRSAKey: %v", err)
			}
			if !bytes.Equal(key.TokenKey(), pkS) {
				t.Fatal("Key.TokenKey differs from pkS")
			}
			id := sha256.Sum256(pkS)
			if key.ID() != id {
				t.Fatal("token_key_id is not SHA-256(pkS)")
			}

			tokBytes := unhex(t, v.Token)
			tok, err := privacypass.ParseToken(tokBytes)
			if err != nil {
				t.Fatalf("ParseToken: %v", err)
			}
			if !bytes.Equal(tok.Marshal(), tokBytes) {
				t.Fatal("token does not round-trip")
			}
			if tok.TokenKeyID != id {
				t.Fatal("token carries another key id")
			}
			if !bytes.Equal(tok.Nonce[:], unhex(t, v.Nonce)) {
				t.Fatal("nonce differs")
			}
			req := unhex(t, v.TokenRequest)
			if req[2] != id[31] || key.TruncatedID() != req[2] {
				t.Fatal("truncated key id is not the last byte of token_key_id")
			}
			chal := unhex(t, v.TokenChallenge)
			if _, err := privacypass.ParseTokenChallenge(chal); err != nil {
				t.Fatalf("ParseTokenChallenge: %v", err)
			}

			// Verification with the public key only.
			ver, err := privacypass.NewVerifier(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ver.Verify(tok, chal); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			// circl's verifier agrees.
			cv, _ := blindrsa.NewVerifier(blindrsa.SHA384PSSDeterministic, pk)
			if err := cv.Verify(tok.AuthenticatorInput(), tok.Authenticator); err != nil {
				t.Fatalf("circl verify: %v", err)
			}
			// Flips are refused for the right reason.
			for _, c := range []struct {
				at     int
				reason privacypass.Reason
			}{{2, privacypass.ReasonAuthenticator}, {40, privacypass.ReasonChallengeDigest}, {70, privacypass.ReasonUnknownKey}, {98, privacypass.ReasonAuthenticator}, {len(tokBytes) - 1, privacypass.ReasonAuthenticator}} {
				bad, err := privacypass.ParseToken(flip(tokBytes, c.at))
				if err != nil {
					t.Fatal(err)
				}
				_, err = ver.Verify(bad, chal)
				wantReason(t, err, c.reason)
			}
			_, err = ver.Verify(tok, flip(chal, len(chal)-1))
			wantReason(t, err, privacypass.ReasonChallengeDigest)

			// Issuance: BlindSign is deterministic, so the response is exact.
			is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := is.Issue(req)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if !bytes.Equal(resp, unhex(t, v.TokenResponse)) {
				t.Fatal("token_response differs from the vector")
			}
			// Unblinding: token_response * blind^-1 mod n == authenticator.
			r := new(big.Int).SetBytes(unhex(t, v.Blind))
			rInv := new(big.Int).ModInverse(r, sk.N)
			sig := new(big.Int).Mul(new(big.Int).SetBytes(resp), rInv)
			sig.Mod(sig, sk.N)
			if !bytes.Equal(sig.FillBytes(make([]byte, 256)), tok.Authenticator) {
				t.Fatal("unblinded response differs from the authenticator")
			}
			// Request: blinded_msg == (authenticator * blind)^e mod n, since
			// authenticator^e is the PSS encoding of the input.
			bm := new(big.Int).Mul(new(big.Int).SetBytes(tok.Authenticator), r)
			bm.Exp(bm, big.NewInt(int64(sk.E)), sk.N)
			if !bytes.Equal(bm.FillBytes(make([]byte, 256)), req[3:]) {
				t.Fatal("blinded_msg is not (authenticator*blind)^e")
			}
		})
	}
}

func TestRFC9578Type1Vectors(t *testing.T) {
	var f struct{ Vectors []issuanceVector }
	loadJSON(t, "rfc9578-type1-voprf.json", &f)
	if len(f.Vectors) != 5 {
		t.Fatalf("%d vectors, want 5", len(f.Vectors))
	}
	for i, v := range f.Vectors {
		t.Run(string(rune('1'+i)), func(t *testing.T) {
			pkS := unhex(t, v.PkS)
			key, err := privacypass.NewVOPRFKey(unhex(t, v.SkS))
			if err != nil {
				t.Fatalf("NewVOPRFKey: %v", err)
			}
			if !bytes.Equal(key.TokenKey(), pkS) {
				t.Fatal("SerializeElement(skS*G) differs from pkS")
			}
			pub, err := privacypass.ParseTokenKey(privacypass.TypeVOPRF, pkS)
			if err != nil || pub.ID() != sha256.Sum256(pkS) || pub.ID() != key.ID() {
				t.Fatalf("ParseTokenKey: %v", err)
			}
			tokBytes := unhex(t, v.Token)
			tok, err := privacypass.ParseToken(tokBytes)
			if err != nil {
				t.Fatalf("ParseToken: %v", err)
			}
			if !bytes.Equal(tok.Marshal(), tokBytes) || tok.TokenKeyID != key.ID() {
				t.Fatal("token round trip or key id mismatch")
			}
			chal := unhex(t, v.TokenChallenge)
			ver, err := privacypass.NewVerifier(key)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ver.Verify(tok, chal); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			// A public-only type 1 key cannot verify.
			if _, err := privacypass.NewVerifier(pub); !errors.Is(err, privacypass.ErrInvalidConfig) {
				t.Fatalf("NewVerifier(public type 1) = %v, want invalid_config", err)
			}
			// Base mode must not reproduce the authenticator (mode is in the DST).
			sk := new(oprf.PrivateKey)
			if err := sk.UnmarshalBinary(oprf.SuiteP384, unhex(t, v.SkS)); err != nil {
				t.Fatal(err)
			}
			if oprf.NewServer(oprf.SuiteP384, sk).VerifyFinalize(tok.AuthenticatorInput(), tok.Authenticator) {
				t.Fatal("base-mode evaluation reproduced a verifiable-mode token")
			}
			for _, c := range []struct {
				at     int
				reason privacypass.Reason
			}{{2, privacypass.ReasonAuthenticator}, {40, privacypass.ReasonChallengeDigest}, {97, privacypass.ReasonUnknownKey}, {98, privacypass.ReasonAuthenticator}, {len(tokBytes) - 1, privacypass.ReasonAuthenticator}} {
				bad, err := privacypass.ParseToken(flip(tokBytes, c.at))
				if err != nil {
					t.Fatal(err)
				}
				_, err = ver.Verify(bad, chal)
				wantReason(t, err, c.reason)
			}

			// Client blinding with the vector's blind reproduces the request.
			req := unhex(t, v.TokenRequest)
			if req[2] != key.TruncatedID() {
				t.Fatal("truncated key id mismatch")
			}
			blind := group.P384.NewScalar()
			if err := blind.UnmarshalBinary(unhex(t, v.Blind)); err != nil {
				t.Fatal(err)
			}
			cpk := new(oprf.PublicKey)
			if err := cpk.UnmarshalBinary(oprf.SuiteP384, pkS); err != nil {
				t.Fatal(err)
			}
			client := oprf.NewVerifiableClient(oprf.SuiteP384, cpk)
			fin, evReq, err := client.DeterministicBlind([][]byte{tok.AuthenticatorInput()}, []oprf.Blind{blind})
			if err != nil {
				t.Fatal(err)
			}
			bl, _ := evReq.Elements[0].MarshalBinaryCompress()
			if !bytes.Equal(bl, req[3:]) {
				t.Fatal("Blind(input, blind) differs from the token_request")
			}
			// Issuance: evaluate_msg is deterministic, the proof is not.
			is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := is.Issue(req)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			vresp := unhex(t, v.TokenResponse)
			if len(resp) != 145 || !bytes.Equal(resp[:49], vresp[:49]) {
				t.Fatal("evaluate_msg differs from the vector")
			}
			// The client's Finalize with the vector's proof and with ours
			// both give the authenticator.
			for _, r := range [][]byte{vresp, resp} {
				e := group.P384.NewElement()
				if err := e.UnmarshalBinary(r[:49]); err != nil {
					t.Fatal(err)
				}
				proof := new(dleq.Proof)
				if err := proof.UnmarshalBinary(group.P384, r[49:]); err != nil {
					t.Fatal(err)
				}
				out, err := client.Finalize(fin, &oprf.Evaluation{Elements: []oprf.Evaluated{e}, Proof: proof})
				if err != nil {
					t.Fatalf("Finalize: %v", err)
				}
				if !bytes.Equal(out[0], tok.Authenticator) {
					t.Fatal("finalized output differs from the authenticator")
				}
			}
		})
	}
}

func TestRFC9577TokenVectors(t *testing.T) {
	var f struct {
		Vectors []struct {
			TokenType         string `json:"token_type"`
			IssuerName        string `json:"issuer_name"`
			RedemptionContext string `json:"redemption_context"`
			OriginInfo        string `json:"origin_info"`
			Nonce             string `json:"nonce"`
			TokenKeyID        string `json:"token_key_id"`
			Input             string `json:"token_authenticator_input"`
		}
	}
	loadJSON(t, "rfc9577-token.json", &f)
	if len(f.Vectors) != 6 {
		t.Fatalf("%d vectors, want 6", len(f.Vectors))
	}
	for i, v := range f.Vectors {
		t.Run(string(rune('1'+i)), func(t *testing.T) {
			typ := unhex(t, v.TokenType)
			if v.IssuerName == "" && v.Nonce == "" {
				// Greased vector: random bytes with a reserved token type.
				// An origin refuses it as an unsupported type, not malformed.
				_, err := privacypass.ParseToken(unhex(t, v.Input))
				wantReason(t, err, privacypass.ReasonUnsupportedType)
				_, err = privacypass.ParseAuthorization(`PrivateToken token="` + base64.URLEncoding.EncodeToString(unhex(t, v.Input)) + `"`)
				wantReason(t, err, privacypass.ReasonUnsupportedType)
				return
			}
			c := privacypass.TokenChallenge{
				TokenType:         privacypass.TokenType(uint16(typ[0])<<8 | uint16(typ[1])),
				IssuerName:        string(unhex(t, v.IssuerName)),
				RedemptionContext: unhex(t, v.RedemptionContext),
			}
			if oi := string(unhex(t, v.OriginInfo)); oi != "" {
				c.OriginInfo = strings.Split(oi, ",")
			}
			raw, err := c.Marshal()
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			back, err := privacypass.ParseTokenChallenge(raw)
			if err != nil {
				t.Fatalf("ParseTokenChallenge: %v", err)
			}
			again, _ := back.Marshal()
			if !bytes.Equal(again, raw) {
				t.Fatal("challenge does not round-trip")
			}
			tok := privacypass.Token{TokenType: c.TokenType, ChallengeDigest: privacypass.ChallengeDigest(raw)}
			copy(tok.Nonce[:], unhex(t, v.Nonce))
			copy(tok.TokenKeyID[:], unhex(t, v.TokenKeyID))
			if got := tok.AuthenticatorInput(); !bytes.Equal(got, unhex(t, v.Input)) {
				t.Fatalf("authenticator input\n got %x\nwant %s", got, v.Input)
			}
		})
	}
}

func TestRFC9577HeaderVectors(t *testing.T) {
	var f struct{ Vectors []map[string]any }
	loadJSON(t, "rfc9577-headers.json", &f)
	if len(f.Vectors) != 3 {
		t.Fatalf("%d vectors, want 3", len(f.Vectors))
	}
	for i, v := range f.Vectors {
		t.Run(string(rune('1'+i)), func(t *testing.T) {
			cs, err := privacypass.ParseWWWAuthenticate(v["WWW-Authenticate"].(string))
			if err != nil {
				t.Fatalf("ParseWWWAuthenticate: %v", err)
			}
			n := 0
			for ; v["token-challenge-"+string(rune('0'+n))] != nil; n++ {
				idx := string(rune('0' + n))
				if n >= len(cs) {
					t.Fatalf("got %d challenges, want more", len(cs))
				}
				c := cs[n]
				if got, want := int(c.TokenType()), int(v["token-type-"+idx].(float64)); got != want {
					t.Errorf("challenge %d: type %d, want %d", n, got, want)
				}
				if !bytes.Equal(c.TokenChallenge, unhex(t, v["token-challenge-"+idx].(string))) {
					t.Errorf("challenge %d: bytes differ", n)
				}
				if !bytes.Equal(c.TokenKey, unhex(t, v["token-key-"+idx].(string))) {
					t.Errorf("challenge %d: token-key differs", n)
				}
				want := -1
				if ma, ok := v["max-age-"+idx]; ok {
					want = int(ma.(float64))
				}
				if c.MaxAge != want {
					t.Errorf("challenge %d: max-age %d, want %d", n, c.MaxAge, want)
				}
				// Formatting and parsing again keeps every field.
				re, err := privacypass.ParseWWWAuthenticate(privacypass.FormatWWWAuthenticate(c))
				if err != nil || len(re) != 1 || !bytes.Equal(re[0].TokenChallenge, c.TokenChallenge) ||
					!bytes.Equal(re[0].TokenKey, c.TokenKey) || re[0].MaxAge != c.MaxAge {
					t.Errorf("challenge %d does not survive format+parse: %v", n, err)
				}
			}
			if n != len(cs) {
				t.Fatalf("got %d challenges, want %d", len(cs), n)
			}
		})
	}
}

func TestInteropFixtures(t *testing.T) {
	var f struct {
		Keys  map[string]json.RawMessage
		Cases []struct {
			Name            string
			Key             string
			Challenge       string
			WWWAuthenticate string `json:"www_authenticate"`
			Authorization   string
			Valid           bool
			RejectReason    string `json:"reject_reason"`
		}
	}
	loadJSON(t, "privacypass-ts-interop.json", &f)
	if len(f.Cases) != 16 {
		t.Fatalf("%d cases, want 16", len(f.Cases))
	}
	verifiers := map[string]*privacypass.Verifier{}
	for name, raw := range f.Keys {
		k, err := privacypass.ParseKeyFile(raw)
		if err != nil {
			t.Fatalf("key %s: %v", name, err)
		}
		v, err := privacypass.NewVerifier(k)
		if err != nil {
			t.Fatalf("key %s: %v", name, err)
		}
		verifiers[name] = v
	}
	reasons := map[string]privacypass.Reason{
		"authenticator":    privacypass.ReasonAuthenticator,
		"challenge_digest": privacypass.ReasonChallengeDigest,
		"token_key_id":     privacypass.ReasonUnknownKey,
	}
	valid := 0
	for _, c := range f.Cases {
		t.Run(c.Name, func(t *testing.T) {
			chal := b64(t, c.Challenge)
			// The challenge the origin sent is also in the WWW-Authenticate value.
			cs, err := privacypass.ParseWWWAuthenticate(c.WWWAuthenticate)
			if err != nil || len(cs) == 0 || !bytes.Equal(cs[0].TokenChallenge, chal) {
				t.Fatalf("www_authenticate does not carry the challenge (%v)", err)
			}
			tok, err := privacypass.ParseAuthorization(c.Authorization)
			if err != nil {
				t.Fatalf("ParseAuthorization: %v", err)
			}
			_, err = verifiers[c.Key].Verify(tok, chal)
			if c.Valid {
				if err != nil {
					t.Fatalf("valid token refused: %v", err)
				}
				valid++
				return
			}
			want, ok := reasons[c.RejectReason]
			if !ok {
				t.Fatalf("unknown reject_reason %q", c.RejectReason)
			}
			wantReason(t, err, want)
		})
	}
	if valid != 6 {
		t.Fatalf("%d valid cases accepted, want 6", valid)
	}
}
