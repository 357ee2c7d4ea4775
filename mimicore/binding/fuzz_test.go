package binding

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// FuzzDecode feeds arbitrary extension data to the decoder (peer input): it
// must refuse, or accept a binding within the limits whose encoding is the
// input again (the encoding is canonical, so nothing is silently lost).
func FuzzDecode(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, 1, 0xaa, 1, 0xbb})
	f.Add(append([]byte{0, 0, 0, 0, 0x6a, 0xb1, 0x3b, 0xbc, 0x10}, make([]byte, 16+1+64)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data)
		if err != nil {
			return
		}
		if len(b.KeyID) == 0 || len(b.KeyID) > MaxKeyIDLen || len(b.Signature) == 0 || len(b.Signature) > MaxSignatureLen {
			t.Fatalf("accepted out-of-limit binding %+v", b)
		}
		enc, err := wire.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, data) {
			t.Fatalf("re-encoding %x gives %x", data, enc)
		}
	})
}

// FuzzCheckLeafNode puts arbitrary extension data into a real leaf of an
// own client and checks it with real local keys: the check must refuse
// every value but the binding the provider issued (an Ed25519 signature is
// unique for its message, and every other field is signed), and refuse
// with an *Error.
func FuzzCheckLeafNode(f *testing.F) {
	now := time.Now().Truncate(time.Second)
	ring := openRing(f, moh.SchemeEd25519, now.Add(-time.Hour))
	iss := &Issuer{Domains: []string{"a.example"}, Keys: ring, Now: func() time.Time { return now }}
	c := newClient(f, alicePhone, nil)
	issued, err := iss.Issue(c.leaf.Credential.Identity, c.leaf.SignatureKey, now.Add(time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	valid, err := wire.Marshal(issued)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)-1])
	f.Add([]byte{})
	chk := &Checker{Domains: []string{"a.example"}, Local: ring}
	f.Fuzz(func(t *testing.T, data []byte) {
		leaf := *c.leaf
		leaf.Extensions = mls.Extensions{{Type: ExtensionType, Data: data}}
		_, err := chk.CheckLeafNode(t.Context(), &leaf, now, provider.LookupOptions{})
		if err == nil {
			if !bytes.Equal(data, valid) {
				t.Fatalf("accepted %x, which is not the issued binding", data)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("refusal is not an *Error: %v", err)
		}
	})
}

// FuzzIssueVerify is the round trip of issuing: for any user, device,
// signature key and lifetime, Issue refuses exactly the URIs that are not
// client URIs and the empty key, and a binding it issues encodes into
// extension data that Decode gives back, verifies for its URI and key at
// every second up to its not_after (never after the signing key's), and is
// refused a second later, for another key, and for the same user and
// device at another provider.
func FuzzIssueVerify(f *testing.F) {
	now := time.Now().Truncate(time.Second)
	ring := openRing(f, moh.SchemeEd25519, now.Add(-time.Hour))
	key, err := ring.Current(now)
	if err != nil {
		f.Fatal(err)
	}
	iss := &Issuer{Domains: []string{"a.example"}, Keys: ring, Now: func() time.Time { return now }}
	chk := &Checker{Domains: []string{"a.example"}, Local: ring}
	f.Add("alice", "phone", []byte{1, 2, 3}, uint32(3600))
	f.Add("Alice", "phone", []byte{1}, uint32(0))
	f.Add("alice", "phone/", []byte{1}, uint32(1))
	f.Add("al%69ce", "phone", []byte{1}, uint32(1))
	f.Add("..", "-", []byte{}, uint32(1<<31))
	f.Fuzz(func(t *testing.T, user, device string, sigKey []byte, lifetime uint32) {
		uri := []byte(moh.ClientURI("a.example", user, device))
		b, err := iss.Issue(uri, sigKey, now.Add(time.Duration(lifetime)*time.Second))
		_, _, _, perr := moh.ParseClientURI(uri)
		if perr != nil || len(sigKey) == 0 {
			if err == nil {
				t.Fatalf("issued a binding for %q, key %x", uri, sigKey)
			}
			return
		}
		if err != nil {
			t.Fatalf("refused a binding for %q: %v", uri, err)
		}
		if b.NotAfter < uint64(now.Unix()) || b.NotAfter > uint64(key.NotAfter.Unix()) {
			t.Fatalf("not_after %d outside [now %d, key end %d]", b.NotAfter, now.Unix(), key.NotAfter.Unix())
		}
		ext, err := b.Extension()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode(ext.Data)
		if err != nil || back.NotAfter != b.NotAfter || !bytes.Equal(back.KeyID, b.KeyID) || !bytes.Equal(back.Signature, b.Signature) {
			t.Fatalf("extension data %x decodes as %+v, %v", ext.Data, back, err)
		}
		end := time.Unix(int64(b.NotAfter), 0)
		for _, at := range []time.Time{now, end} {
			if _, err := chk.Verify(t.Context(), uri, sigKey, back, at, provider.LookupOptions{}); err != nil {
				t.Fatalf("issued binding refused at %d: %v", at.Unix(), err)
			}
		}
		wantKind := func(what string, err, kind error) {
			t.Helper()
			if !errors.Is(err, kind) {
				t.Fatalf("%s: err = %v, want %v", what, err, kind)
			}
		}
		_, err = chk.Verify(t.Context(), uri, sigKey, back, end.Add(time.Second), provider.LookupOptions{})
		wantKind("a second after not_after", err, ErrExpired)
		_, err = chk.Verify(t.Context(), uri, append(bytes.Clone(sigKey), 0), back, now, provider.LookupOptions{})
		wantKind("another signature key", err, ErrBadSignature)
		other := []byte(moh.ClientURI("b.example", user, device))
		_, err = chk.Verify(t.Context(), other, sigKey, back, now, provider.LookupOptions{})
		wantKind("another provider", err, ErrUnknownKey)
	})
}
