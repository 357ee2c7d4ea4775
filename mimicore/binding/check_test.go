package binding

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

const (
	alicePhone  = "mimi://a.example/d/alice/phone"
	aliceLaptop = "mimi://a.example/d/alice/laptop"
	bobPhone    = "mimi://b.example/d/bob/phone"
)

// wantRefusal checks that err is an *Error of kind want (nil: success)
// whose DSError carries code.
func wantRefusal(t *testing.T, err error, want error, code moh.Code) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("check failed: %v", err)
		}
		return
	}
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, want) || e.Kind != want {
		t.Fatalf("err = %v, want an *Error of kind %q", err, want)
	}
	if e.Code() != code || e.DSError().Code != code {
		t.Fatalf("code = %v, DSError code %v, want %v", e.Code(), e.DSError().Code, code)
	}
	if msg := e.DSError().Message; !strings.HasPrefix(msg, want.Error()) {
		t.Fatalf("DSError message %q does not name the reason", msg)
	}
}

// TestIssueThenCheck issues bindings with a real key ring of each scheme and
// checks leaves that carry them, tampered in every way the binding covers.
func TestIssueThenCheck(t *testing.T) {
	for name, scheme := range map[string]moh.SignatureScheme{"ed25519": moh.SchemeEd25519, "p256": moh.SchemeECDSAP256SHA256} {
		t.Run(name, func(t *testing.T) { testIssueThenCheck(t, scheme) })
	}
}

