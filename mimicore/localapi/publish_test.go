package localapi

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

const publishSuite = mls.X25519AES128GCMSHA256Ed25519

// publisher makes valid KeyPackages of the clients of one user, each with
// a binding the API issued.
type publisher struct {
	t      testing.TB
	api    *API
	user   string
	signer crypto.Signer
	pub    []byte
	bound  map[string]*binding.ClientBinding
	// extensions are the KeyPackage extensions of the KeyPackages
	// entries makes, each listed in their leaf's capabilities.
	extensions mls.Extensions
	// notAfter is the not_after of the KeyPackages entries makes, in
	// Unix seconds; 0 means a day from now.
	notAfter uint64
	// lifetime, when set, is the whole lifetime of the KeyPackages
	// entries makes, instead of an hour ago to notAfter.
	lifetime *mls.Lifetime
}

func newPublisher(t testing.TB, api *API, user string) *publisher {
	t.Helper()
	signer, pub, err := publishSuite.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	return &publisher{t: t, api: api, user: user, signer: signer, pub: pub, bound: map[string]*binding.ClientBinding{}}
}

// entries returns n KeyPackageEntries of client, the last one last-resort
// when lastResort is set.
func (p *publisher) entries(client string, n int, lastResort bool) []KeyPackageEntry {
	t := p.t
	t.Helper()
	b := p.bound[client]
	if b == nil {
		var err error
		b, err = p.api.IssueBinding(p.user, &BindingRequest{ClientURI: []byte(client), SignatureKey: p.pub})
		if err != nil {
			t.Fatal(err)
		}
		p.bound[client] = b
	}
	out := make([]KeyPackageEntry, n)
	for i := range out {
		ikm := make([]byte, 64)
		rand.Read(ikm)
		_, encPub, err := publishSuite.DeriveKeyPair(ikm[:32])
		if err != nil {
			t.Fatal(err)
		}
		_, initPub, err := publishSuite.DeriveKeyPair(ikm[32:])
		if err != nil {
			t.Fatal(err)
		}
		leaf := &mls.LeafNode{
			EncryptionKey: encPub,
			SignatureKey:  p.pub,
			Credential:    mls.Credential{Type: mls.CredentialBasic, Identity: []byte(client)},
			Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10},
				CipherSuites: []mls.CipherSuite{publishSuite}, Credentials: []mls.CredentialType{mls.CredentialBasic}},
			Source:   mls.SourceKeyPackage,
			Lifetime: mls.Lifetime{NotBefore: uint64(time.Now().Add(-time.Hour).Unix()), NotAfter: uint64(time.Now().Add(24 * time.Hour).Unix())},
		}
		if p.notAfter != 0 {
			leaf.Lifetime.NotAfter = p.notAfter
		}
		if p.lifetime != nil {
			leaf.Lifetime = *p.lifetime
		}
		for _, e := range p.extensions {
			leaf.Capabilities.Extensions = append(leaf.Capabilities.Extensions, e.Type)
		}
		if err := binding.Attach(leaf, b); err != nil {
			t.Fatal(err)
		}
		if err := leaf.Sign(publishSuite, p.signer, nil, 0); err != nil {
			t.Fatal(err)
		}
		kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: publishSuite, InitKey: initPub, LeafNode: *leaf,
			Extensions: p.extensions}
		if err := kp.Sign(p.signer); err != nil {
			t.Fatal(err)
		}
		enc, err := wire.Marshal(kp)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = KeyPackageEntry{KeyPackage: enc, LastResort: lastResort && i == n-1}
	}
	return out
}

// publish publishes entries for client and answers the refusal's code, 0
// when it succeeded.
func (p *publisher) publish(client string, entries []KeyPackageEntry) moh.Code {
	p.t.Helper()
	_, err := p.api.PublishKeyPackages(p.t.Context(), p.user, &PublishRequest{ClientURI: []byte(client), KeyPackages: entries})
	if err == nil {
		return 0
	}
	return moh.DSErrorOf(err).Code
}

// count answers how many KeyPackages client has available.
func (p *publisher) count(client string) int {
	p.t.Helper()
	l, err := p.api.ListKeyPackages(p.t.Context(), p.user, []byte(client))
	if err != nil {
		p.t.Fatal(err)
	}
	return len(l)
}

// newPublishAPI returns an API over a fresh SQLite store with cfg's
// limits and a provider key valid around now.
func newPublishAPI(t testing.TB, cfg Config) *API {
	t.Helper()
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	cfg.Domains = []string{"a.example", "b.example"}
	cfg.Store = st
	cfg.Keys = newSeedKeys(t, bytes.Repeat([]byte{1}, 32), now.Add(-time.Hour), now.Add(30*24*time.Hour))
	api, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return api
}

