package edverify

import (
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"sync"
	"testing"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// rng is a seeded source, so that a failing case can be replayed.
func rng(t testing.TB) *mrand.ChaCha8 {
	var seed [32]byte
	copy(seed[:], t.Name())
	return mrand.NewChaCha8(seed)
}

// keys caches the tables of the test keys: building one costs more than
// a few verifications.
var keys sync.Map // string(pub) -> *PublicKey or error

func key(pub []byte) (*PublicKey, error) {
	if v, ok := keys.Load(string(pub)); ok {
		if err, ok := v.(error); ok {
			return nil, err
		}
		return v.(*PublicKey), nil
	}
	k, err := NewPublicKey(pub)
	if err != nil {
		keys.Store(string(pub), err)
		return nil, err
	}
	keys.Store(string(pub), k)
	return k, nil
}

// check compares Verify with crypto/ed25519.Verify on one input and
// returns the verdict.
func check(t *testing.T, pub, msg, sig []byte) bool {
	t.Helper()
	want := ed25519.Verify(ed25519.PublicKey(pub), msg, sig)
	k, err := key(pub)
	if err != nil {
		if want {
			t.Fatalf("NewPublicKey(%x): %v, but crypto/ed25519 accepts sig %x on msg %x", pub, err, sig, msg)
		}
		return false
	}
	if got := k.Verify(msg, sig); got != want {
		t.Fatalf("Verify(pub %x, msg %x, sig %x) = %v, crypto/ed25519 says %v", pub, msg, sig, got, want)
	}
	return want
}

func TestRandomKeys(t *testing.T) {
	r := rng(t)
	for i := range 16 {
		seed := make([]byte, ed25519.SeedSize)
		r.Read(seed)
		priv := ed25519.NewKeyFromSeed(seed)
		pub := priv.Public().(ed25519.PublicKey)
		k, err := NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(k.Bytes(), pub) {
			t.Fatalf("Bytes() = %x, want %x", k.Bytes(), pub)
		}
		for j := range 4 {
			msg := make([]byte, r.Uint64()%300)
			r.Read(msg)
			sig := ed25519.Sign(priv, msg)
			if !k.Verify(msg, sig) {
				t.Fatalf("key %d msg %d: valid signature rejected", i, j)
			}
			// Every single-bit change of the signature, one bit per byte.
			for b := range sig {
				bad := bytes.Clone(sig)
				bad[b] ^= 1 << (r.Uint64() % 8)
				check(t, pub, msg, bad)
			}
			if len(msg) > 0 {
				bad := bytes.Clone(msg)
				bad[r.Uint64()%uint64(len(bad))] ^= 0x80
				check(t, pub, bad, sig)
			}
			check(t, pub, msg, sig[:63])
			check(t, pub, msg, append(bytes.Clone(sig), 0))
		}
	}
}

// l is the order of the prime-order subgroup.
var l, _ = new(big.Int).SetString("7237005577332262213973186563042994961710557180637350919838919896651", 10)

// p is the field prime 2^255 - 19.
var p = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))

// le encodes n as 32 little-endian bytes.
func le(n *big.Int) []byte {
	b := n.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return b
}

// fromLE decodes 32 little-endian bytes.
func fromLE(b []byte) *big.Int {
	r := make([]byte, len(b))
	for i := range b {
		r[len(b)-1-i] = b[i]
	}
	return new(big.Int).SetBytes(r)
}

func TestNonCanonicalS(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	pub := priv.Public().(ed25519.PublicKey)
	for i := range 64 {
		msg := []byte{byte(i)}
		sig := ed25519.Sign(priv, msg)
		s := fromLE(sig[32:])
		for _, alt := range []*big.Int{
			new(big.Int).Add(s, l),                      // S + L: same point, refused
			new(big.Int).Add(s, new(big.Int).Lsh(l, 1)), // S + 2L
			new(big.Int).Set(l),                         // L itself
			new(big.Int).Sub(l, big.NewInt(1)),          // L - 1: canonical, wrong
			new(big.Int).Lsh(big.NewInt(1), 253),        // top three bits: bit 253
		} {
			if alt.BitLen() > 256 {
				continue
			}
			bad := append(bytes.Clone(sig[:32]), le(alt)...)
			if check(t, pub, msg, bad) {
				t.Fatalf("altered S %x accepted", le(alt))
			}
		}
	}
}

