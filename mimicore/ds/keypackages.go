package ds

import (
	"context"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// KeyPackageLimiter bounds how fast one peer provider claims the
// KeyPackages of one local user: each claim spends from the bucket of the
// key "<sender> <user URI>". A request that names several users spends
// one token of each of their buckets, all or none: AllowAll spends
// nothing when any bucket is empty. *ratelimit.Zone implements it.
type KeyPackageLimiter interface {
	AllowAll(keys []string, now time.Time) (ok bool, retryAfter time.Duration)
}

// groupKeyPackages serves group_key_packages (docs/protocol.md §4.2): for
// each requested client of a provider served here, one of its KeyPackages
// (single-use ones first and consumed, else its last-resort one, which
// stays); the clients without one, or of another provider, are listed as
// missing. Every claim of the request and its answer are one write
// (claimKeyPackages).
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
	// The rate limits of every user named are spent, all or none, before
	// anything is claimed, so a refusal consumes no KeyPackage and spends
	// no user's limit.
	local := make([]bool, len(req.ClientIDs))
	var clients, users []string
	for i, id := range req.ClientIDs {
		prov, user, _, err := moh.ParseClientURI(id)
		if err != nil || !slices.Contains(s.Providers, string(prov)) || len(id) > store.MaxClientURISize || !utf8.Valid(id) {
			continue
		}
		local[i] = true
		clients = append(clients, string(id))
		if u := moh.UserURI(string(prov), string(user)); !slices.Contains(users, u) {
			users = append(users, u)
		}
	}
	if err := s.allowClaim(v, users...); err != nil {
		return nil, err
	}
	// claimed holds one KeyPackage per local client, in request order.
	answerOf := func(claimed []store.KeyPackage) *moh.DSResponse {
		answer := &moh.DSResponse{Type: moh.ResponseKeyPackages}
		for i, id := range req.ClientIDs {
			if !local[i] || claimed[0].Ref == nil {
				answer.Missing = append(answer.Missing, id)
			} else {
				answer.KeyPackages = append(answer.KeyPackages, claimed[0].KeyPackage)
			}
			if local[i] {
				claimed = claimed[1:]
			}
		}
		return answer
	}
	if len(clients) == 0 {
		return answerOf(nil), nil
	}
	return s.claimKeyPackages(ctx, v, "group_key_packages", store.KeyPackageClaim{Clients: clients}, answerOf)
}

// connectionKeyPackages serves connection_key_packages (docs/protocol.md
// §4.2): one KeyPackage of each client of the requested user that has
// one, claimed in one write with the answer (claimKeyPackages). A user
// of another provider, or without clients or packages, is answered alike:
// an empty list, so that the answer does not enumerate users. missing is
// always empty: a client that published no KeyPackage is not known here.
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
	answerOf := func(claimed []store.KeyPackage) *moh.DSResponse {
		answer := &moh.DSResponse{Type: moh.ResponseKeyPackages}
		for _, kp := range claimed {
			answer.KeyPackages = append(answer.KeyPackages, kp.KeyPackage)
		}
		return answer
	}
	prov, user, err := moh.ParseUserURI(req.UserID)
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "connection_key_packages: user_id is not a user URI")
	}
	if !slices.Contains(s.Providers, string(prov)) {
		return answerOf(nil), nil
	}
	if err := s.allowClaim(v, string(req.UserID)); err != nil {
		return nil, err
	}
	c := store.KeyPackageClaim{Prefix: moh.ClientURI(string(prov), string(user), "")}
	return s.claimKeyPackages(ctx, v, "connection_key_packages", c, answerOf)
}

// claimKeyPackages makes the claims c of v's request and records the
// answer that answerOf builds from them in the same write
// (store.KeyPackages.ClaimKeyPackages, provider.Verified.InlineReplay), so
// that a request whose answer is not recorded claimed nothing, and a copy
// of it processed elsewhere on the same store claims nothing more. The
// request names no cipher suite (c.Suite stays 0). A package whose
// lifetime is longer than MaxKeyPackageLifetime, or has ended, is not
// handed out: a single-use one is consumed and the client's next taken,
// a last-resort one skipped.
func (s *Service) claimKeyPackages(ctx context.Context, v *provider.Verified, what string, c store.KeyPackageClaim,
	answerOf func(claimed []store.KeyPackage) *moh.DSResponse) (*moh.DSResponse, error) {
	// Only packages this Delivery Service would still add are handed
	// out: one stored under a longer maximum than today's, or whose
	// lifetime ended, is dropped (store.KeyPackageClaim.Usable).
	c.Usable = store.UsableKeyPackages(s.now(), s.maxLifetime())
	recorded := false
	c.Replay = func(claimed []store.KeyPackage) (*store.ReplayRecord, error) {
		recorded = false
		enc, err := wire.Marshal(answerOf(claimed))
		if err != nil {
			// Handle fails to encode it again, and records that.
			return nil, nil
		}
		r := v.InlineReplay(enc)
		recorded = r != nil
		return r, nil
	}
	claimed, err := s.Store.ClaimKeyPackages(ctx, c)
	if err != nil {
		// An error wrapping store.ErrConflict tells Handle that another
		// copy's answer was recorded first: it answers with that.
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "%s: claiming: %w", what, err)
	}
	if recorded {
		v.ReplayRecorded()
	}
	return answerOf(claimed), nil
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

// allowClaim spends one claim of the sender for the KeyPackages of each
// of users, all or none: a refusal spends no user's claim.
func (s *Service) allowClaim(v *provider.Verified, users ...string) error {
	if s.KeyPackageLimits == nil || len(users) == 0 {
		return nil
	}
	keys := make([]string, len(users))
	for i, u := range users {
		keys[i] = string(v.Request.Sender) + " " + u
	}
	if ok, _ := s.KeyPackageLimits.AllowAll(keys, s.now()); !ok {
		return moh.Errorf(moh.CodeRateLimited, "KeyPackages of this user were claimed too often by your provider; retry later")
	}
	return nil
}
