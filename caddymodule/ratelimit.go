package caddymodule

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// zonePool keeps rate-limit zones across config reloads, keyed by data
// directory and zone name: Caddy provisions the new config before it cleans
// up the old one, so the new config finds the old zone and its buckets.
var zonePool = caddy.NewUsagePool()

// Key kinds of a zone.
type keyKind int

const (
	keyIP keyKind = iota
	keySender
	keyGroup
	keyMember
	keyPlaceholder
)

// over_limit values.
const (
	overLimitRefuse = "refuse"
	overLimitToken  = "token"
)

// maxZoneRate bounds events per second, a sanity limit on typos.
const maxZoneRate = 1e9

// limitZone is a provisioned zone: its shared buckets and how to key them.
type limitZone struct {
	name           string
	zone           *ratelimit.Zone
	kind           keyKind
	v4, v6         int
	template       string
	overLimitToken bool
	poolKey        string
}

// zoneUse is a zone on one endpoint, with that endpoint's counters.
type zoneUse struct {
	zone                        *limitZone
	allowed, limited, overToken prometheus.Counter
}

func newZoneUse(z *limitZone, endpoint string) *zoneUse {
	return &zoneUse{
		zone:      z,
		allowed:   decisions.WithLabelValues(z.name, endpoint, "allowed"),
		limited:   decisions.WithLabelValues(z.name, endpoint, "limited"),
		overToken: decisions.WithLabelValues(z.name, endpoint, "over_limit_token"),
	}
}

// kind returns the key kind of the zone's configuration.
func (z *RateLimitZone) kind() keyKind {
	switch z.Key {
	case "remote_ip", "ip_prefix":
		return keyIP
	case "sender_provider":
		return keySender
	case "group":
		return keyGroup
	case "member":
		return keyMember
	}
	return keyPlaceholder
}

// rate returns the zone's rate in events per second.
func (z *RateLimitZone) rate() float64 {
	return float64(z.Events) / time.Duration(z.Window).Seconds()
}

// burst returns the configured burst or its default.
func (z *RateLimitZone) burst() int {
	if z.Burst > 0 {
		return z.Burst
	}
	return z.Events
}

// validate checks one zone; every error names the bad value.
func (z *RateLimitZone) validate() error {
	if !validZoneName(z.Name) {
		return fmt.Errorf("zone name %q must be lowercase letters, digits and underscores, and not privacy_pass, peers or issuer", z.Name)
	}
	switch z.Key {
	case "":
		return errors.New("key is required")
	case "remote_ip", "ip_prefix", "sender_provider", "group", "member":
	default:
		if !strings.Contains(z.Key, "{") {
			return fmt.Errorf("key %q is not remote_ip, ip_prefix, sender_provider, group, member or a placeholder", z.Key)
		}
	}
	if z.Key != "ip_prefix" && (z.IPv4Prefix != 0 || z.IPv6Prefix != 0) {
		return fmt.Errorf("ipv4_prefix and ipv6_prefix apply only to key ip_prefix, not %q", z.Key)
	}
	if z.IPv4Prefix < 0 || z.IPv4Prefix > 32 {
		return fmt.Errorf("ipv4_prefix %d is outside 0..32", z.IPv4Prefix)
	}
	if z.IPv6Prefix < 0 || z.IPv6Prefix > 128 {
		return fmt.Errorf("ipv6_prefix %d is outside 0..128", z.IPv6Prefix)
	}
	if z.Events < 1 {
		return fmt.Errorf("events %d must be at least 1", z.Events)
	}
	if z.Window <= 0 {
		return fmt.Errorf("window %s must be positive", time.Duration(z.Window))
	}
	if z.rate() > maxZoneRate {
		return fmt.Errorf("rate %d/%s is above %g per second", z.Events, time.Duration(z.Window), float64(maxZoneRate))
	}
	if z.Burst < 0 {
		return fmt.Errorf("burst %d must be at least 1", z.Burst)
	}
	if z.MaxKeys < 0 {
		return fmt.Errorf("max_keys %d must be positive", z.MaxKeys)
	}
	switch z.OverLimit {
	case "", overLimitRefuse, overLimitToken:
	default:
		return fmt.Errorf("over_limit %q is not refuse or token", z.OverLimit)
	}
	return nil
}

