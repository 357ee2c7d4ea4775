// Package wire holds the primitives of the TLS presentation language as
// extended by MLS (RFC 9420 §2.1): variable-length integers, <V> vectors,
// optional<T> and strict top-level decoding. Every struct codec in mimicore is
// built from these on top of golang.org/x/crypto/cryptobyte.
//
// Decoding is strict: a varint must use its shortest encoding, the reserved
// 0b11 prefix is refused, an optional flag must be 0 or 1, and a top-level
// struct must consume its input exactly. Byte slices returned by the Read
// functions alias the input; callers that keep them past the input's lifetime
// must copy.
package wire

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/crypto/cryptobyte"
)

// MaxVarint is the largest value an MLS variable-length integer can carry
// (2^30-1).
const MaxVarint = 1<<30 - 1

// ErrMalformed is the sentinel wrapped by every decoding failure. The HTTP
// layer answers it with the DSError code malformed.
var ErrMalformed = errors.New("malformed")

// errVarintRange is set on a Builder asked to encode a value above MaxVarint.
var errVarintRange = errors.New("wire: varint out of range")

// ReadVarint reads an MLS variable-length integer (RFC 9420 §2.1.2). It
// refuses the reserved 0b11 prefix and any encoding that is not the shortest
// one for its value.
func ReadVarint(s *cryptobyte.String, out *uint64) bool {
	if len(*s) == 0 {
		return false
	}
	first := (*s)[0]
	switch first >> 6 {
	case 0:
		*out = uint64(first)
		*s = (*s)[1:]
		return true
	case 1:
		var v uint16
		if !s.ReadUint16(&v) {
			return false
		}
		v &= 0x3fff
		if v < 1<<6 {
			return false
		}
		*out = uint64(v)
		return true
	case 2:
		var v uint32
		if !s.ReadUint32(&v) {
			return false
		}
		v &= 0x3fffffff
		if v < 1<<14 {
			return false
		}
		*out = uint64(v)
		return true
	default:
		return false
	}
}

// AddVarint appends v as a minimal MLS variable-length integer. A value above
// MaxVarint sets an error on b.
func AddVarint(b *cryptobyte.Builder, v uint64) {
	switch {
	case v < 1<<6:
		b.AddUint8(uint8(v))
	case v < 1<<14:
		b.AddUint16(uint16(v) | 0x4000)
	case v <= MaxVarint:
		b.AddUint32(uint32(v) | 0x80000000)
	default:
		b.SetError(errVarintRange)
	}
}

// AppendVarint appends v to dst as AddVarint encodes it; v must be at
// most MaxVarint (it panics otherwise: callers check lengths first).
func AppendVarint(dst []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(dst, uint8(v))
	case v < 1<<14:
		return append(dst, uint8(v>>8)|0x40, uint8(v))
	case v <= MaxVarint:
		return append(dst, uint8(v>>24)|0x80, uint8(v>>16), uint8(v>>8), uint8(v))
	}
	panic("wire: varint above MaxVarint")
}

// VarintLen returns the number of bytes AddVarint writes for v, or 0 when v
// is above MaxVarint.
func VarintLen(v uint64) int {
	switch {
	case v < 1<<6:
		return 1
	case v < 1<<14:
		return 2
	case v <= MaxVarint:
		return 4
	default:
		return 0
	}
}

// ReadOpaque reads an opaque<V> field. The result aliases s.
func ReadOpaque(s *cryptobyte.String, out *[]byte) bool {
	var n uint64
	if !ReadVarint(s, &n) || uint64(len(*s)) < n {
		return false
	}
	*out = (*s)[:n]
	*s = (*s)[n:]
	return true
}

// ReadOpaqueMax reads an opaque<V> field of at most max bytes.
func ReadOpaqueMax(s *cryptobyte.String, out *[]byte, max int) bool {
	return ReadOpaque(s, out) && len(*out) <= max
}

// ReadVector reads the body of a <V> vector into out, so that its elements
// can be decoded one by one until out is empty.
func ReadVector(s *cryptobyte.String, out *cryptobyte.String) bool {
	var b []byte
	if !ReadOpaque(s, &b) {
		return false
	}
	*out = cryptobyte.String(b)
	return true
}

// AddOpaque appends v as an opaque<V> field.
func AddOpaque(b *cryptobyte.Builder, v []byte) {
	if len(v) > MaxVarint {
		b.SetError(errVarintRange)
		return
	}
	AddVarint(b, uint64(len(v)))
	b.AddBytes(v)
}

// vectorBuffers recycles the scratch buffers AddVector builds vector bodies
// in, so encoding allocates only the final output in steady state.
var vectorBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// maxPooledVector bounds the buffers kept for reuse, so one huge vector does
// not pin its memory in the pool.
const maxPooledVector = 64 << 10

// AddVector appends a <V> vector whose body f writes. The body is built in
// a pooled scratch buffer and copied behind its length prefix.
func AddVector(b *cryptobyte.Builder, f cryptobyte.BuilderContinuation) {
	bufp := vectorBuffers.Get().(*[]byte)
	child := cryptobyte.NewBuilder((*bufp)[:0])
	f(child)
	body, err := child.Bytes()
	if err != nil {
		b.SetError(err)
	} else {
		AddOpaque(b, body)
	}
	if cap(body) <= maxPooledVector {
		*bufp = body[:0]
		vectorBuffers.Put(bufp)
	}
}

// ReadOptional reads the presence flag of an optional<T>; any value other
// than 0 or 1 is refused.
func ReadOptional(s *cryptobyte.String, present *bool) bool {
	var v uint8
	if !s.ReadUint8(&v) || v > 1 {
		return false
	}
	*present = v == 1
	return true
}

// AddOptional appends the presence flag of an optional<T>.
func AddOptional(b *cryptobyte.Builder, present bool) {
	if present {
		b.AddUint8(1)
	} else {
		b.AddUint8(0)
	}
}

// ReadBool reads a TLS-PL bool (uint8 0 or 1).
func ReadBool(s *cryptobyte.String, out *bool) bool { return ReadOptional(s, out) }

// Marshaler is a struct that can write itself to a cryptobyte.Builder.
type Marshaler interface {
	MarshalWire(b *cryptobyte.Builder)
}

// Unmarshaler is a struct that can read itself from a cryptobyte.String. It
// returns false on any malformed input and leaves s in an unspecified state.
type Unmarshaler interface {
	UnmarshalWire(s *cryptobyte.String) bool
}

// Marshal encodes v into a fresh byte slice.
func Marshal(v Marshaler) ([]byte, error) {
	return Append(nil, v)
}

// Append encodes v and appends it to dst.
func Append(dst []byte, v Marshaler) ([]byte, error) {
	b := cryptobyte.NewBuilder(dst)
	v.MarshalWire(b)
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding %T: %w", v, err)
	}
	return out, nil
}

// Unmarshal decodes data into v as a top-level struct: data must hold exactly
// one value and nothing after it. Failures wrap ErrMalformed and name what was
// being decoded.
func Unmarshal(data []byte, v Unmarshaler, name string) error {
	s := cryptobyte.String(data)
	if !v.UnmarshalWire(&s) {
		return fmt.Errorf("decoding %s: %w: truncated or invalid field", name, ErrMalformed)
	}
	if !s.Empty() {
		return fmt.Errorf("decoding %s: %w: %d trailing bytes", name, ErrMalformed, len(s))
	}
	return nil
}