// TestPublishDefaultUserBound requires the default configuration to bound
// the KeyPackages one user keeps across client URIs of their own
// choosing: full batches under fresh device names stop at
// DefaultMaxKeyPackagesPerUser, and the refused batch stores nothing.
func TestPublishDefaultUserBound(t *testing.T) {
	api := newPublishAPI(t, Config{})
	p := newPublisher(t, api, "alice")
	total := 0
	for i := 0; ; i++ {
		client := fmt.Sprintf("mimi://a.example/d/alice/d%d", i)
		code := p.publish(client, p.entries(client, MaxPublish, false))
		if code != 0 {
			if code != moh.CodeQuotaExceeded {
				t.Fatalf("publish %d refused %s, want %s", i, code, moh.CodeQuotaExceeded)
			}
			if n := p.count(client); n != 0 {
				t.Fatalf("the refused publish stored %d KeyPackages", n)
			}
			break
		}
		total += MaxPublish
		if total > 8*MaxPublish {
			t.Fatalf("alice stored %d KeyPackages under %d client URIs, without bound", total, i+1)
		}
	}
}

// TestPublishBounds publishes under small bounds, request by request: the
// bound per client and per user of one provider domain, each refusal
// quota_exceeded with nothing stored, last-resort packages counted, and
// the user's clients at another domain counted apart.
func TestPublishBounds(t *testing.T) {
	api := newPublishAPI(t, Config{MaxKeyPackagesPerClient: 3, MaxKeyPackagesPerUser: 5})
	p := newPublisher(t, api, "alice")
	const (
		phone  = "mimi://a.example/d/alice/phone"
		laptop = "mimi://a.example/d/alice/laptop"
		other  = "mimi://b.example/d/alice/phone"
	)
	for _, tc := range []struct {
		name       string
		client     string
		n          int
		lastResort bool
		code       moh.Code // 0: published
		available  int      // the client's after the request
	}{
		{"phone to its bound", phone, 3, false, 0, 3},
		{"phone past its bound", phone, 1, false, moh.CodeQuotaExceeded, 3},
		{"laptop past the user's bound, refused whole", laptop, 3, false, moh.CodeQuotaExceeded, 0},
		{"laptop with a last-resort package, to the user's bound", laptop, 2, true, 0, 2},
		{"a last-resort package replacing laptop's stays within the user's bound", laptop, 1, true, 0, 2},
		{"laptop past the user's bound", laptop, 1, false, moh.CodeQuotaExceeded, 2},
		{"the user at another domain", other, 3, false, 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code := p.publish(tc.client, p.entries(tc.client, tc.n, tc.lastResort)); code != tc.code {
				t.Fatalf("publish answered code %q, want %q", code, tc.code)
			}
			if n := p.count(tc.client); n != tc.available {
				t.Fatalf("%d KeyPackages available, want %d", n, tc.available)
			}
		})
	}
}

// TestPublishLastResortExtension publishes KeyPackages that carry the
// last_resort extension of draft-ietf-mls-extensions with their entry's
// last_resort 0, as a client whose MLS library marks its last-resort
// KeyPackage so does (PROFILE §4: flagged, or carrying the extension):
// such a KeyPackage is listed last-resort, handed out claim after claim
// and never used up, and two of them for one suite in one request are
// malformed, like two flagged ones.
func TestPublishLastResortExtension(t *testing.T) {
	api := newPublishAPI(t, Config{})
	p := newPublisher(t, api, "alice")
	const client = "mimi://a.example/d/alice/phone"
	plain := p.entries(client, 1, false)
	p.extensions = mls.Extensions{{Type: mls.ExtLastResort}}
	last := p.entries(client, 1, false)
	if code := p.publish(client, append(plain, last...)); code != 0 {
		t.Fatalf("publish refused %v", code)
	}
	list, err := api.ListKeyPackages(t.Context(), "alice", []byte(client))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list {
		if want := bytes.Equal(e.KeyPackage, last[0].KeyPackage); e.LastResort != want {
			t.Fatalf("a KeyPackage listed with last_resort %v, want %v", e.LastResort, want)
		}
	}
	// The single-use KeyPackage goes first; then the one carrying the
	// extension, again and again.
	for i, want := range [][]byte{plain[0].KeyPackage, last[0].KeyPackage, last[0].KeyPackage, last[0].KeyPackage} {
		got, err := api.ClaimKeyPackages(t.Context(), "bob", &ClaimRequest{CipherSuite: uint16(publishSuite), Target: []byte(client)})
		if err != nil {
			t.Fatalf("claim %d: %v", i, err)
		}
		if len(got) != 1 || !bytes.Equal(got[0].KeyPackage, want) {
			t.Fatalf("claim %d got %d KeyPackages, want the %s one", i, len(got), map[bool]string{true: "single-use", false: "last-resort"}[i == 0])
		}
	}
	const other = "mimi://a.example/d/alice/laptop"
	for _, tc := range []struct {
		name    string
		entries []KeyPackageEntry
	}{
		{"two carrying the extension", p.entries(other, 2, false)},
		{"two carrying the extension, one of them flagged", p.entries(other, 2, true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code := p.publish(other, tc.entries); code != moh.CodeMalformed {
				t.Fatalf("publish refused %v, want %v", code, moh.CodeMalformed)
			}
		})
	}
}

