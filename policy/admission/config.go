package admission

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// Kind says what an endpoint is, which decides the zone keys that exist on
// it.
type Kind uint8

// Endpoint kinds.
const (
	// KindOther is an endpoint with no verified identity: discovery,
	// health, the verification key. Only request-keyed zones apply.
	KindOther Kind = iota
	// KindProvider is a provider-signed endpoint: sender_provider zones
	// apply, after the envelope signature verified.
	KindProvider
	// KindClient is a client-signed DS endpoint: group and member zones
	// apply, after the request signature verified.
	KindClient
	// KindIssuer is an endpoint of the token issuer role (the request path
	// and the directory).
	KindIssuer
)

// Endpoint is one endpoint of the gateway, as the policy knows it.
type Endpoint struct {
	// Name is the endpoint's name in the configuration, metrics and logs:
	// "group_operation", "ds_domain", "token_request", ... Required and
	// unique.
	Name string
	// Path is the endpoint's path, such as "/group_operation". Optional:
	// when set, ZoneConfig.Endpoints and Config.RequireToken may name the
	// endpoint by path as well as by name.
	Path string
	// Kind says which zone keys apply.
	Kind Kind
	// NotDefault keeps the endpoint out of zones that list no endpoints
	// (the liveness probe and the issuer directory, which load balancers
	// and clients poll).
	NotDefault bool
	// NoToken keeps the endpoint out of Config.RequireToken (discovery,
	// health and the issuer's endpoints): a peer or client must reach it
	// without a token.
	NoToken bool
}

// KeyKind says what a zone's buckets belong to.
type KeyKind uint8

// Zone keys.
const (
	// KeyRemoteIP: the client IP, one bucket per IPv4 address and per IPv6
	// /64.
	KeyRemoteIP KeyKind = iota
	// KeyIPPrefix: the client IP masked to IPv4Prefix / IPv6Prefix bits.
	KeyIPPrefix
	// KeySender: the sending provider of a provider request, taken after
	// its signature verified (KindProvider endpoints only).
	KeySender
	// KeyGroup: the verified group id of a client-signed DS request
	// (KindClient endpoints only).
	KeyGroup
	// KeyMember: the verified group id and member of a client-signed DS
	// request, keyed group_id || 0x00 || member (KindClient endpoints only).
	KeyMember
	// KeyPlaceholder: a placeholder template expanded per request
	// (Request.Placeholders); requests for which it expands to the same
	// text, the empty text included, share a bucket.
	KeyPlaceholder
)

var keyNames = [...]string{
	KeyRemoteIP:    "remote_ip",
	KeyIPPrefix:    "ip_prefix",
	KeySender:      "sender_provider",
	KeyGroup:       "group",
	KeyMember:      "member",
	KeyPlaceholder: "placeholder",
}

// String returns the configuration name of k ("remote_ip", "ip_prefix",
// "sender_provider", "group", "member"), or "placeholder".
func (k KeyKind) String() string {
	if int(k) < len(keyNames) {
		return keyNames[k]
	}
	return fmt.Sprintf("key_%d", uint8(k))
}

// ParseKey parses the key option of a zone: remote_ip, ip_prefix,
// sender_provider, group, member, or a placeholder template (anything
// containing "{"), for which it also returns the template.
func ParseKey(s string) (kind KeyKind, template string, err error) {
	switch s {
	case "":
		return 0, "", errors.New("key is required")
	case "remote_ip":
		return KeyRemoteIP, "", nil
	case "ip_prefix":
		return KeyIPPrefix, "", nil
	case "sender_provider":
		return KeySender, "", nil
	case "group":
		return KeyGroup, "", nil
	case "member":
		return KeyMember, "", nil
	}
	if strings.Contains(s, "{") {
		return KeyPlaceholder, s, nil
	}
	return 0, "", fmt.Errorf("key %q is not remote_ip, ip_prefix, sender_provider, group, member or a placeholder", s)
}

