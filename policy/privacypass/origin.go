package privacypass

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// ContextMode says how an Origin chooses the redemption_context of its
// challenges, and so how it knows later which challenge digests to accept.
// The token carries only SHA-256 of the challenge, so an origin can accept a
// token only if it can list the digests it would accept: it either remembers
// them or re-derives them.
type ContextMode int

const (
	// ContextRandom gives every minted challenge 32 fresh bytes from
	// crypto/rand (PROFILE §8) and remembers the digests (with their token
	// type) in memory until the challenge lifetime ends. The memory cannot
	// be avoided: a token carries only SHA-256 of its challenge, so an
	// origin cannot check a self-authenticating context (an HMAC over a
	// nonce) without a list of digests to compare with; ContextWindow is
	// the stateless mode. The registry is bounded by
	// OriginConfig.MaxChallenges, and so that a flood of 401s from one
	// place cannot push out other clients' challenges, it is kept per
	// client source (ChallengesFor; IPv4 address, IPv6 /64): a source
	// holds at most MaxChallengesPerSource and past it loses its own
	// oldest, and when the whole registry is full the oldest challenge of
	// the source holding the most is forgotten. A client whose challenge
	// was forgotten gets ReasonChallengeDigest and a new challenge. Honest
	// clients lose challenges to a flood only when more distinct sources
	// than MaxChallenges hold challenges at once. The state is per
	// process: after a restart, and on another node of a cluster, earlier
	// challenges are unknown and their tokens are refused with
	// ReasonChallengeDigest. That is safe (no token can be replayed across
	// a restart, since its challenge is gone). Nodes of a cluster share the
	// challenges through OriginConfig.Challenges instead (the gateways'
	// database), at the cost of one write per minted set of challenges.
	ContextRandom ContextMode = iota
	// ContextWindow derives the context statelessly as
	//
	//	HMAC-SHA256(Secret, "caddy-mimi privacypass redemption context v1" || 0x00 || uint64be(slot))
	//
	// with slot = floor(unix time / Lifetime). A challenge minted in slot s is
	// accepted during slots s and s+1, so for between one and two lifetimes;
	// max-age tells the client the exact remainder. Every node that shares
	// Secret (and issuer name, origin_info and clock within ClockSkew) accepts
	// every other node's challenges, also across restarts, with no shared
	// challenge state; the SpentStore must then be shared and durable, since
	// it alone stops replays. All clients in a slot get the same context,
	// which is indistinguishable from random to them and links nothing
	// beyond the time slot (RFC 9577 §2.1.1.2 lists F(time window) as a valid
	// choice).
	ContextWindow
)

// String returns "random" or "window".
func (m ContextMode) String() string {
	switch m {
	case ContextRandom:
		return "random"
	case ContextWindow:
		return "window"
	}
	return fmt.Sprintf("ContextMode(%d)", int(m))
}

// Defaults applied by NewOrigin to zero OriginConfig fields.
const (
	DefaultLifetime               = 5 * time.Minute
	DefaultMaxChallenges          = 1 << 18
	DefaultMaxChallengesPerSource = 1 << 10
	DefaultClockSkew              = time.Minute
)

// greaseTypes are the reserved token types of RFC 9577 §6.2.1.
var greaseTypes = []TokenType{0x0000, 0x02AA, 0x1132, 0x2E96, 0x3CD3, 0x4473, 0x5A63, 0x6D32, 0x7F3F,
	0x8D07, 0x916B, 0xA6A4, 0xBEAB, 0xC3F3, 0xDA42, 0xE944, 0xF057}

