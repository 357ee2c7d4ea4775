package mls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// The version bytes of the Member storage encoding. A Member whose epoch a
// ReInit commit started is stored in format 2, which adds that ReInit at
// the end; every other Member in format 1, exactly as before format 2
// existed, so that states stored by older code decode unchanged and older
// code still reads every state without a ReInit.
const (
	memberFormat       = 1
	memberFormatReInit = 2
)

// ErrMemberEncoding is wrapped by every failure to decode a stored Member.
var ErrMemberEncoding = errors.New("mls: invalid stored member")

// ErrSignerNotExportable is returned by Member.MarshalBinary when the
// member's signer does not hold its private key in memory (a hardware or
// remote signer) or is of a type this package cannot encode. Such a member
// cannot be stored.
var ErrSignerNotExportable = errors.New("mls: signer private key cannot be exported")

// MemberOptions says how DecodeMember restores a Member: what cannot be
// stored with it.
type MemberOptions struct {
	// PSKs resolves the external PSKs later commits name; nil when the
	// group uses none. Resumption PSKs of the group are stored with the
	// Member.
	PSKs PSKLookup
}

// MarshalBinary encodes m for storage, so that a client can keep it on
// disk and continue after a restart (DecodeMember):
//
//	struct {
//	    uint8 format;                     // 1, or 2 with a ReInit
//	    opaque group_state<V>;            // GroupState.MarshalBinary
//	    uint32 leaf_index;
//	    optional<opaque signature_private_key<V>>;
//	    opaque path_private_keys<V><V>;   // ascending public key
//	    opaque init_secret<V>;
//	    opaque sender_data_secret<V>;
//	    opaque exporter_secret<V>;
//	    opaque epoch_authenticator<V>;
//	    opaque external_secret<V>;
//	    opaque membership_key<V>;
//	    StoredSecretTree secret_tree;
//	    StoredResumptionPSK resumption_psks<V>; // ascending epoch
//	    select (format) {
//	        case 1: struct {};
//	        case 2: ReInit reinit;        // Member.ReInit
//	    };
//	}
//	struct { uint64 epoch; opaque psk<V>; } StoredResumptionPSK;
//
//	struct {
//	    uint32 leaves;
//	    StoredNodeSecret nodes<V>;      // ascending node index
//	    StoredLeafRatchets ratchets<V>; // ascending leaf index
//	} StoredSecretTree;
//	struct { uint32 node; opaque secret<V>; } StoredNodeSecret;
//	struct {
//	    uint32 leaf;
//	    StoredRatchet handshake;
//	    StoredRatchet application;
//	} StoredLeafRatchets;
//	struct {
//	    uint32 generation;              // the next one to use
//	    opaque secret<V>;               // the ratchet secret of that generation
//	    StoredKey skipped<V>;           // ascending generation, below generation
//	} StoredRatchet;
//	struct { uint32 generation; opaque key<V>; opaque nonce<V>; } StoredKey;
//
// The signature private key is the Ed25519 seed or the big-endian ECDSA
// scalar; a signer that cannot give it out fails with
// ErrSignerNotExportable. The path private keys are HPKE keys in their RFC
// 9180 SerializePrivateKey form.
//
// Forward secrecy: of the epoch secrets only those the member still needs
// are stored. The encryption_secret is not: the secret tree is stored in
// its current state instead, with the node secrets not yet split, each
// sender's ratchets at their next generation and the keys kept for
// out-of-order messages, so a key consumed before the encoding cannot be
// derived from it (RFC 9420 §9.2). A key consumed after the encoding can be
// used again by a Member decoded from it: a client stores its Member after
// every Protect before the message leaves, and after every Unprotect. The
// joiner, welcome, epoch and confirmation secrets, which only serve while
// entering the epoch, are not stored either.
//
// m is encoded as one consistent snapshot: the secret tree shared by the
// Member values of the epoch is encoded under its lock.
func (m *Member) MarshalBinary() ([]byte, error) {
	s := m.state.s
	state, err := m.state.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encoding member: %w", err)
	}
	var sigKey []byte
	if m.signer != nil {
		if sigKey, err = exportSigner(s, m.signer); err != nil {
			return nil, fmt.Errorf("encoding member: %w", err)
		}
	}
	pubs := make([]string, 0, len(m.keys))
	for pub := range m.keys {
		pubs = append(pubs, pub)
	}
	slices.Sort(pubs)
	privs := make([][]byte, len(pubs))
	for i, pub := range pubs {
		k := m.keys[pub]
		if !bytes.Equal(k.PublicKey().Bytes(), []byte(pub)) {
			return nil, errors.New("encoding member: a path private key does not match its public key")
		}
		if privs[i], err = k.Bytes(); err != nil {
			return nil, fmt.Errorf("encoding member: exporting path private key: %w", err)
		}
	}
	epochs := make([]uint64, 0, len(m.resumption))
	for e := range m.resumption {
		epochs = append(epochs, e)
	}
	slices.Sort(epochs)

	b := cryptobyte.NewBuilder(make([]byte, 0, len(state)+1024))
	if m.reinit != nil {
		b.AddUint8(memberFormatReInit)
	} else {
		b.AddUint8(memberFormat)
	}
	wire.AddOpaque(b, state)
	b.AddUint32(m.leaf)
	wire.AddOptional(b, sigKey != nil)
	if sigKey != nil {
		wire.AddOpaque(b, sigKey)
	}
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, p := range privs {
			wire.AddOpaque(b, p)
		}
	})
	sec := m.secrets
	for _, v := range [][]byte{sec.InitSecret, sec.SenderDataSecret, sec.ExporterSecret, sec.EpochAuthenticator,
		sec.ExternalSecret, sec.MembershipKey} {
		wire.AddOpaque(b, v)
	}
	if err := m.withSecretTree(func(st *SecretTree) error {
		st.marshalStored(b)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("encoding member: %w", err)
	}
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, e := range epochs {
			b.AddUint64(e)
			wire.AddOpaque(b, m.resumption[e])
		}
	})
	if m.reinit != nil {
		m.reinit.MarshalWire(b)
	}
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding member: %w", err)
	}
	return out, nil
}