// requestKeyed reports whether the key is taken from the request itself, so
// that the zone runs before the body is read.
func (k KeyKind) requestKeyed() bool {
	return k == KeyRemoteIP || k == KeyIPPrefix || k == KeyPlaceholder
}

// appliesTo reports why the key cannot exist on ep, or nil.
func (k KeyKind) appliesTo(ep *Endpoint) error {
	switch k {
	case KeySender:
		if ep.Kind != KindProvider {
			return errors.New("key sender_provider needs a provider endpoint")
		}
	case KeyGroup, KeyMember:
		if ep.Kind != KindClient {
			return fmt.Errorf("key %s needs a client-signed DS endpoint", k)
		}
	}
	return nil
}

// ZoneConfig is one named rate-limit zone: a token bucket per key, refilled
// at Rate events per second, holding at most Burst events.
type ZoneConfig struct {
	// Name identifies the zone in logs and metrics (ValidZoneName). Zones
	// are shared across Policies by Config.Scope and Name: a Policy that
	// reuses the name finds the buckets and applies its Rate and Burst to
	// them. Required.
	Name string
	// Key says what a bucket belongs to.
	Key KeyKind
	// Template is the placeholder template of a KeyPlaceholder zone, such
	// as "{http.request.header.X-User}". Only for KeyPlaceholder.
	Template string
	// IPv4Prefix and IPv6Prefix are the prefix lengths of a KeyIPPrefix
	// zone, in bits. Default (0): 32 and 64. Only for KeyIPPrefix.
	IPv4Prefix, IPv6Prefix int
	// Rate is the sustained rate in events per second; above 0 and at
	// most MaxZoneRate.
	Rate float64
	// Burst is how many events one key may spend at once; at least 1.
	Burst int
	// MaxKeys caps the buckets the zone holds; past it the least recently
	// used sampled bucket is evicted. Default (0): ratelimit.DefaultMaxKeys.
	// Set when the zone is first created: reusing it does not change it.
	MaxKeys int
	// Endpoints lists the endpoints the zone covers, by name (or by path
	// when the Endpoint has one). Empty: every endpoint the key applies to
	// except those marked NotDefault.
	Endpoints []string
	// OverLimitToken admits a request over the limit if it carries a valid
	// Privacy Pass token (token_required with a challenge otherwise)
	// instead of refusing it with rate_limited. Needs Privacy Pass.
	OverLimitToken bool
	// Redis, when set, keeps the zone's buckets in Redis, shared by every
	// gateway using the same server, prefix and zone name, with the local
	// buckets as fallback (ratelimit.Zone.SetRedis). Nil: local buckets.
	Redis *ratelimit.RedisConfig
}

// Config is the admission policy of one gateway.
type Config struct {
	// Scope shares zones across Policies (configuration reloads): zones of
	// the same Scope and name are one set of buckets. The Caddy glue
	// passes the data directory.
	Scope string
	// Endpoints are every endpoint of the gateway.
	Endpoints []Endpoint
	// Zones are the rate-limit zones, run in this order on an endpoint: a
	// zone spends an event when it admits a request even if a later zone
	// refuses it, so list the tightest zone first.
	Zones []ZoneConfig
	// RequireToken lists the endpoints, by name or path, that need a valid
	// Privacy Pass token on every request.
	RequireToken []string
	// PrivacyPass says Privacy Pass redemption is configured. Validate,
	// which runs before the Origin is built, checks OverLimitToken zones
	// and RequireToken against it. Origin != nil implies it.
	PrivacyPass bool
	// Origin redeems tokens; nil: no Privacy Pass redemption. The Policy
	// does not own it: the caller closes it after the Policy.
	Origin *Origin
	// Issuer is the token issuer role; nil: none. Only used to warn when
	// no zone limits token issuance.
	Issuer *Issuer
	// Peers restricts which providers may send provider requests; nil:
	// every verified provider.
	Peers *Peers
	// Logger receives the policy's logs; nil: none.
	Logger *zap.Logger
	// Now is the clock of the rate-limit zones; nil: time.Now.
	Now func() time.Time
}

