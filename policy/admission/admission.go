// Package admission is the admission policy of the MIMI gateway: rate-limit
// zones, Privacy Pass redemption, the token issuer and the peer allow/deny
// lists, composed per endpoint. It has no Caddy dependency and no HTTP
// statuses: it takes a plain description of a request (Request) and
// answers nil or a refusal, a *Refusal carrying a *moh.Error (rate_limited,
// token_required or backend_unavailable) and what the answer must carry
// besides it (Retry-After, a WWW-Authenticate challenge). The HTTP layer
// maps codes to statuses and sets the headers.
//
// A request to an endpoint passes these stages, in order, and the first
// refusal answers it:
//
//  1. Plan.Before, before the body is read: every zone keyed on the
//     request itself (remote_ip, ip_prefix, placeholder) and covering the
//     endpoint spends one event; a zone over its limit refuses with
//     rate_limited and a Retry-After, unless the zone is OverLimitToken.
//     Then, if the endpoint is in RequireToken or an over_limit token zone
//     was over its limit, the request must carry a valid, unspent token
//     (token_required with a fresh challenge otherwise); one token answers
//     all of them, and the over_limit token zones of the later stages of
//     the same Request. Zones run first so that a flooding client costs no
//     token verification.
//  2. Plan.Sender, on provider endpoints after the envelope signature
//     verified and before the request id is reserved: the sender_provider
//     zones, with the same over_limit rule (the peers list,
//     Policy.PeerPolicy, runs earlier still, before any key is fetched).
//  3. Plan.Member, on client-signed DS endpoints after their signature
//     verified: the group and member zones.
//
// A zone spends an event when it admits a request even if a later zone
// refuses it, as in caddy-ratelimit: list the tightest zone first.
package admission

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// Policy is the provisioned admission policy of one gateway configuration.
// It is safe for concurrent use.
type Policy struct {
	plans  map[string]*Plan
	origin *Origin
	peers  provider.PeerPolicy
	logger *zap.Logger
	now    func() time.Time

	mu      sync.Mutex
	held    []string            // registry keys of the zones held; nil after Close
	pending []*ratelimit.Update // this config's settings of zones it found in use; nil after Commit or Close
	// settings are the rate, burst and Redis setting of every zone held,
	// by registry key: what Close of a newer Policy puts back on a zone
	// when this one is the newest committed Policy left holding it.
	settings map[string]zoneSetting
	// committed is set by the first Commit.
	committed bool
}

// zoneSetting is what a Policy sets on one of its zones.
type zoneSetting struct {
	rate   float64
	burst  int
	redis  *ratelimit.RedisConfig
	logger *zap.Logger
}

// Plan is what the policy does on one endpoint. All its methods are
// nil-safe: a nil Plan admits every request.
type Plan struct {
	p            *Policy
	name         string
	requireToken bool
	pre          []*zoneUse // keyed on the request: checked before the body is read
	sender       []*zoneUse // keyed on the verified sender
	member       []*zoneUse // keyed on the verified group or member
	tokens       tokenCounters
}

// zone is a shared zone as one Policy uses it.
type zone struct {
	name           string
	rl             *ratelimit.Zone
	key            KeyKind
	v4, v6         int
	template       string
	overLimitToken bool
}

// zoneUse is a zone on one endpoint, with that endpoint's counters.
type zoneUse struct {
	zone                        *zone
	allowed, limited, overToken prometheus.Counter
}

func newZoneUse(z *zone, endpoint string) *zoneUse {
	return &zoneUse{
		zone:      z,
		allowed:   decisions.WithLabelValues(z.name, endpoint, "allowed"),
		limited:   decisions.WithLabelValues(z.name, endpoint, "limited"),
		overToken: decisions.WithLabelValues(z.name, endpoint, "over_limit_token"),
	}
}

