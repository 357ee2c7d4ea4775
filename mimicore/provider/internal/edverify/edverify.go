// Package edverify verifies Ed25519 signatures (RFC 8032 §5.1.7) for
// public keys that verify many signatures, accepting and rejecting exactly
// what crypto/ed25519.Verify accepts and rejects.
//
// crypto/ed25519 computes R' = [S]B - [k]A with 255 doublings shared by both
// scalars, after decoding A afresh. A PublicKey here decodes A once and
// precomputes, for every window of the scalar's signed radix-2^w expansion,
// the multiples of A that window can need; the base point B has such a
// table too, built once per process. A verification then costs about one
// mixed point addition per window and scalar, and no doubling: about a
// third of crypto/ed25519's work, for a table of about 98 KiB per key.
//
// Accept/reject behaviour is crypto/ed25519's, since the same values are
// compared: the signature must be 64 bytes with its top three bits clear
// and S < L; A is decoded as crypto/ed25519 (and filippo.io/edwards25519)
// decode it, non-canonical encodings of a point included; k is SHA-512(R ||
// A || M) over the key's bytes as given, reduced mod L; and the signature
// is valid iff the canonical encoding of [S]B - [k]A equals R's 32 bytes
// (the cofactorless check). Different ways of computing the group element
// [S]B - [k]A give the same element, whatever the order of A, because the
// addition formulas used are complete on edwards25519.
//
// Nothing here is constant time: verification handles public values only.
package edverify

import (
	"crypto/sha512"
	"errors"
	"sync"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// Sizes of an Ed25519 public key and signature.
const (
	PublicKeySize = 32
	SignatureSize = 64
)

// Window widths, in bits, of the precomputed tables: a table of width w
// holds 2^(w-1) points for each of ceil(254/w) windows. The key's width
// trades its memory (98 KiB at 5) against additions per verification
// (51); the base point's table exists once, so it is wider (491 KiB, 32
// additions).
const (
	keyWidth  = 5
	baseWidth = 8

	keyWindows  = (254 + keyWidth - 1) / keyWidth
	baseWindows = (254 + baseWidth - 1) / baseWidth
)

// PublicKey is a decoded Ed25519 public key with its precomputed table. It
// is immutable and safe for concurrent use.
type PublicKey struct {
	raw   [PublicKeySize]byte
	table *table
}

// NewPublicKey decodes pub and precomputes its table, which costs about as
// much as a few verifications. It fails if pub is not 32 bytes or does not
// decode to a point; crypto/ed25519.Verify rejects every signature under
// such a key (or, for a wrong length, panics).
func NewPublicKey(pub []byte) (*PublicKey, error) {
	if len(pub) != PublicKeySize {
		return nil, errors.New("edverify: bad public key length")
	}
	a, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return nil, errors.New("edverify: bad public key")
	}
	k := &PublicKey{table: newTable(a, keyWidth)}
	copy(k.raw[:], pub)
	return k, nil
}

// Bytes returns the key's encoding as it was given to NewPublicKey.
func (k *PublicKey) Bytes() []byte {
	b := k.raw
	return b[:]
}

// Verify reports whether sig is a valid signature of message by k, as
// crypto/ed25519.Verify(k.Bytes(), message, sig) does.
func (k *PublicKey) Verify(message, sig []byte) bool {
	if len(sig) != SignatureSize || sig[63]&224 != 0 {
		return false
	}
	if _, err := edwards25519.NewScalar().SetCanonicalBytes(sig[32:]); err != nil {
		return false // S >= L
	}
	h := sha512.New()
	h.Write(sig[:32])
	h.Write(k.raw[:])
	h.Write(message)
	var digest [sha512.Size]byte
	kh, err := edwards25519.NewScalar().SetUniformBytes(h.Sum(digest[:0]))
	if err != nil {
		panic("edverify: setting a scalar from 64 bytes failed")
	}

	// R' = [S]B + [k](-A): each table adds its scalar's digits.
	var r extended
	r.setIdentity()
	var sd [baseWindows]int16
	recode(sd[:], sig[32:], baseWidth) // canonical: the bytes of S
	base().addDigits(&r, sd[:], false)
	var kd [keyWindows]int16
	recode(kd[:], kh.Bytes(), keyWidth)
	k.table.addDigits(&r, kd[:], true)

	var enc [32]byte
	r.encode(&enc)
	return enc == [32]byte(sig[:32])
}

// d2 is 2d, d = -121665/121666 being the constant of the curve equation
// -x² + y² = 1 + d·x²·y² (RFC 8032 §5.1).
var d2 = func() *field.Element {
	var one, num, den, d field.Element
	one.One()
	num.Mult32(&one, 121665)
	num.Negate(&num)
	den.Mult32(&one, 121666)
	den.Invert(&den)
	d.Multiply(&num, &den)
	return new(field.Element).Add(&d, &d)
}()

// niels is an affine point (x, y) as y+x, y-x and 2d·x·y, the form a mixed
// addition takes.
type niels struct {
	ypx, ymx, xy2d field.Element
}

// extended is a point in extended coordinates (X:Y:Z:T), x = X/Z, y = Y/Z,
// x·y = T/Z.
type extended struct {
	X, Y, Z, T field.Element
}

func (v *extended) setIdentity() {
	v.X.Zero()
	v.Y.One()
	v.Z.One()
	v.T.Zero()
}

