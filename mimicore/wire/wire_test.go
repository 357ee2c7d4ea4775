package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

func TestVarintRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		v   uint64
		enc string
	}{
		{0, "00"}, {37, "25"}, {63, "3f"}, {64, "4040"}, {15293, "7bbd"}, {16383, "7fff"},
		{16384, "80004000"}, {494878333, "9d7f3e7d"}, {MaxVarint, "bfffffff"},
	} {
		b := cryptobyte.NewBuilder(nil)
		AddVarint(b, tc.v)
		got, err := b.Bytes()
		if err != nil || hex.EncodeToString(got) != tc.enc {
			t.Errorf("AddVarint(%d) = %x, %v; want %s", tc.v, got, err, tc.enc)
		}
		if app := AppendVarint([]byte{0xee}, tc.v); hex.EncodeToString(app) != "ee"+tc.enc {
			t.Errorf("AppendVarint(ee, %d) = %x, want ee%s", tc.v, app, tc.enc)
		}
		if VarintLen(tc.v) != len(got) {
			t.Errorf("VarintLen(%d) = %d, want %d", tc.v, VarintLen(tc.v), len(got))
		}
		s := cryptobyte.String(got)
		var v uint64
		if !ReadVarint(&s, &v) || v != tc.v || !s.Empty() {
			t.Errorf("ReadVarint(%s) = %d, want %d", tc.enc, v, tc.v)
		}
	}
}

func TestVarintRejects(t *testing.T) {
	for _, enc := range []string{
		"",         // empty
		"40",       // truncated 2-byte form
		"800000",   // truncated 4-byte form
		"4005",     // 5 in two bytes: not minimal
		"403f",     // 63 in two bytes
		"80003fff", // 16383 in four bytes
		"c0000000", // reserved 0b11 prefix
		"ffffffffffffffff",
	} {
		raw, _ := hex.DecodeString(enc)
		s := cryptobyte.String(raw)
		var v uint64
		if ReadVarint(&s, &v) {
			t.Errorf("ReadVarint(%q) accepted, got %d", enc, v)
		}
	}
}

func TestAddVarintTooLarge(t *testing.T) {
	b := cryptobyte.NewBuilder(nil)
	AddVarint(b, MaxVarint+1)
	if _, err := b.Bytes(); err == nil {
		t.Fatal("encoding 2^30 succeeded")
	}
}

func TestOpaqueAndVector(t *testing.T) {
	b := cryptobyte.NewBuilder(nil)
	AddOpaque(b, []byte("abc"))
	AddVector(b, func(b *cryptobyte.Builder) {
		AddOpaque(b, bytes.Repeat([]byte{7}, 100))
		AddOpaque(b, nil)
	})
	AddOptional(b, true)
	AddOptional(b, false)
	enc, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	s := cryptobyte.String(enc)
	var o []byte
	var vec cryptobyte.String
	var p1, p2 bool
	if !ReadOpaque(&s, &o) || string(o) != "abc" || !ReadVector(&s, &vec) ||
		!ReadOptional(&s, &p1) || !ReadOptional(&s, &p2) || !s.Empty() || !p1 || p2 {
		t.Fatalf("decode failed: %x", enc)
	}
	var a, c []byte
	if !ReadOpaqueMax(&vec, &a, 100) || len(a) != 100 || !ReadOpaque(&vec, &c) || len(c) != 0 || !vec.Empty() {
		t.Fatal("vector body decode failed")
	}
	s = cryptobyte.String(enc)
	if ReadOpaqueMax(&s, &o, 2) {
		t.Fatal("ReadOpaqueMax accepted 3 bytes with max 2")
	}
}

func TestOpaqueLengthBeyondInput(t *testing.T) {
	s := cryptobyte.String([]byte{0x05, 1, 2})
	var o []byte
	if ReadOpaque(&s, &o) {
		t.Fatal("accepted a length beyond the input")
	}
}

func TestOptionalRejectsOtherValues(t *testing.T) {
	for _, v := range []byte{2, 0x80, 0xff} {
		s := cryptobyte.String([]byte{v})
		var p bool
		if ReadOptional(&s, &p) {
			t.Errorf("accepted optional flag %d", v)
		}
	}
}

type pair struct{ a, b []byte }

func (p *pair) MarshalWire(b *cryptobyte.Builder) { AddOpaque(b, p.a); AddOpaque(b, p.b) }
func (p *pair) UnmarshalWire(s *cryptobyte.String) bool {
	return ReadOpaque(s, &p.a) && ReadOpaque(s, &p.b)
}

func TestUnmarshalStrict(t *testing.T) {
	enc, err := Marshal(&pair{[]byte("x"), []byte("yz")})
	if err != nil {
		t.Fatal(err)
	}
	var p pair
	if err := Unmarshal(enc, &p, "pair"); err != nil || string(p.b) != "yz" {
		t.Fatalf("Unmarshal = %v", err)
	}
	err = Unmarshal(append(enc, 0), &p, "pair")
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: err = %v, want ErrMalformed", err)
	}
	if err := Unmarshal(enc[:len(enc)-1], &p, "pair"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated: err = %v, want ErrMalformed", err)
	}
}

func FuzzReadVarint(f *testing.F) {
	for _, s := range []string{"00", "4040", "80004000", "bfffffff", "c0", "4005"} {
		b, _ := hex.DecodeString(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := cryptobyte.String(data)
		var v uint64
		if !ReadVarint(&s, &v) {
			return
		}
		consumed := len(data) - len(s)
		b := cryptobyte.NewBuilder(nil)
		AddVarint(b, v)
		enc, err := b.Bytes()
		if err != nil || !bytes.Equal(enc, data[:consumed]) {
			t.Fatalf("accepted %x as %d but minimal encoding is %x", data[:consumed], v, enc)
		}
	})
}
