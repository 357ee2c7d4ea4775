package ds

import (
	"context"
	"errors"
	"slices"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// HubElsewhere tells, for a client request this Delivery Service answered
// not_found, whether the group it names is hosted by another provider that
// this one knows as the group's hub (recorded by the group's first Welcome,
// docs/protocol.md §9): then the request is relayed, unchanged, to that
// hub, remembered in Hubs as deliver_message does. It answers "" for a
// request that names no group, a group hosted here, and a group whose hub
// is not known, which stay not_found: a follower never relays for an
// unknown group.
func (s *Service) HubElsewhere(ctx context.Context, body []byte) (string, error) {
	if s.Store == nil {
		return "", nil
	}
	req, err := moh.DecodeDSRequest(body)
	if err != nil {
		return "", nil // refused as malformed already
	}
	gid := req.Body.GroupID()
	if len(gid) == 0 || req.Body.Type == moh.CreateGroup {
		return "", nil
	}
	if hub, ok := s.Hubs.get(gid); ok {
		return hub, nil
	}
	since := s.Hubs.begin()
	hub, err := s.Store.GroupHub(ctx, gid)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalid):
		return "", nil
	case err != nil:
		return "", moh.Errorf(moh.CodeBackendUnavailable, "looking up the group's hub: %w", err)
	case slices.Contains(s.Providers, hub):
		return "", nil
	}
	s.Hubs.put(gid, hub, since)
	return hub, nil
}
