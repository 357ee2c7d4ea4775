package privacypass_test

import (
	"context"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// benchVerify mints a token with k and verifies it with vk (k itself, or its
// public part for publicly verifiable types).
func benchVerify(b *testing.B, k, vk *privacypass.Key) {
	o := newOrigin(b, privacypass.OriginConfig{Keys: []*privacypass.Key{k}})
	c := challengeFor(b, o, k.Type())
	tok := mint(b, k, c.TokenChallenge)
	v, err := privacypass.NewVerifier(vk)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok, c.TokenChallenge); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyType2: key lookup, digest and RSASSA-PSS verification.
func BenchmarkVerifyType2(b *testing.B) { k, _, _ := testKeys(b); benchVerify(b, k, k.Public()) }

// BenchmarkVerifyType1: key lookup, digest and VOPRF evaluation.
func BenchmarkVerifyType1(b *testing.B) { _, k, _ := testKeys(b); benchVerify(b, k, k) }

func BenchmarkParseAuthorization(b *testing.B) {
	k, _, _ := testKeys(b)
	tok := mint(b, k, []byte{0, 2, 0, 1, 'i', 0, 0, 0})
	h := privacypass.FormatAuthorization(tok)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := privacypass.ParseAuthorization(h); err != nil {
			b.Fatal(err)
		}
	}
}

// benchRedeem measures Origin.Redeem end to end: header parsing, token
// decoding, key lookup, challenge check, authenticator verification and the
// double-spend write to the in-test store. Tokens are minted beforehand,
// outside the timer, in batches; issuance costs ~100x a redemption, so run
// these with a fixed count, e.g. -bench Redeem -benchtime 2000x.
func benchRedeem(b *testing.B, k *privacypass.Key, mode privacypass.ContextMode) {
	o := newOrigin(b, privacypass.OriginConfig{Keys: []*privacypass.Key{k}, Mode: mode})
	c := challengeFor(b, o, k.Type())
	is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k})
	if err != nil {
		b.Fatal(err)
	}
	var batch []string
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if len(batch) == 0 {
			b.StopTimer()
			for i := 0; i < 64; i++ {
				p, err := privacypass.NewTokenRequest(c.TokenChallenge, k.Public())
				if err != nil {
					b.Fatal(err)
				}
				resp, err := is.Issue(p.Request)
				if err != nil {
					b.Fatal(err)
				}
				tok, err := p.Finalize(resp)
				if err != nil {
					b.Fatal(err)
				}
				batch = append(batch, privacypass.FormatAuthorization(tok))
			}
			b.StartTimer()
		}
		h := batch[len(batch)-1]
		batch = batch[:len(batch)-1]
		if _, err := o.Redeem(ctx, h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedeemType2Random(b *testing.B) {
	k, _, _ := testKeys(b)
	benchRedeem(b, k, privacypass.ContextRandom)
}
func BenchmarkRedeemType2Window(b *testing.B) {
	k, _, _ := testKeys(b)
	benchRedeem(b, k, privacypass.ContextWindow)
}
func BenchmarkRedeemType1Random(b *testing.B) {
	_, k, _ := testKeys(b)
	benchRedeem(b, k, privacypass.ContextRandom)
}

func benchIssue(b *testing.B, k *privacypass.Key) {
	is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k})
	if err != nil {
		b.Fatal(err)
	}
	chal := []byte{0, byte(k.Type()), 0, 1, 'i', 0, 0, 0}
	p, err := privacypass.NewTokenRequest(chal, k.Public())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := is.Issue(p.Request); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIssueType2(b *testing.B) { k, _, _ := testKeys(b); benchIssue(b, k) }
func BenchmarkIssueType1(b *testing.B) { _, k, _ := testKeys(b); benchIssue(b, k) }

func BenchmarkChallenges(b *testing.B) {
	k, _, _ := testKeys(b)
	for _, mode := range []privacypass.ContextMode{privacypass.ContextRandom, privacypass.ContextWindow} {
		b.Run(mode.String(), func(b *testing.B) {
			o := newOrigin(b, privacypass.OriginConfig{Keys: []*privacypass.Key{k}, Mode: mode, MaxChallenges: 1 << 16})
			b.ReportAllocs()
			for b.Loop() {
				if _, err := o.WWWAuthenticate(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
