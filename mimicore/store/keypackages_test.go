package store

import (
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestUsableKeyPackages checks the claim filter the Delivery Service and
// the local API pass to ClaimKeyPackages: a KeyPackage whose lifetime has
// ended, or is longer in total than the maximum (none when zero or less),
// and bytes that do not decode as a KeyPackage are refused.
func TestUsableKeyPackages(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	sec := uint64(now.Unix())
	const day = 24 * 3600
	year := 366 * 24 * time.Hour
	encode := func(lt mls.Lifetime) []byte {
		t.Helper()
		suite := mls.X25519AES128GCMSHA256Ed25519
		enc, err := wire.Marshal(&mls.KeyPackage{Version: mls.MLS10, CipherSuite: suite, InitKey: make([]byte, 32),
			LeafNode: mls.LeafNode{EncryptionKey: make([]byte, 32), SignatureKey: make([]byte, 32),
				Credential: mls.Credential{Type: mls.CredentialBasic, Identity: []byte("mimi://a.example/d/bob/phone")},
				Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{suite},
					Credentials: []mls.CredentialType{mls.CredentialBasic}},
				Source: mls.SourceKeyPackage, Lifetime: lt, Signature: make([]byte, 64)},
			Signature: make([]byte, 64)})
		if err != nil {
			t.Fatal(err)
		}
		return enc
	}
	for _, tc := range []struct {
		name   string
		kp     []byte
		max    time.Duration
		usable bool
	}{
		{"within its lifetime and the maximum", encode(mls.Lifetime{NotBefore: sec - day, NotAfter: sec + 30*day}), year, true},
		{"at the maximum", encode(mls.Lifetime{NotBefore: sec - day, NotAfter: sec - day + 366*day}), year, true},
		{"one second over the maximum", encode(mls.Lifetime{NotBefore: sec - day, NotAfter: sec - day + 366*day + 1}), year, false},
		{"over the maximum, none set", encode(mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}), 0, true},
		{"over the maximum, unlimited", encode(mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}), -1, true},
		{"ending now", encode(mls.Lifetime{NotBefore: sec - day, NotAfter: sec}), year, true},
		{"ended a second ago", encode(mls.Lifetime{NotBefore: sec - day, NotAfter: sec - 1}), year, false},
		{"not a KeyPackage", []byte("keypackage:old"), year, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := UsableKeyPackages(now, tc.max)(KeyPackage{KeyPackage: tc.kp}); got != tc.usable {
				t.Fatalf("usable = %v, want %v", got, tc.usable)
			}
		})
	}
}