// TestPublishInLastSecond publishes KeyPackages whose not_after is the
// current second: RFC 9420 and the binding check count that second in,
// but a KeyPackage is handed out only before its not_after, so it would be
// stored dead, and a last-resort one would replace the client's live one,
// leaving it none to hand out. The publish is malformed and changes
// nothing. The gateway's clock is half a second into the second the
// KeyPackages end in; the store's is the real one, never earlier.
func TestPublishInLastSecond(t *testing.T) {
	now := time.Now().Truncate(time.Second).Add(500 * time.Millisecond)
	api := newPublishAPI(t, Config{Now: func() time.Time { return now }})
	p := newPublisher(t, api, "alice")
	for _, tc := range []struct {
		name       string
		lastResort bool
	}{
		{"last-resort", true},
		{"single-use", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := "mimi://a.example/d/alice/" + tc.name
			p.notAfter = 0
			live := p.entries(client, 1, true)
			if code := p.publish(client, live); code != 0 {
				t.Fatalf("publish refused %v", code)
			}
			p.notAfter = uint64(now.Unix())
			code := p.publish(client, p.entries(client, 1, tc.lastResort))
			list, err := api.ListKeyPackages(t.Context(), "alice", []byte(client))
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 1 || !bytes.Equal(list[0].KeyPackage, live[0].KeyPackage) {
				t.Fatalf("%d KeyPackages available after the publish, want the live last-resort one alone", len(list))
			}
			if code != moh.CodeMalformed {
				t.Fatalf("publish refused %v, want %v", code, moh.CodeMalformed)
			}
		})
	}
}

// TestPublishMaxLifetime publishes KeyPackages whose lifetime (not_after -
// not_before) is at, or one second over, the longest accepted
// (Config.MaxKeyPackageLifetime, RFC 9420 §7.2): one over is refused
// malformed, saying why, and nothing is stored. Every lifetime contains
// the clock.
func TestPublishMaxLifetime(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	sec := uint64(now.Unix())
	def := uint64(mls.DefaultMaxLifetime / time.Second)
	const day = 24 * 3600
	for i, tc := range []struct {
		name     string
		max      time.Duration
		lifetime mls.Lifetime
		accepted bool
	}{
		{"default, at the maximum", 0, mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec - 3600 + def}, true},
		{"default, one second over", 0, mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec - 3600 + def + 1}, false},
		{"default, mls-rs's 365 days", 0, mls.Lifetime{NotBefore: sec, NotAfter: sec + 365*day}, true},
		{"default, a century", 0, mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec + 100*365*day}, false},
		{"default, 0 to 2^64-1", 0, mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}, false},
		{"7 days, at the maximum", 7 * day * time.Second, mls.Lifetime{NotBefore: sec - day, NotAfter: sec + 6*day}, true},
		{"7 days, one second over", 7 * day * time.Second, mls.Lifetime{NotBefore: sec - day, NotAfter: sec + 6*day + 1}, false},
		{"unlimited, 0 to 2^64-1", -1, mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := newPublishAPI(t, Config{Now: func() time.Time { return now }, MaxKeyPackageLifetime: func() time.Duration { return tc.max }})
			p := newPublisher(t, api, "alice")
			p.lifetime = &tc.lifetime
			client := fmt.Sprintf("mimi://a.example/d/alice/%d", i)
			_, err := api.PublishKeyPackages(t.Context(), "alice", &PublishRequest{ClientURI: []byte(client),
				KeyPackages: p.entries(client, 1, false)})
			t.Log(err)
			if tc.accepted {
				if err != nil {
					t.Fatalf("publish refused: %v", err)
				}
				if n := p.count(client); n != 1 {
					t.Fatalf("%d KeyPackages available, want 1", n)
				}
				return
			}
			if e := moh.DSErrorOf(err); e.Code != moh.CodeMalformed || !bytes.Contains(e.Message, []byte("is longer than the")) {
				t.Fatalf("publish answered %v, want malformed naming the lifetime", err)
			}
			if n := p.count(client); n != 0 {
				t.Fatalf("%d KeyPackages available after the refusal, want none", n)
			}
		})
	}
}
