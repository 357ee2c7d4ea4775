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
//	next, info, err := g.ApplyCommitWith(m, opts)  // g is unchanged on error; opts: resolve,
//	                                               // and the clock for the Adds' lifetimes
//	err = next.VerifyGroupInfo(gi)                 // the committer's new GroupInfo
//	err = g.CheckMessage(m)                        // application PrivateMessages
//	blob, err := g.MarshalBinary()                 // storage; mls.DecodeGroupState(blob)
//
// # Values, not mutation
//
// The package has one convention: its stateful types are immutable values,
// and every operation that moves a group on returns a new value and leaves
// its receiver as it was. GroupState.ApplyCommit returns the next
// GroupState; Member.ApplyCommit, Member.Commit (CommitResult.Next) and
// Member.ProposeUpdate return the next Member; on error nothing changed.
// Accessors hand out copies (GroupID, TreeHash, the transcript hashes,
// ConfirmationTag, GroupContext, Tree.RatchetTree, Member.EpochAuthenticator)
// or read-only views: GroupState.Member and Tree.Leaf return a LeafView, a
// single pointer whose lookups and comparisons allocate nothing. Messages
// and CommitInfo values a method returns share no memory with any state.
//
// For GroupState this is what the Delivery Service needs: one state per
// group shared by concurrent readers, the tree shared copy-on-write between
// epochs, so applying a commit costs O(log n) in the group size and keeping
// the previous state costs little. The Delivery Service serialises commits
// per group: the first valid commit for an epoch wins, and any other
// handshake for that epoch then fails with ErrStaleEpoch against the new
// state.
//
// Member follows the same convention, although one caller owns it, because
// a client must keep its current epoch until the Delivery Service accepted
// its own commit (Commit always worked this way) and must be able to drop
// a commit that fails half way; one rule for both types also means no call
// site has to know which kind of ApplyCommit it holds. The exception is the
// epoch's secret tree: message keys may be used once (RFC 9420 §9.2), so
// Protect and Unprotect consume keys of a secret tree that all Member
// values of one epoch share under a lock. Copying it per value would let
// two values encrypt under the same key and nonce.
//
// # One package
//
// The client half (Member, Welcome processing, TreeKEM private keys, the
// secret tree) stays in this package rather than in a mls/client package:
// a Member is a GroupState plus secrets, and creating or following a commit
// works on the unexported parts of the state (the writable next state,
// proposal application, leaf indexes, UpdatePath generation and path
// secret decryption, the suite's HPKE and MAC primitives). A separate
// package would have to export those internals, which would widen the
// surface the Delivery Service stands on instead of narrowing it. The
// split is by file instead: state.go, apply.go, proposals.go, tree*.go for
// the public state; member.go, client.go, external.go, join.go,
// treekem.go, pathgen.go and secrettree.go for the client.
//
// Unknown extension types and GREASE values are carried verbatim. RFC 9420
// gives no body encoding for proposal and credential types it does not
// define; like other implementations this package reads such bodies as a
// single opaque<V> field and carries them unchanged.
package mls
