package binding

import (
	"bytes"
	"testing"

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