func testIssueThenCheck(t *testing.T, scheme moh.SignatureScheme) {
	now := time.Now().Truncate(time.Second)
	ring := openRing(t, scheme, now.Add(-time.Hour))
	own, err := ring.Current(now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := provider.GenerateKey(scheme, now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	iss := &Issuer{Domains: []string{"a.example"}, Keys: ring, Now: func() time.Time { return now }}
	notAfter := now.Add(time.Hour)
	issue := func(uri string, sigKey []byte) *ClientBinding {
		b, err := iss.Issue([]byte(uri), sigKey, notAfter)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// signedBy signs a binding for the leaf as it is with key, under keyID.
	signedBy := func(key *provider.PrivateKey, keyID []byte) func(*mls.LeafNode) *ClientBinding {
		return func(l *mls.LeafNode) *ClientBinding {
			tbs, err := SignedContent(l.Credential.Identity, l.SignatureKey, uint64(notAfter.Unix()))
			if err != nil {
				t.Fatal(err)
			}
			sig, err := key.SignWithLabel(Label, tbs)
			if err != nil {
				t.Fatal(err)
			}
			return &ClientBinding{NotAfter: uint64(notAfter.Unix()), KeyID: keyID, Signature: sig}
		}
	}
	bound := func(l *mls.LeafNode) *ClientBinding { return issue(string(l.Credential.Identity), l.SignatureKey) }

	for _, tc := range []struct {
		name string
		uri  string
		bind func(*mls.LeafNode) *ClientBinding // nil: no binding
		edit func(*mls.LeafNode)                // after binding, before signing the leaf
		at   time.Time
		want error
		code moh.Code
	}{
		{name: "issued", uri: alicePhone, bind: bound, at: now},
		{name: "valid through not_after", uri: alicePhone, bind: bound, at: notAfter},
		{name: "valid from the key's not_before", uri: alicePhone, bind: bound, at: own.NotBefore},
		{name: "tampered URI", uri: alicePhone, bind: bound, at: now,
			edit: func(l *mls.LeafNode) { l.Credential.Identity = []byte(aliceLaptop) },
			want: ErrBadSignature, code: moh.CodeBadSignature},
		{name: "tampered signature key", uri: alicePhone, at: now,
			bind: func(l *mls.LeafNode) *ClientBinding { return issue(alicePhone, bytes.Repeat([]byte{7}, 32)) },
			want: ErrBadSignature, code: moh.CodeBadSignature},
		{name: "tampered not_after", uri: alicePhone, at: now,
			bind: func(l *mls.LeafNode) *ClientBinding { b := bound(l); b.NotAfter++; return b },
			want: ErrBadSignature, code: moh.CodeBadSignature},
		{name: "tampered signature", uri: alicePhone, at: now,
			bind: func(l *mls.LeafNode) *ClientBinding { b := bound(l); b.Signature[5] ^= 1; return b },
			want: ErrBadSignature, code: moh.CodeBadSignature},
		{name: "another provider's key under our key id", uri: alicePhone, at: now,
			bind: signedBy(other, own.ID), want: ErrBadSignature, code: moh.CodeBadSignature},
		{name: "another provider's key under its own id", uri: alicePhone, at: now,
			bind: signedBy(other, other.ID), want: ErrUnknownKey, code: moh.CodeUnknownKey},
		{name: "unknown key id", uri: alicePhone, at: now,
			bind: signedBy(own, bytes.Repeat([]byte{0x77}, 16)), want: ErrUnknownKey, code: moh.CodeUnknownKey},
		{name: "before the key's validity", uri: alicePhone, bind: bound, at: own.NotBefore.Add(-time.Second),
			want: ErrUnknownKey, code: moh.CodeUnknownKey},
		{name: "expired", uri: alicePhone, bind: bound, at: notAfter.Add(time.Second),
			want: ErrExpired, code: moh.CodeForbidden},
		{name: "missing extension", uri: alicePhone, at: now, want: ErrMissing, code: moh.CodeForbidden},
		{name: "malformed extension", uri: alicePhone, at: now,
			edit: func(l *mls.LeafNode) {
				l.Extensions = mls.Extensions{{Type: ExtensionType, Data: []byte{1, 2, 3}}}
				l.Capabilities.Extensions = []mls.ExtensionType{ExtensionType}
			},
			want: ErrMalformed, code: moh.CodeMalformed},
		{name: "user URI", uri: "mimi://a.example/u/alice", bind: signedBy(own, own.ID), at: now,
			want: ErrBadClientURI, code: moh.CodeMalformed},
		{name: "not a URI", uri: "alice", at: now, bind: signedBy(own, own.ID),
			want: ErrBadClientURI, code: moh.CodeMalformed},
		{name: "uppercase provider", uri: "mimi://A.example/d/alice/phone", at: now, bind: signedBy(own, own.ID),
			want: ErrBadClientURI, code: moh.CodeMalformed},
		{name: "x509 credential", uri: alicePhone, bind: bound, at: now,
			edit: func(l *mls.LeafNode) {
				l.Credential = mls.Credential{Type: mls.CredentialX509, Certificates: [][]byte{[]byte(alicePhone)}}
				l.Capabilities.Credentials = []mls.CredentialType{mls.CredentialX509}
			},
			want: ErrBadClientURI, code: moh.CodeMalformed},
		{name: "remote provider without a key source", uri: bobPhone, at: now,
			bind: signedBy(other, other.ID), want: ErrUnknownKey, code: moh.CodeUnknownKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, tc.uri, func(l *mls.LeafNode) *ClientBinding {
				var b *ClientBinding
				if tc.bind != nil {
					b = tc.bind(l)
				}
				if tc.edit != nil {
					if b != nil {
						if err := Attach(l, b); err != nil {
							t.Fatal(err)
						}
					}
					tc.edit(l)
					return nil
				}
				return b
			})
			c.keyPackage(t) // the mls package accepts the leaf as it is
			chk := &Checker{Domains: []string{"a.example"}, Local: ring}
			got, err := chk.CheckLeafNode(t.Context(), c.leaf, tc.at, provider.LookupOptions{})
			wantRefusal(t, err, tc.want, tc.code)
			if tc.want == nil {
				if got.ClientURI != tc.uri || got.Provider != "a.example" || !got.NotAfter.Equal(notAfter) ||
					!bytes.Equal(got.KeyID, own.ID) {
					t.Fatalf("Bound = %+v", got)
				}
			}
			off := &Checker{Unchecked: true}
			if got, err := off.CheckLeafNode(t.Context(), c.leaf, tc.at, provider.LookupOptions{}); got != nil || err != nil {
				t.Fatalf("unchecked: %+v, %v", got, err)
			}
		})
	}
}

func TestIssueRefuses(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	ring := openRing(t, moh.SchemeEd25519, now)
	iss := &Issuer{Domains: []string{"a.example", "a2.example"}, Keys: ring, Now: func() time.Time { return now }}
	key := bytes.Repeat([]byte{1}, 32)
	for _, tc := range []struct {
		name     string
		uri      string
		key      []byte
		notAfter time.Time
		want     error
	}{
		{"another provider's client", bobPhone, key, now.Add(time.Hour), ErrNotOwnProvider},
		{"a user URI", "mimi://a.example/u/alice", key, now.Add(time.Hour), moh.ErrBadClientURI},
		{"not a URI", "alice", key, now.Add(time.Hour), moh.ErrBadClientURI},
		{"a provider that is a suffix", "mimi://example/d/alice/phone", key, now.Add(time.Hour), ErrNotOwnProvider},
		{"empty signature key", alicePhone, nil, now.Add(time.Hour), nil},
		{"not_after in the past", alicePhone, key, now.Add(-time.Second), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := iss.Issue([]byte(tc.uri), tc.key, tc.notAfter)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Issue = %+v, %v; want %v", b, err, tc.want)
			}
		})
	}
	if _, err := iss.Issue([]byte("mimi://a2.example/d/alice/phone"), key, now); err != nil {
		t.Fatalf("second own domain, not_after now: %v", err)
	}
	// Late in the second of not_after, which a binding covers whole
	// (mimi_local's /bindings checked that not_after is after the second
	// before, an instant earlier; refusing it here was a 503 to the client).
	late := &Issuer{Domains: []string{"a.example"}, Keys: ring, Now: func() time.Time { return now.Add(999 * time.Millisecond) }}
	if _, err := late.Issue([]byte(alicePhone), key, now); err != nil {
		t.Fatalf("not_after the current second, late in it: %v", err)
	}
}

