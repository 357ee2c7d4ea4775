// Package mls implements the parts of Messaging Layer Security (RFC 9420)
// that a MIMI Delivery Service and a Go test client need: cipher suites and
// the labelled primitives of §5, the wire format of every RFC 9420 struct,
// array-based tree math, the public ratchet tree with cached tree hashes and
// parent hashes, leaf node and KeyPackage validation, the key schedule with
// exporter, PSKs, the secret tree, message protection, Welcome processing,
// TreeKEM path secrets, and a public group state that follows a group by
// applying PublicMessage commits.
//
// Every struct implements wire.Marshaler and wire.Unmarshaler from
// mimicore/wire, so protocol messages elsewhere in mimicore can embed them.
// Decoding is strict (minimal varints, no trailing bytes at top level) and
// re-encoding a decoded value yields the same bytes.
//
// Cipher suites 1, 2, 3, 5 and 7 are implemented on the Go standard library
// and golang.org/x/crypto/chacha20poly1305. Suites 4 and 6 (X448/Ed448)
// return ErrUnsupportedCipherSuite.
//
// # Delivery Service use
//
// A Delivery Service holds one GroupState per group and never a secret:
//
//	m, err := mls.DecodeMLSMessage(body)          // strict, wraps wire.ErrMalformed
//	kp := m.KeyPackage                             // uploads: kp.VerifyAt(now), kp.Ref()
//	g, err := mls.NewGroupState(gi, nil)           // from the creator's GroupInfo
//	ac, ref, err := g.VerifyProposal(m)            // keep ac under ref for this epoch
//	next, info, err := g.ApplyCommit(m, resolve)   // g is unchanged on error
//	err = next.VerifyGroupInfo(gi)                 // the committer's new GroupInfo
//	err = g.CheckMessage(m)                        // application PrivateMessages
//	blob, err := g.MarshalBinary()                 // storage; mls.DecodeGroupState(blob)
//
// GroupState values are immutable and share their tree copy-on-write, so
// applying a commit costs O(log n) in the group size, and keeping the
// previous state costs little. The Delivery Service serialises commits per
// group: the first valid commit for an epoch wins, and any other handshake
// for that epoch then fails with ErrStaleEpoch against the new state.
//
// # Clients
//
// Member joins from a Welcome (JoinFromWelcome) or creates a group
// (NewGroup), processes commits, creates commits with an UpdatePath and a
// Welcome, and protects application messages; it is the basis of the
// project's Go test client.
//
// Unknown extension types and GREASE values are carried verbatim. RFC 9420
// gives no body encoding for proposal and credential types it does not
// define; like other implementations this package reads such bodies as a
// single opaque<V> field and carries them unchanged.
package mls
