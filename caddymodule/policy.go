package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// This file is the admission policy of the gateway: rate-limit zones
// (ratelimit.go), Privacy Pass redemption (privacypass.go), the token issuer
// (issuer.go) and the peer allow/deny lists, composed per endpoint.
//
// A request to an endpoint passes these steps, in order, and the first
// refusal answers it:
//
//  1. Before the body is read: every zone keyed on the request itself
//     (remote_ip, ip_prefix, placeholder) and covering the endpoint spends
//     one event; a zone over its limit answers 429 rate_limited with
//     Retry-After, unless the zone says over_limit token. Then, if the
//     endpoint is in privacy_pass require or an over_limit token zone was
//     over its limit, the request must carry a valid, unspent token (401
//     token_required with a fresh challenge otherwise); one token answers
//     all of them. Zones run first so that a flooding client costs no
//     token verification.
//  2. Provider endpoints, after the envelope signature verified (the
//     Inbound.Admit hook) and before the request id is reserved: the peers
//     list (checked earlier still, before any key is fetched), then the
//     sender_provider zones, with the same over_limit rule.
//  3. Client-signed DS requests, after their signature verified: the group
//     and member zones (admitDS).
//
// A zone spends an event when it admits a request even if a later zone
// refuses it, as in caddy-ratelimit: list the tightest zone first.

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
	// used sampled bucket is evicted. Default: 1048576. Set when the zone is
	// first created: a reload does not change it.
	MaxKeys int `json:"max_keys,omitempty"`
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
	// settings or keys, and the client gets a new one) or `window` (derived from Secret and the time slot, so
	// challenges survive restarts and are shared by every node with the
	// same secret). Default: random.
	Context string `json:"context,omitempty"`

	// Secret keys the window contexts: at least 32 bytes after placeholder
	// expansion. Use `{env.NAME}` or `{file./path}` rather than the value
	// itself. Default: a random secret valid for this process only.
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

// Defaults of the policy configuration.
const (
	defaultRequestPath = "/token-request"
	// maxTokenRequest bounds a TokenRequest body: 3 bytes of header and a
	// blinded message of at most 256 bytes.
	maxTokenRequest = 1 << 10
)

// policy is the provisioned admission policy of one Gateway.
type policy struct {
	zones []*limitZone
	plans map[string]*endpointPlan
	// byType are the plans of the provider endpoints with sender zones,
	// by the request type the endpoint accepts.
	byType map[moh.ProviderRequestType]*endpointPlan
	origin *originState
	// originKey is the origin's key in originPool, "" when none is held.
	originKey string
	issuer    *tokenIssuer
	logger    *zap.Logger
	now       func() time.Time
}

// endpointPlan is what the policy does on one endpoint.
type endpointPlan struct {
	name         string
	requireToken bool
	pre          []*zoneUse // keyed on the request: checked before the body is read
	provider     []*zoneUse // keyed on the verified sender
	ds           []*zoneUse // keyed on the verified group or member
	tokens       tokenCounters
}

// policyEndpoints returns the paths the policy can apply to: the MoH
// endpoints and, when configured, the issuer's.
func (g *Gateway) policyEndpoints() []string {
	paths := make([]string, 0, len(endpoints)+2)
	for p := range endpoints {
		paths = append(paths, p)
	}
	if g.Issuer != nil {
		paths = append(paths, privacypass.DirectoryPath, g.Issuer.requestPath())
	}
	slices.Sort(paths)
	return paths
}

// endpointName is the name of an endpoint path in the configuration,
// metrics and logs: the path without its slash, except for discovery
// (ds_domain) and the issuer's paths (issuer_directory, token_request).
func (g *Gateway) endpointName(path string) string {
	switch {
	case path == privacypass.DirectoryPath:
		return "issuer_directory"
	case path == "/.well-known/mimi/ds-domain":
		return "ds_domain"
	case g.Issuer != nil && path == g.Issuer.requestPath():
		return "token_request"
	}
	return strings.TrimPrefix(path, "/")
}