// TestIssueCapsNotAfter checks that a binding never outlives its key.
func TestIssueCapsNotAfter(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	k, err := provider.GenerateKey(moh.SchemeEd25519, now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	iss := &Issuer{Domains: []string{"a.example"}, Keys: oneKey{k}, Now: func() time.Time { return now }}
	b, err := iss.Issue([]byte(alicePhone), []byte{1}, now.Add(30*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if b.NotAfter != uint64(k.NotAfter.Unix()) {
		t.Fatalf("not_after = %d, want the key's %d", b.NotAfter, k.NotAfter.Unix())
	}
	b, err = iss.Issue([]byte(alicePhone), []byte{1}, now.Add(time.Minute+999*time.Millisecond))
	if err != nil || b.NotAfter != uint64(now.Add(time.Minute).Unix()) {
		t.Fatalf("not_after = %d, %v; want it rounded down to %d", b.NotAfter, err, now.Add(time.Minute).Unix())
	}
}

// TestVerify checks a binding that arrives without its leaf.
func TestVerify(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	ring := openRing(t, moh.SchemeEd25519, now.Add(-time.Hour))
	iss := &Issuer{Domains: []string{"a.example"}, Keys: ring, Now: func() time.Time { return now }}
	key := bytes.Repeat([]byte{9}, 32)
	b, err := iss.Issue([]byte(alicePhone), key, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	chk := &Checker{Domains: []string{"a.example"}, Local: ring}
	for _, tc := range []struct {
		name string
		uri  string
		key  []byte
		want error
		code moh.Code
	}{
		{name: "as issued", uri: alicePhone, key: key},
		{name: "another client", uri: aliceLaptop, key: key, want: ErrBadSignature, code: moh.CodeBadSignature},
		{name: "another key", uri: alicePhone, key: key[1:], want: ErrBadSignature, code: moh.CodeBadSignature},
		{name: "not a client URI", uri: "mimi://a.example/u/alice", key: key, want: ErrBadClientURI, code: moh.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := chk.Verify(t.Context(), []byte(tc.uri), tc.key, b, now, provider.LookupOptions{})
			wantRefusal(t, err, tc.want, tc.code)
			if tc.want == nil && (got.ClientURI != alicePhone || got.Provider != "a.example") {
				t.Fatalf("Bound = %+v", got)
			}
		})
	}
}
