package mls

import (
	"errors"
	"fmt"
)

// ErrSecretTree is wrapped by every secret tree failure: an unknown leaf, a
// generation too far ahead or already used.
var ErrSecretTree = errors.New("mls: secret tree")

// maxForwardRatchet bounds how far a ratchet may be advanced in one go, so
// a forged generation cannot make a receiver spin.
const maxForwardRatchet = 1 << 12

// maxSkippedKeys bounds the out-of-order keys a ratchet keeps.
const maxSkippedKeys = 1 << 10

// RatchetType selects the handshake or the application ratchet of a leaf.
type RatchetType uint8

// The two ratchets of each leaf (RFC 9420 §9.1).
const (
	HandshakeRatchet RatchetType = iota
	ApplicationRatchet
)

// KeyAndNonce is one AEAD key and nonce of a ratchet.
type KeyAndNonce struct {
	Generation uint32
	Key, Nonce []byte
}

// ratchet is one hash ratchet of a leaf (RFC 9420 §9.1).
type ratchet struct {
	secret     []byte
	generation uint32
	skipped    map[uint32]KeyAndNonce
}

// SecretTree derives the per-sender message keys of an epoch from its
// encryption_secret (RFC 9420 §9). Consumed secrets are erased: inner node
// secrets once both children exist, ratchet secrets once advanced, and keys
// once returned. It is not safe for concurrent use.
type SecretTree struct {
	s       *suite
	leaves  uint32
	nodes   map[uint32][]byte
	ratchet map[uint32]*[2]*ratchet
}

// NewSecretTree returns the secret tree of an epoch with n leaves (a power
// of two) rooted at encryptionSecret.
func (cs CipherSuite) NewSecretTree(encryptionSecret []byte, n uint32) (*SecretTree, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	if n == 0 || n > MaxLeaves || n&(n-1) != 0 {
		return nil, fmt.Errorf("%w: %d leaves", ErrSecretTree, n)
	}
	return &SecretTree{
		s: s, leaves: n,
		nodes:   map[uint32][]byte{root(n): cloneBytes(encryptionSecret)},
		ratchet: make(map[uint32]*[2]*ratchet),
	}, nil
}

// leafRatchets returns the two ratchets of leaf i, deriving them on first
// use from the nearest ancestor secret still held.
func (t *SecretTree) leafRatchets(i uint32) (*[2]*ratchet, error) {
	if i >= t.leaves {
		return nil, fmt.Errorf("%w: leaf %d out of range", ErrSecretTree, i)
	}
	if r, ok := t.ratchet[i]; ok {
		return r, nil
	}
	x := leafNode(i)
	path := append([]uint32{x}, directPath(x, t.leaves)...)
	top := -1
	for k, y := range path {
		if _, ok := t.nodes[y]; ok {
			top = k
			break
		}
	}
	if top < 0 {
		return nil, fmt.Errorf("%w: leaf %d secrets already consumed", ErrSecretTree, i)
	}
	for k := top; k > 0; k-- {
		y := path[k]
		secret := t.nodes[y]
		l, err := t.s.expandWithLabel(secret, "tree", []byte("left"), t.s.nh)
		if err != nil {
			return nil, err
		}
		r, err := t.s.expandWithLabel(secret, "tree", []byte("right"), t.s.nh)
		if err != nil {
			return nil, err
		}
		t.nodes[left(y)], t.nodes[right(y)] = l, r
		delete(t.nodes, y)
	}
	leafSecret := t.nodes[x]
	delete(t.nodes, x)
	hs, err := t.s.expandWithLabel(leafSecret, "handshake", nil, t.s.nh)
	if err != nil {
		return nil, err
	}
	as, err := t.s.expandWithLabel(leafSecret, "application", nil, t.s.nh)
	if err != nil {
		return nil, err
	}
	r := &[2]*ratchet{{secret: hs}, {secret: as}}
	t.ratchet[i] = r
	return r, nil
}

