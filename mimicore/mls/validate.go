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
