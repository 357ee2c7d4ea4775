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

var _ Groups = StoreGroups{} // interface guard