// OriginConfig configures an Origin. IssuerName, Keys and Spent are required.
type OriginConfig struct {
	// IssuerName is the issuer's host[:port] put in every challenge.
	IssuerName string
	// OriginInfo lists the origin names tokens are bound to (PROFILE §8: the
	// DS authority). Empty allows cross-origin tokens.
	OriginInfo []string
	// Keys are the accepted issuer keys, all of IssuerName, most preferred
	// first. Challenges are offered per token type in the order types
	// first appear here, each naming as token-key the first key of its
	// type that is usable when the challenge is minted: one without a
	// Key.NotBefore or whose NotBefore has passed (RFC 9578 §4); while no
	// key of a type is usable yet, the one usable soonest. Tokens are
	// accepted under any listed key of their type (rotation), not-before
	// or not, as RFC 9578 §4 lets origins try every listed key. Type
	// 0x0001 keys must hold the private key.
	Keys []*Key
	// Lifetime is how long a challenge is accepted (ContextRandom), or the
	// slot length (ContextWindow). Default 5 minutes; 1 second to 24 hours.
	Lifetime time.Duration
	// Mode selects how redemption contexts are made; see ContextMode.
	Mode ContextMode
	// Secret keys the HMAC of ContextWindow; at least 32 bytes. Nodes of a
	// cluster must share it, and it must persist for challenges to survive a
	// restart. When empty, a random secret is made (valid for this process
	// only). Ignored by ContextRandom.
	Secret []byte
	// MaxChallenges bounds the challenges ContextRandom remembers. Default
	// 262144 (about 40 MiB at most).
	MaxChallenges int
	// MaxChallengesPerSource bounds the challenges ContextRandom remembers
	// for one client source (see ChallengesFor); past it the source's own
	// oldest are forgotten. Default 1024, at most MaxChallenges.
	// Challenges minted without a source (Challenges) share one bucket
	// bounded by MaxChallenges only.
	MaxChallengesPerSource int
	// ClockSkew is added to the expiry of spent-token records so that nodes
	// whose clocks differ by up to this much cannot accept a replay after
	// another node's record expired. Default 1 minute.
	ClockSkew time.Duration
	// Grease appends one challenge of a reserved token type with random
	// contents (RFC 9577 §4.1). Off by default: stock privacypass-ts 0.9.0
	// clients fail on the whole header when it is present.
	Grease bool
	// Spent records redeemed tokens (double-spend prevention).
	Spent SpentStore
	// Challenges, when set, keeps the challenges of ContextRandom instead
	// of the in-memory registry, so that origins sharing it (gateways on
	// one database) accept each other's challenges, also across restarts;
	// origins of another IssuerName or OriginInfo on the same store do
	// not (see storeKey).
	// Each minted set of challenges is then one write, and
	// MaxChallenges and MaxChallengesPerSource do not apply: bound the
	// answers that mint challenges with a rate limit instead. A failing
	// store fails minting and redemption with ReasonStoreUnavailable.
	// Ignored by ContextWindow.
	Challenges store.TokenChallenges
	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
}

// Origin is the origin role of RFC 9576: it mints PrivateToken challenges
// and redeems tokens, checking in order: the credential syntax, the token
// type, the issuer key (by full token_key_id), the challenge digest, the
// authenticator, and finally that the token was not spent before. Only a
// token that passed every cryptographic check is written to the SpentStore,
// so forged tokens cannot fill it. An Origin is safe for concurrent use.
type Origin struct {
	cfg        OriginConfig // as given, for Rekeyed
	issuer     string
	originInfo []string
	lifetime   time.Duration
	mode       ContextMode
	secret     []byte
	skew       time.Duration
	grease     bool
	spent      SpentStore
	now        func() time.Time

	verifier  *Verifier
	types     []TokenType           // offered types, preference order
	advertise map[TokenType][]*Key  // keys per type, preference order
	typeOK    map[TokenType]bool    // accepted types
	registry  *challengeRegistry    // ContextRandom, in memory
	shared    store.TokenChallenges // ContextRandom, in the store
	scope     []byte                // prefix of the keys in shared; see storeKey
	window    atomic.Pointer[slots] // ContextWindow cache
}

