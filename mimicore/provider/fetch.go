package provider

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/publicsuffix"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// DefaultFetchTimeout is FetchPolicy.Timeout when it is not set.
const DefaultFetchTimeout = 5 * time.Second

// Fetch limits of docs/protocol.md §4.
const (
	maxFetchBody       = 64 << 10
	defaultFetchLimit  = DefaultFetchTimeout
	defaultRelayLimit  = 30 * time.Second
	defaultMinInterval = time.Minute
	maxKeyCacheTTL     = 24 * time.Hour
	// minRefetchGap is the least time between two successful fetches for
	// one peer when a key_id not seen before asks for a refetch (capped at
	// MinInterval).
	minRefetchGap = 5 * time.Second
	// maxMissing bounds the key_ids remembered as missing per peer.
	maxMissing = 16
)

// Errors a key lookup returns; the verifier maps them to DSError codes.
var (
	// ErrUnknownKey means the peer does not publish the key_id, or not with
	// a validity that covers the request.
	ErrUnknownKey = errors.New("unknown verification key")
	// ErrFetchFailed means the peer's keys could not be fetched (now or at
	// the last attempt, which is cached).
	ErrFetchFailed = errors.New("fetching peer verification keys failed")
	// ErrAddressRefused means a peer resolved to an address the fetch policy
	// forbids.
	ErrAddressRefused = errors.New("peer address refused by fetch policy")
	// ErrFetcherClosed means the KeyFetcher was closed: nothing is fetched
	// or posted any more (cached keys still answer).
	ErrFetcherClosed = errors.New("key fetcher closed")
	// ErrNotConnected means a Client post failed before it had a
	// connection to the peer (DNS, dial, TLS handshake), whether or not it
	// timed out: nothing was sent, and no request to the peer would have
	// fared better.
	ErrNotConnected = errors.New("no connection to the peer")
)

// FetchPolicy bounds how peers' keys are fetched. The zero value is the
// production policy: public addresses on port 443 only, system roots.
type FetchPolicy struct {
	// AllowPrivate permits every address that is not globally reachable
	// (loopback, private, link-local, ULA, CGNAT, documentation, NAT64 and
	// the other ranges of nonPublic), for examples and tests on one machine.
	AllowPrivate bool
	// AllowedPorts lists the ports that may be dialed besides 443.
	AllowedPorts []int
	// Resolve maps a peer host name to a fixed "ip:port" that is dialed
	// instead of resolving the name, whatever port the URL names (a static
	// federation link, or a test).
	Resolve map[string]string
	// RootCAs replaces the system roots for peer TLS when set.
	RootCAs *x509.CertPool
	// Timeout bounds one discovery + key fetch (default 5 s), and the
	// dial and TLS handshake of every request to a peer.
	Timeout time.Duration
	// RelayTimeout bounds one request relayed to a group's hub by Relay,
	// from sending it to reading the hub's whole answer (default 30 s, or
	// Timeout when longer): the hub may take longer than Timeout on a DS
	// operation, such as a commit whose new members' binding keys it
	// fetches first. The client's own request context bounds it too.
	// RelayStream waits as long for the answer's headers once it has sent
	// the body, and does not bound the bodies.
	RelayTimeout time.Duration
	// MinInterval is how long a failed fetch is cached, and how long a
	// key_id found missing from a successful fetch that its lookup started
	// is answered unknown without refetching (default 1 min). A lookup
	// that waited for a fetch already in flight does not remember its
	// key_id as missing: that fetch may have reached the peer before the
	// peer published the key. Another key_id not in the cache
	// refetches once minRefetchGap (5 s, at most MinInterval) has passed
	// since the last fetch, so a forged request naming a bogus key_id
	// cannot keep a peer's next genuine key out for the whole interval.
	MinInterval time.Duration
	// FetchRate bounds fetches per second, so requests naming many unknown
	// senders cannot turn the gateway into a scanner (default 5 per
	// second). It is two budgets of this rate (burst 20 each): one for
	// senders never fetched successfully, one for refetches of known
	// peers, so a flood of forged senders cannot starve known peers. Each
	// request source (LookupOptions.Source; IPv4 address, IPv6 /64) may
	// trigger a fifth of the rate (burst 5), and so may each registrable
	// domain (public suffix + 1 label) of new senders, so one attacker
	// cannot spend a whole budget. A lookup's budgets are spent before
	// its fetch is in flight: a lookup that a budget refuses starts
	// nothing that another lookup could join, so the refusal is its own.
	FetchRate float64
	// MaxPeers bounds the peers kept in memory (default 10,000); the
	// least recently used peer never fetched successfully is forgotten
	// first, so forged senders cannot push known peers out.
	MaxPeers int
	// Cache, when set, persists fetched keys and failures so a restart
	// neither refetches every peer nor forgets which peers are failing.
	Cache store.PeerKeyCache
	// GetClientCertificate, when set, supplies the certificate this
	// gateway presents when a peer asks for one (mutual TLS between
	// providers, docs/protocol.md §4.4), as tls.Config's field of that
	// name: return an empty tls.Certificate to present none. It is used by
	// the KeyFetcher's transport, so by everything sent to peers through
	// it (discovery, key fetches, Client posts, Relay); HTTPClient ignores
	// it.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
}

