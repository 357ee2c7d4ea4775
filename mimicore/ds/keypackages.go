package ds

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// KeyPackageLimiter bounds how fast one peer provider claims the
// KeyPackages of one local user: each claim spends from the bucket of the
// key "<sender> <user URI>". *ratelimit.Zone implements it.
type KeyPackageLimiter interface {
	Allow(key string, now time.Time) (ok bool, retryAfter time.Duration)
}

// groupKeyPackages serves group_key_packages (docs/protocol.md §4.2): for
// each requested client of a provider served here, one of its KeyPackages
// (single-use ones first and consumed, else its last-resort one, which
// stays), claimed atomically; the clients without one, or of another
// provider, are listed as missing.
func (s *Service) groupKeyPackages(ctx context.Context, v *provider.Verified) (*moh.DSResponse, error) {
	var req moh.GroupKeyPackagesRequest
	if err := wire.Unmarshal(v.Request.Payload, &req, "GroupKeyPackagesRequest"); err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "group_key_packages: %v", err)
	}
	if err := s.checkRequester("group_key_packages", v, req.Requester); err != nil {
		return nil, err
	}
	if s.Store == nil {
		return nil, moh.Errorf(moh.CodeNotImplemented, "group_key_packages: this gateway keeps no KeyPackages")
	}
	// The rate limits of every user named are spent before anything is
	// claimed, so a refusal consumes no KeyPackage.
	local := make([]bool, len(req.ClientIDs))
	var users []string
	for i, id := range req.ClientIDs {
		prov, user, _, err := moh.ParseClientURI(id)
		if err != nil || !slices.Contains(s.Providers, string(prov)) {
			continue
		}
		local[i] = true
		if u := moh.UserURI(string(prov), string(user)); !slices.Contains(users, u) {
			users = append(users, u)
		}
	}
	for _, u := range users {
		if err := s.allowClaim(v, u); err != nil {
			return nil, err
		}
	}
	answer := &moh.DSResponse{Type: moh.ResponseKeyPackages}
	for i, id := range req.ClientIDs {
		if !local[i] {
			answer.Missing = append(answer.Missing, id)
			continue
		}
		kp, err := s.Store.ClaimKeyPackage(ctx, string(id), 0)
		switch {
		case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalid):
			answer.Missing = append(answer.Missing, id)
		case err != nil:
			return nil, moh.Errorf(moh.CodeBackendUnavailable, "group_key_packages: claiming: %w", err)
		default:
			answer.KeyPackages = append(answer.KeyPackages, kp.KeyPackage)
		}
	}
	return answer, nil
}

// connectionKeyPackages serves connection_key_packages (docs/protocol.md
// §4.2): one KeyPackage of each client of the requested user that has
// one, claimed atomically in one write. A user of another provider, or
// without clients or packages, is answered alike: an empty list, so that
// the answer does not enumerate users. missing is always empty: a client
// that published no KeyPackage is not known here.
func (s *Service) connectionKeyPackages(ctx context.Context, v *provider.Verified) (*moh.DSResponse, error) {
	var req moh.ConnectionKeyPackagesRequest
	if err := wire.Unmarshal(v.Request.Payload, &req, "ConnectionKeyPackagesRequest"); err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "connection_key_packages: %v", err)
	}
	if err := s.checkRequester("connection_key_packages", v, req.Requester); err != nil {
		return nil, err
	}
	if s.Store == nil {
		return nil, moh.Errorf(moh.CodeNotImplemented, "connection_key_packages: this gateway keeps no KeyPackages")
	}
	answer := &moh.DSResponse{Type: moh.ResponseKeyPackages}
	prov, user, err := moh.ParseUserURI(req.UserID)
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "connection_key_packages: user_id is not a user URI")
	}
	if !slices.Contains(s.Providers, string(prov)) {
		return answer, nil
	}
	if err := s.allowClaim(v, string(req.UserID)); err != nil {
		return nil, err
	}
	kps, err := s.Store.ClaimKeyPackagesByPrefix(ctx, moh.ClientURI(string(prov), string(user), ""), 0)
	if err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "connection_key_packages: claiming: %w", err)
	}
	for _, kp := range kps {
		answer.KeyPackages = append(answer.KeyPackages, kp.KeyPackage)
	}
	return answer, nil
}

// checkRequester checks that the requesting user is a user of the sending
// provider: a provider asks for KeyPackages on behalf of its own users
// only.
func (s *Service) checkRequester(what string, v *provider.Verified, requester []byte) error {
	prov, _, err := moh.ParseUserURI(requester)
	if err != nil {
		return moh.Errorf(moh.CodeMalformed, "%s: requester is not a user URI", what)
	}
	if string(prov) != string(v.Request.Sender) {
		return moh.Errorf(moh.CodeForbidden, "%s: the requester is not a user of the sending provider", what)
	}
	return nil
}

// allowClaim spends one claim of the sender for user's KeyPackages.
func (s *Service) allowClaim(v *provider.Verified, user string) error {
	if s.KeyPackageLimits == nil {
		return nil
	}
	if ok, _ := s.KeyPackageLimits.Allow(string(v.Request.Sender)+" "+user, s.now()); !ok {
		return moh.Errorf(moh.CodeRateLimited, "KeyPackages of this user were claimed too often by your provider; retry later")
	}
	return nil
}
