// Package dscommit builds the signed /group_operation requests of MLS
// commits that the load generators send (mimiload's send and commit modes,
// commitbench): a member's commit with the partial GroupInfo of the new
// epoch and, when the commit adds members, their Welcome, signed with the
// member's client signature (docs/protocol.md §5.3).
package dscommit

import (
	"crypto"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// Request has m create the commit of opts and returns the DSRequest of
// type typ that carries it, signed with signer (m's signature key) and
// stamped now, and the commit's result. m is unchanged: the caller adopts
// the result's Next once the Delivery Service accepted the commit. A
// Welcome, when the commit has one, goes in the request's
// welcome_packages.
func Request(typ moh.RequestType, m *mls.Member, signer crypto.Signer, opts mls.CommitOptions, now time.Time) ([]byte, *mls.CommitResult, error) {
	res, err := m.CommitWith(opts)
	if err != nil {
		return nil, nil, err
	}
	gi := res.GroupInfo.GroupInfo
	body := moh.RequestBody{Type: typ, GroupUpdate: moh.MLSGroupUpdate{Commit: *res.Commit,
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: gi.Extensions, Signature: gi.Signature}}}
	if res.Welcome != nil {
		body.WelcomePackages = []moh.WelcomePackage{{Welcome: *res.Welcome}}
	}
	req, err := ds.SignRequest(m.State().CipherSuite(), signer, body, ds.ClientSignature(m.LeafIndex(), now))
	if err != nil {
		return nil, nil, err
	}
	return req, res, nil
}

// UpdateClient returns the update_client request of m's empty commit with
// a path (a fresh leaf and path keys), its GroupInfo without the ratchet
// tree, as MIMI clients make it (the DS serves the tree), and its result.
func UpdateClient(m *mls.Member, signer crypto.Signer, now time.Time) ([]byte, *mls.CommitResult, error) {
	return Request(moh.UpdateClient, m, signer, mls.CommitOptions{OmitRatchetTree: true}, now)
}

// Chain returns n update_client requests of m, each on the epoch the one
// before it leads to, made ahead of sending them: a Delivery Service that
// accepts them in order takes every one, since nobody else commits to the
// group meanwhile.
func Chain(m *mls.Member, signer crypto.Signer, n int, now time.Time) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range out {
		req, res, err := UpdateClient(m, signer, now)
		if err != nil {
			return nil, err
		}
		out[i], m = req, res.Next
	}
	return out, nil
}