// KeySource returns the verification key of a peer provider that is valid at
// a given time. A source that is shutting down fails with an error wrapping
// ErrFetcherClosed or store.ErrClosed, which Verifier answers
// backend_unavailable.
type KeySource interface {
	VerificationKey(ctx context.Context, domain string, keyID []byte, at time.Time) (*moh.VerificationKey, error)
}

// SourcedKeySource is a KeySource that can take the looked-up request's
// options into account (KeyFetcher budgets fetches by request source).
type SourcedKeySource interface {
	KeySource
	VerificationKeyFrom(ctx context.Context, domain string, keyID []byte, at time.Time, opts LookupOptions) (*moh.VerificationKey, error)
}

// KeyFetcher is a KeySource that discovers a peer's DS through its
// well-known URL and fetches its /verification_key, with caching, one fetch
// in flight per peer, a minimum interval between fetches and cached
// failures. It is safe for concurrent use.
type KeyFetcher struct {
	policy FetchPolicy
	client *http.Client
	// relay is Relay's client: client's policy, with RelayTimeout rather
	// than Timeout for the hub's answer.
	relay *http.Client
	now   func() time.Time

	// closing is cancelled by Close; fetches in flight stop with it.
	closing context.Context
	close   context.CancelFunc

	group singleflight.Group
	mu    sync.Mutex
	peers map[string]*peerKeys
	// fetching holds the key fetch in flight for each peer, if any.
	fetching map[string]*keyFetch
	// authorities caches discovery answers for Authority.
	authorities map[string]discovered
	// Fetch budgets (see FetchPolicy.FetchRate), all on f.now's clock.
	known, fresh       *rate.Limiter
	bySource, bySuffix keyedLimiter
	// fetchInFlight, when set (by tests), is called by the lookup that
	// started a fetch of domain once other lookups can join it, before
	// it runs.
	fetchInFlight func(domain string)
}

// ErrFetchBudget means a fetch budget (see FetchPolicy.FetchRate) refused
// the fetch; nothing is cached and the request may be retried later. The
// Verifier wraps it in a backend_unavailable *moh.Error, so the HTTP layer
// can find it with errors.Is (to sample its logs, say).
var ErrFetchBudget = errors.New("too many key fetches; retry later")

// LookupOptions describes the request on whose behalf a key is looked up.
type LookupOptions struct {
	// Source is the address the request came from, as the HTTP layer
	// determines the client IP (trusted proxies resolved). The fetches a
	// source triggers are budgeted per source (IPv4 address, IPv6 /64).
	// The zero value means unknown: such fetches are only budgeted per
	// sender domain and globally.
	Source netip.Addr
}

// keyedLimiter is a bounded set of token buckets keyed by a string.
type keyedLimiter struct {
	rate  rate.Limit
	burst int
	m     map[string]*rate.Limiter
}