// torsion returns the encodings of the eight points of small order:
// canonical ones, and the non-canonical ones that decode (y + p where that
// fits in 255 bits, and x = 0 with the sign bit set).
func torsion(t *testing.T) (canonical, nonCanonical [][]byte) {
	t.Helper()
	t8, err := hex.DecodeString("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
	if err != nil {
		t.Fatal(err)
	}
	g, err := new(edwards25519.Point).SetBytes(t8)
	if err != nil {
		t.Fatal(err)
	}
	q := edwards25519.NewIdentityPoint()
	for i := range 8 {
		enc := q.Bytes()
		canonical = append(canonical, enc)
		y := fromLE(append([]byte{}, enc...))
		y.SetBit(y, 255, 0)
		if y.Cmp(big.NewInt(19)) < 0 { // y + p < 2^255
			e := le(new(big.Int).Add(y, p))
			e[31] |= enc[31] & 0x80
			nonCanonical = append(nonCanonical, e)
		}
		var x0 field.Element
		X, _, Z, _ := q.ExtendedCoordinates()
		x0.Multiply(X, new(field.Element).Invert(Z))
		if x0.Equal(new(field.Element).Zero()) == 1 {
			e := bytes.Clone(enc)
			e[31] |= 0x80 // "negative zero"
			nonCanonical = append(nonCanonical, e)
		}
		q.Add(q, g)
		if i == 7 && q.Equal(edwards25519.NewIdentityPoint()) != 1 {
			t.Fatal("the order-8 point is not of order 8")
		}
	}
	return canonical, nonCanonical
}

// TestSmallOrder checks every small-order key and R, in every encoding
// that decodes, with S = 0 and S = 1: some are valid (cofactorless), most
// are not, and each verdict must be crypto/ed25519's.
func TestSmallOrder(t *testing.T) {
	canonical, nonCanonical := torsion(t)
	all := append(append([][]byte{}, canonical...), nonCanonical...)
	if len(nonCanonical) == 0 {
		t.Fatal("no non-canonical encodings")
	}
	valid := 0
	for _, a := range all {
		for _, r := range all {
			for _, s := range [][]byte{make([]byte, 32), le(big.NewInt(1))} {
				for m := range 16 {
					if check(t, a, []byte{byte(m)}, append(bytes.Clone(r), s...)) {
						valid++
					}
				}
			}
		}
	}
	if valid == 0 {
		t.Fatal("no case was valid: the test exercises only rejection")
	}
	t.Logf("%d small-order cases valid", valid)
}

// TestMixedOrder signs with a key A = [a]B + T, T of small order, as a
// signer who knows a would: the signature satisfies the cofactored
// equation, and the cofactorless one that crypto/ed25519 checks only when
// [k]T is the identity. An R with a torsion part is refused.
func TestMixedOrder(t *testing.T) {
	canonical, _ := torsion(t)
	r := rng(t)
	scalar := func() *edwards25519.Scalar {
		b := make([]byte, 64)
		r.Read(b)
		s, err := edwards25519.NewScalar().SetUniformBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	valid, invalid := 0, 0
	for _, te := range canonical {
		tp, err := new(edwards25519.Point).SetBytes(te)
		if err != nil {
			t.Fatal(err)
		}
		for range 16 {
			a := scalar()
			pub := new(edwards25519.Point).Add(new(edwards25519.Point).ScalarBaseMult(a), tp).Bytes()
			for _, rTorsion := range []bool{false, true} {
				rs := scalar()
				rp := new(edwards25519.Point).ScalarBaseMult(rs)
				if rTorsion {
					rp.Add(rp, tp)
				}
				msg := make([]byte, 20)
				r.Read(msg)
				h := sha512.New()
				h.Write(rp.Bytes())
				h.Write(pub)
				h.Write(msg)
				k, err := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
				if err != nil {
					t.Fatal(err)
				}
				s := edwards25519.NewScalar().MultiplyAdd(k, a, rs)
				if check(t, pub, msg, append(rp.Bytes(), s.Bytes()...)) {
					valid++
				} else {
					invalid++
				}
			}
		}
	}
	if valid == 0 || invalid == 0 {
		t.Fatalf("valid %d, invalid %d: both verdicts must occur", valid, invalid)
	}
}

// TestNonCanonicalKey takes keys encoded with y >= p: they decode, and
// their bytes (not the reduced ones) go into k.
func TestNonCanonicalKey(t *testing.T) {
	r := rng(t)
	found := 0
	for y := range int64(19) {
		for _, sign := range []byte{0, 0x80} {
			e := le(new(big.Int).Add(big.NewInt(y), p))
			e[31] |= sign
			if _, err := new(edwards25519.Point).SetBytes(e); err != nil {
				continue
			}
			found++
			for range 32 {
				sig := make([]byte, 64)
				r.Read(sig)
				sig[63] &= 0x0f
				check(t, e, []byte("m"), sig)
			}
		}
	}
	if found == 0 {
		t.Fatal("no non-canonical key decodes")
	}
}

func TestBadKeys(t *testing.T) {
	for _, pub := range [][]byte{nil, make([]byte, 31), make([]byte, 33)} {
		if _, err := NewPublicKey(pub); err == nil {
			t.Errorf("NewPublicKey accepted %d bytes", len(pub))
		}
	}
	r := rng(t)
	refused := 0
	for range 256 {
		pub := make([]byte, 32)
		r.Read(pub)
		_, err := NewPublicKey(pub)
		_, ref := new(edwards25519.Point).SetBytes(pub)
		if (err == nil) != (ref == nil) {
			t.Fatalf("NewPublicKey(%x): %v, edwards25519 decoding: %v", pub, err, ref)
		}
		if err != nil {
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("no random string was refused")
	}
}

// TestWycheproof runs Project Wycheproof's EdDSA verification vectors
// (testdata/wycheproof_Ed25519.json.gz).
func TestWycheproof(t *testing.T) {
	f, err := os.Open("testdata/wycheproof_Ed25519.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Key struct {
				PK string `json:"pk"`
			} `json:"key"`
			Tests []struct {
				ID      int    `json:"tcId"`
				Comment string `json:"comment"`
				Msg     string `json:"msg"`
				Sig     string `json:"sig"`
				Result  string `json:"result"`
			} `json:"tests"`
		} `json:"testGroups"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range file.Groups {
		pub := mustHex(t, g.Key.PK)
		k, err := NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range g.Tests {
			t.Run(fmt.Sprintf("tc%d", c.ID), func(t *testing.T) {
				msg, sig := mustHex(t, c.Msg), mustHex(t, c.Sig)
				want := c.Result == "valid"
				if got := k.Verify(msg, sig); got != want {
					t.Errorf("%q: Verify = %v, want %v", c.Comment, got, want)
				}
				if ed25519.Verify(pub, msg, sig) != want {
					t.Errorf("%q: crypto/ed25519 disagrees with the vector", c.Comment)
				}
			})
			n++
		}
	}
	if n < 100 {
		t.Fatalf("only %d vectors", n)
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRecode checks that the signed digits add up to the scalar and stay
// in range, for random scalars and the extremes.
func TestRecode(t *testing.T) {
	r := rng(t)
	cases := []*big.Int{big.NewInt(0), big.NewInt(1), new(big.Int).Sub(l, big.NewInt(1)),
		new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 253), big.NewInt(1))}
	for range 200 {
		b := make([]byte, 32)
		r.Read(b)
		b[31] &= 0x1f // < 2^253
		cases = append(cases, fromLE(b))
	}
	for _, w := range []int{4, 5, 6, 7, 8} {
		for _, s := range cases {
			d := make([]int16, windows(w))
			recode(d, le(s), w)
			sum := new(big.Int)
			for i := len(d) - 1; i >= 0; i-- {
				if d[i] > 1<<(w-1) || d[i] <= -(1<<(w-1)) {
					t.Fatalf("w %d: digit %d out of range for %v", w, d[i], s)
				}
				sum.Lsh(sum, uint(w))
				sum.Add(sum, big.NewInt(int64(d[i])))
			}
			if sum.Cmp(s) != 0 {
				t.Fatalf("w %d: digits of %v add up to %v", w, s, sum)
			}
		}
	}
}

// TestTable checks each table entry against a scalar multiplication.
func TestTable(t *testing.T) {
	canonical, _ := torsion(t)
	points := []*edwards25519.Point{edwards25519.NewGeneratorPoint()}
	for _, e := range canonical[:3] {
		q, err := new(edwards25519.Point).SetBytes(e)
		if err != nil {
			t.Fatal(err)
		}
		points = append(points, q.Add(q, edwards25519.NewGeneratorPoint()))
	}
	for _, pt := range points {
		for _, w := range []int{4, 5} {
			tb := newTable(pt, w)
			half := 1 << (w - 1)
			for i := range windows(w) {
				for j := 1; j <= half; j++ {
					want := new(big.Int).Lsh(big.NewInt(int64(j)), uint(w*i))
					var acc extended
					acc.setIdentity()
					acc.add(&tb.points[i*half+j-1], false)
					var got [32]byte
					acc.encode(&got)
					sc, err := edwards25519.NewScalar().SetCanonicalBytes(le(new(big.Int).Mod(want, l)))
					if err != nil {
						t.Fatal(err)
					}
					// j·2^(wi)·P: P may have a torsion part, so reduce
					// the scalar mod 8L, not L.
					ref := mulBig(pt, want)
					_ = sc
					if !bytes.Equal(got[:], ref.Bytes()) {
						t.Fatalf("w %d entry (%d, %d) = %x, want %x", w, i, j, got, ref.Bytes())
					}
				}
			}
		}
	}
}

// mulBig is n·P by double-and-add, for any n >= 0.
func mulBig(pt *edwards25519.Point, n *big.Int) *edwards25519.Point {
	acc := edwards25519.NewIdentityPoint()
	for i := n.BitLen() - 1; i >= 0; i-- {
		acc.Add(acc, acc)
		if n.Bit(i) == 1 {
			acc.Add(acc, pt)
		}
	}
	return acc
}

// TestCurveConstant checks d2 against the curve equation at B.
func TestCurveConstant(t *testing.T) {
	X, Y, Z, _ := edwards25519.NewGeneratorPoint().ExtendedCoordinates()
	zInv := new(field.Element).Invert(Z)
	x := new(field.Element).Multiply(X, zInv)
	y := new(field.Element).Multiply(Y, zInv)
	x2 := new(field.Element).Square(x)
	y2 := new(field.Element).Square(y)
	lhs := new(field.Element).Subtract(y2, x2)
	d := new(field.Element).Multiply(d2, new(field.Element).Invert(new(field.Element).Mult32(new(field.Element).One(), 2)))
	rhs := new(field.Element).Multiply(d, new(field.Element).Multiply(x2, y2))
	rhs.Add(rhs, new(field.Element).One())
	if lhs.Equal(rhs) != 1 {
		t.Fatal("B is not on the curve with this d")
	}
}

func FuzzVerify(f *testing.F) {
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	pub := priv.Public().(ed25519.PublicKey)
	f.Add([]byte(pub), []byte("msg"), ed25519.Sign(priv, []byte("msg")))
	f.Add(make([]byte, 32), []byte{}, make([]byte, 64))
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte) {
		if len(pub) != 32 {
			return // crypto/ed25519 panics
		}
		check(t, pub, msg, sig)
	})
}

func BenchmarkVerify(b *testing.B) {
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	pub := priv.Public().(ed25519.PublicKey)
	msg := make([]byte, 300)
	sig := ed25519.Sign(priv, msg)
	k, err := NewPublicKey(pub)
	if err != nil {
		b.Fatal(err)
	}
	base()
	b.Run("edverify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !k.Verify(msg, sig) {
				b.Fatal("rejected")
			}
		}
	})
	b.Run("crypto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !ed25519.Verify(pub, msg, sig) {
				b.Fatal("rejected")
			}
		}
	})
}

func BenchmarkNewPublicKey(b *testing.B) {
	pub := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewPublicKey(pub); err != nil {
			b.Fatal(err)
		}
	}
}
