package localapi

import (
	"bytes"
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// fixedPeer is a PeerKeyPackages that answers every claim with kps.
type fixedPeer struct{ kps [][]byte }

func (p fixedPeer) ClaimUser(context.Context, string, string, []byte) ([][]byte, error) {
	return p.kps, nil
}

func (p fixedPeer) ClaimClient(context.Context, string, string, []byte) ([][]byte, error) {
	return p.kps, nil
}

// peerKeyPackage encodes a KeyPackage of suite for identity with an
// extension of extra bytes; it decodes, it does not verify.
func peerKeyPackage(t *testing.T, suite mls.CipherSuite, identity string, extra int) []byte {
	t.Helper()
	return peerKeyPackageLifetime(t, suite, identity, extra, mls.Lifetime{NotBefore: 1<<40 - 84*24*3600, NotAfter: 1 << 40})
}

// peerKeyPackageLifetime is peerKeyPackage with the leaf lifetime lt.
func peerKeyPackageLifetime(t *testing.T, suite mls.CipherSuite, identity string, extra int, lt mls.Lifetime) []byte {
	t.Helper()
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: suite, InitKey: make([]byte, 32),
		LeafNode: mls.LeafNode{EncryptionKey: make([]byte, 32), SignatureKey: make([]byte, 32),
			Credential: mls.Credential{Type: mls.CredentialBasic, Identity: []byte(identity)},
			Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{suite},
				Credentials: []mls.CredentialType{mls.CredentialBasic}},
			Source: mls.SourceKeyPackage, Lifetime: lt, Signature: make([]byte, 64)},
		Signature: make([]byte, 64)}
	if extra > 0 {
		kp.Extensions = mls.Extensions{{Type: 0xff00, Data: make([]byte, extra)}}
	}
	enc, err := wire.Marshal(kp)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// TestClaimRemoteSkipsOversizedKeyPackages requires a peer's KeyPackage
// outside the 1..MaxKeyPackageLen bytes of a KeyPackageEntry (§10.4) to
// be left out of the answer, and logged, so that the others reach the
// client in an answer its decoder takes.
func TestClaimRemoteSkipsOversizedKeyPackages(t *testing.T) {
	suite := mls.X25519AES128GCMSHA256Ed25519
	small := peerKeyPackage(t, suite, "mimi://b.example/d/bob/phone", 0)
	big := peerKeyPackage(t, suite, "mimi://b.example/d/bob/laptop", MaxKeyPackageLen)
	core, logs := observer.New(zapcore.WarnLevel)
	api, err := New(Config{Domains: []string{"a.example"}, Store: noStore{}, Keys: seedKeys{},
		Peers: fixedPeer{kps: [][]byte{big, small}}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, target string }{
		{"user", "mimi://b.example/u/bob"},
		{"client", "mimi://b.example/d/bob/laptop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			list, err := api.ClaimKeyPackages(context.Background(), "alice", &ClaimRequest{CipherSuite: uint16(suite), Target: []byte(tc.target)})
			if err != nil {
				t.Fatal(err)
			}
			ans, err := wire.Marshal(&KeyPackageList{KeyPackages: list})
			if err != nil {
				t.Fatal(err)
			}
			var back KeyPackageList
			if err := wire.Unmarshal(ans, &back, "KeyPackageList"); err != nil {
				t.Fatalf("the answer of %d entries does not decode: %v", len(list), err)
			}
			if len(back.KeyPackages) != 1 || string(back.KeyPackages[0].KeyPackage) != string(small) {
				t.Errorf("answered %d KeyPackages, want the small one only", len(back.KeyPackages))
			}
		})
	}
	if n := logs.FilterMessage("skipped a peer's KeyPackage outside the size a KeyPackageEntry holds").Len(); n != 2 {
		t.Errorf("%d warnings of a skipped KeyPackage, want 2", n)
	}
}