// maxLimiterKeys bounds each keyedLimiter's map.
const maxLimiterKeys = 4096

// get returns key's bucket, creating it (and making room) if needed.
// Called with f.mu held.
func (k *keyedLimiter) get(key string, now time.Time) *rate.Limiter {
	if l, ok := k.m[key]; ok {
		return l
	}
	if len(k.m) >= maxLimiterKeys {
		// Full buckets are idle: forgetting them changes nothing. If a
		// flood keeps every bucket busy, forget arbitrary ones; each key
		// is still bounded by the global budget.
		for key, l := range k.m {
			if l.TokensAt(now) >= float64(k.burst) || len(k.m) >= maxLimiterKeys {
				delete(k.m, key)
			}
		}
	}
	l := rate.NewLimiter(k.rate, k.burst)
	k.m[key] = l
	return l
}

// sourceKey groups a client address: IPv4 by address, IPv6 by /64.
func sourceKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// suffixKey is the registrable domain of a sender (public suffix plus one
// label), so fresh names under one domain share a budget.
func suffixKey(domain string) string {
	if d, err := publicsuffix.EffectiveTLDPlusOne(domain); err == nil {
		return d
	}
	return domain
}

// spendBudget charges one fetch for domain to the budgets, or returns an
// error wrapping ErrFetchBudget. Every fetch needs a token of its source's
// bucket (when the source is known); a known peer's refetch then spends the
// known-peer budget, and a new sender needs a token of its registrable
// domain's bucket and of the new-sender budget. Buckets are checked before
// any is spent, so a refusal costs no other bucket a token. Called with
// f.mu held.
func (f *KeyFetcher) spendBudget(domain string, known bool, opts LookupOptions, now time.Time) error {
	var src *rate.Limiter
	if opts.Source.IsValid() {
		if src = f.bySource.get(sourceKey(opts.Source), now); src.TokensAt(now) < 1 {
			return fmt.Errorf("fetching keys of %s: %w (source %s)", domain, ErrFetchBudget, sourceKey(opts.Source))
		}
	}
	if known {
		if !f.known.AllowN(now, 1) {
			return fmt.Errorf("refetching keys of %s: %w", domain, ErrFetchBudget)
		}
	} else {
		sfx := f.bySuffix.get(suffixKey(domain), now)
		if sfx.TokensAt(now) < 1 {
			return fmt.Errorf("fetching keys of new sender %s: %w (domain %s)", domain, ErrFetchBudget, suffixKey(domain))
		}
		if !f.fresh.AllowN(now, 1) {
			return fmt.Errorf("fetching keys of new sender %s: %w", domain, ErrFetchBudget)
		}
		sfx.AllowN(now, 1)
	}
	if src != nil {
		src.AllowN(now, 1)
	}
	return nil
}

// keyFetch is a fetch of one peer's keys in flight, which the lookups
// that need it while it runs wait for rather than fetching again.
type keyFetch struct {
	done chan struct{} // closed when the fetch is over and err is set
	err  error
	// joiners counts the lookups waiting for it that did not start it;
	// under f.mu.
	joiners int
}

// peerKeys is what is cached about one peer.
type peerKeys struct {
	keys        []cachedKey
	lastAttempt time.Time
	lastErr     error
	lastUsed    time.Time
	// missing lists key_ids whose lookup started a fetch that succeeded
	// without them (oldest first, at most maxMissing).
	missing [][]byte
}

// refetchRefused returns why a lookup of keyID, absent from the cache,
// must not fetch now, or nil when it may. Called with f.mu held.
func (f *KeyFetcher) refetchRefused(e *peerKeys, domain string, keyID []byte, now time.Time) error {
	if e.lastAttempt.IsZero() {
		return nil
	}
	since := now.Sub(e.lastAttempt)
	if since >= f.policy.MinInterval {
		return nil
	}
	if e.lastErr != nil {
		return e.lastErr
	}
	if since < min(minRefetchGap, f.policy.MinInterval) || e.isMissing(keyID) {
		return fmt.Errorf("key %x of %s: %w", keyID, domain, ErrUnknownKey)
	}
	return nil
}

