package caddymodule

import (
	"context"
	"fmt"
	"net/http"

	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// peerKeyPackages claims other providers' KeyPackages for the local API
// with the provider's own signed requests: connection_key_packages for a
// user, group_key_packages for a client (docs/protocol.md §4.2), through
// the service's key ring and current key fetcher.
type peerKeyPackages struct {
	svc *service.Service
}

var _ localapi.PeerKeyPackages = peerKeyPackages{} // interface guard

// ClaimUser implements localapi.PeerKeyPackages.
func (p peerKeyPackages) ClaimUser(ctx context.Context, requester, peer string, userURI []byte) ([][]byte, error) {
	payload, err := wire.Marshal(&moh.ConnectionKeyPackagesRequest{Requester: []byte(requester), UserID: userURI})
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "claiming KeyPackages: %v", err)
	}
	return p.send(ctx, requester, peer, moh.ConnectionKeyPackages, payload)
}

// ClaimClient implements localapi.PeerKeyPackages.
func (p peerKeyPackages) ClaimClient(ctx context.Context, requester, peer string, clientURI []byte) ([][]byte, error) {
	payload, err := wire.Marshal(&moh.GroupKeyPackagesRequest{Requester: []byte(requester), ClientIDs: [][]byte{clientURI}})
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "claiming KeyPackages: %v", err)
	}
	return p.send(ctx, requester, peer, moh.GroupKeyPackages, payload)
}

// send signs the request as the requester's provider and answers the
// peer's KeyPackages. A refusal by the peer keeps its code (its message is
// the peer's, not ours); a peer that cannot be reached or answers nonsense
// is backend_unavailable.
func (p peerKeyPackages) send(ctx context.Context, requester, peer string, typ moh.ProviderRequestType, payload []byte) ([][]byte, error) {
	prov, _, err := moh.ParseUserURI([]byte(requester))
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "claiming KeyPackages: requester: %v", err)
	}
	c := &provider.Client{Sender: string(prov), Keys: p.svc.Keys(), Fetcher: p.svc.Fetcher()}
	ans, err := c.Send(ctx, peer, typ, payload)
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
		case moh.CodeRateLimited, moh.CodeForbidden, moh.CodeNotImplemented, moh.CodeNotFound:
			return nil, moh.Errorf(code, "%s refused the claim", peer)
		default:
			return nil, moh.Errorf(moh.CodeBackendUnavailable, "claiming KeyPackages from %s: refused %d %s: %s",
				peer, ans.Status, code, ans.Response.Error.Message)
		}
	}
	return nil, moh.Errorf(moh.CodeBackendUnavailable, "claiming KeyPackages from %s: %s", peer, fmt.Sprintf("status %d without KeyPackages", ans.Status))
}