// add sets v to v + q, or v - q when neg, with the unified mixed addition
// of Hisil, Wong, Carter and Dawson (2008) for a = -1 (7 multiplications),
// which is complete on edwards25519 since d is not a square: it holds for
// every pair of points, the identity, equal points and points of small
// order included.
func (v *extended) add(q *niels, neg bool) {
	var yp, ym, pp, mm, tt, z2 field.Element
	yp.Add(&v.Y, &v.X)
	ym.Subtract(&v.Y, &v.X)
	if neg { // -q is (-x, y): y+x and y-x swap, 2dxy changes sign
		pp.Multiply(&yp, &q.ymx)
		mm.Multiply(&ym, &q.ypx)
	} else {
		pp.Multiply(&yp, &q.ypx)
		mm.Multiply(&ym, &q.ymx)
	}
	tt.Multiply(&v.T, &q.xy2d)
	z2.Add(&v.Z, &v.Z)
	var e, f, g, h field.Element
	e.Subtract(&pp, &mm)
	h.Add(&pp, &mm)
	if neg {
		f.Subtract(&z2, &tt)
		g.Add(&z2, &tt)
	} else {
		f.Add(&z2, &tt)
		g.Subtract(&z2, &tt)
	}
	v.X.Multiply(&e, &g)
	v.Y.Multiply(&h, &f)
	v.Z.Multiply(&f, &g)
	v.T.Multiply(&e, &h)
}

// encode writes the canonical encoding of v (RFC 8032 §5.1.2): y, with the
// sign of x in the top bit.
func (v *extended) encode(out *[32]byte) {
	var zInv, x, y field.Element
	zInv.Invert(&v.Z)
	x.Multiply(&v.X, &zInv)
	y.Multiply(&v.Y, &zInv)
	copy(out[:], y.Bytes())
	out[31] |= byte(x.IsNegative() << 7)
}

// windows is the number of width-w windows that hold a scalar below L <
// 2^253 in signed digits: the top window then takes the last carry
// without overflowing (ceil(254/w) windows cover 254 bits).
func windows(w int) int { return (254 + w - 1) / w }

// recode writes the signed radix-2^w digits of the little-endian scalar s
// (s < 2^253) into d: s = Σ d[i]·2^(w·i), each -2^(w-1) < d[i] <= 2^(w-1).
func recode(d []int16, s []byte, w int) {
	half := 1 << (w - 1)
	carry := 0
	for i := range d {
		v := bitsAt(s, i*w, w) + carry
		carry = 0
		if v > half {
			v -= 1 << w
			carry = 1
		}
		d[i] = int16(v)
	}
}

// bitsAt returns the n bits (n <= 8) of little-endian s starting at bit
// off; bits past the end of s are zero.
func bitsAt(s []byte, off, n int) int {
	i, shift := off/8, off%8
	var v uint
	if i < len(s) {
		v = uint(s[i])
	}
	if i+1 < len(s) {
		v |= uint(s[i+1]) << 8
	}
	return int(v>>shift) & (1<<n - 1)
}

// table holds, for window i of width w, the points j·2^(w·i)·P for j = 1
// .. 2^(w-1), affine, at row i*2^(w-1) + j-1.
type table struct {
	width  int
	points []niels
}

// newTable precomputes the table of p for windows of width w.
func newTable(p *edwards25519.Point, w int) *table {
	half := 1 << (w - 1)
	n := windows(w)
	pts := make([]edwards25519.Point, n*half)
	base := new(edwards25519.Point).Set(p)
	for i := range n {
		row := pts[i*half : (i+1)*half]
		row[0].Set(base)
		for j := 1; j < half; j++ {
			row[j].Add(&row[j-1], base)
		}
		base.Add(&row[half-1], &row[half-1]) // 2^(w-1)·base doubled: 2^w·base
	}
	return &table{width: w, points: toNiels(pts)}
}

// toNiels converts points to affine form with one field inversion for all
// of them (Montgomery's trick). Every Z is non-zero: the points come from
// complete formulas.
func toNiels(pts []edwards25519.Point) []niels {
	n := len(pts)
	xs := make([]extended, n)
	prefix := make([]field.Element, n) // prefix[i] = Z_0·…·Z_i
	for i := range pts {
		X, Y, Z, T := pts[i].ExtendedCoordinates()
		xs[i] = extended{X: *X, Y: *Y, Z: *Z, T: *T}
		if i == 0 {
			prefix[i].Set(Z)
		} else {
			prefix[i].Multiply(&prefix[i-1], Z)
		}
	}
	var inv field.Element // (Z_0·…·Z_i)^-1, from i = n-1 down
	inv.Invert(&prefix[n-1])
	out := make([]niels, n)
	for i := n - 1; i >= 0; i-- {
		var zInv field.Element
		if i > 0 {
			zInv.Multiply(&inv, &prefix[i-1])
			inv.Multiply(&inv, &xs[i].Z)
		} else {
			zInv.Set(&inv)
		}
		p, q := &xs[i], &out[i]
		var t field.Element
		q.ypx.Add(&p.Y, &p.X)
		q.ypx.Multiply(&q.ypx, &zInv)
		q.ymx.Subtract(&p.Y, &p.X)
		q.ymx.Multiply(&q.ymx, &zInv)
		t.Multiply(&p.T, &zInv)
		q.xy2d.Multiply(&t, d2)
	}
	return out
}

// addDigits adds Σ d[i]·2^(w·i)·P to v, or subtracts it when neg.
func (t *table) addDigits(v *extended, d []int16, neg bool) {
	half := 1 << (t.width - 1)
	for i, x := range d {
		switch {
		case x > 0:
			v.add(&t.points[i*half+int(x)-1], neg)
		case x < 0:
			v.add(&t.points[i*half-int(x)-1], !neg)
		}
	}
}

// base returns the table of the base point B, built on first use.
var base = sync.OnceValue(func() *table {
	return newTable(edwards25519.NewGeneratorPoint(), baseWidth)
})