// Limits of the configuration.
const (
	// MaxZoneRate bounds a zone's events per second, a sanity limit on
	// typos.
	MaxZoneRate = 1e9
	// maxZoneName bounds a zone name, which labels metrics.
	maxZoneName = 64
)

// ValidZoneName reports whether name can name a zone: 1 to 64 lowercase
// letters, digits and underscores, and not one of the names the metrics use
// for other decisions (privacy_pass, peers, issuer).
func ValidZoneName(name string) bool {
	if name == "" || len(name) > maxZoneName || name == zonePrivacyPass || name == zonePeers || name == zoneIssuer {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ValidOriginInfo checks one origin name a token may be bound to: 1 to 255
// printable ASCII characters without space or comma.
func ValidOriginInfo(o string) error {
	if o == "" || len(o) > 255 {
		return fmt.Errorf("origin_info %q is not an origin name", o)
	}
	for _, c := range []byte(o) {
		if c <= ' ' || c > '~' || c == ',' {
			return fmt.Errorf("origin_info %q is not an origin name", o)
		}
	}
	return nil
}

// ValidDirectoryURL checks an issuer directory URL: https, with a host, no
// user information and no fragment.
func ValidDirectoryURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
		return fmt.Errorf("issuer_directory %q is not an https URL", s)
	}
	return nil
}

// ValidRequestPath checks the issuer's request path: absolute, without
// query, fragment, escapes or blanks, and not the directory path.
func ValidRequestPath(p string) error {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#% \t") || p == privacypass.DirectoryPath {
		return fmt.Errorf("request_path %q is not an absolute path without query", p)
	}
	return nil
}

// validate checks one zone; every error names the bad value.
func (z *ZoneConfig) validate() error {
	if !ValidZoneName(z.Name) {
		return fmt.Errorf("zone name %q must be lowercase letters, digits and underscores, and not privacy_pass, peers or issuer", z.Name)
	}
	switch z.Key {
	case KeyRemoteIP, KeyIPPrefix, KeySender, KeyGroup, KeyMember:
		if z.Template != "" {
			return fmt.Errorf("a template applies only to a placeholder key, not %s", z.Key)
		}
	case KeyPlaceholder:
		if !strings.Contains(z.Template, "{") {
			return fmt.Errorf("key %q is not a placeholder", z.Template)
		}
	default:
		return fmt.Errorf("key %s is unknown", z.Key)
	}
	if z.Key != KeyIPPrefix && (z.IPv4Prefix != 0 || z.IPv6Prefix != 0) {
		return fmt.Errorf("ipv4_prefix and ipv6_prefix apply only to key ip_prefix, not %q", z.keyName())
	}
	if z.IPv4Prefix < 0 || z.IPv4Prefix > 32 {
		return fmt.Errorf("ipv4_prefix %d is outside 0..32", z.IPv4Prefix)
	}
	if z.IPv6Prefix < 0 || z.IPv6Prefix > 128 {
		return fmt.Errorf("ipv6_prefix %d is outside 0..128", z.IPv6Prefix)
	}
	if !(z.Rate > 0) || z.Rate > MaxZoneRate {
		return fmt.Errorf("rate %g per second must be above 0 and at most %g", z.Rate, float64(MaxZoneRate))
	}
	if z.Burst < 1 {
		return fmt.Errorf("burst %d must be at least 1", z.Burst)
	}
	if z.MaxKeys < 0 {
		return fmt.Errorf("max_keys %d must be positive", z.MaxKeys)
	}
	if z.Redis != nil {
		if z.Rate > ratelimit.MaxRedisRate {
			return fmt.Errorf("rate %g per second is above %g, the most a redis zone resolves", z.Rate, float64(ratelimit.MaxRedisRate))
		}
		return z.Redis.Validate()
	}
	return nil
}