// exportSigner returns the private key bytes of signer in the encoding
// ParseSignaturePrivateKey reads, for the signature scheme of s.
func exportSigner(s *suite, signer crypto.Signer) ([]byte, error) {
	switch k := signer.(type) {
	case ed25519.PrivateKey:
		if s.sig != sigEd25519 || len(k) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("%w: ed25519 key for suite %d", ErrSignerNotExportable, uint16(s.id))
		}
		return cloneBytes(k.Seed()), nil
	case *ed25519.PrivateKey:
		if k == nil {
			return nil, fmt.Errorf("%w: nil ed25519 key", ErrSignerNotExportable)
		}
		return exportSigner(s, *k)
	case *ecdsa.PrivateKey:
		if k == nil || s.sig != sigECDSA || k.Curve != s.ecCurve {
			return nil, fmt.Errorf("%w: ecdsa key on another curve than suite %d's", ErrSignerNotExportable, uint16(s.id))
		}
		raw, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrSignerNotExportable, err)
		}
		return raw, nil
	default:
		return nil, fmt.Errorf("%w: signer of type %T", ErrSignerNotExportable, signer)
	}
}

// signerMatches reports whether signer's public key is pub, a signature
// key in its MLS encoding.
func signerMatches(s *suite, signer crypto.Signer, pub []byte) bool {
	switch k := signer.Public().(type) {
	case ed25519.PublicKey:
		return bytes.Equal(k, pub)
	case *ecdsa.PublicKey:
		p, err := s.parseECDSAPublicKey(pub)
		return err == nil && p.Equal(k)
	default:
		return false
	}
}