// resolveEndpoint turns a configured endpoint (a path or a name) into a path.
func (g *Gateway) resolveEndpoint(s string) (string, error) {
	for _, p := range g.policyEndpoints() {
		if s == p || s == g.endpointName(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q is not an endpoint of this gateway", s)
}

func isProviderPath(p string) bool {
	switch p {
	case "/deliver_message", "/connection_request", "/connection_key_packages", "/group_key_packages":
		return true
	}
	return false
}

func isDSPath(p string) bool {
	switch p {
	case "/group_operation", "/welcome_information", "/external_commit_information", "/attachment_upload",
		"/attachment_download", "/attachment_delete", "/attachment_copy":
		return true
	}
	return false
}

// validatePolicy checks the policy options without touching any file or
// network; every error names the option and the bad value.
func (g *Gateway) validatePolicy() error {
	names := map[string]bool{}
	for _, z := range g.RateLimits {
		if z == nil {
			return errors.New("mimi: rate_limit: empty zone")
		}
		if err := z.validate(); err != nil {
			return fmt.Errorf("mimi: rate_limit %s: %w", z.Name, err)
		}
		if names[z.Name] {
			return fmt.Errorf("mimi: rate_limit: duplicate zone name %q", z.Name)
		}
		names[z.Name] = true
		covered := map[string]bool{}
		for _, e := range z.Endpoints {
			p, err := g.resolveEndpoint(e)
			if err != nil {
				return fmt.Errorf("mimi: rate_limit %s endpoints: %w", z.Name, err)
			}
			if covered[p] {
				return fmt.Errorf("mimi: rate_limit %s endpoints: %q is listed twice", z.Name, e)
			}
			covered[p] = true
			if err := z.appliesTo(p); err != nil {
				return fmt.Errorf("mimi: rate_limit %s endpoints: %w, not %q", z.Name, err, g.endpointName(p))
			}
		}
		if z.OverLimit == overLimitToken && g.PrivacyPass == nil {
			return fmt.Errorf("mimi: rate_limit %s: over_limit token needs a privacy_pass block", z.Name)
		}
	}
	if pp := g.PrivacyPass; pp != nil {
		if err := pp.validate(g.Issuer != nil); err != nil {
			return fmt.Errorf("mimi: privacy_pass: %w", err)
		}
		for _, e := range pp.Require {
			p, err := g.resolveEndpoint(e)
			if err != nil {
				return fmt.Errorf("mimi: privacy_pass require: %w", err)
			}
			if !isProviderPath(p) && !isDSPath(p) && p != "/verification_key" {
				return fmt.Errorf("mimi: privacy_pass require: %q is not a MoH endpoint", e)
			}
		}
	}
	if is := g.Issuer; is != nil {
		if err := is.validate(); err != nil {
			return fmt.Errorf("mimi: issuer: %w", err)
		}
		if _, taken := endpoints[is.requestPath()]; taken {
			return fmt.Errorf("mimi: issuer request_path: %q is a MoH endpoint", is.requestPath())
		}
	}
	if pl := g.Peers; pl != nil {
		if len(pl.Allow) == 0 && len(pl.Deny) == 0 {
			return errors.New("mimi: peers: allow or deny is required")
		}
		for _, d := range append(slices.Clone(pl.Allow), pl.Deny...) {
			if !moh.ValidFQDN([]byte(d)) {
				return fmt.Errorf("mimi: peers: %q is not a lowercase provider domain", d)
			}
		}
	}
	return nil
}

// provisionPolicy builds the policy after the shared state is open. On
// error, cleanupPolicy releases what was acquired.
func (g *Gateway) provisionPolicy(ctx caddy.Context) error {
	if len(g.RateLimits) == 0 && g.PrivacyPass == nil && g.Issuer == nil && g.Peers == nil {
		return nil
	}
	registerMetrics(ctx.GetMetricsRegistry(), g.logger)
	p := &policy{plans: map[string]*endpointPlan{}, logger: g.logger, now: time.Now}
	g.policy = p
	if pl := g.Peers; pl != nil {
		g.inbound.Verifier.Peers = pl.check(g.logger)
	}
	if g.Issuer != nil {
		is, err := g.Issuer.provision()
		if err != nil {
			return fmt.Errorf("mimi: issuer: %w", err)
		}
		p.issuer = is
	}
	if g.PrivacyPass != nil {
		o, key, err := g.PrivacyPass.provision(ctx, g)
		if err != nil {
			return fmt.Errorf("mimi: privacy_pass: %w", err)
		}
		p.origin, p.originKey = o, key
	}
	plan := func(path string) *endpointPlan {
		ep := p.plans[path]
		if ep == nil {
			name := g.endpointName(path)
			ep = &endpointPlan{name: name, tokens: newTokenCounters(name)}
			p.plans[path] = ep
		}
		return ep
	}
	for _, z := range g.RateLimits {
		lz, err := loadZone(g.DataDir, z)
		if err != nil {
			return fmt.Errorf("mimi: rate_limit %s: %w", z.Name, err)
		}
		p.zones = append(p.zones, lz)
		paths := z.Endpoints
		if len(paths) == 0 {
			// Every endpoint but the liveness probe and the issuer
			// directory, which load balancers and clients poll.
			paths = slices.DeleteFunc(g.policyEndpoints(), func(p string) bool {
				return p == "/healthz" || p == privacypass.DirectoryPath
			})
		}
		for _, e := range paths {
			path, err := g.resolveEndpoint(e)
			if err != nil {
				return fmt.Errorf("mimi: rate_limit %s endpoints: %w", z.Name, err)
			}
			if z.appliesTo(path) != nil {
				continue // a default endpoint this key cannot apply to
			}
			ep := plan(path)
			use := newZoneUse(lz, ep.name)
			switch lz.kind {
			case keySender:
				ep.provider = append(ep.provider, use)
			case keyGroup, keyMember:
				ep.ds = append(ep.ds, use)
			default:
				ep.pre = append(ep.pre, use)
			}
		}
	}
	if g.PrivacyPass != nil {
		for _, e := range g.PrivacyPass.Require {
			path, err := g.resolveEndpoint(e)
			if err != nil {
				return fmt.Errorf("mimi: privacy_pass require: %w", err)
			}
			plan(path).requireToken = true
		}
	}
	if p.issuer != nil {
		if ep := p.plans[p.issuer.requestPath]; ep == nil || len(ep.pre) == 0 {
			g.logger.Warn("no rate_limit zone covers the issuer's token_request: clients can mint tokens as fast as the CPU signs them",
				zap.String("request_path", p.issuer.requestPath))
		}
	}
	p.byType = map[moh.ProviderRequestType]*endpointPlan{}
	for _, typ := range []moh.ProviderRequestType{moh.DeliverMessage, moh.ConnectionRequest,
		moh.ConnectionKeyPackages, moh.GroupKeyPackages} {
		if ep := p.plans["/"+typ.String()]; ep != nil && len(ep.provider) > 0 {
			p.byType[typ] = ep
		}
	}
	if len(p.byType) > 0 {
		g.inbound.Admit = g.admitProvider
	}
	return nil
}

// cleanupPolicy releases the rate-limit zones this gateway holds.
func (g *Gateway) cleanupPolicy() error {
	if g.policy == nil {
		return nil
	}
	var errs []error
	if g.policy.originKey != "" {
		if _, err := originPool.Delete(g.policy.originKey); err != nil {
			errs = append(errs, err)
		}
		g.policy.originKey = ""
	}
	for _, z := range g.policy.zones {
		if _, err := zonePool.Delete(z.poolKey); err != nil {
			errs = append(errs, err)
		}
	}
	g.policy.zones = nil
	return errors.Join(errs...)
}

// policyError is a refusal that carries a header the answer must have
// (Retry-After or WWW-Authenticate) besides its DSError.
type policyError struct {
	err    *moh.Error
	header string
	value  string
}

func (e *policyError) Error() string { return e.err.Error() }
func (e *policyError) Unwrap() error { return e.err }

// setPolicyHeaders adds the header of a policy refusal to an error answer.
func setPolicyHeaders(h http.Header, err error) {
	var pe *policyError
	if errors.As(err, &pe) && pe.header != "" {
		h.Set(pe.header, pe.value)
	}
}

// rateLimited is the refusal of a zone over its limit.
func rateLimited(zone string, retryAfter time.Duration) error {
	secs := int((retryAfter + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	return &policyError{
		err:    moh.Errorf(moh.CodeRateLimited, "rate limit %s exceeded; retry after %d s", zone, secs),
		header: "Retry-After", value: strconv.Itoa(secs),
	}
}

// admitRequest runs step 1 of the policy for r's endpoint. It answers and
// returns false when the request is refused.
func (g *Gateway) admitRequest(w http.ResponseWriter, r *http.Request) bool {
	p := g.policy
	if p == nil {
		return true
	}
	ep := p.plans[r.URL.Path]
	if ep == nil {
		return true
	}
	// The zones run first, so that a client over a refusing limit costs no
	// token verification; one token then answers both require and every
	// over_limit token zone.
	needToken := ep.requireToken
	var buf [64]byte
	now := p.now()
	for _, u := range ep.pre {
		ok, retry, err := u.zone.allowRequest(buf[:0], r, now)
		if err != nil {
			g.refuse(w, r, err)
			return false
		}
		if err := p.decide(r, ep, u, ok, retry, &needToken); err != nil {
			g.refuse(w, r, err)
			return false
		}
	}
	if needToken {
		if err := p.redeem(r, ep); err != nil {
			g.refuse(w, r, err)
			return false
		}
	}
	return true
}

// decide applies a zone's answer and counts it. Over the limit, a refuse
// zone returns the 429 refusal, and a token zone sets *needToken: the
// caller then redeems one token for the request.
func (p *policy) decide(r *http.Request, ep *endpointPlan, u *zoneUse, ok bool, retry time.Duration, needToken *bool) error {
	if ok {
		u.allowed.Inc()
		return nil
	}
	if u.zone.overLimitToken {
		u.overToken.Inc()
		*needToken = true
		return nil
	}
	u.limited.Inc()
	if c := p.logger.Check(zapcore.DebugLevel, "rate limited request"); c != nil {
		c.Write(zap.String("zone", u.zone.name), zap.String("endpoint", ep.name),
			zap.Duration("retry_after", retry), zap.String("remote_ip", remoteIP(r)))
	}
	return rateLimited(u.zone.name, retry)
}

// requestKey carries the HTTP request to the Admit hook.
type requestKey struct{}

// admitContext returns the context for Inbound.Handle: with the request
// attached when the endpoint has zones keyed on the verified sender, whose
// Admit hook needs it (for a token when over the limit, and for logs).
func (g *Gateway) admitContext(r *http.Request) context.Context {
	if g.policy == nil {
		return r.Context()
	}
	if ep := g.policy.plans[r.URL.Path]; ep == nil || len(ep.provider) == 0 {
		return r.Context()
	}
	return context.WithValue(r.Context(), requestKey{}, r)
}

// admitProvider is the Inbound.Admit hook: step 2 of the policy, on a
// provider request whose signature verified.
func (g *Gateway) admitProvider(ctx context.Context, v *provider.Verified) error {
	p := g.policy
	ep := p.byType[v.Request.RequestType]
	if ep == nil {
		return nil
	}
	r, _ := ctx.Value(requestKey{}).(*http.Request)
	if r == nil {
		return errors.New("admitting provider request: no HTTP request in the context")
	}
	needToken := false
	now := p.now()
	for _, u := range ep.provider {
		ok, retry := u.zone.zone.AllowBytes(v.Request.Sender, now)
		if err := p.decide(r, ep, u, ok, retry, &needToken); err != nil {
			return err
		}
	}
	// With require, the token was redeemed before the body was read.
	if needToken && !ep.requireToken {
		return p.redeem(r, ep)
	}
	return nil
}

// admitDS is step 3 of the policy, for the client-signed DS endpoints: it
// applies the group and member zones of r's endpoint to a request whose
// signature has verified. The Delivery Service calls it with the verified
// group id and the sender's member identity (its leaf index or client URI,
// as encoded bytes), never with fields of an unverified body, so that a
// forger cannot spend another group's or member's budget. Keys are
// group_id for group zones and group_id || 0x00 || member for member zones.
func (g *Gateway) admitDS(r *http.Request, groupID, member []byte) error {
	p := g.policy
	if p == nil {
		return nil
	}
	ep := p.plans[r.URL.Path]
	if ep == nil || len(ep.ds) == 0 {
		return nil
	}
	needToken := false
	now := p.now()
	var buf [128]byte
	for _, u := range ep.ds {
		key := append(buf[:0], groupID...)
		if u.zone.kind == keyMember {
			key = append(append(key, 0), member...)
		}
		ok, retry := u.zone.zone.AllowBytes(key, now)
		if err := p.decide(r, ep, u, ok, retry, &needToken); err != nil {
			return err
		}
	}
	if needToken && !ep.requireToken {
		return p.redeem(r, ep)
	}
	return nil
}

// check returns the provider.PeerPolicy of the list.
func (pl *PeerList) check(logger *zap.Logger) provider.PeerPolicy {
	allow := make(map[string]bool, len(pl.Allow))
	for _, d := range pl.Allow {
		allow[d] = true
	}
	deny := make(map[string]bool, len(pl.Deny))
	for _, d := range pl.Deny {
		deny[d] = true
	}
	refused := peerCounter("refused")
	return func(sender string) error {
		reason := ""
		switch {
		case deny[sender]:
			reason = "denied"
		case len(allow) > 0 && !allow[sender]:
			reason = "not_allowed"
		default:
			return nil
		}
		refused.Inc()
		if c := logger.Check(zapcore.DebugLevel, "refused peer provider"); c != nil {
			c.Write(zap.String("sender_provider", sender), zap.String("reason", reason))
		}
		return fmt.Errorf("sender provider %s is %s by the peers list", sender, strings.ReplaceAll(reason, "_", " "))
	}
}