func (e *peerKeys) isMissing(keyID []byte) bool {
	for _, id := range e.missing {
		if bytes.Equal(id, keyID) {
			return true
		}
	}
	return false
}

// noteMissing remembers that keyID was absent from the last fetch.
func (e *peerKeys) noteMissing(keyID []byte) {
	if e.isMissing(keyID) {
		return
	}
	if len(e.missing) == maxMissing {
		e.missing = e.missing[1:]
	}
	e.missing = append(e.missing, bytes.Clone(keyID))
}

type cachedKey struct {
	key     moh.VerificationKey
	expires time.Time // min(not_after, fetched + 24 h)
}

// withDefaults fills in the zero fields of p.
func (p FetchPolicy) withDefaults() FetchPolicy {
	if p.Timeout <= 0 {
		p.Timeout = defaultFetchLimit
	}
	if p.RelayTimeout <= 0 {
		p.RelayTimeout = max(defaultRelayLimit, p.Timeout)
	}
	if p.MinInterval <= 0 {
		p.MinInterval = defaultMinInterval
	}
	if p.FetchRate <= 0 {
		p.FetchRate = 5
	}
	if p.MaxPeers <= 0 {
		p.MaxPeers = 10_000
	}
	return p
}

// HTTPClient returns an HTTP client that applies p to every request: the
// address check runs on the address actually dialed (after resolution, so
// DNS rebinding cannot slip past it), Resolve overrides are honoured,
// redirects are not followed, every phase is bounded by p.Timeout, and TLS
// below minVersion is refused. Callers still cap the bodies they read.
func (p FetchPolicy) HTTPClient(minVersion uint16) *http.Client {
	p = p.withDefaults()
	dialer := &net.Dialer{Timeout: p.Timeout, Control: p.control}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if fixed, ok := p.Resolve[host]; ok {
				addr = fixed
			}
			return dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig:        &tls.Config{MinVersion: minVersion, RootCAs: p.RootCAs},
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    p.Timeout,
		ResponseHeaderTimeout:  p.Timeout,
		MaxResponseHeaderBytes: 16 << 10,
		// An HTTP/2 connection that has received nothing for a third of
		// p.Timeout is sent a PING, and closed when that goes unanswered
		// for another third: a pooled connection that died (the peer's
		// host gone, a middlebox that dropped its state) fails its
		// requests as a lost connection before they time out, not as
		// each request's own timeout, which a slow answer on a live
		// connection (whose peer answers PINGs, RFC 9113 §6.7) also is.
		HTTP2: &http.HTTP2Config{SendPingTimeout: p.Timeout / 3, PingTimeout: p.Timeout / 3},
	}
	return &http.Client{
		Transport:     transport,
		Timeout:       p.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// NewKeyFetcher returns a KeyFetcher that applies policy. Peers are reached
// over TLS 1.3 only.
func NewKeyFetcher(policy FetchPolicy) *KeyFetcher {
	policy = policy.withDefaults()
	closing, closeFn := context.WithCancel(context.Background())
	client := policy.peerClient()
	return &KeyFetcher{
		policy:   policy,
		client:   client,
		relay:    policy.relayClient(client),
		now:      time.Now,
		closing:  closing,
		close:    closeFn,
		peers:    make(map[string]*peerKeys),
		fetching: make(map[string]*keyFetch),
		known:    rate.NewLimiter(rate.Limit(policy.FetchRate), 20),
		fresh:    rate.NewLimiter(rate.Limit(policy.FetchRate), 20),
		bySource: keyedLimiter{rate: rate.Limit(policy.FetchRate / 5), burst: 5,
			m: make(map[string]*rate.Limiter)},
		bySuffix: keyedLimiter{rate: rate.Limit(policy.FetchRate / 5), burst: 5,
			m: make(map[string]*rate.Limiter)},
	}
}

// Close releases the fetcher's HTTP transport: it cancels the fetches in
// flight, closes the idle connections to peers, and makes every later
// fetch, discovery and Client post fail at once with ErrFetcherClosed,
// without caching a failure for the peer. Keys already cached still
// answer VerificationKey. The owner of the fetcher calls Close when it is
// replaced (configuration reload) or shut down. Close is idempotent and
// safe for concurrent use.
func (f *KeyFetcher) Close() {
	f.close()
	f.client.CloseIdleConnections()
	f.relay.CloseIdleConnections()
}

// closed reports whether Close was called.
func (f *KeyFetcher) closed() bool { return f.closing.Err() != nil }

// control runs after name resolution, on the address actually dialed, so
// the check cannot be bypassed by DNS rebinding between check and connect.
func (p FetchPolicy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAddressRefused, err)
	}
	port := int(ap.Port())
	if port != 443 && !containsInt(p.AllowedPorts, port) {
		return fmt.Errorf("%w: port %d", ErrAddressRefused, port)
	}
	if !p.AllowPrivate && !publicAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s is not a public address", ErrAddressRefused, ap.Addr())
	}
	return nil
}