// keyName is the key as configured: the template of a placeholder zone.
func (z *ZoneConfig) keyName() string {
	if z.Key == KeyPlaceholder {
		return z.Template
	}
	return z.Key.String()
}

// endpoint returns the endpoint named or at path s.
func (c *Config) endpoint(s string) (*Endpoint, error) {
	for i := range c.Endpoints {
		ep := &c.Endpoints[i]
		if s == ep.Name || (ep.Path != "" && s == ep.Path) {
			return ep, nil
		}
	}
	return nil, fmt.Errorf("%q is not an endpoint of this gateway", s)
}

// redemption reports whether Privacy Pass redemption is configured.
func (c *Config) redemption() bool { return c.PrivacyPass || c.Origin != nil }

// Validate checks the configuration without touching any file or network.
// Every error names the option and the bad value, in the words of the
// Caddyfile ("rate_limit NAME endpoints: ..."); the glue prefixes its
// module name.
func (c *Config) Validate() error {
	seen := map[string]bool{}
	for _, ep := range c.Endpoints {
		if ep.Name == "" {
			return errors.New("endpoints: an endpoint has no name")
		}
		if seen[ep.Name] || (ep.Path != "" && seen[ep.Path]) {
			return fmt.Errorf("endpoints: %q is listed twice", ep.Name)
		}
		seen[ep.Name] = true
		if ep.Path != "" {
			seen[ep.Path] = true
		}
	}
	names := map[string]bool{}
	for i := range c.Zones {
		z := &c.Zones[i]
		if err := z.validate(); err != nil {
			return fmt.Errorf("rate_limit %s: %w", z.Name, err)
		}
		if names[z.Name] {
			return fmt.Errorf("rate_limit: duplicate zone name %q", z.Name)
		}
		names[z.Name] = true
		covered := map[string]bool{}
		for _, e := range z.Endpoints {
			ep, err := c.endpoint(e)
			if err != nil {
				return fmt.Errorf("rate_limit %s endpoints: %w", z.Name, err)
			}
			if covered[ep.Name] {
				return fmt.Errorf("rate_limit %s endpoints: %q is listed twice", z.Name, e)
			}
			covered[ep.Name] = true
			if err := z.Key.appliesTo(ep); err != nil {
				return fmt.Errorf("rate_limit %s endpoints: %w, not %q", z.Name, err, ep.Name)
			}
		}
		if z.OverLimitToken && !c.redemption() {
			return fmt.Errorf("rate_limit %s: over_limit token needs a privacy_pass block", z.Name)
		}
	}
	for _, e := range c.RequireToken {
		ep, err := c.endpoint(e)
		if err != nil {
			return fmt.Errorf("privacy_pass require: %w", err)
		}
		if ep.NoToken {
			return fmt.Errorf("privacy_pass require: %q is not a MoH endpoint", e)
		}
		if !c.redemption() {
			return errors.New("privacy_pass require: needs a privacy_pass block")
		}
	}
	if c.Peers != nil {
		if err := c.Peers.validate(); err != nil {
			return fmt.Errorf("peers: %w", err)
		}
	}
	return nil
}

// Peers restricts which provider domains may send provider requests.
type Peers struct {
	// Allow, when not empty, lists the only provider domains accepted.
	Allow []string
	// Deny lists provider domains always refused.
	Deny []string
}

func (pl *Peers) validate() error {
	if len(pl.Allow) == 0 && len(pl.Deny) == 0 {
		return errors.New("allow or deny is required")
	}
	for _, d := range append(slices.Clone(pl.Allow), pl.Deny...) {
		if !moh.ValidFQDN([]byte(d)) {
			return fmt.Errorf("%q is not a lowercase provider domain", d)
		}
	}
	return nil
}
