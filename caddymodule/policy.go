package caddymodule

import (
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// This file adapts the admission policy's configuration (rate_limit,
// privacy_pass, issuer and peers) to package admission, which holds the
// policy itself: the zones, the token redemption, the issuer and the peer
// lists, and the order in which they run (see its package comment). The
// glue parses and validates options, resolves endpoint names against the
// endpoint table, shares origins across reloads, and turns a refusal into
// its HTTP headers (serve.go).

// RateLimitZone is one named rate-limit zone: a token bucket per key, refilled
// at Events per Window, holding at most Burst events.
type RateLimitZone struct {
	// Name identifies the zone in logs and metrics; lowercase letters,
	// digits and underscores. Zones keep their buckets across config
	// reloads, keyed by data directory and name: a reload that keeps the
	// name keeps the buckets and applies the new rate and burst to them.
	// Handlers that share a data directory (sites of one provider) share
	// zones of the same name: give such zones the same limits, or
	// different names. Required.
	Name string `json:"name"`

	// Key says what a bucket belongs to:
	//   - `remote_ip`: the client IP as Caddy determines it (honouring the
	//     server's trusted_proxies), one bucket per IPv4 address and per
	//     IPv6 /64;
	//   - `ip_prefix`: the client IP masked to IPv4Prefix / IPv6Prefix bits;
	//   - `sender_provider`: the sending provider of a provider request,
	//     taken only after its signature verified (provider endpoints only);
	//   - `group`, `member`: the group id, or the group id and the member,
	//     of a client-signed DS request, taken only after its signature
	//     verified (DS endpoints only);
	//   - anything containing `{`: a Caddy placeholder template expanded per
	//     request, such as `{http.request.header.X-User}`; requests for which
	//     it expands to the same text, the empty text included, share a
	//     bucket.
	// Required.
	Key string `json:"key"`

	// IPv4Prefix and IPv6Prefix are the prefix lengths of an ip_prefix key,
	// in bits. Default: 32 and 64.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	// Events per Window is the sustained rate. Both are required; the rate
	// is Events/Window per second.
	Events int            `json:"events"`
	Window caddy.Duration `json:"window"`

	// Burst is how many events one key may spend at once. Default: Events.
	Burst int `json:"burst,omitempty"`

	// Endpoints lists the endpoints the zone covers, by path (`/connection_request`)
	// or name (`connection_request`); the issuer's token request path is
	// `token_request`. Default: every endpoint the key applies to, except
	// /healthz and the issuer directory.
	Endpoints []string `json:"endpoints,omitempty"`

	// OverLimit says what happens to a request over the limit: `refuse`
	// (429 rate_limited with Retry-After) or `token` (the request is
	// admitted if it carries a valid Privacy Pass token, and answered 401
	// token_required with a challenge otherwise; needs privacy_pass).
	// Default: refuse.
	OverLimit string `json:"over_limit,omitempty"`

	// MaxKeys caps the buckets the zone holds; past it the least recently
	// used sampled bucket is evicted. Default: 1048576; at least 64 (one
	// bucket per shard). A reload that changes it starts the zone over
	// with empty buckets. It does not apply to the keys in Redis, which
	// expire when their bucket is full again.
	MaxKeys int `json:"max_keys,omitempty"`

	// Redis keeps the zone's buckets in Redis, shared by every gateway
	// that uses the same server, prefix and zone name. Default: buckets in
	// this process only.
	Redis *RateLimitRedis `json:"redis,omitempty"`
}

// RateLimitRedis is the Redis server of a cluster-wide rate-limit zone.
// When a call fails or times out the zone decides with its per-process
// buckets at once, and goes back to Redis when it answers again (tried
// once per Retry).
type RateLimitRedis struct {
	// Address is the server's host:port; placeholders are expanded at
	// provisioning. Required.
	Address string `json:"address"`
	// Password is sent with AUTH; placeholders such as `{env.NAME}` or
	// `{file./path}` are expanded at provisioning (write `\{` for a
	// literal brace). Default: none.
	Password string `json:"password,omitempty"`
	// DB is the database number. Default: 0.
	DB int `json:"db,omitempty"`
	// Timeout bounds each Redis call, the connection included; past it
	// the request is decided locally. Default: 5ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Prefix starts every key, followed by the zone name, `:` and the
	// limited key. Give providers that share a server different
	// prefixes. Default: `mimi:rl:`.
	Prefix string `json:"prefix,omitempty"`
	// Retry is how often, at most, a zone that fell back tries Redis
	// again. Default: 1s.
	Retry caddy.Duration `json:"retry,omitempty"`
}

// PrivacyPass configures the origin role of Privacy Pass (RFC 9577): which
// endpoints require a token and which issuer's tokens are accepted.
type PrivacyPass struct {
	// IssuerName is the issuer's `host[:port]`, put in every challenge.
	// Required.
	IssuerName string `json:"issuer_name"`

	// OriginInfo lists the origin names tokens are bound to. Default: the
	// DS authority (ds_domain), as PROFILE §8 asks.
	OriginInfo []string `json:"origin_info,omitempty"`

	// TokenKeys are issuer keys read from key files (the pp-peer format).
	// Type 1 keys must hold the private key.
	TokenKeys []TokenKeyFile `json:"token_keys,omitempty"`

	// IssuerDirectory is the https URL of the issuer's
	// /.well-known/private-token-issuer-directory, fetched at provisioning
	// (bounded, no redirects, the federation's address policy and roots);
	// its type 2 keys are accepted. Type 1 keys are private to the issuer
	// and are skipped.
	IssuerDirectory string `json:"issuer_directory,omitempty"`

	// DirectoryRefresh is how often IssuerDirectory is fetched again; when
	// its keys change, tokens are accepted under the new keys from then on
	// (with context random, outstanding challenges are forgotten). A failed
	// fetch keeps the current keys. Default: 1h; at least 1m.
	DirectoryRefresh caddy.Duration `json:"directory_refresh,omitempty"`

	// Require lists the endpoints, by path or name, that need a valid token
	// on every request.
	Require []string `json:"require,omitempty"`

	// Lifetime is how long a challenge is accepted (context random) or the
	// length of a time slot (context window). Default: 5m; 1s to 24h.
	Lifetime caddy.Duration `json:"lifetime,omitempty"`

	// Context is how redemption contexts are made: `random` (32 random
	// bytes per challenge, remembered in memory: outstanding challenges are
	// forgotten on restart and on a reload that changes the privacy_pass
	// settings or keys, and the client gets a new one; with `store
	// postgres` remembered in the database instead, so every gateway
	// accepts them, at one write per 401) or `window` (derived from Secret
	// and the time slot, so challenges survive restarts and are shared by
	// every node with the same secret). Default: random.
	Context string `json:"context,omitempty"`

	// Secret keys the window contexts: at least 32 bytes after placeholder
	// expansion. Use `{env.NAME}` or `{file./path}` rather than the value
	// itself. Default: with key_secret, a secret derived from it
	// (HKDF-SHA256), the same on every gateway of the provider; otherwise a
	// random secret valid for this process only.
	Secret string `json:"secret,omitempty"`

	// Grease appends a challenge of a reserved token type (RFC 9577 §4.1).
	// Off by default: privacypass-ts 0.9.0 clients fail on it.
	Grease bool `json:"grease,omitempty"`
}

// TokenKeyFile names one issuer key file.
type TokenKeyFile struct {
	// Type is the token type the file must hold: 1 (VOPRF P-384) or 2
	// (Blind RSA 2048).
	Type int `json:"type"`
	// File is the path of the key file.
	File string `json:"file"`
}

// TokenIssuer configures the issuer role (RFC 9578): the gateway answers
// TokenRequests and publishes its directory at
// /.well-known/private-token-issuer-directory. It does not attest clients:
// cover `token_request` with a rate-limit zone, and put authentication in
// front of the request path with Caddy's own handlers if tokens are for
// logged-in users only.
type TokenIssuer struct {
	// KeyFiles are key files holding private keys, most preferred first;
	// at most one key per token type and truncated key id. Required.
	KeyFiles []string `json:"key_files"`

	// RequestPath is the path TokenRequests are POSTed to, published in
	// the directory as issuer-request-uri. Default: /token-request.
	RequestPath string `json:"request_path,omitempty"`
}

// PeerList restricts which provider domains may send provider requests. The
// sender is checked before any of its keys is fetched, and refused senders
// are answered 403 forbidden.
type PeerList struct {
	// Allow, when not empty, lists the only provider domains accepted.
	Allow []string `json:"allow,omitempty"`
	// Deny lists provider domains always refused.
	Deny []string `json:"deny,omitempty"`
}

// Values of the policy configuration.
const (
	// minMaxKeys is the smallest max_keys: the zone's buckets are spread
	// over ratelimit.DefaultShards shards, each holding at least one.
	minMaxKeys = ratelimit.DefaultShards

	overLimitRefuse = "refuse"
	overLimitToken  = "token"
	contextRandom   = "random"
	contextWindow   = "window"
)

// requestPath returns the issuer's configured request path or its default.
func (is *TokenIssuer) requestPath() string {
	if is.RequestPath == "" {
		return admission.DefaultRequestPath
	}
	return is.RequestPath
}

// issuerPath is the issuer's request path, "" without the issuer role.
func (g *Gateway) issuerPath() string {
	if g.Issuer == nil {
		return ""
	}
	return g.Issuer.requestPath()
}

// config converts a rate_limit block; every error names the bad value.
// Endpoints stay as configured (paths or names): the policy resolves them.
func (z *RateLimitZone) config() (admission.ZoneConfig, error) {
	zc := admission.ZoneConfig{Name: z.Name, IPv4Prefix: z.IPv4Prefix, IPv6Prefix: z.IPv6Prefix,
		Burst: z.Burst, MaxKeys: z.MaxKeys, Endpoints: z.Endpoints, OverLimitToken: z.OverLimit == overLimitToken}
	var err error
	if zc.Key, zc.Template, err = admission.ParseKey(z.Key); err != nil {
		return zc, err
	}
	if z.Key != "ip_prefix" && (z.IPv4Prefix != 0 || z.IPv6Prefix != 0) {
		return zc, fmt.Errorf("ipv4_prefix and ipv6_prefix apply only to key ip_prefix, not %q", z.Key)
	}
	if z.Events < 1 {
		return zc, fmt.Errorf("events %d must be at least 1", z.Events)
	}
	if z.Window <= 0 {
		return zc, fmt.Errorf("window %s must be positive", time.Duration(z.Window))
	}
	zc.Rate = float64(z.Events) / time.Duration(z.Window).Seconds()
	if z.MaxKeys != 0 && z.MaxKeys < minMaxKeys {
		return zc, fmt.Errorf("max_keys %d is below %d, one bucket per shard", z.MaxKeys, minMaxKeys)
	}
	if zc.Burst == 0 {
		zc.Burst = z.Events
	}
	switch z.OverLimit {
	case "", overLimitRefuse, overLimitToken:
	default:
		return zc, fmt.Errorf("over_limit %q is not refuse or token", z.OverLimit)
	}
	if r := z.Redis; r != nil {
		// Address and Password keep their placeholders until
		// provisionPolicy expands them.
		zc.Redis = &ratelimit.RedisConfig{Addr: r.Address, Password: r.Password, DB: r.DB,
			Timeout: time.Duration(r.Timeout), Prefix: r.Prefix, Retry: time.Duration(r.Retry)}
		if err := zc.Redis.Validate(); err != nil {
			return zc, err
		}
		if zc.Rate > ratelimit.MaxRedisRate {
			return zc, fmt.Errorf("rate %g per second is above %g, the most a redis zone resolves", zc.Rate, float64(ratelimit.MaxRedisRate))
		}
	}
	return zc, nil
}

// expandRedis expands the placeholders of the zones' Redis address and
// password. Errors name the placeholder, never the password.
func expandRedis(zones []admission.ZoneConfig) error {
	repl := caddy.NewReplacer()
	for i := range zones {
		r := zones[i].Redis
		if r == nil {
			continue
		}
		var err error
		if r.Addr, err = repl.ReplaceOrErr(r.Addr, true, true); err != nil {
			return fmt.Errorf("rate_limit %s: redis address: %w", zones[i].Name, err)
		}
		if r.Password, err = repl.ReplaceOrErr(r.Password, true, true); err != nil {
			return fmt.Errorf("rate_limit %s: redis password: %w", zones[i].Name, err)
		}
	}
	return nil
}

// admissionConfig converts the policy options to the admission policy's
// configuration and validates it, without the origin and issuer, which
// need files and the network (provisionPolicy adds them).
func (g *Gateway) admissionConfig() (admission.Config, error) {
	cfg := admission.Config{
		Scope:       g.DataDir,
		Endpoints:   admissionEndpoints(routeTable(g.issuerPath())),
		PrivacyPass: g.PrivacyPass != nil,
		// Sampled: a peer replaying a token while the store is down
		// makes an error line per request.
		Logger: g.sampled,
	}
	for _, z := range g.RateLimits {
		if z == nil {
			return cfg, errors.New("mimi: rate_limit: empty zone")
		}
		zc, err := z.config()
		if err != nil {
			return cfg, fmt.Errorf("mimi: rate_limit %s: %w", z.Name, err)
		}
		cfg.Zones = append(cfg.Zones, zc)
	}
	if pp := g.PrivacyPass; pp != nil {
		if err := pp.validate(g.Issuer != nil); err != nil {
			return cfg, fmt.Errorf("mimi: privacy_pass: %w", err)
		}
		cfg.RequireToken = pp.Require
	}
	if is := g.Issuer; is != nil {
		if err := is.validate(); err != nil {
			return cfg, fmt.Errorf("mimi: issuer: %w", err)
		}
		for _, ep := range endpointTable {
			if ep.path == is.requestPath() {
				return cfg, fmt.Errorf("mimi: issuer request_path: %q is a MoH endpoint", is.requestPath())
			}
		}
	}
	if pl := g.Peers; pl != nil {
		cfg.Peers = &admission.Peers{Allow: pl.Allow, Deny: pl.Deny}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("mimi: %w", err)
	}
	return cfg, nil
}

// validatePolicy checks the policy options without touching any file or
// network; every error names the option and the bad value.
func (g *Gateway) validatePolicy() error {
	_, err := g.admissionConfig()
	return err
}

// provisionPolicy builds the admission policy, the issuer and the origin,
// and the routes with their plans. On error, cleanupPolicy releases what
// was acquired.
func (g *Gateway) provisionPolicy(ctx caddy.Context, fetch provider.FetchPolicy) error {
	cfg, err := g.admissionConfig()
	if err != nil {
		return err
	}
	if err := expandRedis(cfg.Zones); err != nil {
		return fmt.Errorf("mimi: %w", err)
	}
	if g.Issuer != nil {
		if g.issuer, err = admission.NewIssuer(g.Issuer.KeyFiles, g.Issuer.requestPath()); err != nil {
			return fmt.Errorf("mimi: issuer: %w", err)
		}
		cfg.Issuer = g.issuer
	}
	if g.PrivacyPass != nil {
		if err := g.provisionOrigin(ctx, fetch); err != nil {
			return fmt.Errorf("mimi: privacy_pass: %w", err)
		}
		cfg.Origin = g.origin
	}
	if len(cfg.Zones) > 0 || cfg.Origin != nil || cfg.Issuer != nil || cfg.Peers != nil {
		register(ctx.GetMetricsRegistry(), g.logger, admission.Collectors()...)
	}
	if g.policy, err = admission.New(cfg); err != nil {
		return fmt.Errorf("mimi: %w", err)
	}
	g.inbound.Verifier.Peers = g.policy.PeerPolicy()
	eps := routeTable(g.issuerPath())
	g.routes = make(map[string]*route, len(eps))
	for i := range eps {
		g.routes[eps[i].path] = &route{endpoint: &eps[i], plan: g.policy.Plan(eps[i].name)}
	}
	return nil
}

// cleanupPolicy releases the zones (the KeyPackage claim limit's and the
// relay limit's included) and the origin this gateway holds.
func (g *Gateway) cleanupPolicy() error {
	var errs []error
	if g.claimZoneKey != "" {
		if _, err := limitZonePool.Delete(g.claimZoneKey); err != nil {
			errs = append(errs, err)
		}
		g.claimZoneKey = ""
	}
	if g.relay != nil {
		if err := g.relay.release(); err != nil {
			errs = append(errs, err)
		}
		g.relay = nil
	}
	if g.policy != nil {
		errs = append(errs, g.policy.Close())
		g.policy = nil
	}
	if g.originKey != "" {
		if _, err := originPool.Delete(g.originKey); err != nil {
			errs = append(errs, err)
		}
		g.originKey = ""
	}
	return errors.Join(errs...)
}

// originPool shares Privacy Pass origins across config reloads, keyed by
// data directory and every setting that shapes the origin (see
// originPoolKey), so that challenges minted before a reload (context
// random) stay valid. The options a reload changes in place, the issuer
// directory's fetch policy and the logger, are applied to a kept origin
// when Caddy starts the config (admission.Origin.Reconfigure, from the
// mimi app's Start), and put back when Caddy rejects the config after
// that (commit.go).
var originPool = caddy.NewUsagePool()

// provisionOrigin loads the origin of the privacy_pass block from
// originPool, building it on first use: keys from files, from the issuer
// directory, or from the gateway's own issuer, and the store as spent-token
// record.
func (g *Gateway) provisionOrigin(ctx context.Context, fetch provider.FetchPolicy) error {
	pp := g.PrivacyPass
	var keys []*privacypass.Key
	for _, kf := range pp.TokenKeys {
		k, err := privacypass.ReadKeyFile(kf.File)
		if err != nil {
			return fmt.Errorf("token_key %s: %w", kf.File, err)
		}
		if int(k.Type()) != kf.Type {
			return fmt.Errorf("token_key %s: the file holds a type %s key, not type %d", kf.File, k.Type(), kf.Type)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 && pp.IssuerDirectory == "" && g.issuer != nil {
		keys = g.issuer.Keys()
	}
	cfg := pp.originConfig()
	cfg.Keys, cfg.Spent, cfg.Fetch, cfg.Logger = keys, g.svc.Store(), fetch, g.sampled
	if len(cfg.OriginInfo) == 0 {
		cfg.OriginInfo = []string{g.DSDomain}
	}
	svcOpts := g.svc.Options()
	if svcOpts.Store.Postgres != "" {
		// Gateways on one database share the challenges of context
		// random, so a client may redeem on any of them.
		cfg.Challenges = g.svc.Store()
	}
	if pp.Context == contextWindow {
		cfg.Mode = privacypass.ContextWindow
		secret := make([]byte, 32)
		rand.Read(secret)
		if len(svcOpts.KeySecret) > 0 {
			// Without a secret of its own, a gateway with key_secret
			// derives it, so that all gateways of the provider (and this
			// one after a restart) accept each other's challenges.
			d, err := windowSecret(svcOpts.KeySecret)
			if err != nil {
				return err
			}
			secret = d
		}
		if pp.Secret != "" {
			v, err := caddy.NewReplacer().ReplaceOrErr(pp.Secret, true, true)
			if err != nil {
				// The error names the placeholder, never its value.
				return fmt.Errorf("secret: %w", err)
			}
			if len(v) < 32 {
				return fmt.Errorf("secret is %d bytes; at least 32 are required", len(v))
			}
			secret = []byte(v)
		}
		// A secret made here (none configured) is kept for the life of
		// the pooled origin, so rebuilding it after a directory change
		// keeps its outstanding challenges valid.
		cfg.Secret = secret
	}
	key, err := g.originPoolKey(cfg.OriginConfig)
	if err != nil {
		return err
	}
	v, _, err := originPool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return admission.NewOrigin(ctx, cfg)
	})
	if err != nil {
		return err
	}
	g.origin, g.originKey = v.(*admission.Origin), key
	g.logger.Debug("privacy pass origin in use", zap.String("issuer_name", pp.IssuerName))
	return nil
}

// windowSecretInfo labels the derivation of windowSecret.
const windowSecretInfo = "caddy-mimi privacy_pass context window secret v1"

// windowSecret derives the secret of context window from the gateway's
// key_secret (HKDF-SHA256), for a privacy_pass block without a secret of its
// own: every gateway of a provider holds the same key_secret, so they all
// derive the same secret, and the derivation reveals nothing of key_secret.
func windowSecret(keySecret []byte) ([]byte, error) {
	d, err := hkdf.Key(sha256.New, keySecret, nil, windowSecretInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("deriving the context secret: %w", err)
	}
	return d, nil
}

// originPoolKey identifies an origin: the data directory (whose store
// records spent tokens), the privacy_pass settings, the keys read from
// files and a digest of the configured secret (never the secret itself).
func (g *Gateway) originPoolKey(cfg privacypass.OriginConfig) (string, error) {
	settings, err := json.Marshal(g.PrivacyPass)
	if err != nil {
		return "", fmt.Errorf("encoding settings: %w", err)
	}
	secret := "generated"
	if g.PrivacyPass.Secret != "" || (cfg.Mode == privacypass.ContextWindow && len(g.svc.Options().KeySecret) > 0) {
		d := sha256.Sum256(cfg.Secret)
		secret = hex.EncodeToString(d[:])
	}
	var ids strings.Builder
	for _, k := range cfg.Keys {
		id := k.ID()
		ids.WriteString(hex.EncodeToString(id[:]))
	}
	return strings.Join([]string{g.DataDir, string(settings), strings.Join(cfg.OriginInfo, ","), secret,
		ids.String()}, "\x00"), nil
}

// validate checks the privacy_pass options that need no file or network.
func (pp *PrivacyPass) validate(haveIssuer bool) error {
	for _, k := range pp.TokenKeys {
		if k.Type != 1 && k.Type != 2 {
			return fmt.Errorf("token_key type %d is not 1 or 2", k.Type)
		}
		if k.File == "" {
			return errors.New("token_key: the key file is required")
		}
	}
	oc := pp.originConfig()
	if err := oc.Validate(); err != nil {
		return err
	}
	if len(pp.TokenKeys) == 0 && pp.IssuerDirectory == "" && !haveIssuer {
		return errors.New("token_key or issuer_directory is required (or an issuer block to use its keys)")
	}
	switch pp.Context {
	case "", contextRandom:
		if pp.Secret != "" {
			return errors.New("secret applies only to context window")
		}
	case contextWindow:
	default:
		return fmt.Errorf("context %q is not random or window", pp.Context)
	}
	return nil
}

// originConfig is the origin configuration of the block, without keys,
// secret, store and fetch policy.
func (pp *PrivacyPass) originConfig() admission.OriginConfig {
	return admission.OriginConfig{
		OriginConfig: privacypass.OriginConfig{
			IssuerName: pp.IssuerName,
			OriginInfo: pp.OriginInfo,
			Lifetime:   time.Duration(pp.Lifetime),
			Grease:     pp.Grease,
		},
		DirectoryURL:     pp.IssuerDirectory,
		DirectoryRefresh: time.Duration(pp.DirectoryRefresh),
	}
}

// validate checks the issuer options that need no file.
func (is *TokenIssuer) validate() error {
	if len(is.KeyFiles) == 0 {
		return errors.New("at least one key file is required")
	}
	return admission.ValidRequestPath(is.requestPath())
}
