package binding

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCodecRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    ClientBinding
		want string
	}{
		{"short", ClientBinding{NotAfter: 1, KeyID: []byte{0xaa}, Signature: []byte{0xbb}},
			"0000000000000001" + "01aa" + "01bb"},
		{"limits", ClientBinding{NotAfter: 1<<64 - 1, KeyID: bytes.Repeat([]byte{1}, MaxKeyIDLen),
			Signature: bytes.Repeat([]byte{2}, MaxSignatureLen)},
			"ffffffffffffffff" + "4040" + hex.EncodeToString(bytes.Repeat([]byte{1}, 64)) +
				"4100" + hex.EncodeToString(bytes.Repeat([]byte{2}, 256))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			enc, err := wire.Marshal(&tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(enc); got != tc.want {
				t.Fatalf("encoding = %s, want %s", got, tc.want)
			}
			dec, err := Decode(enc)
			if err != nil {
				t.Fatal(err)
			}
			if dec.NotAfter != tc.b.NotAfter || !bytes.Equal(dec.KeyID, tc.b.KeyID) || !bytes.Equal(dec.Signature, tc.b.Signature) {
				t.Fatalf("Decode = %+v, want %+v", dec, tc.b)
			}
			enc[len(enc)-1] ^= 0xff
			if dec.Signature[len(dec.Signature)-1] == enc[len(enc)-1] {
				t.Fatal("Decode result aliases its input")
			}
			ext, err := tc.b.Extension()
			if err != nil || ext.Type != 0xF0A1 {
				t.Fatalf("Extension = %+v, %v", ext, err)
			}
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	ok := "0000000000000001" + "01aa" + "01bb"
	for _, tc := range []struct{ name, hex string }{
		{"empty", ""},
		{"truncated not_after", "00000000000000"},
		{"no key_id", "0000000000000001"},
		{"empty key_id", "0000000000000001" + "00" + "01bb"},
		{"key_id over 64 bytes", "0000000000000001" + "41" + hex.EncodeToString(bytes.Repeat([]byte{1}, 65)) + "01bb"},
		{"key_id overruns", "0000000000000001" + "05aa"},
		{"empty signature", "0000000000000001" + "01aa" + "00"},
		{"signature over 256 bytes", "0000000000000001" + "01aa" + "4101" + hex.EncodeToString(bytes.Repeat([]byte{2}, 257))},
		{"non-minimal varint", "0000000000000001" + "4001aa" + "01bb"},
		{"reserved varint prefix", "0000000000000001" + "c0000001aa" + "01bb"},
		{"trailing byte", ok + "00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(mustHex(t, tc.hex))
			if !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("Decode(%s) = %v, want ErrMalformed", tc.hex, err)
			}
		})
	}
	if _, err := Decode(mustHex(t, ok)); err != nil {
		t.Fatalf("control case: %v", err)
	}
}

func TestSignedContent(t *testing.T) {
	got, err := SignedContent([]byte("mimi://a.example/d/al/x"), []byte{1, 2, 3}, 0x0102030405060708)
	if err != nil {
		t.Fatal(err)
	}
	want := "17" + hex.EncodeToString([]byte("mimi://a.example/d/al/x")) + "03010203" + "0102030405060708"
	if hex.EncodeToString(got) != want {
		t.Fatalf("SignedContent = %x, want %s", got, want)
	}
}

func TestAttach(t *testing.T) {
	leaf := &mls.LeafNode{
		Extensions: mls.Extensions{{Type: 7, Data: []byte{1}}, {Type: ExtensionType, Data: []byte("old")}},
	}
	caps := make([]mls.ExtensionType, 1, 2) // room to append in place
	caps[0] = 7
	leaf.Capabilities.Extensions = caps
	b := &ClientBinding{NotAfter: 9, KeyID: []byte{1}, Signature: []byte{2}}
	for range 2 { // attaching twice leaves one extension and one capability
		if err := Attach(leaf, b); err != nil {
			t.Fatal(err)
		}
	}
	want, _ := wire.Marshal(b)
	if len(leaf.Extensions) != 2 || leaf.Extensions[0].Type != 7 || leaf.Extensions[1].Type != ExtensionType ||
		!bytes.Equal(leaf.Extensions[1].Data, want) {
		t.Fatalf("extensions = %+v", leaf.Extensions)
	}
	if got := leaf.Capabilities.Extensions; len(got) != 2 || got[1] != ExtensionType {
		t.Fatalf("capabilities = %v", got)
	}
	if caps[:2][1] == ExtensionType {
		t.Fatal("Attach appended into the caller's capability array")
	}
}
