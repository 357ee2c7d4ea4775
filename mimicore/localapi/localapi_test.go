package localapi

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

func TestAuthorize(t *testing.T) {
	api, err := New(Config{Domains: []string{"a.example", "b.example"}, Store: noStore{}, Keys: seedKeys{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user, uri string
		code            moh.Code // 0: allowed
	}{
		{"own client", "alice", "mimi://a.example/d/alice/phone", 0},
		{"second domain", "alice", "mimi://b.example/d/alice/phone", 0},
		{"another user", "alice", "mimi://a.example/d/bob/phone", moh.CodeForbidden},
		{"user prefix", "ali", "mimi://a.example/d/alice/phone", moh.CodeForbidden},
		{"case differs", "Alice", "mimi://a.example/d/alice/phone", moh.CodeForbidden},
		{"another provider", "alice", "mimi://c.example/d/alice/phone", moh.CodeForbidden},
		{"no user", "", "mimi://a.example/d/alice/phone", moh.CodeForbidden},
		{"user URI", "alice", "mimi://a.example/u/alice", moh.CodeMalformed},
		{"uppercase URI", "alice", "mimi://a.example/d/Alice/phone", moh.CodeMalformed},
		{"extra segment", "alice", "mimi://a.example/d/alice/phone/x", moh.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := api.Authorize(tc.user, []byte(tc.uri))
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var e *moh.Error
			if !errors.As(err, &e) || e.Code != tc.code {
				t.Fatalf("got %v, want code %s", err, tc.code)
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no domains", Config{Store: noStore{}, Keys: seedKeys{}}},
		{"no store", Config{Domains: []string{"a.example"}, Keys: seedKeys{}}},
		{"no keys", Config{Domains: []string{"a.example"}, Store: noStore{}}},
		{"negative lifetime", Config{Domains: []string{"a.example"}, Store: noStore{}, Keys: seedKeys{}, MaxBindingLifetime: -1}},
		{"negative KeyPackages per client", Config{Domains: []string{"a.example"}, Store: noStore{}, Keys: seedKeys{}, MaxKeyPackagesPerClient: -1}},
		{"KeyPackages per client above a list", Config{Domains: []string{"a.example"}, Store: noStore{}, Keys: seedKeys{}, MaxKeyPackagesPerClient: MaxPublish + 1}},
		{"negative KeyPackages per user", Config{Domains: []string{"a.example"}, Store: noStore{}, Keys: seedKeys{}, MaxKeyPackagesPerUser: -1}},
		{"unimplemented suite", Config{Domains: []string{"a.example"}, Store: noStore{}, Keys: seedKeys{}, Suites: []mls.CipherSuite{4}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// TestIssueBindingNotAfter checks IssueBinding's not_after against a clock
// in the middle of a second: the current second and earlier ones are
// malformed (the current one was answered backend_unavailable, from the
// issuer's finer check), the next second is kept, and 0 asks for the cap.
func TestIssueBindingNotAfter(t *testing.T) {
	nb := time.Unix(1_790_000_000, 0)
	now := nb.Add(time.Minute + 500*time.Millisecond)
	api, err := New(Config{
		Domains: []string{"a.example"}, Store: noStore{},
		Keys:               newSeedKeys(t, bytes.Repeat([]byte{1}, 32), nb, nb.Add(30*24*time.Hour)),
		Now:                func() time.Time { return now },
		MaxBindingLifetime: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	uri := []byte("mimi://a.example/d/alice/phone")
	leafKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	sec := uint64(now.Unix())
	for _, tc := range []struct {
		name     string
		notAfter uint64
		want     uint64 // 0: refused malformed
	}{
		{"the second before", sec - 1, 0},
		{"the current second", sec, 0},
		{"the next second", sec + 1, sec + 1},
		{"the cap", 0, uint64(now.Add(time.Hour).Unix())},
		{"beyond the cap", sec + 7200, uint64(now.Add(time.Hour).Unix())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := api.IssueBinding("alice", &BindingRequest{ClientURI: uri, SignatureKey: leafKey, NotAfter: tc.notAfter})
			if tc.want == 0 {
				if code := moh.DSErrorOf(err).Code; code != moh.CodeMalformed {
					t.Fatalf("not_after %d: %v (code %s), want malformed", tc.notAfter, err, code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.NotAfter != tc.want {
				t.Fatalf("not_after %d, want %d", b.NotAfter, tc.want)
			}
		})
	}
}
