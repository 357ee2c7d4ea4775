package caddymodule

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// Defaults of the relay limit (RelayLimit).
const (
	defaultRelayEvents    = 50
	defaultRelayBurst     = 100
	defaultRelayHubEvents = 500
	defaultRelayHubBurst  = 1000
	defaultRelayWindow    = time.Second
)

// Names of the relay limit's zones.
const (
	relayZoneClients = "relay_clients"
	relayZoneHubs    = "relay_hubs"
)

// RelayLimit bounds how fast this gateway relays its clients' requests to
// the hubs of groups hosted by other providers (docs/protocol.md §5.4,
// "Followers relay to the hub"). It is always on, whatever rate_limit
// zones are configured: without it anyone who reaches the gateway's MoH
// endpoints could make it send a peer hub requests without bound, and the
// peer would limit or defederate the whole provider. A follower cannot
// verify a relayed request's client signature (it does not hold the
// group's tree), so a client is its address, which the request cannot
// choose: the client IP as Caddy determines it, honouring the server's
// trusted_proxies, one bucket per IPv4 address and per IPv6 /64 (requests
// without an IP address, over a unix socket, share one bucket). A second,
// larger bound holds for each hub, the provider's own clients together.
// A request over either bound is 429 rate_limited with Retry-After and
// is not relayed; one over either bound spends nothing of the other's.
// Sites with one data directory (one provider) share the buckets when
// they set the same limits.
type RelayLimit struct {
	// Events per Window is the sustained rate of requests relayed for one
	// client address. Default: 50 per 1s (clients behind one NAT share it).
	Events int            `json:"events,omitempty"`
	Window caddy.Duration `json:"window,omitempty"`
	// Burst is how many requests one client address may have relayed at
	// once. Default: 100, or Events when Events is set.
	Burst int `json:"burst,omitempty"`

	// HubEvents per HubWindow is the sustained rate of requests relayed to
	// one hub, for all clients together. It must be above the client rate,
	// and HubBurst above Burst, so that one client alone never spends a
	// hub's whole budget. Default: 500 per 1s.
	HubEvents int            `json:"hub_events,omitempty"`
	HubWindow caddy.Duration `json:"hub_window,omitempty"`
	// HubBurst is how many requests may be relayed to one hub at once.
	// Default: 1000, or HubEvents when HubEvents is set.
	HubBurst int `json:"hub_burst,omitempty"`
}

// relayRates are the limits of a RelayLimit, defaults applied, in events
// per second.
type relayRates struct {
	rate, hubRate   float64
	burst, hubBurst int
}

// rates applies the defaults to l (which may be nil) and checks it; every
// error names the bad value.
func (l *RelayLimit) rates() (relayRates, error) {
	var c RelayLimit
	if l != nil {
		c = *l
	}
	side := func(name string, events int, window caddy.Duration, burst, defEvents, defBurst int) (float64, int, error) {
		if events < 0 || burst < 0 || window < 0 {
			return 0, 0, fmt.Errorf("relay_limit: %s %d/%s and burst %d must not be negative", name, events, time.Duration(window), burst)
		}
		if events == 0 {
			events = defEvents
			if burst == 0 {
				burst = defBurst
			}
		}
		if burst == 0 {
			burst = events
		}
		if window == 0 {
			window = caddy.Duration(defaultRelayWindow)
		}
		r := float64(events) / time.Duration(window).Seconds()
		if r < ratelimit.MinRate {
			return 0, 0, fmt.Errorf("relay_limit: %s %d/%s is below the least rate, one event in 30 years", name, events, time.Duration(window))
		}
		return r, burst, nil
	}
	var rr relayRates
	var err error
	if rr.rate, rr.burst, err = side("rate", c.Events, c.Window, c.Burst, defaultRelayEvents, defaultRelayBurst); err != nil {
		return rr, err
	}
	if rr.hubRate, rr.hubBurst, err = side("hub_rate", c.HubEvents, c.HubWindow, c.HubBurst, defaultRelayHubEvents, defaultRelayHubBurst); err != nil {
		return rr, err
	}
	if rr.hubRate <= rr.rate || rr.hubBurst <= rr.burst {
		return rr, fmt.Errorf("relay_limit: the hub bound (%g/s, burst %d) must be above the client bound (%g/s, burst %d), else one client can spend a hub's whole budget",
			rr.hubRate, rr.hubBurst, rr.rate, rr.burst)
	}
	return rr, nil
}

// relayLimiter is the relay limit of a gateway: its two zones, held in
// limitZonePool under keys.
type relayLimiter struct {
	clients, hubs *ratelimit.Zone
	keys          []string
}

// acquireRelayLimiter returns the relay limit of dataDir at l's limits,
// with zones from limitZonePool; the caller releases it (release).
func acquireRelayLimiter(dataDir string, l *RelayLimit) (*relayLimiter, error) {
	rr, err := l.rates()
	if err != nil {
		return nil, err
	}
	rl := new(relayLimiter)
	if rl.clients, err = rl.acquire(dataDir, relayZoneClients, rr.rate, rr.burst); err != nil {
		return nil, err
	}
	if rl.hubs, err = rl.acquire(dataDir, relayZoneHubs, rr.hubRate, rr.hubBurst); err != nil {
		rl.release() //nolint:errcheck // the acquisition's error is the one to report
		return nil, err
	}
	return rl, nil
}