// TestClaimRemoteSkipsOverlongKeyPackages requires a peer's KeyPackage
// whose lifetime is longer than Config.MaxKeyPackageLifetime to be left
// out of the answer, and logged: a Delivery Service with the same maximum
// refuses the commit that would add it.
func TestClaimRemoteSkipsOverlongKeyPackages(t *testing.T) {
	suite := mls.X25519AES128GCMSHA256Ed25519
	def := uint64(mls.DefaultMaxLifetime / time.Second)
	const nb = 1_790_000_000
	for _, tc := range []struct {
		name string
		max  time.Duration
		lt   mls.Lifetime
		kept bool
	}{
		{"default, at the maximum", 0, mls.Lifetime{NotBefore: nb, NotAfter: nb + def}, true},
		{"default, one second over", 0, mls.Lifetime{NotBefore: nb, NotAfter: nb + def + 1}, false},
		{"default, 0 to 2^64-1", 0, mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}, false},
		{"unlimited, 0 to 2^64-1", -1, mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kp := peerKeyPackageLifetime(t, suite, "mimi://b.example/d/bob/phone", 0, tc.lt)
			core, logs := observer.New(zapcore.WarnLevel)
			api, err := New(Config{Domains: []string{"a.example"}, Store: noStore{}, Keys: seedKeys{},
				Peers: fixedPeer{kps: [][]byte{kp}}, Logger: zap.New(core), MaxKeyPackageLifetime: func() time.Duration { return tc.max }})
			if err != nil {
				t.Fatal(err)
			}
			list, err := api.ClaimKeyPackages(context.Background(), "alice", &ClaimRequest{CipherSuite: uint16(suite),
				Target: []byte("mimi://b.example/u/bob")})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(list) == 1; got != tc.kept {
				t.Fatalf("answered %d KeyPackages, want it kept %v", len(list), tc.kept)
			}
			want := 1
			if tc.kept {
				want = 0
			}
			if n := logs.FilterMessage("skipped a peer's KeyPackage whose lifetime is longer than accepted").Len(); n != want {
				t.Fatalf("%d warnings of a skipped KeyPackage, want %d", n, want)
			}
		})
	}
}

// TestClaimLocalDropsOverlongKeyPackages publishes KeyPackages under a
// maximum lifetime of 3650 days, then lowers it to the default: a claim
// (by client and by user) no longer hands out the ones whose lifetime is
// longer. A single-use one is consumed and the client's next one handed
// out instead; a last-resort one is skipped and stays available. Before,
// the directory handed out whatever it held, and the Delivery Service
// refused the commit that added it.
func TestClaimLocalDropsOverlongKeyPackages(t *testing.T) {
	maxLifetime := 3650 * 24 * time.Hour
	now := time.Now()
	api := newPublishAPI(t, Config{MaxKeyPackageLifetime: func() time.Duration { return maxLifetime }})
	p := newPublisher(t, api, "bob")
	// Over 366 days in total, ending before the usable ones, so that a
	// claim takes it first.
	long := &mls.Lifetime{NotBefore: uint64(now.Add(-400 * 24 * time.Hour).Unix()), NotAfter: uint64(now.Add(time.Hour).Unix())}
	publish := func(client string, lt *mls.Lifetime, lastResort bool) []byte {
		t.Helper()
		p.lifetime = lt
		e := p.entries(client, 1, lastResort)
		if code := p.publish(client, e); code != 0 {
			t.Fatalf("publishing for %s: %v", client, code)
		}
		return e[0].KeyPackage
	}
	const (
		phone  = "mimi://a.example/d/bob/phone"
		laptop = "mimi://a.example/d/bob/laptop"
		tablet = "mimi://a.example/d/bob/tablet"
	)
	publish(phone, long, false)
	phoneGood := publish(phone, nil, false)
	publish(laptop, long, true)
	publish(tablet, long, false)
	tabletGood := publish(tablet, nil, false)
	maxLifetime = 0 // the default, 366 days

	claim := func(target string) []KeyPackageEntry {
		t.Helper()
		list, err := api.ClaimKeyPackages(t.Context(), "alice", &ClaimRequest{CipherSuite: uint16(publishSuite), Target: []byte(target)})
		if err != nil {
			t.Fatalf("claiming %s: %v", target, err)
		}
		return list
	}
	if got := claim(phone); len(got) != 1 || !bytes.Equal(got[0].KeyPackage, phoneGood) {
		t.Fatalf("claiming the phone answered %d KeyPackages, want its usable one", len(got))
	}
	if n := p.count(phone); n != 0 {
		t.Fatalf("the phone has %d KeyPackages left, want none: the over-long one is consumed", n)
	}
	if got := claim(laptop); len(got) != 0 {
		t.Fatalf("claiming the laptop answered %d KeyPackages, want none: its last-resort one is too long", len(got))
	}
	if n := p.count(laptop); n != 1 {
		t.Fatalf("the laptop has %d KeyPackages left, want its last-resort one", n)
	}
	if got := claim("mimi://a.example/u/bob"); len(got) != 1 || !bytes.Equal(got[0].KeyPackage, tabletGood) {
		t.Fatalf("claiming bob answered %d KeyPackages, want the tablet's usable one", len(got))
	}
}
