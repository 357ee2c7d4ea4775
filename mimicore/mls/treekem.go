package mls

import (
	"bytes"
	"crypto/hpke"
	"fmt"
)

// pathKeys holds the HPKE private keys a client knows for tree nodes,
// keyed by the encoded public key so that a key only matches the node it
// belongs to.
type pathKeys map[string]hpke.PrivateKey

// derivePathKeys derives the node key pairs of nodes from pathSecret (RFC
// 9420 §7.4), checking each public key against the tree, and returns the
// commit secret that follows the last node.
func (t *Tree) derivePathKeys(pathSecret []byte, nodes []uint32, keys pathKeys) ([]byte, error) {
	ps := pathSecret
	for _, x := range nodes {
		nodeSecret, err := t.s.deriveSecret(ps, "node")
		if err != nil {
			return nil, err
		}
		priv, pub, err := t.s.deriveKeyPair(nodeSecret)
		if err != nil {
			return nil, err
		}
		p := t.parentNode(x)
		if p == nil || !bytes.Equal(p.EncryptionKey, pub) {
			return nil, fmt.Errorf("%w: path secret does not yield node %d's key", ErrInvalidPath, x)
		}
		keys[string(pub)] = priv
		if ps, err = t.s.deriveSecret(ps, "path"); err != nil {
			return nil, err
		}
	}
	return ps, nil
}

// decryptPathSecret finds the path secret that committer's UpdatePath
// encrypted for leaf self (RFC 9420 §7.6). t is the tree after the merge;
// excluded lists leaves added by the commit, which get no ciphertext;
// context is the encoded provisional GroupContext. It returns the secret
// and its position in the committer's filtered direct path.
func (t *Tree) decryptPathSecret(committer, self uint32, path *UpdatePath, excluded []uint32, keys pathKeys, context []byte) ([]byte, []uint32, error) {
	fdp, copath := t.filteredDirectPath(committer)
	if len(fdp) != len(path.Nodes) {
		return nil, nil, fmt.Errorf("%w: path length", ErrInvalidPath)
	}
	for k, x := range fdp {
		if !isInSubtree(leafNode(self), x) {
			continue
		}
		var res []uint32
		for _, r := range t.resolution(copath[k], nil) {
			if level(r) == 0 && contains(excluded, r/2) {
				continue
			}
			res = append(res, r)
		}
		cts := path.Nodes[k].EncryptedPathSecrets
		if len(cts) != len(res) {
			return nil, nil, fmt.Errorf("%w: node %d has %d ciphertexts for a resolution of %d", ErrInvalidPath, x, len(cts), len(res))
		}
		for idx, r := range res {
			n := t.node(r)
			priv, ok := keys[string(n.Parent.encryptionKeyOr(n.Leaf))]
			if !ok {
				continue
			}
			ps, err := t.s.decryptWithLabel(priv, "UpdatePathNode", context, cts[idx])
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %v", ErrInvalidPath, err)
			}
			return ps, fdp[k:], nil
		}
		return nil, nil, fmt.Errorf("%w: no key for the resolution of node %d", ErrInvalidPath, copath[k])
	}
	return nil, nil, fmt.Errorf("%w: leaf %d is not below the committer's path", ErrInvalidPath, self)
}