// New validates cfg and builds its Policy, acquiring the zones it names
// from the registry of every Policy of the process: a zone of the same
// Scope and name that another Policy holds is reused, unless cfg changes
// its key kind or MaxKeys: then this Policy gets a new zone. A reused zone
// keeps the running Policy's rate, burst and Redis setting until Commit
// applies cfg's, so that a configuration rejected after New (and closed)
// leaves the running one's zones as they were. Close releases the zones,
// and puts back the settings of the running Policy on those where its own
// were in force (a configuration rejected after Commit).
func New(cfg Config) (*Policy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Origin == nil && (len(cfg.RequireToken) > 0 || hasOverLimitToken(cfg.Zones)) {
		return nil, errors.New("privacy_pass: token redemption is configured but there is no Origin")
	}
	p := &Policy{plans: map[string]*Plan{}, origin: cfg.Origin, logger: cfg.Logger, now: cfg.Now,
		settings: map[string]zoneSetting{}}
	if p.logger == nil {
		p.logger = zap.NewNop()
	}
	if p.now == nil {
		p.now = time.Now
	}
	if cfg.Peers != nil {
		p.peers = cfg.Peers.policy(p.logger)
	}
	plan := func(name string) *Plan {
		pl := p.plans[name]
		if pl == nil {
			pl = &Plan{p: p, name: name, tokens: newTokenCounters(name)}
			p.plans[name] = pl
		}
		return pl
	}
	for i := range cfg.Zones {
		zc := &cfg.Zones[i]
		rl, key, update, err := zones.acquire(cfg.Scope, zc, p.logger)
		if err != nil {
			p.Close() //nolint:errcheck // reporting the first error
			return nil, fmt.Errorf("rate_limit %s: %w", zc.Name, err)
		}
		p.held = append(p.held, key)
		p.settings[key] = zoneSetting{rate: zc.Rate, burst: zc.Burst, redis: zc.Redis, logger: p.logger}
		if update != nil {
			p.pending = append(p.pending, update)
		}
		z := &zone{name: zc.Name, rl: rl, key: zc.Key, template: zc.Template, overLimitToken: zc.OverLimitToken,
			v4: ratelimit.DefaultIPv4Bits, v6: ratelimit.DefaultIPv6Bits}
		if zc.Key == KeyIPPrefix {
			if zc.IPv4Prefix != 0 {
				z.v4 = zc.IPv4Prefix
			}
			if zc.IPv6Prefix != 0 {
				z.v6 = zc.IPv6Prefix
			}
		}
		var eps []*Endpoint
		if len(zc.Endpoints) == 0 {
			for j := range cfg.Endpoints {
				ep := &cfg.Endpoints[j]
				if !ep.NotDefault && zc.Key.appliesTo(ep) == nil {
					eps = append(eps, ep)
				}
			}
		} else {
			for _, e := range zc.Endpoints {
				ep, _ := cfg.endpoint(e) // validated
				eps = append(eps, ep)
			}
		}
		for _, ep := range eps {
			pl := plan(ep.Name)
			use := newZoneUse(z, ep.Name)
			switch {
			case zc.Key.requestKeyed():
				pl.pre = append(pl.pre, use)
			case zc.Key == KeySender:
				pl.sender = append(pl.sender, use)
			default: // group, member
				pl.member = append(pl.member, use)
			}
		}
	}
	for _, e := range cfg.RequireToken {
		ep, _ := cfg.endpoint(e) // validated
		plan(ep.Name).requireToken = true
	}
	for _, ep := range cfg.Endpoints {
		if ep.Kind != KindIssuer || ep.NotDefault {
			continue
		}
		if pl := p.plans[ep.Name]; pl == nil || len(pl.pre) == 0 {
			fields := []zap.Field{zap.String("endpoint", ep.Name)}
			if cfg.Issuer != nil {
				fields = append(fields, zap.String("request_path", cfg.Issuer.RequestPath()))
			}
			p.logger.Warn("no rate_limit zone covers the issuer's token_request: clients can mint tokens as fast as the CPU signs them",
				fields...)
		}
	}
	return p, nil
}

func hasOverLimitToken(zs []ZoneConfig) bool {
	for _, z := range zs {
		if z.OverLimitToken {
			return true
		}
	}
	return false
}

// Commit puts the Policy's rate, burst and Redis settings in force on the
// zones it reused from a running Policy (New creates the others with
// them): call it last when the configuration is accepted, once nothing
// else can fail. The buckets keep their tokens, capped at the new burst.
// The Policy is then the newest committed one of each of its zones, until
// it is closed: Close puts back the settings of the newest committed
// Policy left, so that a configuration that Caddy rejects after Commit
// (another module failed) leaves the running one's settings in force.
// Commit is idempotent; an error (closing a replaced Redis connection)
// leaves the settings in force.
func (p *Policy) Commit() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	pending, held, first := p.pending, p.held, !p.committed && p.held != nil
	p.pending = nil
	if first {
		p.committed = true
	}
	p.mu.Unlock()
	if !first {
		return nil
	}
	return zones.commit(p, held, pending)
}

