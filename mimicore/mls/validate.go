package mls

import (
	"fmt"
)

// validateLeafStandalone runs the leaf node checks of RFC 9420 §7.3 that do
// not depend on the rest of the group: the signature (with groupID and
// leafIndex for the update and commit sources), a valid encryption key,
// unique extensions, and extensions listed in the leaf's own capabilities
// (the RFC 9420 default extensions need not be listed).
func validateLeafStandalone(s *suite, l *LeafNode, groupID []byte, leafIndex uint32) error {
	tbs, err := l.tbs(groupID, leafIndex)
	if err != nil {
		return fmt.Errorf("leaf node: encoding tbs: %w", err)
	}
	if err := s.verifyWithLabel(l.SignatureKey, "LeafNodeTBS", tbs, l.Signature); err != nil {
		return fmt.Errorf("leaf node: %w", err)
	}
	if err := s.checkHPKEPublicKey(l.EncryptionKey); err != nil {
		return fmt.Errorf("leaf node: encryption key: %w", err)
	}
	if err := l.Extensions.checkUnique(); err != nil {
		return fmt.Errorf("leaf node: %w", err)
	}
	for _, e := range l.Extensions {
		if !isDefaultExtension(e.Type) && !contains(l.Capabilities.Extensions, e.Type) {
			return fmt.Errorf("leaf node: extension %d not in its capabilities", e.Type)
		}
	}
	return nil
}

// Validate checks a tree received from others (RFC 9420 §12.4.3.1, §7.9.2):
// every leaf node is valid for its position (signature with groupID and leaf
// index, keys, extensions, credential types supported by every member), the
// signature keys of leaves and the encryption keys of all nodes are unique,
// unmerged leaves are non-blank leaves recorded along their whole path, and
// every parent node is parent-hash valid.
func (t *Tree) Validate(groupID []byte) error {
	var credTypes []CredentialType
	sigKeys := make(map[string]uint32)
	encKeys := make(map[string]uint32)
	for i := range t.leaves {
		l := t.Leaf(i)
		if l == nil {
			continue
		}
		if err := validateLeafStandalone(t.s, l, groupID, i); err != nil {
			return fmt.Errorf("%w: leaf %d: %v", ErrInvalidTree, i, err)
		}
		if j, dup := sigKeys[string(l.SignatureKey)]; dup {
			return fmt.Errorf("%w: leaves %d and %d share a signature key", ErrInvalidTree, j, i)
		}
		sigKeys[string(l.SignatureKey)] = i
		if !contains(credTypes, l.Credential.Type) {
			credTypes = append(credTypes, l.Credential.Type)
		}
	}
	for i := range t.leaves {
		if l := t.Leaf(i); l != nil {
			for _, ct := range credTypes {
				if !contains(l.Capabilities.Credentials, ct) {
					return fmt.Errorf("%w: leaf %d does not support credential type %d in use", ErrInvalidTree, i, ct)
				}
			}
		}
	}
	for x := range t.width() {
		n := t.node(x)
		if n == nil {
			continue
		}
		key := n.Parent.encryptionKeyOr(n.Leaf)
		if y, dup := encKeys[string(key)]; dup {
			return fmt.Errorf("%w: nodes %d and %d share an encryption key", ErrInvalidTree, y, x)
		}
		encKeys[string(key)] = x
		if n.Parent != nil {
			if err := t.checkUnmerged(x, n.Parent); err != nil {
				return err
			}
		}
	}
	return t.verifyParentHashes()
}

// encryptionKeyOr returns the encryption key of p, or of l when p is nil.
func (p *ParentNode) encryptionKeyOr(l *LeafNode) []byte {
	if p != nil {
		return p.EncryptionKey
	}
	return l.EncryptionKey
}

// checkUnmerged checks the unmerged leaves of parent node x.
func (t *Tree) checkUnmerged(x uint32, p *ParentNode) error {
	for k, l := range p.UnmergedLeaves {
		if l >= t.leaves || !isInSubtree(leafNode(l), x) || t.Leaf(l) == nil {
			return fmt.Errorf("%w: node %d: unmerged leaf %d is blank or not below it", ErrInvalidTree, x, l)
		}
		if contains(p.UnmergedLeaves[:k], l) {
			return fmt.Errorf("%w: node %d lists unmerged leaf %d twice", ErrInvalidTree, x, l)
		}
		for y := parent(leafNode(l)); y != x; y = parent(y) {
			if q := t.parentNode(y); q != nil && !contains(q.UnmergedLeaves, l) {
				return fmt.Errorf("%w: node %d lacks unmerged leaf %d listed above it", ErrInvalidTree, y, l)
			}
		}
	}
	return nil
}
