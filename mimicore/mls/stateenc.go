package mls

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// stateFormat is the version byte of the GroupState storage encoding.
const stateFormat = 1

// ErrStateEncoding is wrapped by every failure to decode a stored
// GroupState.
var ErrStateEncoding = errors.New("mls: invalid stored group state")

// MarshalBinary encodes g for storage:
//
//	struct {
//	    uint8 format = 1;
//	    GroupContext context;
//	    opaque interim_transcript_hash<V>;
//	    opaque confirmation_tag<V>;
//	    optional<Node> ratchet_tree<V>;
//	}
func (g *GroupState) MarshalBinary() ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 1024))
	b.AddUint8(stateFormat)
	g.ctx.MarshalWire(b)
	wire.AddOpaque(b, g.interim)
	wire.AddOpaque(b, g.confTag)
	rt := g.tree.ratchetTree()
	rt.MarshalWire(b)
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding group state: %w", err)
	}
	return out, nil
}

// DecodeGroupState decodes a state stored by MarshalBinary. The encoding is
// trusted to come from this package: the tree's shape, its hash against the
// GroupContext and the context extensions are checked, but leaf signatures
// and parent hashes are not verified again. The result does not alias data.
func DecodeGroupState(data []byte) (*GroupState, error) {
	s := cryptobyte.String(data)
	var format uint8
	var ctx GroupContext
	var interim, confTag []byte
	var rt RatchetTree
	if !s.ReadUint8(&format) || format != stateFormat || !ctx.UnmarshalWire(&s) ||
		!wire.ReadOpaque(&s, &interim) || !wire.ReadOpaque(&s, &confTag) || !rt.UnmarshalWire(&s) || !s.Empty() {
		return nil, fmt.Errorf("%w: %w", ErrStateEncoding, wire.ErrMalformed)
	}
	suite, err := ctx.CipherSuite.params()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	tree, err := TreeFromRatchetTree(ctx.CipherSuite, rt)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	g, err := newStateFromParts(suite, ctx.clone(), tree, cloneBytes(interim), cloneBytes(confTag))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	return g, nil
}
