package caddymodule

import (
	"bytes"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// relayToHub relays a client's DSRequest that this gateway's DS answered
// not_found to the group's hub, when the group is hosted by another
// provider that this one knows as its hub (docs/protocol.md §9,
// followers): body goes unchanged to the same path of the hub's DS, over
// TLS 1.3 with the federation policy, and the hub's answer comes back
// unchanged, with its Retry-After, within the relay limit (relaylimit.go:
// 429 rate_limited beyond it). It reports whether it answered; when it
// did not, the caller sends its own not_found. A hub that cannot be
// reached is 503 backend_unavailable, logged with its cause.
//
// The answers of /welcome_information and /external_commit_information
// carry the group's whole ratchet tree, which may run to hundreds of MiB
// (provider.MaxRelayAnswer bounds what is held): they are streamed to the
// client as they arrive (relayStream), never held, and so not checked
// here to be a DSResponse (the client decodes them).
func (g *Gateway) relayToHub(x *exchange, body []byte) bool {
	if x.rt.path == "/welcome_information" || x.rt.path == "/external_commit_information" {
		return g.relayStream(x, body, bytes.NewReader(body), int64(len(body)))
	}
	ctx := x.r.Context()
	hub, err := g.ds.HubElsewhere(ctx, body)
	if err != nil {
		g.refuse(x, err)
		return true
	}
	if hub == "" {
		return false
	}
	if !g.admitRelay(x, hub) {
		return true
	}
	ans, err := g.svc.Fetcher().Relay(ctx, hub, x.rt.path, body)
	if err != nil {
		g.sampled.Warn("relaying a client request to the group's hub failed", zap.String("hub", hub),
			zap.String("endpoint", x.rt.path), zap.Error(err))
		g.refuse(x, moh.Errorf(moh.CodeBackendUnavailable, "the group's hub %s could not be reached", hub))
		return true
	}
	var r moh.DSResponse
	if wire.Unmarshal(ans.Body, &r, "DSResponse") != nil {
		g.sampled.Warn("the group's hub answered a relayed request with something other than a DSResponse",
			zap.String("hub", hub), zap.Int("status", ans.Status))
		g.refuse(x, moh.Errorf(moh.CodeBackendUnavailable, "the group's hub %s answered nonsense", hub))
		return true
	}
	if ans.RetryAfter != "" {
		// The hub's rate limit applies to every client of this
		// provider alike (it sees this provider's address): the client
		// learns when to try again, as PROFILE §3 has a 429 tell.
		x.w.Header().Set("Retry-After", ans.RetryAfter)
	}
	writeAnswer(x.w, ans.Status, ans.Body)
	return true
}
