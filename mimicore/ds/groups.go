package ds

import (
	"context"
	"errors"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// ErrNotFound is wrapped by the errors of Groups and Joiners for a group,
// epoch or KeyPackage they do not know. The Delivery Service answers it
// not_found, exactly like a sender that is not a member, so that a
// non-member learns nothing about which groups exist.
var ErrNotFound = errors.New("not found")

// Groups is the Delivery Service's read access to the public state of the
// groups it hosts: all it needs to check a client signature and its
// sender's membership. The durable group store implements it; tests use a
// map.
//
// Group is called for every client-signed request, concurrently, so an
// implementation serves it from a cache of the current states and must not
// re-derive a state (re-hash a tree) per call.
type Groups interface {
	// Group returns the current public state of the group groupID: the
	// state after the last commit the Delivery Service accepted. It
	// returns an error wrapping ErrNotFound when the group is not hosted
	// here (never created, or deleted), and any other error when the
	// state cannot be read; the Delivery Service answers those
	// backend_unavailable. The state is an immutable value: the caller
	// never modifies it, and the implementation may hand the same value
	// to concurrent callers.
	Group(ctx context.Context, groupID []byte) (*mls.GroupState, error)
}

// Joiners finds the KeyPackages that Welcomes brought into a group: the key
// of a key_package_signature (docs/protocol.md §5.1), with which a client
// that holds a Welcome but is not yet a member asks for welcome_info.
type Joiners interface {
	// JoinerKey returns the group's cipher suite and the leaf signature
	// key of the KeyPackage with reference ref that the commit starting
	// epoch of group groupID added by value. It returns an error wrapping
	// ErrNotFound when there is none: an unknown group, an epoch no longer
	// kept for lagging joiners (docs/protocol.md §5: 14 days or 64
	// epochs), or a ref that commit did not add.
	JoinerKey(ctx context.Context, groupID []byte, epoch uint64, ref []byte) (mls.CipherSuite, []byte, error)
}