// NewOrigin validates cfg and builds an Origin.
func NewOrigin(cfg OriginConfig) (*Origin, error) {
	if !validName(cfg.IssuerName) || len(cfg.IssuerName) > 0xffff {
		return nil, newError(ReasonInvalidConfig, "invalid issuer name %q", cfg.IssuerName)
	}
	probe := TokenChallenge{TokenType: TypeBlindRSA, IssuerName: cfg.IssuerName, OriginInfo: cfg.OriginInfo}
	if _, err := probe.Marshal(); err != nil {
		return nil, wrapError(ReasonInvalidConfig, "checking origin_info", err)
	}
	if len(cfg.Keys) == 0 {
		return nil, newError(ReasonInvalidConfig, "no issuer keys")
	}
	if cfg.Spent == nil {
		return nil, newError(ReasonInvalidConfig, "no spent-token store")
	}
	o := &Origin{
		cfg:        cfg,
		issuer:     cfg.IssuerName,
		originInfo: append([]string(nil), cfg.OriginInfo...),
		lifetime:   cfg.Lifetime,
		mode:       cfg.Mode,
		skew:       cfg.ClockSkew,
		grease:     cfg.Grease,
		spent:      cfg.Spent,
		now:        cfg.Now,
		advertise:  make(map[TokenType][]*Key),
		typeOK:     make(map[TokenType]bool),
	}
	if o.lifetime == 0 {
		o.lifetime = DefaultLifetime
	}
	if o.lifetime < time.Second || o.lifetime > 24*time.Hour {
		return nil, newError(ReasonInvalidConfig, "challenge lifetime %v out of range [1s, 24h]", o.lifetime)
	}
	if o.skew == 0 {
		o.skew = DefaultClockSkew
	}
	if o.skew < 0 {
		return nil, newError(ReasonInvalidConfig, "negative clock skew %v", o.skew)
	}
	if o.now == nil {
		o.now = time.Now
	}
	v, err := NewVerifier(cfg.Keys...)
	if err != nil {
		return nil, err
	}
	o.verifier = v
	for _, k := range cfg.Keys {
		if !o.typeOK[k.typ] {
			o.typeOK[k.typ] = true
			o.types = append(o.types, k.typ)
		}
		o.advertise[k.typ] = append(o.advertise[k.typ], k)
	}
	switch o.mode {
	case ContextRandom:
		limit := cfg.MaxChallenges
		if limit == 0 {
			limit = DefaultMaxChallenges
		}
		if limit < 0 {
			return nil, newError(ReasonInvalidConfig, "negative challenge limit %d", limit)
		}
		perSource := cfg.MaxChallengesPerSource
		if perSource == 0 {
			perSource = DefaultMaxChallengesPerSource
		}
		if perSource < 0 {
			return nil, newError(ReasonInvalidConfig, "negative per-source challenge limit %d", perSource)
		}
		if cfg.Challenges != nil {
			o.shared = cfg.Challenges
			// A challenge without context or type: the origin's
			// issuer_name and origin_info, length-prefixed.
			scope, err := (&TokenChallenge{IssuerName: o.issuer, OriginInfo: o.originInfo}).Marshal()
			if err != nil {
				return nil, wrapError(ReasonInvalidConfig, "encoding the challenge scope", err)
			}
			o.scope = append([]byte(challengeScopeLabel), scope...)
			break
		}
		o.registry = newChallengeRegistry(limit, min(perSource, limit))
	case ContextWindow:
		switch {
		case len(cfg.Secret) == 0:
			o.secret = make([]byte, 32)
			if _, err := rand.Read(o.secret); err != nil {
				return nil, fmt.Errorf("generating context secret: %w", err)
			}
		case len(cfg.Secret) < 32:
			return nil, newError(ReasonInvalidConfig, "context secret is %d bytes, want at least 32", len(cfg.Secret))
		default:
			o.secret = append([]byte(nil), cfg.Secret...)
		}
	default:
		return nil, newError(ReasonInvalidConfig, "unknown context mode %d", int(o.mode))
	}
	return o, nil
}

// Rekeyed returns an origin configured like o but accepting keys instead,
// that keeps accepting the challenges o sent: it shares o's registry of
// ContextRandom challenges and o's ContextWindow secret (a generated one
// too). Use it to replace the keys after an issuer directory refresh. A
// challenge of a token type keys no longer has is refused as that type.
func (o *Origin) Rekeyed(keys []*Key) (*Origin, error) {
	cfg := o.cfg
	cfg.Keys = keys
	if o.mode == ContextWindow {
		cfg.Secret = o.secret
	}
	n, err := NewOrigin(cfg)
	if err != nil {
		return nil, err
	}
	if o.registry != nil && n.registry != nil {
		n.registry = o.registry
	}
	return n, nil
}

