package mls

import (
	"crypto"
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
)

// PopulatedGroupOptions describes the group NewPopulatedGroup builds.
type PopulatedGroupOptions struct {
	// CipherSuite is the group's cipher suite. Required.
	CipherSuite CipherSuite
	// GroupID is the group's ID. Required.
	GroupID []byte
	// Extensions are the GroupContext extensions. Nil for none. They are
	// copied.
	Extensions Extensions
	// Leaves are the members' leaf nodes in leaf order, as their
	// KeyPackages carry them, each signed with its signer. Their
	// credentials, signature keys, capabilities and extensions (a client
	// binding, say) are kept; their encryption keys, source, parent hashes
	// and signatures are replaced, as each member's commit replaced them.
	// Required: 1 to MaxLeaves leaves. They are not modified.
	Leaves []*LeafNode
	// Signers hold the private keys of the leaves' signature keys, in the
	// same order. Required.
	Signers []crypto.Signer
	// Members are the leaf indexes whose Member NewPopulatedGroup returns,
	// in that order.
	Members []uint32
}

// NewPopulatedGroup builds a group of len(opts.Leaves) members in the state
// the following history leaves it in: one commit added every member, then
// each member committed an UpdatePath once, in leaf order. Every parent
// node is then set and no leaf is unmerged, so a commit encrypts its path
// secrets to O(log n) nodes, as in a long-lived group. Replaying that
// history costs O(n²) (each member verifies the whole tree when it joins,
// and follows every later commit), which a benchmark or load test of a
// group of 10,000 cannot afford; NewPopulatedGroup computes its end state
// directly, in O(n log n) hashing and O(n) signatures and key derivations.
//
// The tree is what the history would give: each leaf signed by its member
// for its position in this group, each parent node parent-hash valid on
// the path of the member who set it last, each key pair of the final tree
// derived from a fresh secret like an UpdatePath's. What cannot be
// reproduced without the history is random: the confirmed transcript hash
// (nothing to hash) and the init secret of the key schedule. The epoch is
// len(Leaves)+1.
//
// The returned Members (those of opts.Members) hold what members who
// followed the history would hold: the private keys of their leaf and
// direct path, and the epoch's secrets. So they can commit, follow each
// other's commits and exchange messages. The other members' private keys
// are not kept.
//
// It is meant for benchmarks and load tests: real groups are made with
// NewGroup and grow by commits.
func NewPopulatedGroup(opts PopulatedGroupOptions) (*GroupState, []*Member, error) {
	fail := func(err error) (*GroupState, []*Member, error) {
		return nil, nil, fmt.Errorf("building populated group: %w", err)
	}
	s, err := opts.CipherSuite.params()
	if err != nil {
		return fail(err)
	}
	n := uint32(len(opts.Leaves))
	if n == 0 || len(opts.Leaves) > MaxLeaves || len(opts.Signers) != len(opts.Leaves) || len(opts.GroupID) == 0 {
		return fail(errors.New("a group id and 1 to MaxLeaves leaves, each with its signer, are required"))
	}
	for _, j := range opts.Members {
		if j >= n {
			return fail(fmt.Errorf("member %d is not a leaf of %d", j, n))
		}
	}
	size := uint32(1)
	for size < n {
		size *= 2
	}
	t := newTree(s, size)
	for i, l := range opts.Leaves {
		if l == nil || opts.Signers[i] == nil || !signerMatches(s, opts.Signers[i], l.SignatureKey) {
			return fail(fmt.Errorf("leaf %d: no leaf, or its signer does not hold its signature key", i))
		}
		if err := validateLeafStandalone(s, l, nil, 0); err != nil {
			return fail(fmt.Errorf("leaf %d: %w", i, err))
		}
		t.setLeaf(uint32(i), l.clone())
	}

	// Which member sets each parent node last: its key pair is the one
	// the final tree holds. The keys of earlier versions, overwritten
	// later, are only hashed into parent hashes.
	last := make(map[uint32]uint32)
	for i := range n {
		fdp, _ := t.filteredDirectPath(i)
		for _, x := range fdp {
			last[x] = i
		}
	}
	nodeKeys := make(map[uint32]hpke.PrivateKey)
	leafKeys := make(map[uint32]hpke.PrivateKey)
	want := make(map[uint32]bool, len(opts.Members))
	for _, j := range opts.Members {
		want[j] = true
	}
	for i := range n {
		fdp, copath := t.filteredDirectPath(i)
		pubs := make([][]byte, len(fdp))
		for k, x := range fdp {
			if last[x] != i {
				if pubs[k], err = interimKey(s); err != nil {
					return fail(err)
				}
				continue
			}
			priv, pub, err := freshKeyPair(s)
			if err != nil {
				return fail(err)
			}
			nodeKeys[x], pubs[k] = priv, pub
		}
		ph, err := t.setPathNodes(i, fdp, copath, pubs)
		if err != nil {
			return fail(err)
		}
		priv, pub, err := freshKeyPair(s)
		if err != nil {
			return fail(err)
		}
		if want[i] {
			leafKeys[i] = priv
		}
		l := t.leaf(i).clone()
		l.EncryptionKey, l.Source, l.ParentHash, l.Lifetime = pub, SourceCommit, ph, Lifetime{}
		if err := l.Sign(s.id, opts.Signers[i], opts.GroupID, i); err != nil {
			return fail(fmt.Errorf("signing leaf %d: %w", i, err))
		}
		t.setLeaf(i, l)
	}

	th, err := t.rootHash()
	if err != nil {
		return fail(err)
	}
	confirmed, initSecret, commitSecret := make([]byte, s.nh), make([]byte, s.nh), make([]byte, s.nh)
	for _, b := range [][]byte{confirmed, initSecret, commitSecret} {
		if _, err := rand.Read(b); err != nil {
			return fail(err)
		}
	}
	ctx := GroupContext{Version: MLS10, CipherSuite: s.id, GroupID: cloneBytes(opts.GroupID), Epoch: uint64(n) + 1,
		TreeHash: th, ConfirmedTranscriptHash: confirmed, Extensions: opts.Extensions.clone()}
	secrets, err := s.id.DeriveEpochSecrets(initSecret, commitSecret, nil, &ctx)
	if err != nil {
		return fail(err)
	}
	confTag := s.mac(secrets.ConfirmationKey, confirmed)
	interim, err := s.interimTranscriptHash(confirmed, confTag)
	if err != nil {
		return fail(err)
	}
	g, err := newStateFromParts(s, ctx, t, interim, confTag)
	if err != nil {
		return fail(err)
	}
	members := make([]*Member, len(opts.Members))
	for k, j := range opts.Members {
		keys := pathKeys{string(t.leaf(j).EncryptionKey): leafKeys[j]}
		for _, x := range directPath(leafNode(j), size) {
			if p := t.parentNode(x); p != nil {
				keys[string(p.EncryptionKey)] = nodeKeys[x]
			}
		}
		m := &Member{leaf: j, signer: opts.Signers[j]}
		members[k] = m.successor(g, keys, secrets)
	}
	return g, members, nil
}

// freshKeyPair derives an HPKE key pair from a fresh random secret, as an
// UpdatePath derives each node's from its path secret.
func freshKeyPair(s *suite) (hpke.PrivateKey, []byte, error) {
	secret := make([]byte, s.nh)
	if _, err := rand.Read(secret); err != nil {
		return nil, nil, err
	}
	return s.deriveKeyPair(secret)
}

// interimKey returns the public key of a parent node version that a later
// commit replaces: only its hash reaches the final tree, so nobody needs
// its private key. For X25519 any 32 bytes are a public key.
func interimKey(s *suite) ([]byte, error) {
	if s.curve == ecdh.X25519() {
		b := make([]byte, 32)
		_, err := rand.Read(b)
		return b, err
	}
	_, pub, err := freshKeyPair(s)
	return pub, err
}
