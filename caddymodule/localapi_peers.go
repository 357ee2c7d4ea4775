package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
)

// peerKeyPackages claims other providers' KeyPackages for the local API
// with the provider's own signed requests: connection_key_packages for a
// user, group_key_packages for a client (docs/protocol.md §4.2), through
// the service's key ring and current key fetcher.
type peerKeyPackages struct {
	svc *service.Service
	// unknownKeyWait is how long send waits before its one retry of a
	// claim refused with 401 unknown_key; 0 means unknownKeyRetryWait.
	unknownKeyWait time.Duration
}

// unknownKeyRetryWait is how long send waits before retrying a claim a
// peer refused with 401 unknown_key (docs/protocol.md §4.1): a receiver
// refetches an unknown key_id of a known sender once 5 s have passed
// since its last fetch, so a key this gateway has just begun signing with
// is known there by then.
const unknownKeyRetryWait = 5 * time.Second

var _ localapi.PeerKeyPackages = peerKeyPackages{} // interface guard

// ClaimUser implements localapi.PeerKeyPackages.
func (p peerKeyPackages) ClaimUser(ctx context.Context, requester, peer string, userURI []byte) ([][]byte, error) {
	payload, err := wire.Marshal(&moh.ConnectionKeyPackagesRequest{Requester: []byte(requester), UserID: userURI})
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "claiming KeyPackages: %v", err)
	}
	return p.sendMarked(ctx, requester, peer, moh.ConnectionKeyPackages, payload)
}

// ClaimClient implements localapi.PeerKeyPackages.
func (p peerKeyPackages) ClaimClient(ctx context.Context, requester, peer string, clientURI []byte) ([][]byte, error) {
	payload, err := wire.Marshal(&moh.GroupKeyPackagesRequest{Requester: []byte(requester), ClientIDs: [][]byte{clientURI}})
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "claiming KeyPackages: %v", err)
	}
	return p.sendMarked(ctx, requester, peer, moh.GroupKeyPackages, payload)
}

// peerClaimError marks an error of a claim from another provider, so
// that the local API logs it as that provider's failure (sampled) rather
// than as the gateway's own.
type peerClaimError struct {
	peer string
	err  error
}

func (e *peerClaimError) Error() string { return e.err.Error() }
func (e *peerClaimError) Unwrap() error { return e.err }

// sendMarked is send, with an error marked as a peerClaimError.
func (p peerKeyPackages) sendMarked(ctx context.Context, requester, peer string, typ moh.ProviderRequestType, payload []byte) ([][]byte, error) {
	kps, err := p.send(ctx, requester, peer, typ, payload)
	if err != nil {
		return nil, &peerClaimError{peer: peer, err: err}
	}
	return kps, nil
}

// send signs the request as the requester's provider and answers the
// peer's KeyPackages. A 401 unknown_key (the peer has not fetched the key
// this gateway has just begun signing with) is retried once after
// unknownKeyRetryWait, signed afresh. A refusal by the peer keeps its code
// (its message is the peer's, not ours); a peer that cannot be reached or
// answers nonsense is backend_unavailable.
func (p peerKeyPackages) send(ctx context.Context, requester, peer string, typ moh.ProviderRequestType, payload []byte) ([][]byte, error) {
	prov, _, err := moh.ParseUserURI([]byte(requester))
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "claiming KeyPackages: requester: %v", err)
	}
	c := &provider.Client{Sender: string(prov), Keys: p.svc.Keys(), Fetcher: p.svc.Fetcher()}
	// Send signs each request afresh: the current key, a new request_id
	// and timestamp.
	ans, err := c.Send(ctx, peer, typ, payload)
	if err == nil && unknownKey(ans) {
		if err := p.waitRetry(ctx); err != nil {
			return nil, moh.Errorf(moh.CodeBackendUnavailable, "claiming KeyPackages from %s: waiting to retry after unknown_key: %w", peer, err)
		}
		ans, err = c.Send(ctx, peer, typ, payload)
	}
	switch {
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "claiming KeyPackages from %s: %w", peer, err)
	case ans.Status == http.StatusOK && ans.Response.Type == moh.ResponseKeyPackages:
		return ans.Response.KeyPackages, nil
	case ans.Response.Type == moh.ResponseError:
		// The peer's refusals that concern the user pass on; those of the
		// exchange between the providers (signature, keys, replay) are
		// the gateway's trouble, not the client's.
		switch code := ans.Response.Error.Code; code {
		case moh.CodeRateLimited:
			// The local client learns when to ask again: the peer's
			// Retry-After, or a second when it gave none.
			return nil, admission.RetryLater(moh.Errorf(code, "%s refused the claim", peer), ans.RetryAfter)
		case moh.CodeForbidden, moh.CodeNotImplemented, moh.CodeNotFound:
			return nil, moh.Errorf(code, "%s refused the claim", peer)
		default:
			// The peer's text is for this gateway's log (the refusal's
			// cause), not for the local client: it may say anything.
			return nil, moh.Errorf(moh.CodeBackendUnavailable, "claiming KeyPackages from %s: %w", peer,
				fmt.Errorf("refused %d %s: %q", ans.Status, code, ans.Response.Error.Message))
		}
	}
	return nil, moh.Errorf(moh.CodeBackendUnavailable, "claiming KeyPackages from %s: %s", peer, fmt.Sprintf("status %d without KeyPackages", ans.Status))
}

// unknownKey reports a 401 unknown_key answer.
func unknownKey(a *provider.Answer) bool {
	return a.Status == http.StatusUnauthorized && a.Response.Type == moh.ResponseError &&
		a.Response.Error.Code == moh.CodeUnknownKey
}

// waitRetry waits p.unknownKeyWait (unknownKeyRetryWait when 0) and
// returns nil, or returns ctx's error if ctx ends first.
func (p peerKeyPackages) waitRetry(ctx context.Context) error {
	d := p.unknownKeyWait
	if d == 0 {
		d = unknownKeyRetryWait
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
