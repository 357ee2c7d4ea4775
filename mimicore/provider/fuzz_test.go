package provider

import (
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// FuzzParsePEM feeds arbitrary key files to the key loader: it must refuse
// or return a key that signs and verifies.
func FuzzParsePEM(f *testing.F) {
	for _, scheme := range []moh.SignatureScheme{moh.SchemeEd25519, moh.SchemeECDSAP256SHA256} {
		k, err := GenerateKey(scheme, t0, t0.Add(time.Hour))
		if err != nil {
			f.Fatal(err)
		}
		pemBytes, err := k.MarshalPEM()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pemBytes)
	}
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePEM(data)
		if err != nil {
			return
		}
		sig, err := k.SignWithLabel("fuzz", data)
		if err != nil {
			t.Fatalf("loaded key cannot sign: %v", err)
		}
		pub := k.Public()
		if err := VerifyWithLabel(&pub, "fuzz", data, sig); err != nil {
			t.Fatalf("loaded key's signature does not verify: %v", err)
		}
	})
}

// FuzzValidateAuthority checks the parser of discovery answers (peer
// input): an accepted authority has a valid host and, if any, a canonical
// port.
func FuzzValidateAuthority(f *testing.F) {
	for _, s := range []string{"ds.example", "ds.example:8443", "ds.example:", "[::1]:443", "1.2.3.4", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateAuthority(s) != nil {
			return
		}
		host := s
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host = s[:i]
		}
		if !moh.ValidFQDN([]byte(host)) {
			t.Fatalf("authority %q accepted with host %q", s, host)
		}
	})
}
