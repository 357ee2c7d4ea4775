package ds

import (
	"context"
	"errors"
	"fmt"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// StoreGroups serves Groups from a durable group store: the current state
// of every group hosted here, as store.GroupStore.LoadGroup returns it
// (from its cache of group states, so a lookup does not re-derive a
// state).
type StoreGroups struct {
	// Store is the provider's group store.
	Store store.GroupStore
}

// Group implements Groups.
func (g StoreGroups) Group(ctx context.Context, groupID []byte) (*mls.GroupState, error) {
	st, err := g.Store.LoadGroup(ctx, groupID)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
		// An id the store refuses (too long) names no group either.
		return nil, fmt.Errorf("loading group: %w", ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("loading group: %w", err)
	}
	return st, nil
}

// StoreJoiners serves Joiners from a durable group store: the keys that
// store.GroupStore.JoinerKey kept with each Welcome tree, and the cipher
// suite of the group's current state (a group keeps its suite for life;
// re-initialising makes a new group).
type StoreJoiners struct {
	// Store is the provider's group store.
	Store store.GroupStore
}

// JoinerKey implements Joiners.
func (j StoreJoiners) JoinerKey(ctx context.Context, groupID []byte, epoch uint64, ref []byte) (mls.CipherSuite, []byte, error) {
	key, err := j.Store.JoinerKey(ctx, groupID, epoch, ref)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
		// An id or ref the store refuses (too long) names no joiner either.
		return 0, nil, fmt.Errorf("looking up joiner: %w", ErrNotFound)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("looking up joiner: %w", err)
	}
	st, err := StoreGroups(j).Group(ctx, groupID)
	if err != nil {
		return 0, nil, fmt.Errorf("looking up joiner: %w", err)
	}
	return st.CipherSuite(), key, nil
}

var (
	_ Groups  = StoreGroups{}  // interface guard
	_ Joiners = StoreJoiners{} // interface guard
)