// TokenTypes returns the token types the origin accepts, in preference order.
func (o *Origin) TokenTypes() []TokenType { return append([]TokenType(nil), o.types...) }

// Challenges is ChallengesFor with an unknown source and no deadline: in
// ContextRandom mode all such challenges share one bucket of the registry.
func (o *Origin) Challenges() ([]Challenge, error) {
	return o.ChallengesFor(context.Background(), netip.Addr{})
}

// ChallengesFor mints the challenges for one token_required answer to a client at
// source (its IP address as the HTTP layer determines it, trusted proxies
// resolved; the zero Addr means unknown): one per accepted token type, in
// preference order, each with the token-key of its first key usable now
// (see OriginConfig.Keys) and a max-age, plus a greased one last if configured. Format them with
// FormatWWWAuthenticate. In ContextRandom mode the source decides whose
// challenges make room when the registry is full (see ContextRandom); in
// ContextWindow mode it is ignored. ctx bounds the write of the challenges
// to OriginConfig.Challenges, when set; its failure is ReasonStoreUnavailable.
func (o *Origin) ChallengesFor(ctx context.Context, source netip.Addr) ([]Challenge, error) {
	now := o.now()
	out := make([]Challenge, 0, len(o.types)+1)
	switch o.mode {
	case ContextRandom:
		rc := make([]byte, RedemptionContextSize)
		if _, err := rand.Read(rc); err != nil {
			return nil, fmt.Errorf("generating redemption context: %w", err)
		}
		expires := now.Add(o.lifetime)
		src := sourceKey(source)
		var shared []store.TokenChallenge
		for _, t := range o.types {
			raw, err := o.challengeBytes(t, rc)
			if err != nil {
				return nil, err
			}
			d := ChallengeDigest(raw)
			if o.shared != nil {
				k := o.storeKey(d)
				shared = append(shared, store.TokenChallenge{Digest: k[:], TokenType: uint16(t), Expires: expires})
			} else {
				o.registry.add(d, t, src, expires, now)
			}
			out = append(out, Challenge{TokenChallenge: raw, TokenKey: o.tokenKeyAt(t, now), MaxAge: int(o.lifetime / time.Second)})
		}
		if o.shared != nil {
			if err := o.shared.AddTokenChallenges(ctx, shared); err != nil {
				return nil, wrapError(ReasonStoreUnavailable, "recording challenges", err)
			}
		}
	case ContextWindow:
		s, err := o.slotsAt(now)
		if err != nil {
			return nil, err
		}
		maxAge := int(s.until(s.cur).Sub(now) / time.Second)
		for i, t := range o.types {
			out = append(out, Challenge{TokenChallenge: s.challenges[i], TokenKey: o.tokenKeyAt(t, now), MaxAge: maxAge})
		}
	}
	if o.grease {
		g, err := greaseChallenge()
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// WWWAuthenticate is WWWAuthenticateFor with an unknown source and no
// deadline.
func (o *Origin) WWWAuthenticate() (string, error) {
	return o.WWWAuthenticateFor(context.Background(), netip.Addr{})
}

// WWWAuthenticateFor mints challenges for a client at source (see
// ChallengesFor) and formats them as one WWW-Authenticate field value.
func (o *Origin) WWWAuthenticateFor(ctx context.Context, source netip.Addr) (string, error) {
	cs, err := o.ChallengesFor(ctx, source)
	if err != nil {
		return "", err
	}
	return FormatWWWAuthenticate(cs...), nil
}

// tokenKeyAt returns the token-key to advertise for type t at now: the
// first key of t that clients may use at now (RFC 9578 §4: no not-before,
// or one in the past) or, while none may be used yet, the one whose
// not-before comes first. Choosing per challenge lets a key announced in
// advance take over when its time comes, with no refetch.
func (o *Origin) tokenKeyAt(t TokenType, now time.Time) []byte {
	keys := o.advertise[t]
	var soonest *Key
	for _, k := range keys {
		if k.usableAt(now) {
			return k.encoded
		}
		if soonest == nil || k.notBefore.Before(soonest.notBefore) {
			soonest = k
		}
	}
	if soonest == nil {
		return nil
	}
	return soonest.encoded
}

func greaseChallenge() (Challenge, error) {
	var b [2 + 80 + 32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return Challenge{}, fmt.Errorf("generating grease: %w", err)
	}
	t := greaseTypes[int(b[0])%len(greaseTypes)]
	body := b[2 : 2+48+int(b[1])%32]
	body[0], body[1] = byte(t>>8), byte(t)
	return Challenge{TokenChallenge: body, TokenKey: b[82:], MaxAge: -1}, nil
}

func (o *Origin) challengeBytes(t TokenType, ctx []byte) ([]byte, error) {
	c := TokenChallenge{TokenType: t, IssuerName: o.issuer, RedemptionContext: ctx, OriginInfo: o.originInfo}
	return c.Marshal()
}

// Redemption describes a successfully redeemed token.
type Redemption struct {
	// Token is the redeemed token.
	Token *Token
	// Key is the issuer key it verified under (public part only).
	Key *Key
	// SpentUntil is the expiry recorded in the SpentStore.
	SpentUntil time.Time
}

// Redeem parses an Authorization field value and redeems the token in it; see
// RedeemToken. A value without PrivateToken credentials gives ReasonMissing.
func (o *Origin) Redeem(ctx context.Context, authorization string) (*Redemption, error) {
	t, err := ParseAuthorization(authorization)
	if err != nil {
		return nil, err
	}
	return o.RedeemToken(ctx, t)
}

// RedeemToken checks a parsed token and records it as spent. Errors carry
// the Reason of the first failed check: ReasonUnsupportedType (type not
// configured: answer with a fresh challenge), ReasonUnknownKey,
// ReasonChallengeDigest (not a challenge this origin accepts now),
// ReasonAuthenticator, ReasonReplay (already spent) or
// ReasonStoreUnavailable (the store failed; the token is not redeemed and
// may be presented again).
func (o *Origin) RedeemToken(ctx context.Context, t *Token) (*Redemption, error) {
	if t == nil {
		return nil, newError(ReasonMalformed, "redeeming token: nil token")
	}
	if !o.typeOK[t.TokenType] {
		return nil, newError(ReasonUnsupportedType, "token type %s is not accepted here", t.TokenType)
	}
	k, err := o.verifier.lookup(t)
	if err != nil {
		return nil, err
	}
	now := o.now()
	expires, ok, err := o.acceptDigest(ctx, t.TokenType, t.ChallengeDigest, now)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, newError(ReasonChallengeDigest, "token does not answer a challenge this origin accepts now")
	}
	if err := o.verifier.verifyWithKey(t, k); err != nil {
		return nil, err
	}
	until := expires.Add(o.skew)
	sk := SpentKey(t)
	first, err := o.spent.MarkSpent(ctx, sk[:], until)
	if err != nil {
		return nil, wrapError(ReasonStoreUnavailable, "recording spent token", err)
	}
	if !first {
		return nil, newError(ReasonReplay, "token already redeemed")
	}
	return &Redemption{Token: t, Key: k.Public(), SpentUntil: until}, nil
}

// acceptDigest reports whether d is the digest of a challenge of type t that
// the origin accepts at now, and until when. A failing shared challenge
// store is ReasonStoreUnavailable.
func (o *Origin) acceptDigest(ctx context.Context, t TokenType, d [DigestSize]byte, now time.Time) (time.Time, bool, error) {
	switch {
	case o.mode == ContextRandom && o.shared != nil:
		k := o.storeKey(d)
		c, err := o.shared.LookupTokenChallenge(ctx, k[:])
		switch {
		case errors.Is(err, store.ErrNotFound):
			return time.Time{}, false, nil
		case err != nil:
			return time.Time{}, false, wrapError(ReasonStoreUnavailable, "looking up challenge", err)
		}
		// The store's clock decided it is alive; the origin's clock
		// decides too, as for the registry.
		return c.Expires, c.TokenType == uint16(t) && now.Before(c.Expires), nil
	case o.mode == ContextRandom:
		exp, typ, ok := o.registry.lookup(d, now)
		return exp, ok && typ == t, nil
	case o.mode == ContextWindow:
		s, err := o.slotsAt(now)
		if err != nil {
			return time.Time{}, false, err
		}
		for i, tt := range o.types {
			if tt != t {
				continue
			}
			// Compare against both acceptable slots without branching on
			// which one matched first.
			cur := subtle.ConstantTimeCompare(d[:], s.curDigests[i][:])
			prev := subtle.ConstantTimeCompare(d[:], s.prevDigests[i][:])
			switch {
			case cur == 1:
				return s.until(s.cur), true, nil
			case prev == 1:
				return s.until(s.cur - 1), true, nil
			}
		}
	}
	return time.Time{}, false, nil
}

// challengeScopeLabel separates storeKey's use of SHA-256 from any other.
const challengeScopeLabel = "caddy-mimi privacypass challenge scope v1\x00"

// storeKey returns the key under which OriginConfig.Challenges keeps the
// challenge of digest d:
//
//	SHA-256("caddy-mimi privacypass challenge scope v1" || 0x00 || 0x0000 || issuer_name (with its 2-byte length) || 0x00 || origin_info (with its 2-byte length) || d)
//
// Origins of other issuer names or origin_info (sites of other ds_domains
// on one database) keep their challenges in one store under disjoint keys,
// so that none accepts a token answering another's challenge: such a token
// is bound to the other origin (RFC 9577 §2.1.1), and the store, which
// holds digests only, cannot tell whose challenge a digest was.
func (o *Origin) storeKey(d [DigestSize]byte) [DigestSize]byte {
	h := sha256.New()
	h.Write(o.scope)
	h.Write(d[:])
	var out [DigestSize]byte
	h.Sum(out[:0])
	return out
}

// slots caches the window challenges of the current and previous slot.
type slots struct {
	cur         int64
	lifetime    time.Duration
	challenges  [][]byte // current slot, per o.types
	curDigests  [][DigestSize]byte
	prevDigests [][DigestSize]byte
}

// until returns when challenges of slot s stop being accepted: the end of
// slot s+1.
func (s *slots) until(slot int64) time.Time {
	return time.Unix(0, 0).Add(time.Duration(slot+2) * s.lifetime)
}

const windowContextLabel = "caddy-mimi privacypass redemption context v1\x00"

func (o *Origin) windowContext(slot int64) []byte {
	m := hmac.New(sha256.New, o.secret)
	m.Write([]byte(windowContextLabel))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(slot))
	m.Write(b[:])
	return m.Sum(nil)
}

