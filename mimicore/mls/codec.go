package mls

import (
	"errors"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Decoding caps. Vector bodies are bounded by the input itself; these caps
// bound the number of decoded elements (each costs more memory than its
// encoding) and the size of the tree a group may have.
const (
	// MaxLeaves is the largest number of leaves a ratchet tree may have.
	MaxLeaves = 1 << 18
	// maxTreeNodes is the node width of a tree with MaxLeaves leaves.
	maxTreeNodes = 2*MaxLeaves - 1
	// maxListItems caps the elements of any other decoded list.
	maxListItems = 1 << 16
)

// errEncoding is set on a Builder asked to encode an inconsistent value.
var errEncoding = errors.New("mls: value cannot be encoded")

// unmarshalPtr is the constraint of generic list decoders: *T decodes itself.
type unmarshalPtr[T any] interface {
	*T
	wire.Unmarshaler
}

// marshalPtr is the constraint of generic list encoders: *T encodes itself.
type marshalPtr[T any] interface {
	*T
	wire.Marshaler
}

// readList reads a <V> vector of T with at most max elements.
func readList[T any, P unmarshalPtr[T]](s *cryptobyte.String, out *[]T, max int) bool {
	var body cryptobyte.String
	if !wire.ReadVector(s, &body) {
		return false
	}
	var list []T
	for !body.Empty() {
		if len(list) >= max {
			return false
		}
		var v T
		if !P(&v).UnmarshalWire(&body) {
			return false
		}
		list = append(list, v)
	}
	*out = list
	return true
}

// addList writes list as a <V> vector.
func addList[T any, P marshalPtr[T]](b *cryptobyte.Builder, list []T) {
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for i := range list {
			P(&list[i]).MarshalWire(b)
		}
	})
}

// readUint16List reads a <V> vector of uint16.
func readUint16List[T ~uint16](s *cryptobyte.String, out *[]T) bool {
	var body cryptobyte.String
	if !wire.ReadVector(s, &body) || len(body)%2 != 0 {
		return false
	}
	list := make([]T, 0, len(body)/2)
	for !body.Empty() {
		var v uint16
		body.ReadUint16(&v)
		list = append(list, T(v))
	}
	*out = list
	return true
}

// addUint16List writes a <V> vector of uint16.
func addUint16List[T ~uint16](b *cryptobyte.Builder, list []T) {
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, v := range list {
			b.AddUint16(uint16(v))
		}
	})
}

// readUint32List reads a <V> vector of uint32.
func readUint32List(s *cryptobyte.String, out *[]uint32) bool {
	var body cryptobyte.String
	if !wire.ReadVector(s, &body) || len(body)%4 != 0 {
		return false
	}
	list := make([]uint32, 0, len(body)/4)
	for !body.Empty() {
		var v uint32
		body.ReadUint32(&v)
		list = append(list, v)
	}
	*out = list
	return true
}

// addUint32List writes a <V> vector of uint32.
func addUint32List(b *cryptobyte.Builder, list []uint32) {
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, v := range list {
			b.AddUint32(v)
		}
	})
}

// marshal encodes v, for internal callers that hash or sign the encoding.
func marshal(v wire.Marshaler) ([]byte, error) {
	return wire.Marshal(v)
}

// cloneBytes returns a copy of b that does not alias it (nil stays nil).
func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}