// nonPublic lists the ranges of the IANA IPv4 and IPv6 Special-Purpose
// Address Registries that are not globally reachable, and the IPv6 forms
// that embed an IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible, SIIT).
// The embedding forms are refused outright rather than judged by their IPv4
// part: a peer provider has no reason to be reached through a translator,
// and the translator would take the fetch to whatever IPv4 address it names,
// private ones included. publicAddr also refuses everything outside global
// unicast (loopback, link-local, multicast, unspecified).
var nonPublic = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // "this network"
		"10.0.0.0/8",      // private
		"100.64.0.0/10",   // shared address space (CGNAT)
		"127.0.0.0/8",     // loopback
		"169.254.0.0/16",  // link-local
		"172.16.0.0/12",   // private
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // documentation (TEST-NET-1)
		"192.88.99.0/24",  // deprecated 6to4 relay anycast
		"192.168.0.0/16",  // private
		"198.18.0.0/15",   // benchmarking
		"198.51.100.0/24", // documentation (TEST-NET-2)
		"203.0.113.0/24",  // documentation (TEST-NET-3)
		"224.0.0.0/4",     // multicast
		"240.0.0.0/4",     // reserved, and the limited broadcast address
		"::/96",           // unspecified, loopback, deprecated IPv4-compatible
		"::ffff:0:0:0/96", // SIIT IPv4-translated
		"64:ff9b::/96",    // NAT64 well-known prefix
		"64:ff9b:1::/48",  // local-use IPv4/IPv6 translation
		"100::/64",        // discard-only
		"2001::/23",       // IETF protocol assignments: Teredo, benchmarking, ORCHID, ...
		"2001:db8::/32",   // documentation
		"2002::/16",       // 6to4
		"3fff::/20",       // documentation
		"5f00::/16",       // segment routing SIDs
		"fc00::/7",        // unique local
		"fe80::/10",       // link-local
		"fec0::/10",       // deprecated site-local
		"ff00::/8",        // multicast
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// publicAddr reports whether a is a globally reachable unicast address. An
// IPv4-mapped address (::ffff:a.b.c.d) is dialed as IPv4 and judged as such.
func publicAddr(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsGlobalUnicast() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

func containsInt(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// VerificationKey implements KeySource: VerificationKeyFrom with no
// options.
func (f *KeyFetcher) VerificationKey(ctx context.Context, domain string, keyID []byte, at time.Time) (*moh.VerificationKey, error) {
	return f.VerificationKeyFrom(ctx, domain, keyID, at, LookupOptions{})
}

// VerificationKeyFrom implements SourcedKeySource. A key_id not in the
// cache triggers a refetch (see FetchPolicy.MinInterval), charged to the
// fetch budgets (see FetchPolicy.FetchRate); a refused fetch wraps
// ErrFetchBudget.
func (f *KeyFetcher) VerificationKeyFrom(ctx context.Context, domain string, keyID []byte, at time.Time, opts LookupOptions) (*moh.VerificationKey, error) {
	now := f.now()
	f.mu.Lock()
	entry := f.peers[domain]
	f.mu.Unlock()
	if entry == nil {
		entry = f.hydrate(ctx, domain, now)
	}
	f.mu.Lock()
	entry.lastUsed = now
	if k, ok := entry.lookup(keyID, now); ok {
		f.mu.Unlock()
		return checkCovers(k, at)
	}
	if err := f.refetchRefused(entry, domain, keyID, now); err != nil {
		f.mu.Unlock()
		return nil, err
	}
	call, started := f.fetching[domain], false
	if call == nil {
		// The budget is spent before the fetch is in flight, in the
		// same step: a lookup refused by its own budget (its source's,
		// say) starts nothing that another lookup could join, so a
		// lookup is refused for its own budget only.
		if !f.closed() {
			if err := f.spendBudget(domain, entry.known(), opts, now); err != nil {
				f.mu.Unlock()
				return nil, err
			}
		}
		call, started = &keyFetch{done: make(chan struct{})}, true
		f.fetching[domain] = call
	} else {
		call.joiners++
	}
	f.mu.Unlock()

	if started {
		if f.fetchInFlight != nil {
			f.fetchInFlight(domain)
		}
		f.runFetch(ctx, call, domain)
	} else {
		<-call.done
	}
	if call.err != nil {
		return nil, call.err
	}
	f.mu.Lock()
	entry = f.peers[domain]
	k, ok := entry.lookup(keyID, f.now())
	// Only a key_id looked up before the fetch began is remembered as
	// missing from it: a lookup that joined a fetch in flight may name a
	// key the peer published after that fetch reached it, which must not
	// wait out MinInterval (its next lookup refetches after minRefetchGap).
	if !ok && entry != nil && started {
		entry.noteMissing(keyID)
	}
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("key %x of %s: %w", keyID, domain, ErrUnknownKey)
	}
	return checkCovers(k, at)
}

// runFetch fetches domain's keys for call, whose budget its starter
// spent and which the lookups that joined it wait for, records the
// outcome and sets call.err. The fetch outlives the request that started
// it (other requests wait for it) but not the fetcher.
func (f *KeyFetcher) runFetch(ctx context.Context, call *keyFetch, domain string) {
	call.err = fmt.Errorf("fetching keys of %s: %w: fetch aborted", domain, ErrFetchFailed)
	defer func() {
		f.mu.Lock()
		delete(f.fetching, domain)
		f.mu.Unlock()
		close(call.done)
	}()
	if f.closed() {
		call.err = ErrFetcherClosed
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.policy.Timeout)
	defer cancel()
	stop := context.AfterFunc(f.closing, cancel)
	defer stop()
	keys, err := f.fetch(fctx, domain)
	if f.closed() {
		call.err = fmt.Errorf("fetching keys of %s: %w", domain, ErrFetcherClosed)
		return
	}
	f.record(fctx, domain, keys, err, f.now())
	call.err = err
}

// hydrate returns domain's memory entry, loading what the persistent cache
// knows about it the first time the peer is seen in this process.
func (f *KeyFetcher) hydrate(ctx context.Context, domain string, now time.Time) *peerKeys {
	e := &peerKeys{lastUsed: now}
	if f.policy.Cache != nil {
		if keys, err := f.policy.Cache.ListPeerKeys(ctx, domain); err == nil {
			for _, k := range keys {
				e.keys = append(e.keys, cachedKey{key: moh.VerificationKey{
					KeyID: k.KeyID, Scheme: moh.SignatureScheme(k.Scheme), PublicKey: k.PublicKey,
					NotBefore: unixSeconds(k.NotBefore), NotAfter: unixSeconds(k.NotAfter),
				}, expires: k.CacheUntil})
			}
		}
		if fail, err := f.policy.Cache.LookupPeerFailure(ctx, domain); err == nil {
			e.lastAttempt = fail.FailedAt
			e.lastErr = fmt.Errorf("%w: %s (cached)", ErrFetchFailed, fail.Reason)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if existing := f.peers[domain]; existing != nil {
		return existing
	}
	f.evictLocked()
	f.peers[domain] = e
	return e
}

// evictLocked makes room for one more peer when the map is full by
// forgetting the least recently used peer that was never fetched
// successfully, or, if every peer is known, the least recently used one:
// a flood of forged senders cannot push known peers out.
func (f *KeyFetcher) evictLocked() {
	if len(f.peers) < f.policy.MaxPeers {
		return
	}
	var oldest string
	var oldestUse time.Time
	oldestKnown := true
	for d, e := range f.peers {
		k := e.known()
		if oldest == "" || (!k && oldestKnown) || (k == oldestKnown && e.lastUsed.Before(oldestUse)) {
			oldest, oldestUse, oldestKnown = d, e.lastUsed, k
		}
	}
	delete(f.peers, oldest)
}

// known reports whether the peer's keys were ever fetched successfully
// (in this process or, through the persistent cache, before).
func (e *peerKeys) known() bool {
	return len(e.keys) > 0 || (!e.lastAttempt.IsZero() && e.lastErr == nil)
}

func (e *peerKeys) lookup(keyID []byte, now time.Time) (moh.VerificationKey, bool) {
	if e == nil {
		return moh.VerificationKey{}, false
	}
	for _, c := range e.keys {
		if bytes.Equal(c.key.KeyID, keyID) && now.Before(c.expires) {
			return c.key, true
		}
	}
	return moh.VerificationKey{}, false
}

// checkCovers requires k's validity to include at.
func checkCovers(k moh.VerificationKey, at time.Time) (*moh.VerificationKey, error) {
	t := unixSeconds(at)
	if t < k.NotBefore || t > k.NotAfter {
		return nil, fmt.Errorf("key %x does not cover the request time: %w", k.KeyID, ErrUnknownKey)
	}
	return &k, nil
}

// record stores the outcome of a fetch in memory and, when configured, in
// the persistent cache. A failure to persist only costs a refetch after a
// restart, so it does not fail the lookup.
func (f *KeyFetcher) record(ctx context.Context, domain string, keys []moh.VerificationKey, err error, now time.Time) {
	cached := make([]cachedKey, 0, len(keys))
	for _, k := range keys {
		exp := now.Add(maxKeyCacheTTL)
		if na := unixTime(k.NotAfter); na.Before(exp) {
			exp = na
		}
		cached = append(cached, cachedKey{key: k, expires: exp})
	}
	f.mu.Lock()
	entry := f.peers[domain]
	if entry == nil {
		f.evictLocked()
		entry = &peerKeys{lastUsed: now}
		f.peers[domain] = entry
	}
	entry.lastAttempt = now
	entry.lastErr = err
	if err == nil {
		entry.keys = cached
		// A key_id missing before may be published now.
		kept := entry.missing[:0]
		for _, id := range entry.missing {
			if _, ok := entry.lookup(id, now); !ok {
				kept = append(kept, id)
			}
		}
		entry.missing = kept
	}
	f.mu.Unlock()

	c := f.policy.Cache
	if c == nil {
		return
	}
	if err != nil {
		reason := err.Error()
		if len(reason) > store.MaxReasonSize {
			reason = reason[:store.MaxReasonSize]
		}
		c.RecordPeerFailure(ctx, store.PeerFailure{Domain: domain, FailedAt: now, //nolint:errcheck // best effort
			RetryAt: now.Add(f.policy.MinInterval), Reason: reason})
		return
	}
	rows := make([]store.PeerKey, 0, len(cached))
	for _, ck := range cached {
		rows = append(rows, store.PeerKey{
			Domain: domain, KeyID: ck.key.KeyID, Scheme: uint16(ck.key.Scheme), PublicKey: ck.key.PublicKey,
			NotBefore: unixTime(ck.key.NotBefore), NotAfter: unixTime(ck.key.NotAfter),
			FetchedAt: now, CacheUntil: ck.expires,
		})
	}
	c.ReplacePeerKeys(ctx, domain, rows) //nolint:errcheck // best effort
}

// fetch discovers domain's DS and fetches its verification keys.
func (f *KeyFetcher) fetch(ctx context.Context, domain string) ([]moh.VerificationKey, error) {
	authority, err := f.Discover(ctx, domain)
	if err != nil {
		return nil, fmt.Errorf("%w: discovering %s: %v", ErrFetchFailed, domain, err)
	}
	f.noteAuthority(domain, authority, nil, f.now())
	body, err := wire.Marshal(&moh.VerificationKeyRequest{ProtocolVersion: moh.ProtocolVersion})
	if err != nil {
		return nil, err
	}
	url := "https://" + authority + "/verification_key"
	raw, err := f.do(ctx, http.MethodPost, url, body, keysMediaType)
	var status statusError
	if errors.As(err, &status) && int(status) == http.StatusMethodNotAllowed {
		// A peer that serves /verification_key by GET only: retry once,
		// without a body (docs/protocol.md §2 allows both).
		raw, err = f.do(ctx, http.MethodGet, url, nil, keysMediaType)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: fetching keys of %s from %s: %v", ErrFetchFailed, domain, authority, err)
	}
	var resp moh.DSResponse
	if err := wire.Unmarshal(raw, &resp, "DSResponse"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFetchFailed, err)
	}
	if resp.Type != moh.ResponseVerificationKeys {
		return nil, fmt.Errorf("%w: %s answered response type %d", ErrFetchFailed, authority, resp.Type)
	}
	keys := make([]moh.VerificationKey, 0, len(resp.VerificationKeys))
	for _, k := range resp.VerificationKeys {
		if !k.Scheme.Known() || !validLifetime(k.NotBefore, k.NotAfter) {
			continue // unusable keys are ignored, not trusted
		}
		k.KeyID = bytes.Clone(k.KeyID)
		k.PublicKey = bytes.Clone(k.PublicKey)
		keys = append(keys, k)
	}
	return keys, nil
}

// Discover reads https://<domain>/.well-known/mimi/ds-domain and returns the
// DS authority it names.
func (f *KeyFetcher) Discover(ctx context.Context, domain string) (string, error) {
	if !moh.ValidFQDN([]byte(domain)) {
		return "", errors.New("not a valid provider domain")
	}
	raw, err := f.do(ctx, http.MethodGet, "https://"+domain+"/.well-known/mimi/ds-domain", nil, "")
	if err != nil {
		return "", err
	}
	authority := strings.TrimSpace(string(raw))
	if err := ValidateAuthority(authority); err != nil {
		return "", err
	}
	return authority, nil
}

// ValidateAuthority checks a DS authority: an FQDN with an optional port.
func ValidateAuthority(authority string) error {
	host, port := authority, ""
	if i := strings.LastIndexByte(authority, ':'); i >= 0 {
		host, port = authority[:i], authority[i+1:]
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return fmt.Errorf("invalid DS authority port %q", port)
		}
	}
	if !moh.ValidFQDN([]byte(host)) {
		return fmt.Errorf("invalid DS authority host %q", host)
	}
	return nil
}

// keysMediaType is the only media type a /verification_key answer may have.
const keysMediaType = "application/octet-stream"

// statusError is a non-200 answer.
type statusError int

func (e statusError) Error() string { return "status " + strconv.Itoa(int(e)) }

// do performs one bounded request and returns the body of a 200 answer. A
// non-nil body is sent as application/octet-stream. When accept is set, it
// is sent as Accept and the answer's media type must equal it
// (case-insensitively, parameters ignored).
func (f *KeyFetcher) do(ctx context.Context, method, url string, body []byte, accept string) ([]byte, error) {
	if f.closed() {
		return nil, ErrFetcherClosed
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxFetchBody+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxFetchBody {
		return nil, errors.New("answer larger than 64 KiB")
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp.StatusCode)
	}
	if accept != "" {
		if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != accept {
			return nil, fmt.Errorf("answer content type %q is not %s", resp.Header.Get("Content-Type"), accept)
		}
	}
	return raw, nil
}
