package pgstore

import (
	"context"
	"errors"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// errNotImplemented is the error of the interfaces this backend does not
// implement yet. It is not one of store's errors, so callers treat it as
// an unavailable backend.
var errNotImplemented = errors.New("not implemented by the postgres store yet")

// CreateGroup is not implemented yet.
func (s *Store) CreateGroup(context.Context, store.GroupCreation) error { return errNotImplemented }

// GroupInfo is not implemented yet.
func (s *Store) GroupInfo(context.Context, []byte) (uint64, []byte, error) {
	return 0, nil, errNotImplemented
}

// LoadGroup is not implemented yet.
func (s *Store) LoadGroup(context.Context, []byte) (*mls.GroupState, error) {
	return nil, errNotImplemented
}

// CommitEpoch is not implemented yet.
func (s *Store) CommitEpoch(context.Context, store.EpochCommit) (store.Delivered, error) {
	return store.Delivered{}, errNotImplemented
}

// Deliver is not implemented yet.
func (s *Store) Deliver(context.Context, []byte, uint64, store.Fanout) (store.Delivered, error) {
	return store.Delivered{}, errNotImplemented
}

// WelcomeTree is not implemented yet.
func (s *Store) WelcomeTree(context.Context, []byte, uint64) (mls.RatchetTree, error) {
	return nil, errNotImplemented
}

// JoinerKey is not implemented yet.
func (s *Store) JoinerKey(context.Context, []byte, uint64, []byte) ([]byte, error) {
	return nil, errNotImplemented
}

// AddProposal is not implemented yet.
func (s *Store) AddProposal(context.Context, []byte, uint64, store.PendingProposal) error {
	return errNotImplemented
}

// PendingProposals is not implemented yet.
func (s *Store) PendingProposals(context.Context, []byte, uint64) ([]store.PendingProposal, error) {
	return nil, errNotImplemented
}

// DeleteGroup is not implemented yet.
func (s *Store) DeleteGroup(context.Context, []byte) error { return errNotImplemented }

// RecordGroupHub is not implemented yet.
func (s *Store) RecordGroupHub(context.Context, []byte, string) error { return errNotImplemented }

// GroupHub is not implemented yet.
func (s *Store) GroupHub(context.Context, []byte) (string, error) { return "", errNotImplemented }