// validZoneName reports whether name can label a zone's metrics.
func validZoneName(name string) bool {
	if name == "" || len(name) > 64 || name == "privacy_pass" || name == "peers" || name == "issuer" {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// appliesTo reports whether the zone's key exists on the endpoint at path.
func (z *RateLimitZone) appliesTo(path string) error {
	switch z.kind() {
	case keySender:
		if !isProviderPath(path) {
			return errors.New("key sender_provider needs a provider endpoint")
		}
	case keyGroup, keyMember:
		if !isDSPath(path) {
			return fmt.Errorf("key %s needs a client-signed DS endpoint", z.Key)
		}
	}
	return nil
}

// loadZone returns the shared zone of cfg, creating it on first use and
// applying cfg's rate and burst to an existing one.
func loadZone(dataDir string, cfg *RateLimitZone) (*limitZone, error) {
	key := dataDir + "\x00" + cfg.Name
	v, loaded, err := zonePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return ratelimit.NewZone(cfg.Name, ratelimit.Config{Rate: cfg.rate(), Burst: cfg.burst(), MaxKeys: cfg.MaxKeys})
	})
	if err != nil {
		return nil, err
	}
	z := v.(*ratelimit.Zone)
	if loaded {
		if err := z.UpdateLimits(cfg.rate(), cfg.burst()); err != nil {
			zonePool.Delete(key) //nolint:errcheck // the zone is not ours to keep
			return nil, fmt.Errorf("updating limits: %w", err)
		}
	}
	lz := &limitZone{
		name: cfg.Name, zone: z, kind: cfg.kind(), template: cfg.Key,
		v4: ratelimit.DefaultIPv4Bits, v6: ratelimit.DefaultIPv6Bits,
		overLimitToken: cfg.OverLimit == overLimitToken, poolKey: key,
	}
	if cfg.Key == "ip_prefix" {
		if cfg.IPv4Prefix != 0 {
			lz.v4 = cfg.IPv4Prefix
		}
		if cfg.IPv6Prefix != 0 {
			lz.v6 = cfg.IPv6Prefix
		}
	}
	return lz, nil
}

// allowRequest spends one event of the bucket keyed on r (IP or placeholder
// zones). buf is scratch space for the key.
func (z *limitZone) allowRequest(buf []byte, r *http.Request, now time.Time) (bool, time.Duration, error) {
	if z.kind == keyPlaceholder {
		repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if !ok {
			return false, 0, errors.New("rate limit: no replacer in the request context")
		}
		ok, retry := z.zone.Allow(repl.ReplaceAll(z.template, ""), now)
		return ok, retry, nil
	}
	addr, ok := clientAddr(r)
	if !ok {
		// A listener without IP addresses (a unix socket): its clients
		// share one bucket.
		ok, retry := z.zone.Allow(nonIPKey, now)
		return ok, retry, nil
	}
	key, err := ratelimit.AppendIPKey(buf, addr, z.v4, z.v6)
	if err != nil {
		return false, 0, fmt.Errorf("rate limit %s: %w", z.name, err)
	}
	ok, retry := z.zone.AllowBytes(key, now)
	return ok, retry, nil
}

// nonIPKey is the bucket of clients without an IP address.
const nonIPKey = "non-ip"

// clientAddr returns the client IP Caddy determined for r: the
// client_ip variable, which honours the server's trusted_proxies, or the
// socket peer when the variable is absent (outside a Caddy server). It
// reports false when the client has no IP address.
func clientAddr(r *http.Request) (netip.Addr, bool) {
	if s, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && s != "" {
		if a, err := netip.ParseAddr(s); err == nil {
			return a, true
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	return a, err == nil
}