// DecodeMember decodes a Member stored by MarshalBinary. The encoding is
// trusted to come from this package through the caller's own storage: the
// group state is checked as DecodeGroupState checks it, and the rest for
// shape and consistency (the leaf is ours, the signer holds its signature
// key, each secret has the suite's size, the secret tree is one this
// package could have left), but no signature is verified again. Whatever
// decodes encodes back to the same bytes. The result does not alias data
// and has a secret tree of its own, not shared with any other Member.
func DecodeMember(data []byte, opts MemberOptions) (*Member, error) {
	m, err := decodeMember(data, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMemberEncoding, err)
	}
	return m, nil
}

func decodeMember(data []byte, opts MemberOptions) (*Member, error) {
	in := cryptobyte.String(data)
	var (
		format     uint8
		stateBytes []byte
		leaf       uint32
		hasSigner  bool
		sigKey     []byte
		privList   cryptobyte.String
		sec        EpochSecrets
	)
	if !in.ReadUint8(&format) {
		return nil, wire.ErrMalformed
	}
	if format != memberFormat && format != memberFormatReInit {
		return nil, fmt.Errorf("format %d, want %d or %d", format, memberFormat, memberFormatReInit)
	}
	if !wire.ReadOpaque(&in, &stateBytes) || !in.ReadUint32(&leaf) || !wire.ReadOptional(&in, &hasSigner) ||
		(hasSigner && !wire.ReadOpaque(&in, &sigKey)) || !wire.ReadVector(&in, &privList) {
		return nil, wire.ErrMalformed
	}
	for _, out := range []*[]byte{&sec.InitSecret, &sec.SenderDataSecret, &sec.ExporterSecret, &sec.EpochAuthenticator,
		&sec.ExternalSecret, &sec.MembershipKey} {
		if !wire.ReadOpaque(&in, out) {
			return nil, wire.ErrMalformed
		}
	}
	g, err := DecodeGroupState(stateBytes)
	if err != nil {
		return nil, err
	}
	if again, err := g.MarshalBinary(); err != nil || !bytes.Equal(again, stateBytes) {
		return nil, errors.New("group state not in its canonical encoding")
	}
	s := g.s
	for _, v := range []*[]byte{&sec.InitSecret, &sec.SenderDataSecret, &sec.ExporterSecret, &sec.EpochAuthenticator,
		&sec.ExternalSecret, &sec.MembershipKey} {
		if len(*v) != s.nh {
			return nil, fmt.Errorf("epoch secret of %d bytes, want %d", len(*v), s.nh)
		}
		*v = cloneBytes(*v)
	}
	if leaf >= g.tree.leaves || g.tree.leaf(leaf) == nil {
		return nil, fmt.Errorf("leaf %d is not a member of the group", leaf)
	}
	own := g.tree.leaf(leaf)
	m := &Member{state: g, leaf: leaf, keys: pathKeys{}, secrets: &sec, psks: opts.PSKs,
		resumption: map[uint64][]byte{}}
	if hasSigner {
		if m.signer, err = g.CipherSuite().ParseSignaturePrivateKey(sigKey); err != nil {
			return nil, err
		}
		if again, err := exportSigner(s, m.signer); err != nil || !bytes.Equal(again, sigKey) {
			return nil, errors.New("signature private key not in its canonical encoding")
		}
		if !signerMatches(s, m.signer, own.SignatureKey) {
			return nil, fmt.Errorf("signature private key is not that of leaf %d", leaf)
		}
	}
	var prev []byte
	for !privList.Empty() {
		var raw []byte
		if len(m.keys) >= maxListItems || !wire.ReadOpaque(&privList, &raw) {
			return nil, wire.ErrMalformed
		}
		k, err := s.kem.NewPrivateKey(raw)
		if err != nil {
			return nil, fmt.Errorf("path private key: %w", err)
		}
		if again, err := k.Bytes(); err != nil || !bytes.Equal(again, raw) {
			return nil, errors.New("path private key not in its canonical encoding")
		}
		pub := k.PublicKey().Bytes()
		if prev != nil && bytes.Compare(prev, pub) >= 0 {
			return nil, errors.New("path private keys not in ascending order of public key")
		}
		prev = pub
		m.keys[string(pub)] = k
	}
	if _, ok := m.keys[string(own.EncryptionKey)]; !ok {
		return nil, fmt.Errorf("no private key for leaf %d's encryption key", leaf)
	}
	st, err := readStoredSecretTree(&in, s, g.tree.leaves)
	if err != nil {
		return nil, err
	}
	m.epoch = &epochKeys{tree: st}
	var psks cryptobyte.String
	if !wire.ReadVector(&in, &psks) {
		return nil, wire.ErrMalformed
	}
	if format == memberFormatReInit {
		start := in
		r := new(ReInit)
		if !r.UnmarshalWire(&in) {
			return nil, wire.ErrMalformed
		}
		if again, err := marshal(r); err != nil || !bytes.Equal(again, start[:len(start)-len(in)]) {
			return nil, errors.New("reinit not in its canonical encoding")
		}
		m.reinit = r.clone()
	}
	if !in.Empty() {
		return nil, wire.ErrMalformed
	}
	epoch := g.Epoch()
	for first, prev := true, uint64(0); !psks.Empty(); first = false {
		var e uint64
		var psk []byte
		if !psks.ReadUint64(&e) || !wire.ReadOpaque(&psks, &psk) {
			return nil, wire.ErrMalformed
		}
		if !first && e <= prev {
			return nil, errors.New("resumption psks not in ascending order of epoch")
		}
		if e > epoch || epoch-e >= maxResumptionEpochs {
			return nil, fmt.Errorf("resumption psk of epoch %d kept in epoch %d", e, epoch)
		}
		if len(psk) != s.nh {
			return nil, fmt.Errorf("resumption psk of %d bytes, want %d", len(psk), s.nh)
		}
		prev = e
		m.resumption[e] = cloneBytes(psk)
	}
	if sec.ResumptionPSK = m.resumption[epoch]; sec.ResumptionPSK == nil {
		return nil, fmt.Errorf("no resumption psk for the current epoch %d", epoch)
	}
	return m, nil
}

