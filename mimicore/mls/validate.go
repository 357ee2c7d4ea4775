package mls

import (
	"fmt"
)

// validateLeafStandalone runs the leaf node checks of RFC 9420 §7.3 that do
// not depend on the rest of the group: the signature (with groupID and
// leafIndex for the update and commit sources), a valid encryption key,
// unique extensions of types allowed in a leaf node, extensions listed in the leaf's own capabilities
// (the RFC 9420 default extensions need not be listed), and its own
// credential type listed there: a member must support the credential type
// of every member, itself included, or joiners refuse the tree.
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
	if err := l.Extensions.checkPlace(inLeafNode); err != nil {
		return fmt.Errorf("leaf node: %w", err)
	}
	if !contains(l.Capabilities.Credentials, l.Credential.Type) {
		return fmt.Errorf("leaf node: credential type %d not in its capabilities", l.Credential.Type)
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
		l := t.leaf(i)
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
		if l := t.leaf(i); l != nil {
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
		if l >= t.leaves || !isInSubtree(leafNode(l), x) || t.leaf(l) == nil {
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

// checkContextExtensions checks GroupContext extensions: unique types,
// a decodable required_capabilities met by every member, decodable
// external_senders, and every non-default type supported by every member.
func (g *GroupState) checkContextExtensions(exts Extensions) error {
	if err := exts.checkUnique(); err != nil {
		return err
	}
	rc, err := exts.RequiredCapabilities()
	if err != nil {
		return err
	}
	if _, err := exts.ExternalSenders(); err != nil {
		return err
	}
	for i := range g.tree.leaves {
		l := g.tree.leaf(i)
		if l == nil {
			continue
		}
		for _, e := range exts {
			if !isDefaultExtension(e.Type) && !contains(l.Capabilities.Extensions, e.Type) {
				return fmt.Errorf("member %d does not support group extension %d", i, e.Type)
			}
		}
		if err := meetsRequired(l, rc); err != nil {
			return fmt.Errorf("member %d: %w", i, err)
		}
	}
	return nil
}

// meetsRequired checks a leaf's capabilities against required_capabilities.
func meetsRequired(l *LeafNode, rc *RequiredCapabilities) error {
	if rc == nil {
		return nil
	}
	for _, t := range rc.ExtensionTypes {
		if !isDefaultExtension(t) && !contains(l.Capabilities.Extensions, t) {
			return fmt.Errorf("lacks required extension %d", t)
		}
	}
	for _, t := range rc.ProposalTypes {
		if !isDefaultProposal(t) && !contains(l.Capabilities.Proposals, t) {
			return fmt.Errorf("lacks required proposal type %d", t)
		}
	}
	for _, t := range rc.CredentialTypes {
		if !contains(l.Capabilities.Credentials, t) {
			return fmt.Errorf("lacks required credential type %d", t)
		}
	}
	return nil
}

// checkGroupParams checks that a leaf is compatible with the parameters
// of the group of context gc (RFC 9420 §7.3): its capabilities list the
// group's cipher suite and protocol version. OpenMLS members refuse an
// Add, Update or commit whose new leaf does not, and a tree that holds
// one when they join.
func checkGroupParams(l *LeafNode, gc *GroupContext) error {
	if !contains(l.Capabilities.CipherSuites, gc.CipherSuite) {
		return fmt.Errorf("leaf node capabilities lack the group's cipher suite %d", gc.CipherSuite)
	}
	if !contains(l.Capabilities.Versions, gc.Version) {
		return fmt.Errorf("leaf node capabilities lack the group's protocol version %d", gc.Version)
	}
	return nil
}

// validateLeaf checks a leaf node that is about to enter the tree at index
// i (RFC 9420 §7.3): its source, the standalone checks, the group's
// parameters (its cipher suite and protocol version listed in the leaf's
// capabilities), the group's required capabilities, credential type
// compatibility with every member and unique keys (the encryption key
// unique among all nodes of the tree, RFC 9420 §12.4.3.1). replacing is
// the leaf it replaces (for updates and commits) or nil.
func (g *GroupState) validateLeaf(l *LeafNode, i uint32, source LeafNodeSource, replacing *LeafNode) error {
	if l.Source != source {
		return fmt.Errorf("leaf node source %d, want %d", l.Source, source)
	}
	if err := validateLeafStandalone(g.s, l, g.ctx.GroupID, i); err != nil {
		return err
	}
	if err := checkGroupParams(l, &g.ctx); err != nil {
		return err
	}
	rc, err := g.ctx.Extensions.RequiredCapabilities()
	if err != nil {
		return err
	}
	if err := meetsRequired(l, rc); err != nil {
		return fmt.Errorf("leaf node %w", err)
	}
	for _, e := range g.ctx.Extensions {
		if !isDefaultExtension(e.Type) && !contains(l.Capabilities.Extensions, e.Type) {
			return fmt.Errorf("leaf node does not support group extension %d", e.Type)
		}
	}
	others := g.members
	if replacing != nil {
		others--
	}
	sup := g.credSup[l.Credential.Type]
	if replacing != nil && contains(replacing.Capabilities.Credentials, l.Credential.Type) {
		sup--
	}
	if sup != others {
		return fmt.Errorf("credential type %d is not supported by every member", l.Credential.Type)
	}
	for ct, n := range g.credUse {
		if replacing != nil && replacing.Credential.Type == ct && n == 1 {
			continue
		}
		if !contains(l.Capabilities.Credentials, ct) {
			return fmt.Errorf("leaf node does not support credential type %d in use", ct)
		}
	}
	if j, ok := g.sigKeys.get(string(l.SignatureKey)); ok && (replacing == nil || j != i) {
		return fmt.Errorf("signature key already used by leaf %d", j)
	}
	// The encryption key must change even when the leaf replaces its own
	// (RFC 9420 §12.1.2, §12.4.2); the signature key may stay.
	if j, ok := g.encKeys.get(string(l.EncryptionKey)); ok {
		if replacing != nil && j == i {
			return fmt.Errorf("encryption key is the leaf's current one")
		}
		return fmt.Errorf("encryption key already used by leaf %d", j)
	}
	// A parent node on the leaf's own direct path is blanked when the
	// leaf replaces its old one, so its key may come back.
	if x, ok := g.tree.parentWithKey(l.EncryptionKey); ok && (replacing == nil || !isInSubtree(leafNode(i), x)) {
		return fmt.Errorf("encryption key already used by node %d", x)
	}
	return nil
}