// Uncommit takes the Policy's settings back without releasing its zones:
// on a zone where they are in force, those of the newest committed
// Policy left are put back, as Close would (a configuration that Caddy
// stops after it committed, because another app failed to start, and
// cleans up later). A Policy uncommitted after its Commit is not
// committed again (Commit does nothing). Uncommit is idempotent.
func (p *Policy) Uncommit() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	held := p.held
	p.mu.Unlock()
	var errs []error
	for _, key := range held {
		if err := zones.uncommit(key, p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close releases the zones the Policy holds; a zone no other Policy holds
// is dropped with its buckets. Settings not committed are dropped: the
// zones keep those they have. On a zone where this Policy's settings are
// in force (it is the newest committed Policy holding it), those of the
// newest committed Policy left are put back. It does not close the
// Origin. Close is idempotent; the Policy must not be used after it.
func (p *Policy) Close() error {
	p.mu.Lock()
	held, pending := p.held, p.pending
	p.held, p.pending = nil, nil
	p.mu.Unlock()
	var errs []error
	for _, u := range pending {
		if err := u.Discard(); err != nil {
			errs = append(errs, fmt.Errorf("dropping rate-limit settings: %w", err))
		}
	}
	for _, key := range held {
		if err := zones.release(key, p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Plan returns what the policy does on the named endpoint, or nil when
// nothing applies to it.
func (p *Policy) Plan(endpoint string) *Plan {
	if p == nil {
		return nil
	}
	return p.plans[endpoint]
}

// PeerPolicy returns the peers list as a provider.PeerPolicy for
// provider.Verifier.Peers, or nil when there is none. A refusal is a
// *moh.Error with code forbidden, counted and logged at debug level.
func (p *Policy) PeerPolicy() provider.PeerPolicy {
	if p == nil {
		return nil
	}
	return p.peers
}

// Replacer expands placeholder templates; *caddy.Replacer satisfies it.
type Replacer interface {
	ReplaceAll(input, empty string) string
}

// Request is what the policy needs to know of a request. Fill in what the
// stage needs: ClientIP, Placeholders and Authorization for Before, Sender
// for Plan.Sender, Group and Member for Plan.Member; Authorization for any
// stage that may need a token. Pass the same Request to every stage of a
// request: a token one stage redeemed answers the later ones.
type Request struct {
	// ClientIP is the client's address as the server determined it (for
	// Caddy, the client_ip variable, which honours trusted_proxies);
	// invalid when the client has no IP address (a unix socket), in which
	// case all such clients share the bucket "non-ip".
	ClientIP netip.Addr
	// Placeholders expands the templates of placeholder zones; nil expands
	// every template to "".
	Placeholders Replacer
	// Authorization is the request's Authorization field (a PrivateToken
	// credential), "" when absent.
	Authorization string
	// Sender is the verified sending provider (stage 2).
	Sender []byte
	// Group and Member are the verified group id and member identity of a
	// client-signed DS request (stage 3), never fields of an unverified
	// body, so that a forger cannot spend another group's or member's
	// budget.
	Group, Member []byte

	// redeemed is set when a stage redeemed Authorization's token and
	// accepted it: later stages of the request take it as answered rather
	// than redeem it again, which the double-spend record would refuse.
	redeemed bool
}

// nonIPKey is the bucket of clients without an IP address.
const nonIPKey = "non-ip"

// Refusal is a refused request: the DSError to answer and what the answer
// carries besides it. Every refusal of a Plan is a *Refusal; other errors
// are internal failures.
type Refusal struct {
	// Err is the DSError: rate_limited, token_required or
	// backend_unavailable.
	Err *moh.Error
	// RetryAfter is set for rate_limited: how long until the bucket has an
	// event, rounded up to whole seconds, at least 1 s (a Retry-After
	// header of RetryAfterSeconds).
	RetryAfter time.Duration
	// Challenge is set for token_required: the WWW-Authenticate value with
	// fresh PrivateToken challenges.
	Challenge string
}

// Error implements error.
func (r *Refusal) Error() string { return r.Err.Error() }

// Unwrap returns the DSError.
func (r *Refusal) Unwrap() error { return r.Err }

// RetryAfterSeconds returns RetryAfter in whole seconds, for Retry-After;
// 0 when unset.
func (r *Refusal) RetryAfterSeconds() int { return int(r.RetryAfter / time.Second) }

// RetrySeconds is d in whole seconds for a Retry-After header: rounded
// up, at least 1.
func RetrySeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

// RetryLater is the refusal err whose client may try again after d,
// rounded up to whole seconds (RetrySeconds): a refusal whose answer
// carries Retry-After, as a zone's.
func RetryLater(err *moh.Error, d time.Duration) *Refusal {
	return &Refusal{Err: err, RetryAfter: time.Duration(RetrySeconds(d)) * time.Second}
}

// rateLimited is the refusal of a zone over its limit.
func rateLimited(zone string, retryAfter time.Duration) *Refusal {
	secs := RetrySeconds(retryAfter)
	return RetryLater(moh.Errorf(moh.CodeRateLimited, "rate limit %s exceeded; retry after %d s", zone, secs), retryAfter)
}

// HasSenderZones reports whether stage 2 has zones on this endpoint.
func (pl *Plan) HasSenderZones() bool { return pl != nil && len(pl.sender) > 0 }

// HasMemberZones reports whether stage 3 has zones on this endpoint.
func (pl *Plan) HasMemberZones() bool { return pl != nil && len(pl.member) > 0 }

// Before is stage 1: the zones keyed on the request (ClientIP or
// Placeholders), then the token (Authorization) when the endpoint requires
// one or an over_limit token zone is over its limit. For an admitted
// request on a plan without tokens it does not allocate.
func (pl *Plan) Before(ctx context.Context, r *Request) error {
	if pl == nil {
		return nil
	}
	needToken := pl.requireToken
	var buf [64]byte
	now := pl.p.now()
	for _, u := range pl.pre {
		ok, retry, err := u.zone.allowRequest(buf[:0], r, now)
		if err != nil {
			return err
		}
		if err := pl.decide(r, u, ok, retry, &needToken); err != nil {
			return err
		}
	}
	if needToken {
		return pl.redeem(ctx, r)
	}
	return nil
}

// Sender is stage 2: the sender_provider zones, keyed on r.Sender. Over an
// over_limit token zone it redeems the token, unless the endpoint requires
// one or an earlier stage redeemed it for r (then that token answers).
func (pl *Plan) Sender(ctx context.Context, r *Request) error {
	if pl == nil || len(pl.sender) == 0 {
		return nil
	}
	needToken := false
	now := pl.p.now()
	for _, u := range pl.sender {
		ok, retry := u.zone.rl.AllowBytes(r.Sender, now)
		if err := pl.decide(r, u, ok, retry, &needToken); err != nil {
			return err
		}
	}
	if needToken && !pl.requireToken {
		return pl.redeem(ctx, r)
	}
	return nil
}

// Member is stage 3: the group zones, keyed on r.Group, and the member
// zones, keyed on r.Group || 0x00 || r.Member, with the token rule of
// Sender.
func (pl *Plan) Member(ctx context.Context, r *Request) error {
	if pl == nil || len(pl.member) == 0 {
		return nil
	}
	needToken := false
	now := pl.p.now()
	var buf [128]byte
	for _, u := range pl.member {
		key := append(buf[:0], r.Group...)
		if u.zone.key == KeyMember {
			key = append(append(key, 0), r.Member...)
		}
		ok, retry := u.zone.rl.AllowBytes(key, now)
		if err := pl.decide(r, u, ok, retry, &needToken); err != nil {
			return err
		}
	}
	if needToken && !pl.requireToken {
		return pl.redeem(ctx, r)
	}
	return nil
}

// decide applies a zone's answer and counts it. Over the limit, a refusing
// zone returns the rate_limited refusal, and a token zone sets *needToken:
// the caller then redeems one token for the request.
func (pl *Plan) decide(r *Request, u *zoneUse, ok bool, retry time.Duration, needToken *bool) error {
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
	if c := pl.p.logger.Check(zapcore.DebugLevel, "rate limited request"); c != nil {
		c.Write(zap.String("zone", u.zone.name), zap.String("endpoint", pl.name),
			zap.Duration("retry_after", retry), zap.String("remote_ip", clientIP(r)))
	}
	return rateLimited(u.zone.name, retry)
}

// allowRequest spends one event of the bucket keyed on r (IP or placeholder
// zones). buf is scratch space for the key.
func (z *zone) allowRequest(buf []byte, r *Request, now time.Time) (bool, time.Duration, error) {
	if z.key == KeyPlaceholder {
		key := ""
		if r.Placeholders != nil {
			key = r.Placeholders.ReplaceAll(z.template, "")
		}
		ok, retry := z.rl.Allow(key, now)
		return ok, retry, nil
	}
	if !r.ClientIP.IsValid() {
		// A listener without IP addresses (a unix socket): its clients
		// share one bucket.
		ok, retry := z.rl.Allow(nonIPKey, now)
		return ok, retry, nil
	}
	key, err := ratelimit.AppendIPKey(buf, r.ClientIP, z.v4, z.v6)
	if err != nil {
		return false, 0, fmt.Errorf("rate limit %s: %w", z.name, err)
	}
	ok, retry := z.rl.AllowBytes(key, now)
	return ok, retry, nil
}

// clientIP is the client address for logs.
func clientIP(r *Request) string {
	if !r.ClientIP.IsValid() {
		return ""
	}
	return r.ClientIP.String()
}

// redeem checks r's PrivateToken credential and spends the token, or
// returns the refusal: token_required with a fresh challenge, or
// backend_unavailable when the double-spend store failed. A token an
// earlier stage redeemed for r answers again without a second redemption:
// one token answers every zone of a request.
func (pl *Plan) redeem(ctx context.Context, r *Request) error {
	if r.redeemed {
		return nil
	}
	if pl.p.origin == nil {
		return errors.New("privacy pass: no origin configured")
	}
	origin := pl.p.origin.Current()
	var err error
	if r.Authorization == "" {
		err = privacypass.ErrMissing
	} else {
		_, err = origin.Redeem(ctx, r.Authorization)
		if privacypass.ReasonOf(err) == privacypass.ReasonUnknownKey && pl.p.origin.RefreshForUnknownKey(ctx) {
			origin = pl.p.origin.Current()
			_, err = origin.Redeem(ctx, r.Authorization)
		}
	}
	if err == nil {
		pl.tokens.accepted.Inc()
		r.redeemed = true
		return nil
	}
	reason := privacypass.ReasonOf(err)
	switch reason {
	case privacypass.ReasonMissing:
		pl.tokens.missing.Inc()
	case privacypass.ReasonStoreUnavailable:
		pl.tokens.unavailable.Inc()
		pl.p.logger.Error("recording a spent privacy pass token failed; the token was not redeemed",
			zap.String("endpoint", pl.name), zap.Error(err))
		return &Refusal{Err: &moh.Error{Code: moh.CodeBackendUnavailable, Message: "token store unavailable; retry later", Err: err}}
	case "":
		// Not from the privacy pass package: an internal failure.
		pl.tokens.unavailable.Inc()
		return fmt.Errorf("redeeming token: %w", err)
	default:
		pl.tokens.refused.Inc()
	}
	if c := pl.p.logger.Check(zapcore.DebugLevel, "refused privacy pass token"); c != nil {
		c.Write(zap.String("endpoint", pl.name), zap.String("reason", string(reason)),
			zap.String("remote_ip", clientIP(r)))
	}
	challenge, cerr := origin.WWWAuthenticateFor(ctx, r.ClientIP)
	if privacypass.ReasonOf(cerr) == privacypass.ReasonStoreUnavailable {
		pl.tokens.unavailable.Inc()
		pl.p.logger.Error("recording privacy pass challenges failed", zap.String("endpoint", pl.name), zap.Error(cerr))
		return &Refusal{Err: &moh.Error{Code: moh.CodeBackendUnavailable, Message: "challenge store unavailable; retry later", Err: cerr}}
	}
	if cerr != nil {
		return fmt.Errorf("minting privacy pass challenge: %w", cerr)
	}
	msg := "a Privacy Pass token is required"
	if reason != privacypass.ReasonMissing {
		msg = "the Privacy Pass token was refused: " + string(reason)
	}
	return &Refusal{Err: &moh.Error{Code: moh.CodeTokenRequired, Message: msg, Err: err}, Challenge: challenge}
}

// policy returns the provider.PeerPolicy of the list.
func (pl *Peers) policy(logger *zap.Logger) provider.PeerPolicy {
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
		return moh.Errorf(moh.CodeForbidden, "sender provider %s is %s by the peers list", sender, strings.ReplaceAll(reason, "_", " "))
	}
}