// marshalStored encodes the secret tree's current state as a
// StoredSecretTree (see Member.MarshalBinary).
func (t *SecretTree) marshalStored(b *cryptobyte.Builder) {
	b.AddUint32(t.leaves)
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, x := range slices.Sorted(maps.Keys(t.nodes)) {
			b.AddUint32(x)
			wire.AddOpaque(b, t.nodes[x])
		}
	})
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, i := range slices.Sorted(maps.Keys(t.ratchet)) {
			b.AddUint32(i)
			for _, r := range t.ratchet[i] {
				b.AddUint32(r.generation)
				wire.AddOpaque(b, r.secret)
				wire.AddVector(b, func(b *cryptobyte.Builder) {
					for _, g := range slices.Sorted(maps.Keys(r.skipped)) {
						k := r.skipped[g]
						b.AddUint32(g)
						wire.AddOpaque(b, k.Key)
						wire.AddOpaque(b, k.Nonce)
					}
				})
			}
		}
	})
}

// readStoredSecretTree decodes a secret tree encoded by marshalStored for
// a group of the given leaf count, refusing any state the tree could not
// have reached: a node secret below another or above a leaf whose ratchets
// were derived, secrets of the wrong size, skipped keys at or past their
// ratchet's generation or too many of them. The result does not alias in.
func readStoredSecretTree(in *cryptobyte.String, s *suite, leaves uint32) (*SecretTree, error) {
	var n uint32
	var nodes, ratchets cryptobyte.String
	if !in.ReadUint32(&n) || !wire.ReadVector(in, &nodes) || !wire.ReadVector(in, &ratchets) {
		return nil, wire.ErrMalformed
	}
	if n != leaves {
		return nil, fmt.Errorf("secret tree of %d leaves for a tree of %d", n, leaves)
	}
	t := &SecretTree{s: s, leaves: n, nodes: map[uint32][]byte{}, ratchet: map[uint32]*[2]*ratchet{}}
	width := 2*n - 1
	for first, prev := true, uint32(0); !nodes.Empty(); first = false {
		var x uint32
		var secret []byte
		if !nodes.ReadUint32(&x) || !wire.ReadOpaque(&nodes, &secret) {
			return nil, wire.ErrMalformed
		}
		if (!first && x <= prev) || x >= width {
			return nil, fmt.Errorf("secret tree node %d out of order or range", x)
		}
		if len(secret) != s.nh {
			return nil, fmt.Errorf("secret tree node %d: secret of %d bytes, want %d", x, len(secret), s.nh)
		}
		prev = x
		t.nodes[x] = cloneBytes(secret)
	}
	for first, prev := true, uint32(0); !ratchets.Empty(); first = false {
		var i uint32
		if !ratchets.ReadUint32(&i) {
			return nil, wire.ErrMalformed
		}
		if (!first && i <= prev) || i >= n {
			return nil, fmt.Errorf("secret tree ratchets of leaf %d out of order or range", i)
		}
		prev = i
		rs := new([2]*ratchet)
		for k := range rs {
			r, err := readStoredRatchet(&ratchets, s)
			if err != nil {
				return nil, fmt.Errorf("secret tree leaf %d: %w", i, err)
			}
			rs[k] = r
		}
		t.ratchet[i] = rs
	}
	// Derived secrets are deleted as they are split: no secret may sit
	// above another one or above a leaf whose ratchets exist.
	check := func(x uint32) error {
		for _, y := range directPath(x, n) {
			if _, ok := t.nodes[y]; ok {
				return fmt.Errorf("secret tree node %d kept above node %d", y, x)
			}
		}
		return nil
	}
	for x := range t.nodes {
		if err := check(x); err != nil {
			return nil, err
		}
	}
	for i := range t.ratchet {
		if _, ok := t.nodes[leafNode(i)]; ok {
			return nil, fmt.Errorf("secret tree leaf %d kept with its ratchets", i)
		}
		if err := check(leafNode(i)); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// readStoredRatchet decodes one StoredRatchet.
func readStoredRatchet(in *cryptobyte.String, s *suite) (*ratchet, error) {
	r := &ratchet{}
	var secret []byte
	var skipped cryptobyte.String
	if !in.ReadUint32(&r.generation) || !wire.ReadOpaque(in, &secret) || !wire.ReadVector(in, &skipped) {
		return nil, wire.ErrMalformed
	}
	if len(secret) != s.nh {
		return nil, fmt.Errorf("ratchet secret of %d bytes, want %d", len(secret), s.nh)
	}
	r.secret = cloneBytes(secret)
	for first, prev := true, uint32(0); !skipped.Empty(); first = false {
		var k KeyAndNonce
		if !skipped.ReadUint32(&k.Generation) || !wire.ReadOpaque(&skipped, &k.Key) || !wire.ReadOpaque(&skipped, &k.Nonce) {
			return nil, wire.ErrMalformed
		}
		if (!first && k.Generation <= prev) || k.Generation >= r.generation {
			return nil, fmt.Errorf("skipped key of generation %d out of order or not behind generation %d", k.Generation, r.generation)
		}
		if len(r.skipped) >= maxSkippedKeys {
			return nil, fmt.Errorf("more than %d skipped keys", maxSkippedKeys)
		}
		if len(k.Key) != s.nk || len(k.Nonce) != s.nn {
			return nil, fmt.Errorf("skipped key of generation %d has the wrong size", k.Generation)
		}
		prev = k.Generation
		if r.skipped == nil {
			r.skipped = make(map[uint32]KeyAndNonce)
		}
		k.Key, k.Nonce = cloneBytes(k.Key), cloneBytes(k.Nonce)
		r.skipped[k.Generation] = k
	}
	return r, nil
}