// keyAt returns the key and nonce of the current generation without
// advancing.
func (t *SecretTree) keyAt(r *ratchet) (KeyAndNonce, error) {
	key, err := t.s.deriveTreeSecret(r.secret, "key", r.generation, t.s.nk)
	if err != nil {
		return KeyAndNonce{}, err
	}
	nonce, err := t.s.deriveTreeSecret(r.secret, "nonce", r.generation, t.s.nn)
	if err != nil {
		return KeyAndNonce{}, err
	}
	return KeyAndNonce{Generation: r.generation, Key: key, Nonce: nonce}, nil
}

// advance moves r to the next generation, erasing the old secret.
func (t *SecretTree) advance(r *ratchet) error {
	next, err := t.s.deriveTreeSecret(r.secret, "secret", r.generation, t.s.nh)
	if err != nil {
		return err
	}
	r.secret = next
	r.generation++
	return nil
}

// Next returns the key and nonce of leaf i's next generation for sending
// and advances the ratchet.
func (t *SecretTree) Next(i uint32, typ RatchetType) (KeyAndNonce, error) {
	rs, err := t.leafRatchets(i)
	if err != nil {
		return KeyAndNonce{}, err
	}
	r := rs[typ&1]
	k, err := t.keyAt(r)
	if err != nil {
		return KeyAndNonce{}, err
	}
	return k, t.advance(r)
}

// Get returns the key and nonce of leaf i at generation g for receiving.
// Keys of skipped generations are kept (up to a bound) for out-of-order
// messages; each key is returned at most once.
func (t *SecretTree) Get(i uint32, typ RatchetType, g uint32) (KeyAndNonce, error) {
	rs, err := t.leafRatchets(i)
	if err != nil {
		return KeyAndNonce{}, err
	}
	r := rs[typ&1]
	if g < r.generation {
		k, ok := r.skipped[g]
		if !ok {
			return KeyAndNonce{}, fmt.Errorf("%w: leaf %d generation %d already used or expired", ErrSecretTree, i, g)
		}
		delete(r.skipped, g)
		return k, nil
	}
	if g-r.generation > maxForwardRatchet {
		return KeyAndNonce{}, fmt.Errorf("%w: leaf %d generation %d too far ahead of %d", ErrSecretTree, i, g, r.generation)
	}
	for r.generation < g {
		if len(r.skipped) < maxSkippedKeys {
			k, err := t.keyAt(r)
			if err != nil {
				return KeyAndNonce{}, err
			}
			if r.skipped == nil {
				r.skipped = make(map[uint32]KeyAndNonce)
			}
			r.skipped[r.generation] = k
		}
		if err := t.advance(r); err != nil {
			return KeyAndNonce{}, err
		}
	}
	k, err := t.keyAt(r)
	if err != nil {
		return KeyAndNonce{}, err
	}
	return k, t.advance(r)
}

// SenderDataKeys returns the key and nonce that protect a PrivateMessage's
// sender data (RFC 9420 §6.3.2): ExpandWithLabel(sender_data_secret,
// "key"|"nonce", ciphertext_sample, Nk|Nn) with the first Nh bytes of the
// ciphertext as sample.
func (cs CipherSuite) SenderDataKeys(senderDataSecret, ciphertext []byte) (key, nonce []byte, err error) {
	s, err := cs.params()
	if err != nil {
		return nil, nil, err
	}
	return s.senderDataKeys(senderDataSecret, ciphertext)
}

func (s *suite) senderDataKeys(senderDataSecret, ciphertext []byte) (key, nonce []byte, err error) {
	sample := ciphertext
	if len(sample) > s.nh {
		sample = sample[:s.nh]
	}
	if key, err = s.expandWithLabel(senderDataSecret, "key", sample, s.nk); err != nil {
		return nil, nil, err
	}
	if nonce, err = s.expandWithLabel(senderDataSecret, "nonce", sample, s.nn); err != nil {
		return nil, nil, err
	}
	return key, nonce, nil
}
