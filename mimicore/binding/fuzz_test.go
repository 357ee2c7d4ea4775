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
