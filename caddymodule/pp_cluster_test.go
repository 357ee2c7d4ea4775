package caddymodule

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// TestPrivacyPassTwoGatewaysOnePostgres runs two gateways of one provider
// on one PostgreSQL database behind an imagined load balancer, each its
// own Privacy Pass issuer with the same key files: a token whose
// challenge one gateway minted and whose issuance it signed is redeemed on
// the other, once, and a second redemption on either is refused as a
// replay, while another token for the same challenge still goes through.
// Both context modes: random (the challenges in the database) and window
// without a secret of its own (derived from key_secret on each gateway).
func TestPrivacyPassTwoGatewaysOnePostgres(t *testing.T) {
	t.Setenv("MIMI_TEST_KEY_SECRET", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32)))
	f := newPPFixture(t)
	for _, mode := range []string{contextRandom, contextWindow} {
		t.Run(mode, func(t *testing.T) {
			dsn := pgtest.NewDB(t)
			gw := func() *Gateway {
				g := pgGateway(t, dsn, "")
				pp := f.gateway("")
				g.Issuer, g.PrivacyPass = pp.Issuer, pp.PrivacyPass
				g.PrivacyPass.Context, g.PrivacyPass.Secret = mode, ""
				return provisioned(t, g)
			}
			a, b := gw(), gw()
			if a.svc == b.svc || a.origin == b.origin {
				t.Fatal("the gateways share one in-process service or origin; the test needs two")
			}
			for _, c := range []struct {
				name           string
				from, redeemOn *Gateway
				typ            privacypass.TokenType
			}{
				{"type 2 from a redeemed on b", a, b, privacypass.TypeBlindRSA},
				{"type 2 from b redeemed on a", b, a, privacypass.TypeBlindRSA},
				{"type 1 from a redeemed on b", a, b, privacypass.TypeVOPRF},
			} {
				t.Run(c.name, func(t *testing.T) {
					challenge := challengeOf(t, c.from, c.typ)
					tok := f.mint(t, c.from, challenge, c.typ)
					other := f.mint(t, c.from, challenge, c.typ)
					if w := redeemAt(c.redeemOn, tok); w.Code != endpointAnswer {
						t.Fatalf("first redemption on the other gateway: status %d %q", w.Code, w.Body.String())
					}
					for name, g := range map[string]*Gateway{"same": c.redeemOn, "minting": c.from} {
						w := redeemAt(g, tok)
						if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), string(privacypass.ReasonReplay)) {
							t.Fatalf("second redemption on the %s gateway: status %d %q, want 401 replay", name, w.Code, w.Body.String())
						}
					}
					if w := redeemAt(c.from, other); w.Code != endpointAnswer {
						t.Fatalf("another token for the challenge on the minting gateway: status %d %q", w.Code, w.Body.String())
					}
				})
			}
		})
	}
}
