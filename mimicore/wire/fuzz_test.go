package wire

import (
	"bytes"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// FuzzAddVarint is the encoding side of FuzzReadVarint: every value up to
// MaxVarint encodes in VarintLen bytes and reads back as itself, and every
// larger value fails to encode.
func FuzzAddVarint(f *testing.F) {
	for _, v := range []uint64{0, 63, 64, 16383, 16384, MaxVarint, MaxVarint + 1, 1 << 63} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v uint64) {
		b := cryptobyte.NewBuilder(nil)
		AddVarint(b, v)
		enc, err := b.Bytes()
		if v > MaxVarint {
			if err == nil || VarintLen(v) != 0 {
				t.Fatalf("encoded %d, above MaxVarint, as %x", v, enc)
			}
			return
		}
		if err != nil || len(enc) != VarintLen(v) {
			t.Fatalf("AddVarint(%d) = %x, %v; VarintLen %d", v, enc, err, VarintLen(v))
		}
		s := cryptobyte.String(enc)
		var got uint64
		if !ReadVarint(&s, &got) || got != v || !s.Empty() {
			t.Fatalf("ReadVarint(%x) = %d, want %d", enc, got, v)
		}
	})
}

// FuzzOpaque reads an opaque<V> from arbitrary input: an accepted field
// lies inside the input (its length is bounded by the input, not by the
// claimed prefix), re-encodes to the bytes it was read from, and
// ReadOpaqueMax and ReadVector agree with ReadOpaque.
func FuzzOpaque(f *testing.F) {
	f.Add([]byte{0x03, 'a', 'b', 'c', 0xff}, 3)
	f.Add([]byte{0x40, 0x05, 1, 2, 3, 4, 5}, 4)
	f.Add([]byte{0xbf, 0xff, 0xff, 0xff}, 1<<30)
	f.Fuzz(func(t *testing.T, data []byte, max int) {
		s := cryptobyte.String(data)
		var o []byte
		ok := ReadOpaque(&s, &o)
		if ok {
			consumed := len(data) - len(s)
			if len(o) > len(data) {
				t.Fatalf("read %d bytes from %d bytes of input", len(o), len(data))
			}
			b := cryptobyte.NewBuilder(nil)
			AddOpaque(b, o)
			enc, err := b.Bytes()
			if err != nil || !bytes.Equal(enc, data[:consumed]) {
				t.Fatalf("accepted %x, which re-encodes as %x (%v)", data[:consumed], enc, err)
			}
		}
		sm := cryptobyte.String(data)
		var om []byte
		if got, want := ReadOpaqueMax(&sm, &om, max), ok && len(o) <= max; got != want {
			t.Fatalf("ReadOpaqueMax(max %d) = %v, want %v", max, got, want)
		}
		sv := cryptobyte.String(data)
		var vec cryptobyte.String
		if ReadVector(&sv, &vec) != ok || (ok && !bytes.Equal(vec, o)) {
			t.Fatalf("ReadVector disagrees with ReadOpaque on %x", data)
		}
	})
}
