package localapi

import (
	"errors"
	"testing"

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
		{"unimplemented suite", Config{Domains: []string{"a.example"}, Store: noStore{}, Keys: seedKeys{}, Suites: []mls.CipherSuite{4}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
