package mls

import (
	"crypto"
	"crypto/rand"
	"fmt"
)

// newPath is an UpdatePath created by its committer, with the secrets that
// stay on the committer's side.
type newPath struct {
	path         *UpdatePath
	commitSecret []byte
	keys         pathKeys
	// pathSecrets maps each filtered direct path node to its path secret,
	// for the GroupSecrets of new members.
	pathSecrets map[uint32][]byte
}

// generateUpdatePath creates a fresh UpdatePath for leaf sender of the
// writable tree t (RFC 9420 §7.4-7.6) and merges it into t. leaf is the
// committer's new leaf node without keys or signature: its encryption
// key, source, parent hash and signature are filled in here. excluded
// lists leaves added by the same commit, which get no ciphertext. context
// returns the encoded provisional GroupContext for the tree hash after the
// merge.
func (t *Tree) generateUpdatePath(sender uint32, leaf LeafNode, signer crypto.Signer, groupID []byte, excluded []uint32, context func(treeHash []byte) ([]byte, error)) (*newPath, error) {
	s := t.s
	if sender >= t.leaves || t.leaf(sender) == nil {
		return nil, fmt.Errorf("%w: sender leaf %d is blank", ErrInvalidPath, sender)
	}
	leafSecret := make([]byte, s.nh)
	if _, err := rand.Read(leafSecret); err != nil {
		return nil, err
	}
	np := &newPath{keys: pathKeys{}, pathSecrets: map[uint32][]byte{}}
	nodeSecret, err := s.deriveSecret(leafSecret, "node")
	if err != nil {
		return nil, err
	}
	leafPriv, leafPub, err := s.deriveKeyPair(nodeSecret)
	if err != nil {
		return nil, err
	}
	np.keys[string(leafPub)] = leafPriv

	fdp, copath := t.filteredDirectPath(sender)
	secrets := make([][]byte, len(fdp))
	pubs := make([][]byte, len(fdp))
	ps := leafSecret
	for i := range fdp {
		if ps, err = s.deriveSecret(ps, "path"); err != nil {
			return nil, err
		}
		secrets[i] = ps
		np.pathSecrets[fdp[i]] = ps
		ns, err := s.deriveSecret(ps, "node")
		if err != nil {
			return nil, err
		}
		priv, pub, err := s.deriveKeyPair(ns)
		if err != nil {
			return nil, err
		}
		pubs[i] = pub
		np.keys[string(pub)] = priv
	}
	if np.commitSecret, err = s.deriveSecret(ps, "path"); err != nil {
		return nil, err
	}
	parentHash, err := t.setPathNodes(sender, fdp, copath, pubs)
	if err != nil {
		return nil, err
	}
	leaf.EncryptionKey = leafPub
	leaf.Source = SourceCommit
	leaf.ParentHash = parentHash
	if err := leaf.Sign(s.id, signer, groupID, sender); err != nil {
		return nil, err
	}
	t.setLeaf(sender, &leaf)
	th, err := t.rootHash()
	if err != nil {
		return nil, err
	}
	ctx, err := context(th)
	if err != nil {
		return nil, err
	}
	// The path goes out in a message the caller owns: it shares nothing
	// with the tree.
	path := &UpdatePath{LeafNode: *leaf.clone(), Nodes: make([]UpdatePathNode, len(fdp))}
	for i := range fdp {
		path.Nodes[i].EncryptionKey = cloneBytes(pubs[i])
		for _, r := range t.resolution(copath[i], nil) {
			if level(r) == 0 && contains(excluded, r/2) {
				continue
			}
			n := t.node(r)
			ct, err := s.encryptWithLabel(n.Parent.encryptionKeyOr(n.Leaf), "UpdatePathNode", ctx, secrets[i])
			if err != nil {
				return nil, err
			}
			path.Nodes[i].EncryptedPathSecrets = append(path.Nodes[i].EncryptedPathSecrets, ct)
		}
	}
	np.path = path
	return np, nil
}