// acquire takes the zone name of dataDir at rate and burst from
// limitZonePool and records its key.
func (rl *relayLimiter) acquire(dataDir, name string, rate float64, burst int) (*ratelimit.Zone, error) {
	key := limitZoneKey(dataDir, name, rate, burst)
	v, _, err := limitZonePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return ratelimit.NewZone(name, ratelimit.Config{Rate: rate, Burst: burst})
	})
	if err != nil {
		return nil, fmt.Errorf("relay limit: %w", err)
	}
	rl.keys = append(rl.keys, key)
	return v.(*ratelimit.Zone), nil
}

// release gives the zones back to limitZonePool.
func (rl *relayLimiter) release() error {
	var first error
	for _, k := range rl.keys {
		if _, err := limitZonePool.Delete(k); err != nil && first == nil {
			first = err
		}
	}
	rl.keys = nil
	return first
}

// allow spends a token of client's bucket and one of hub's at now, both
// or neither: a request refused by either bound costs nothing of the
// other (the client's token is given back when the hub's bucket is
// empty, ratelimit.Zone.AllowBytesThen). A refusal is 429 rate_limited
// with the Retry-After of the refused bucket.
func (rl *relayLimiter) allow(client netip.Addr, hub string, now time.Time) error {
	var buf [64]byte
	key, err := ratelimit.AppendIPKey(buf[:0], client, ratelimit.DefaultIPv4Bits, ratelimit.DefaultIPv6Bits)
	if err != nil {
		key = append(buf[:0], "local"...) // no IP address: a unix socket
	}
	hubRefused := false
	ok, wait := rl.clients.AllowBytesThen(key, now, func() (bool, time.Duration) {
		ok, wait := rl.hubs.Allow(hub, now)
		hubRefused = !ok
		return ok, wait
	})
	switch {
	case ok:
		return nil
	case hubRefused:
		return admission.RetryLater(moh.Errorf(moh.CodeRateLimited,
			"too many requests relayed to the group's hub %s; retry after %d s", hub, admission.RetrySeconds(wait)), wait)
	default:
		return admission.RetryLater(moh.Errorf(moh.CodeRateLimited,
			"too many requests relayed to groups' hubs for your address; retry after %d s", admission.RetrySeconds(wait)), wait)
	}
}

// admitRelay runs the relay limit on a request about to be relayed to hub
// and, when it refuses, answers it and reports false.
func (g *Gateway) admitRelay(x *exchange, hub string) bool {
	err := g.relay.allow(x.adm.ClientIP, hub, time.Now())
	if err == nil {
		return true
	}
	if c := g.logger.Check(zapcore.DebugLevel, "refused to relay a client request to the group's hub"); c != nil {
		c.Write(zap.String("endpoint", x.rt.name), zap.String("hub", hub), zap.String("remote_ip", remoteIP(x.r)), zap.Error(err))
	}
	g.refuse(x, err)
	return false
}

// unmarshalRelayLimit parses the relay_limit block:
//
//	relay_limit {
//		rate      <events>/<duration>
//		burst     <events>
//		hub_rate  <events>/<duration>
//		hub_burst <events>
//	}
func unmarshalRelayLimit(d *caddyfile.Dispenser) (*RelayLimit, error) {
	l := new(RelayLimit)
	for opt, err := range caddyopts.Block(d, "relay_limit") {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "rate", "hub_rate", "burst", "hub_burst":
		default:
			return nil, d.Errf("unrecognized relay_limit option '%s'", opt)
		}
		var v string
		if !d.AllArgs(&v) {
			return nil, d.ArgErr()
		}
		switch opt {
		case "rate", "hub_rate":
			events, window, err := parseRate(v)
			if err != nil {
				return nil, d.Errf("invalid %s '%s': %v", opt, v, err)
			}
			if opt == "rate" {
				l.Events, l.Window = events, window
			} else {
				l.HubEvents, l.HubWindow = events, window
			}
		case "burst", "hub_burst":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, d.Errf("invalid %s '%s': want a positive integer", opt, v)
			}
			if opt == "burst" {
				l.Burst = n
			} else {
				l.HubBurst = n
			}
		}
	}
	if _, err := l.rates(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return l, nil
}

// parseRate reads a rate written <events>/<duration>, such as 10/1s.
func parseRate(v string) (int, caddy.Duration, error) {
	n, dur, ok := strings.Cut(v, "/")
	events, err := strconv.Atoi(n)
	if !ok || err != nil || events < 1 {
		return 0, 0, fmt.Errorf("want <events>/<duration> such as 10/1s")
	}
	window, err := caddy.ParseDuration(dur)
	if err != nil || window <= 0 {
		return 0, 0, fmt.Errorf("bad duration '%s'", dur)
	}
	return events, caddy.Duration(window), nil
}
