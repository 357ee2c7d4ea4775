package provider

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

func benchKey(b *testing.B, scheme moh.SignatureScheme) *PrivateKey {
	k, err := GenerateKey(scheme, t0.Add(-time.Hour), t0.Add(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	return k
}

func benchRequest() *moh.ProviderRequest {
	return &moh.ProviderRequest{
		RequestType: moh.GroupKeyPackages, Sender: []byte("a.example"), Recipient: []byte("b.example"),
		Timestamp: uint64(t0.Unix()), RequestID: make([]byte, 16), Payload: make([]byte, 256),
	}
}

func BenchmarkSignRequest(b *testing.B) {
	for _, scheme := range []moh.SignatureScheme{moh.SchemeEd25519, moh.SchemeECDSAP256SHA256} {
		k := benchKey(b, scheme)
		b.Run(schemeName(scheme), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := SignRequest(benchRequest(), k); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyRequest measures the receiver's checks 1-7 with the
// sender's key already cached.
func BenchmarkVerifyRequest(b *testing.B) {
	for _, scheme := range []moh.SignatureScheme{moh.SchemeEd25519, moh.SchemeECDSAP256SHA256} {
		k := benchKey(b, scheme)
		raw, err := SignRequest(benchRequest(), k)
		if err != nil {
			b.Fatal(err)
		}
		v := &Verifier{Domains: []string{"b.example"}, Keys: staticKeys{"a.example": {k.Public()}},
			Now: func() time.Time { return t0 }}
		ctx := context.Background()
		b.Run(schemeName(scheme), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(ctx, raw, moh.GroupKeyPackages); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func schemeName(s moh.SignatureScheme) string {
	if s == moh.SchemeEd25519 {
		return "ed25519"
	}
	return "p256"
}