func (o *Origin) slotsAt(now time.Time) (*slots, error) {
	slot := now.UnixNano() / int64(o.lifetime)
	if now.UnixNano() < 0 {
		slot = -1 // clocks before 1970 are not supported; keep the math defined
	}
	if s := o.window.Load(); s != nil && s.cur == slot {
		return s, nil
	}
	s := &slots{cur: slot, lifetime: o.lifetime}
	cur, prev := o.windowContext(slot), o.windowContext(slot-1)
	for _, t := range o.types {
		c, err := o.challengeBytes(t, cur)
		if err != nil {
			return nil, err
		}
		p, err := o.challengeBytes(t, prev)
		if err != nil {
			return nil, err
		}
		s.challenges = append(s.challenges, c)
		s.curDigests = append(s.curDigests, ChallengeDigest(c))
		s.prevDigests = append(s.prevDigests, ChallengeDigest(p))
	}
	o.window.Store(s)
	return s, nil
}

// sourceKey groups client addresses the way rate limits do: IPv4 by
// address, IPv6 by /64. The zero Addr is the unknown source "".
func sourceKey(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// challengeRegistry remembers the digests of ContextRandom challenges until
// they expire, in a map plus one FIFO queue per client source. All
// challenges share one lifetime, so a queue's order is its expiry order and
// pruning only looks at its head. A source past its quota loses its own
// oldest entry; at the global limit the source holding the most entries
// (found through bySize, in O(1)) loses its oldest. Every sweepEvery adds,
// expired heads of all queues are dropped, so idle sources do not hold
// memory.
type challengeRegistry struct {
	mu        sync.Mutex
	limit     int
	perSource int
	byD       map[[DigestSize]byte]registryEntry
	sources   map[string]*sourceQueue
	bySize    map[int]map[*sourceQueue]struct{} // live count -> queues
	maxSize   int                               // upper bound of the largest count
	untilScan int                               // adds until the next sweep
}

type registryEntry struct {
	exp int64 // unix nanoseconds
	typ TokenType
}

// sourceQueue is one source's challenges, oldest first.
type sourceQueue struct {
	key   string
	items []queuedDigest
	head  int
}

type queuedDigest struct {
	d   [DigestSize]byte
	exp int64
}

func (q *sourceQueue) len() int { return len(q.items) - q.head }

func newChallengeRegistry(limit, perSource int) *challengeRegistry {
	return &challengeRegistry{
		limit: limit, perSource: perSource, untilScan: limit,
		byD:     make(map[[DigestSize]byte]registryEntry),
		sources: make(map[string]*sourceQueue),
		bySize:  make(map[int]map[*sourceQueue]struct{}),
	}
}

// resize moves q from the size class before to its current one.
func (r *challengeRegistry) resize(q *sourceQueue, before int) {
	if set := r.bySize[before]; set != nil {
		delete(set, q)
		if len(set) == 0 {
			delete(r.bySize, before)
		}
	}
	n := q.len()
	if n == 0 {
		delete(r.sources, q.key)
		return
	}
	set := r.bySize[n]
	if set == nil {
		set = make(map[*sourceQueue]struct{})
		r.bySize[n] = set
	}
	set[q] = struct{}{}
	r.maxSize = max(r.maxSize, n)
}

// pop forgets q's oldest entry.
func (r *challengeRegistry) pop(q *sourceQueue) {
	before := q.len()
	it := q.items[q.head]
	delete(r.byD, it.d)
	q.items[q.head] = queuedDigest{}
	q.head++
	if q.head > len(q.items)/2 {
		q.items = append(q.items[:0], q.items[q.head:]...)
		q.head = 0
	}
	r.resize(q, before)
}

// prune forgets q's expired entries.
func (r *challengeRegistry) prune(q *sourceQueue, now int64) {
	for q.len() > 0 && q.items[q.head].exp <= now {
		r.pop(q)
	}
}

// largest returns a queue holding the most entries, preferring prefer.
func (r *challengeRegistry) largest(prefer *sourceQueue) *sourceQueue {
	for r.maxSize > 0 && len(r.bySize[r.maxSize]) == 0 {
		r.maxSize--
	}
	set := r.bySize[r.maxSize]
	if _, ok := set[prefer]; ok {
		return prefer
	}
	for q := range set {
		return q
	}
	return nil
}

func (r *challengeRegistry) add(d [DigestSize]byte, typ TokenType, src string, expires, now time.Time) {
	if r.limit == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := now.UnixNano()
	if r.untilScan--; r.untilScan <= 0 {
		r.untilScan = r.limit
		for _, q := range r.sources {
			r.prune(q, n)
		}
	}
	q := r.sources[src]
	if q == nil {
		q = &sourceQueue{key: src}
		r.sources[src] = q
	}
	r.prune(q, n)
	quota := r.perSource
	if src == "" {
		quota = r.limit
	}
	if q.len() >= quota {
		r.pop(q)
	}
	if len(r.byD) >= r.limit {
		if victim := r.largest(q); victim != nil {
			r.pop(victim)
		}
	}
	if r.sources[src] == nil { // emptied by the pops above
		r.sources[src] = q
	}
	exp := expires.UnixNano()
	before := q.len()
	q.items = append(q.items, queuedDigest{d: d, exp: exp})
	r.byD[d] = registryEntry{exp: exp, typ: typ}
	r.resize(q, before)
}

func (r *challengeRegistry) lookup(d [DigestSize]byte, now time.Time) (time.Time, TokenType, bool) {
	r.mu.Lock()
	e, ok := r.byD[d]
	r.mu.Unlock()
	if !ok || e.exp <= now.UnixNano() {
		return time.Time{}, 0, false
	}
	return time.Unix(0, e.exp), e.typ, true
}
