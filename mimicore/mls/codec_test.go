package mls

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func TestIsGREASE(t *testing.T) {
	n := 0
	for v := 0; v <= 0xffff; v++ {
		want := v&0x0f0f == 0x0a0a && v>>12 == (v>>4)&0xf && v>>12 <= 0xe
		if IsGREASE(uint16(v)) != want {
			t.Fatalf("IsGREASE(%#04x)", v)
		}
		if want {
			n++
		}
	}
	if n != 15 || !IsGREASE(0x0a0a) || !IsGREASE(0xeaea) || IsGREASE(0xfafa) || IsGREASE(0x0a1a) {
		t.Fatalf("%d GREASE values", n)
	}
}

// TestUnknownTypesCarried checks that unknown and GREASE extension,
// proposal and credential types decode and re-encode unchanged.
func TestUnknownTypesCarried(t *testing.T) {
	values := []interface {
		wire.Marshaler
		wire.Unmarshaler
	}{
		&Extension{Type: 0x3a3a, Data: []byte{1, 2, 3}},
		&Proposal{Type: 0x5a5a, Data: []byte("custom")},
		&Credential{Type: 0x7a7a, Data: []byte("cred")},
		&Credential{Type: CredentialX509, Certificates: [][]byte{{1}, {2, 3}}},
		&Capabilities{Versions: []ProtocolVersion{1, 0x0a0a}, Extensions: []ExtensionType{0x1a1a}},
	}
	for _, v := range values {
		enc, err := wire.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := wire.Unmarshal(enc, v, "value"); err != nil {
			t.Fatalf("%T: %v", v, err)
		}
		again, err := wire.Marshal(v)
		if err != nil || !bytes.Equal(enc, again) {
			t.Fatalf("%T: re-encoding differs", v)
		}
	}
}
