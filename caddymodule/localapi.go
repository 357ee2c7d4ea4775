package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

func init() {
	caddy.RegisterModule(LocalAPI{})
}

// Defaults and bounds of LocalAPI.
const (
	defaultLocalUser    = "{http.auth.user.id}"
	defaultLocalMaxBody = 1 << 20
	// maxLocalMaxBody holds the largest PublishRequest: 256 KeyPackages
	// of 16 KiB with their framing.
	maxLocalMaxBody = 8 << 20
	// maxLocalWait caps max_wait: a long poll holds a connection and a
	// goroutine, and proxies in front tend to cut idle requests at a few
	// minutes.
	maxLocalWait = 10 * time.Minute
	// maxLocalBindingLifetime caps max_binding_lifetime.
	maxLocalBindingLifetime = 90 * 24 * time.Hour
	// defaultMaxLongPolls and defaultMaxLongPollsPerUser bound the long
	// polls waiting at once, in all and per user: a user's devices and
	// more, and enough connections for a busy gateway, far from what
	// exhausts it.
	defaultMaxLongPolls        = 10_000
	defaultMaxLongPollsPerUser = 32
	// maxLongPolls caps max_long_polls.
	maxLongPolls = 1_000_000
	// defaultRemoteClaims per defaultRemoteClaimWindow after a burst of
	// defaultRemoteClaimBurst bound one user's claims of other
	// providers' KeyPackages: a group of a hundred remote members at
	// once, then one a minute.
	defaultRemoteClaims      = 60
	defaultRemoteClaimWindow = time.Hour
	defaultRemoteClaimBurst  = 100
	// defaultPublishes KeyPackages per defaultPublishWindow bound how
	// fast one user publishes, after a burst of max_key_packages_per_user
	// (at least publish_rate's count): a new user fills that bound at
	// once, then republishes what peers claimed, a KeyPackage of each of
	// the user's clients for each group the user joins, far below the
	// rate (0.28/s). Every KeyPackage a claim hands out is kept with its
	// bytes for 14 days, whoever claims it: this bounds those too.
	defaultPublishes     = 1024
	defaultPublishWindow = time.Hour
	// maxLocalKeyPackages caps max_key_packages_per_user: a publish
	// counts the user's available KeyPackages, which costs in proportion.
	// max_key_packages_per_client is at most localapi.MaxPublish, the
	// most a KeyPackageList answer carries.
	maxLocalKeyPackages = 100_000
	// longPollRetryAfter is the Retry-After of a long poll refused at a
	// bound: a place frees when another poll ends, within max_wait.
	longPollRetryAfter = 5 * time.Second
	// exitCheckInterval is how often, while long polls wait, the handler
	// checks whether the process is exiting (exitWatch).
	exitCheckInterval = time.Second
)

// LocalAPI is the local client API (PROFILE §9, docs/protocol.md §10): the
// provider's own clients, or its legacy backend acting for them, get client
// bindings, publish KeyPackages, and fetch and acknowledge their queued
// messages. It never authenticates by itself: the admin puts an
// authentication handler in front of it (basic_auth, forward_auth to the
// legacy backend, a JWT module), and the authenticated user id arrives in
// the placeholder User. A request may act only for client URIs that name
// one of Providers and that user.
//
// It shares the provider's service (store, keys) with the `mimi` gateway
// handler of the same data directory, through the same pool, so both may
// run in one Caddy. Its paths are relative to where it is mounted (use
// `handle_path`); a path it does not own goes to the next handler.
type LocalAPI struct {
	// User is the placeholder that holds the authenticated user id, which
	// must equal the `<user>` part of every client URI the request acts
	// for, byte for byte. A request where it is empty is refused 403
	// forbidden. Default: `{http.auth.user.id}`, which basic_auth sets.
	// With forward_auth, copy the backend's user header into the request
	// (`copy_headers Remote-User`) and name it here
	// (`{http.request.header.Remote-User}`).
	User string `json:"user,omitempty"`

	// Providers are the provider domains whose clients this API serves:
	// the same list as the gateway's `provider`. Required.
	Providers []string `json:"providers,omitempty"`

	// DataDir is the provider's data directory, spelled as the gateway's
	// data_dir, so that both share one service and store. Default: the
	// data directory of the `mimi` gateway of this config that serves
	// Providers (all of them from one directory), whatever its data_dir
	// or first provider; when there is none, every request is answered
	// 503 backend_unavailable and the cause is logged once, instead of
	// opening a store and key ring no gateway uses.
	DataDir string `json:"data_dir,omitempty"`

	// MaxBody is the largest request body, in bytes; larger bodies are
	// answered 413 too_large. Default 1 MiB; at most 8 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// MaxBindingLifetime caps the validity of an issued client binding.
	// Default 30d; at least 1s, at most 90d (a binding never outlives
	// the key that signs it either).
	MaxBindingLifetime caddy.Duration `json:"max_binding_lifetime,omitempty"`

	// MaxWait caps the `wait` of a long poll on GET /messages. Default
	// 60s; at least 1s, at most 10m. The site's write_timeout, if set,
	// must be longer.
	MaxWait caddy.Duration `json:"max_wait,omitempty"`

	// MaxLongPolls bounds the long polls (GET /messages with a wait)
	// waiting at once in this handler, and MaxLongPollsPerUser those of
	// one authenticated user, whatever client URIs they name: each holds
	// a connection and a goroutine, and a group post wakes its members'
	// waits. A poll over a bound answers the messages it finds at once,
	// or, when there are none, 429 rate_limited with Retry-After.
	// Defaults 10000 and 32; at most 1000000, and the per-user bound at
	// most MaxLongPolls.
	MaxLongPolls        int `json:"max_long_polls,omitempty"`
	MaxLongPollsPerUser int `json:"max_long_polls_per_user,omitempty"`

	// RemoteClaims per RemoteClaimWindow is the sustained rate at which
	// one authenticated user may claim KeyPackages of other providers'
	// users and clients (/claim_key_packages), whatever the targets, after
	// a burst of RemoteClaimBurst: each such claim is a request this
	// provider signs to the target's provider, which limits this
	// provider's requests as a whole. Past it, 429 rate_limited with
	// Retry-After. Defaults: 60 per 1h, burst 100 (RemoteClaims when only
	// that is set).
	RemoteClaims      int            `json:"remote_claims,omitempty"`
	RemoteClaimWindow caddy.Duration `json:"remote_claim_window,omitempty"`
	RemoteClaimBurst  int            `json:"remote_claim_burst,omitempty"`

	// MaxKeyPackagesPerClient bounds the KeyPackages one client URI has
	// available (published and not yet claimed, replaced or expired),
	// last-resort ones included, and MaxKeyPackagesPerUser those of all
	// the client URIs of one user of one provider domain
	// (mimi://<provider>/d/<user>/...) together. A publish that would
	// pass either is refused whole, 413 quota_exceeded. Defaults 256 and
	// 1024; the per-client bound at most 256 (the most a KeyPackageList
	// answer carries) and at most the per-user one, which is at most
	// 100000.
	MaxKeyPackagesPerClient int `json:"max_key_packages_per_client,omitempty"`
	MaxKeyPackagesPerUser   int `json:"max_key_packages_per_user,omitempty"`

	// PublishRate KeyPackages per PublishWindow is the sustained rate at
	// which one authenticated user may publish KeyPackages
	// (POST /key_packages), counted in KeyPackages, whatever the client
	// URIs, after a burst of PublishBurst: every KeyPackage a claim hands
	// out, and the store keeps after it, entered through a publish.
	// A publish past it is refused whole, 429 rate_limited with
	// Retry-After, and spends nothing; a publish the store refuses
	// (409 replay, 413 quota_exceeded) is given its KeyPackages back.
	// Defaults: 1024 per 1h, burst
	// MaxKeyPackagesPerUser or PublishRate, whichever is larger; the
	// burst at least MaxKeyPackagesPerClient, so that a client can fill
	// its bound in one publish.
	PublishRate   int            `json:"publish_rate,omitempty"`
	PublishWindow caddy.Duration `json:"publish_window,omitempty"`
	PublishBurst  int            `json:"publish_burst,omitempty"`

	// CipherSuites are the MLS cipher suites (RFC 9420 numbers) a
	// published KeyPackage may use. Default: every suite implemented
	// (1, 2, 3, 5, 7).
	CipherSuites []uint16 `json:"cipher_suites,omitempty"`

	svc    *service.Service
	api    *localapi.API
	logger *zap.Logger
	// polls counts the long polls waiting, against MaxLongPolls and
	// MaxLongPollsPerUser.
	polls *pollSlots
	// claims bounds how fast one user claims one target user's
	// KeyPackages (localClaimLimits), with a zone held in limitZonePool
	// under claimZoneKey ("" when none is held).
	claims       localClaimLimits
	claimZoneKey string
	// remoteClaims bounds one user's claims of other providers'
	// KeyPackages (RemoteClaims), with a zone held in limitZonePool under
	// remoteZoneKey ("" when none is held).
	remoteClaims  remoteClaimLimits
	remoteZoneKey string
	// publishes bounds one user's publishes (PublishRate), with a zone
	// held in limitZonePool under publishZoneKey ("" when none is held).
	publishes      publishLimits
	publishZoneKey string
	// sampled logs, sampled, what peers or a flood of requests could
	// repeat: failed claims from other providers.
	sampled *zap.Logger
	// stopping ends the long polls in flight when the server begins to
	// shut down (a reload or stop), the process exits (exiting) or the
	// handler is cleaned up, so they
	// do not hold the old config for up to MaxWait: the client gets an
	// empty list and polls the new config.
	stopping context.Context
	stop     context.CancelFunc
	// exiting reports that the process is exiting (caddy.Exiting, set
	// in Provision when nil). Caddy hands the shutdown hooks that call
	// stop only to its HTTP/1 and HTTP/2 servers, and HTTP/3's shutdown
	// waits for running requests: while polls wait, exitWatch checks it
	// and calls stop, so that a poll over HTTP/3 does not hold up the
	// process's exit for up to MaxWait.
	exiting func() bool
	// watching guards the one goroutine of exitWatch; nil before
	// Provision.
	watching *watchState

	// joined guards svc and api, which join sets once; nil before
	// Provision.
	joined *joinState
	// config identifies this handler's config (the Done channel of its
	// caddy.Context), to find the data directory of its gateway in
	// gatewayDirs when DataDir is not set.
	config <-chan struct{}
}

// watchState tells whether exitWatch's goroutine runs.
type watchState struct {
	mu      sync.Mutex
	running bool
}

// joinState is the outcome of LocalAPI.join.
type joinState struct {
	mu  sync.Mutex
	err error // why the join failed; it is not tried again
	// logged is set once err has been logged at error level.
	logged bool
}

// CaddyModule returns the Caddy module information.
func (LocalAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mimi_local",
		New: func() caddy.Module { return new(LocalAPI) },
	}
}

// Provision sets defaults and joins the provider's service of DataDir when
// a gateway has opened it; otherwise the service is joined, or opened with
// the defaults, at the first request (see join). Without DataDir it takes
// that of the gateway of this config serving Providers at the first
// request, when every module of the config is provisioned.
func (h *LocalAPI) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.sampled = sampled(h.logger)
	for i, p := range h.Providers {
		h.Providers[i] = strings.ToLower(strings.TrimSuffix(p, "."))
	}
	if err := h.Validate(); err != nil {
		return err
	}
	if h.User == "" {
		h.User = defaultLocalUser
	}
	if h.MaxBody == 0 {
		h.MaxBody = defaultLocalMaxBody
	}
	if h.MaxWait == 0 {
		h.MaxWait = caddy.Duration(localapi.DefaultMaxWait)
	}
	if h.MaxLongPolls == 0 {
		h.MaxLongPolls = max(defaultMaxLongPolls, h.MaxLongPollsPerUser)
	}
	if h.MaxLongPollsPerUser == 0 {
		h.MaxLongPollsPerUser = min(defaultMaxLongPollsPerUser, h.MaxLongPolls)
	}
	if h.MaxKeyPackagesPerUser == 0 {
		h.MaxKeyPackagesPerUser = max(localapi.DefaultMaxKeyPackagesPerUser, h.MaxKeyPackagesPerClient)
	}
	if h.MaxKeyPackagesPerClient == 0 {
		h.MaxKeyPackagesPerClient = min(localapi.DefaultMaxKeyPackagesPerClient, h.MaxKeyPackagesPerUser)
	}
	if h.RemoteClaims == 0 {
		h.RemoteClaims = defaultRemoteClaims
		if h.RemoteClaimBurst == 0 {
			h.RemoteClaimBurst = defaultRemoteClaimBurst
		}
	}
	if h.RemoteClaimWindow == 0 {
		h.RemoteClaimWindow = caddy.Duration(defaultRemoteClaimWindow)
	}
	if h.RemoteClaimBurst == 0 {
		h.RemoteClaimBurst = h.RemoteClaims
	}
	if h.PublishRate == 0 {
		h.PublishRate = defaultPublishes
	}
	if h.PublishWindow == 0 {
		h.PublishWindow = caddy.Duration(defaultPublishWindow)
	}
	if h.PublishBurst == 0 {
		h.PublishBurst = max(h.MaxKeyPackagesPerUser, h.PublishRate)
	}
	h.polls = &pollSlots{max: h.MaxLongPolls, maxPerUser: h.MaxLongPollsPerUser, users: map[string]int{}}
	h.stopping, h.stop = context.WithCancel(context.Background())
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		// HTTP/1 and HTTP/2 only; HTTP/3 polls end by exitWatch.
		srv.RegisterOnShutdown(h.stop)
	}
	if h.exiting == nil {
		h.exiting = caddy.Exiting
	}
	h.watching = new(watchState)
	h.joined = new(joinState)
	h.config = configOf(ctx)
	// The config gets a mimi app, as a gateway's does: the provider
	// service this handler holds may get a gateway of the next config,
	// whose signing key options are put in force when Caddy stops this
	// config's app after swapping that config in (App.Stop).
	if _, err := mimiApp(ctx); err != nil {
		return fmt.Errorf("mimi_local: %w", err)
	}
	if h.DataDir == "" {
		// The directory is found at the first request, when every
		// gateway of the config is provisioned: here only those
		// provisioned before this handler are recorded, and a gateway
		// provisioned after it may serve its domains too, from another
		// directory (which makes it refuse every request).
		return nil
	}
	if err := h.useDataDir(); err != nil {
		return err
	}
	if n, _ := servicePool.References(h.DataDir); n > 0 {
		// A gateway of this config, or the running config, opened the
		// service and chose its store: join it now, or at the first
		// request when only a config that Caddy has not started holds
		// it (serviceHolders).
		if err := h.join(); err != nil && !errors.Is(err, errServiceNotRunning) {
			return err
		}
		return nil
	}
	// No gateway has opened the service yet. The gateway of this config
	// may still be provisioned after this handler (Caddy provisions the
	// servers of a config in no set order), and it chooses the store, so
	// the service is joined at the first request, when every module of
	// the config has been provisioned.
	return nil
}

// useDataDir makes DataDir absolute and takes the claim limit's zone of
// that directory.
func (h *LocalAPI) useDataDir() error {
	dir, err := poolDataDir(h.DataDir)
	if err != nil {
		return fmt.Errorf("mimi_local: %w", err)
	}
	h.DataDir = dir
	zone, zoneKey, err := acquireClaimZone(h.DataDir, claimZoneLocal)
	if err != nil {
		return fmt.Errorf("mimi_local: %w", err)
	}
	h.claims, h.claimZoneKey = localClaimLimits{zone: zone}, zoneKey
	rate := float64(h.RemoteClaims) / time.Duration(h.RemoteClaimWindow).Seconds()
	remote, remoteKey, err := acquireLimitZone(h.DataDir, claimZoneRemote, rate, h.RemoteClaimBurst)
	if err != nil {
		return fmt.Errorf("mimi_local: remote claim limit: %w", err)
	}
	h.remoteClaims, h.remoteZoneKey = remoteClaimLimits{zone: remote}, remoteKey
	rate = float64(h.PublishRate) / time.Duration(h.PublishWindow).Seconds()
	pub, pubKey, err := acquireLimitZone(h.DataDir, publishZone, rate, h.PublishBurst)
	if err != nil {
		return fmt.Errorf("mimi_local: publish rate: %w", err)
	}
	h.publishes, h.publishZoneKey = publishLimits{zone: pub}, pubKey
	return nil
}

// join joins the provider's service of DataDir and builds the API on it;
// it runs once, from Provision or at the first request. Without a
// DataDir it first takes the data directory of the gateway of this
// config that serves Providers, and fails when there is none.
func (h *LocalAPI) join() error {
	h.joined.mu.Lock()
	defer h.joined.mu.Unlock()
	if h.api != nil {
		return nil
	}
	if h.joined.err != nil {
		return h.joined.err
	}
	if h.DataDir == "" {
		dir, err := gatewayDirs.resolve(h.config, h.Providers)
		if err != nil {
			h.joined.err = fmt.Errorf("mimi_local: finding the data directory (no data_dir set): %w; "+
				"serve these providers with a mimi handler in this Caddy, or set the gateway's data_dir here", err)
			return h.joined.err
		}
		h.DataDir = dir
		if err := h.useDataDir(); err != nil {
			h.DataDir = ""
			h.joined.err = err
			return err
		}
	}
	svc, err := joinService(h)
	if errors.Is(err, errServiceNotRunning) {
		// Not recorded: the next request tries again.
		return err
	}
	if err != nil {
		h.joined.err = fmt.Errorf("mimi_local: opening the provider service in %s: %w", h.DataDir, err)
		return h.joined.err
	}
	suites := make([]mls.CipherSuite, len(h.CipherSuites))
	for i, s := range h.CipherSuites {
		suites[i] = mls.CipherSuite(s)
	}
	api, err := localapi.New(localapi.Config{
		Domains:                 h.Providers,
		Store:                   svc.Store(),
		Keys:                    svc.Keys(),
		MaxBindingLifetime:      time.Duration(h.MaxBindingLifetime),
		MaxKeyPackagesPerClient: h.MaxKeyPackagesPerClient,
		MaxKeyPackagesPerUser:   h.MaxKeyPackagesPerUser,
		Suites:                  suites,
		Peers:                   peerKeyPackages{svc: svc},
		ClaimLimits:             h.claims,
		RemoteClaimLimits:       h.remoteClaims,
		PublishLimits:           h.publishes,
		Logger:                  h.logger,
		// The max_key_package_lifetime of the gateway of this config and
		// data directory: a KeyPackage published here must be one its
		// Delivery Service lets into a group. Asked at each publish and
		// claim: this may be joined in Provision, before that gateway.
		MaxKeyPackageLifetime: func() time.Duration { return gatewayDirs.keyPackageLifetime(h.config, h.DataDir) },
	})
	if err != nil {
		releasedLocal(h)
		servicePool.Delete(h.DataDir) //nolint:errcheck // not ours to keep
		serviceHolders.release(h.DataDir, h.config)
		h.joined.err = fmt.Errorf("mimi_local: %w", err)
		return h.joined.err
	}
	h.svc, h.api = svc, api
	return nil
}

// localClaimLimits bounds how fast one local user claims one target
// user's KeyPackages, with the limit of a peer's claims (keyPackageRate
// after a burst of keyPackageBurst), since each claim uses up a
// KeyPackage: local users cannot drain another user's KeyPackages faster
// than a peer provider can, nor spend a peer's budget for this provider
// on one target.
type localClaimLimits struct{ zone *ratelimit.Zone }

// AllowClaim implements localapi.ClaimLimiter: a refusal is 429
// rate_limited with the Retry-After of the refused bucket.
func (l localClaimLimits) AllowClaim(user, targetUser string) error {
	ok, wait := l.zone.Allow(user+" "+targetUser, time.Now())
	if ok {
		return nil
	}
	return admission.RetryLater(moh.Errorf(moh.CodeRateLimited, "KeyPackages of this user were claimed too often by you; retry after %d s",
		admission.RetrySeconds(wait)), wait)
}

// remoteClaimLimits bounds how fast one local user claims other
// providers' KeyPackages, across all targets (LocalAPI.RemoteClaims).
type remoteClaimLimits struct{ zone *ratelimit.Zone }

// AllowRemoteClaim implements localapi.RemoteClaimLimiter: a refusal is
// 429 rate_limited with the Retry-After of the refused bucket.
func (l remoteClaimLimits) AllowRemoteClaim(user string) error {
	ok, wait := l.zone.Allow(user, time.Now())
	if ok {
		return nil
	}
	return admission.RetryLater(moh.Errorf(moh.CodeRateLimited, "you claimed other providers' KeyPackages too often; retry after %d s",
		admission.RetrySeconds(wait)), wait)
}

// publishLimits bounds how fast one local user publishes KeyPackages,
// counted in KeyPackages, across the user's clients
// (LocalAPI.PublishRate).
type publishLimits struct{ zone *ratelimit.Zone }

// AllowPublish implements localapi.PublishLimiter: n KeyPackages are
// spent all or none, and a refusal is 429 rate_limited with the
// Retry-After until n are available.
func (l publishLimits) AllowPublish(user string, n int) error {
	ok, wait := l.zone.AllowN(user, n, time.Now())
	if ok {
		return nil
	}
	return admission.RetryLater(moh.Errorf(moh.CodeRateLimited, "publishing %d more KeyPackages would pass your publish rate; retry after %d s",
		n, admission.RetrySeconds(wait)), wait)
}

// ReturnPublish implements localapi.PublishLimiter: the n KeyPackages of
// a publish the store refused go back to the user's bucket.
func (l publishLimits) ReturnPublish(user string, n int) {
	l.zone.ReturnN(user, n, time.Now())
}

// ready joins the service if Provision left it for the first request, and
// reports whether the API can serve; if not, it answers the request.
func (h *LocalAPI) ready(x *exchange) bool {
	h.joined.mu.Lock()
	joined := h.api != nil
	h.joined.mu.Unlock()
	if joined {
		return true
	}
	if err := h.join(); err != nil {
		if errors.Is(err, errServiceNotRunning) {
			// A reload is under way: answered at once rather than
			// joining a service that the config being loaded opened.
			h.refuseAt(x, "", admission.RetryLater(&moh.Error{Code: moh.CodeBackendUnavailable,
				Message: "provider service unavailable while the configuration reloads; retry", Err: err}, time.Second), zapcore.DebugLevel)
			return false
		}
		// The cause does not change: it is logged once, at error
		// level, and the next refusals at debug level.
		h.joined.mu.Lock()
		level := zapcore.DebugLevel
		if !h.joined.logged {
			h.joined.logged, level = true, zapcore.ErrorLevel
		}
		h.joined.mu.Unlock()
		h.refuseAt(x, "", &moh.Error{Code: moh.CodeBackendUnavailable, Message: "provider service unavailable", Err: err}, level)
		return false
	}
	return true
}

// joinService returns the service of dataDir from the pool, held for
// config, without applying options to it: the gateway's directive owns
// the service's options (keys, fetching), and applying this handler's
// defaults would undo them. When no gateway opened it yet, it is opened
// with the defaults, and a gateway provisioned later applies its own.
// When only configs that Caddy has not started hold it, it is not joined:
// errServiceNotRunning. h is recorded among the service's mimi_local
// holders (joinedLocal) in the same step as its hold, so that a gateway
// of another config that finds the service held also finds h, and saves
// the options it has before committing its own (commit.go, serviceBase);
// recorded later, a gateway committing in between would save nothing,
// and its rejected config would leave its options in force.
func joinService(h *LocalAPI) (*service.Service, error) {
	dataDir, config := h.DataDir, h.config
	serviceHolders.mu.Lock()
	defer serviceHolders.mu.Unlock()
	if !serviceHolders.mayJoinLocked(dataDir, config) {
		return nil, errServiceNotRunning
	}
	v, _, err := servicePool.LoadOrNew(dataDir, func() (caddy.Destructor, error) {
		return service.Open(context.Background(), service.Options{DataDir: dataDir, Logger: h.logger})
	})
	if err != nil {
		return nil, err
	}
	serviceHolders.holdLocked(dataDir, config)
	joinedLocal(h)
	return v.(*service.Service), nil
}

// Validate checks the configuration; every error names the bad option.
func (h *LocalAPI) Validate() error {
	if len(h.Providers) == 0 {
		return errors.New("mimi_local: provider: at least one provider domain is required")
	}
	for _, p := range h.Providers {
		if !moh.ValidFQDN([]byte(p)) {
			return fmt.Errorf("mimi_local: provider: %q is not a lowercase DNS name without a port", p)
		}
	}
	if h.User != "" && !strings.Contains(h.User, "{") {
		// A constant would make every request act as that user.
		return fmt.Errorf("mimi_local: user: %q is not a placeholder such as {http.auth.user.id}", h.User)
	}
	if h.MaxBody < 0 || h.MaxBody > maxLocalMaxBody {
		return fmt.Errorf("mimi_local: max_body: %d is outside 1..%d bytes", h.MaxBody, maxLocalMaxBody)
	}
	// Zero is the default; anything else is at least a second.
	if lt := time.Duration(h.MaxBindingLifetime); lt != 0 && (lt < time.Second || lt > maxLocalBindingLifetime) {
		return fmt.Errorf("mimi_local: max_binding_lifetime: %s is outside 1s..90d", lt)
	}
	if w := time.Duration(h.MaxWait); w != 0 && (w < time.Second || w > maxLocalWait) {
		return fmt.Errorf("mimi_local: max_wait: %s is outside 1s..%s", w, maxLocalWait)
	}
	if h.MaxLongPolls < 0 || h.MaxLongPolls > maxLongPolls {
		return fmt.Errorf("mimi_local: max_long_polls: %d is outside 1..%d", h.MaxLongPolls, maxLongPolls)
	}
	if n := h.MaxLongPollsPerUser; n < 0 || n > maxLongPolls || (h.MaxLongPolls > 0 && n > h.MaxLongPolls) {
		return fmt.Errorf("mimi_local: max_long_polls_per_user: %d is outside 1..max_long_polls", n)
	}
	if n := h.MaxKeyPackagesPerUser; n < 0 || n > maxLocalKeyPackages {
		return fmt.Errorf("mimi_local: max_key_packages_per_user: %d is outside 1..%d", n, maxLocalKeyPackages)
	}
	if n := h.MaxKeyPackagesPerClient; n < 0 || n > localapi.MaxPublish || (h.MaxKeyPackagesPerUser > 0 && n > h.MaxKeyPackagesPerUser) {
		return fmt.Errorf("mimi_local: max_key_packages_per_client: %d is outside 1..%d and 1..max_key_packages_per_user", n, localapi.MaxPublish)
	}
	if h.RemoteClaims < 0 || h.RemoteClaimWindow < 0 || h.RemoteClaimBurst < 0 {
		return fmt.Errorf("mimi_local: remote_claim_rate %d/%s and remote_claim_burst %d must not be negative",
			h.RemoteClaims, time.Duration(h.RemoteClaimWindow), h.RemoteClaimBurst)
	}
	if h.RemoteClaims > 0 && h.RemoteClaimWindow > 0 && float64(h.RemoteClaims)/time.Duration(h.RemoteClaimWindow).Seconds() < ratelimit.MinRate {
		return fmt.Errorf("mimi_local: remote_claim_rate %d/%s is below the least rate, one event in 30 years",
			h.RemoteClaims, time.Duration(h.RemoteClaimWindow))
	}
	if h.PublishRate < 0 || h.PublishWindow < 0 || h.PublishBurst < 0 {
		return fmt.Errorf("mimi_local: publish_rate %d/%s and publish_burst %d must not be negative",
			h.PublishRate, time.Duration(h.PublishWindow), h.PublishBurst)
	}
	if h.PublishRate > 0 && h.PublishWindow > 0 && float64(h.PublishRate)/time.Duration(h.PublishWindow).Seconds() < ratelimit.MinRate {
		return fmt.Errorf("mimi_local: publish_rate %d/%s is below the least rate, one event in 30 years",
			h.PublishRate, time.Duration(h.PublishWindow))
	}
	if perClient := h.keyPackagesPerClient(); h.PublishBurst > 0 && h.PublishBurst < perClient {
		return fmt.Errorf("mimi_local: publish_burst: %d is below max_key_packages_per_client (%d): a client could not publish its bound at once",
			h.PublishBurst, perClient)
	}
	for _, s := range h.CipherSuites {
		if !mls.CipherSuite(s).Supported() {
			return fmt.Errorf("mimi_local: cipher_suites: %d is not an implemented MLS cipher suite", s)
		}
	}
	return nil
}

// keyPackagesPerClient is MaxKeyPackagesPerClient, or its default when
// unset.
func (h *LocalAPI) keyPackagesPerClient() int {
	if h.MaxKeyPackagesPerClient > 0 {
		return h.MaxKeyPackagesPerClient
	}
	perUser := h.MaxKeyPackagesPerUser
	if perUser == 0 {
		perUser = localapi.DefaultMaxKeyPackagesPerUser
	}
	return min(localapi.DefaultMaxKeyPackagesPerClient, perUser)
}

// Cleanup releases this config's hold on the provider's service and on
// its claim limit's zone.
func (h *LocalAPI) Cleanup() error {
	if h.stop != nil {
		h.stop()
	}
	if h.joined != nil {
		// Under the lock join takes: the first request may be choosing
		// the data directory and taking its zones now.
		h.joined.mu.Lock()
		defer h.joined.mu.Unlock()
		if h.api == nil && h.joined.err == nil {
			// A request of this config that comes later does not join:
			// nothing would release what it takes.
			h.joined.err = errors.New("mimi_local: the handler's config is unloaded")
		}
	}
	var zoneErr error
	if h.claimZoneKey != "" {
		_, zoneErr = limitZonePool.Delete(h.claimZoneKey)
		h.claimZoneKey = ""
	}
	if h.remoteZoneKey != "" {
		_, err := limitZonePool.Delete(h.remoteZoneKey)
		zoneErr = errors.Join(zoneErr, err)
		h.remoteZoneKey = ""
	}
	if h.publishZoneKey != "" {
		_, err := limitZonePool.Delete(h.publishZoneKey)
		zoneErr = errors.Join(zoneErr, err)
		h.publishZoneKey = ""
	}
	if h.svc == nil {
		return zoneErr
	}
	svc := h.svc
	h.svc = nil
	releasedLocal(h)
	deleted, err := servicePool.Delete(h.DataDir)
	serviceHolders.release(h.DataDir, h.config)
	if deleted {
		closedService(svc)
	}
	return errors.Join(zoneErr, err)
}

// The local API's paths, relative to where it is mounted.
const (
	localPathBinding     = "/binding"
	localPathKeyPackages = "/key_packages"
	localPathMessages    = "/messages"
	localPathAck         = "/messages/ack"
	localPathClaim       = "/claim_key_packages"
)

// localRoute is a row of the local API's endpoint table
// (docs/protocol.md §10.3, checked by a test).
type localRoute struct {
	path    string
	methods string // the Allow header
	request string // what a request carries
	answer  string // the answer struct
}

// localRoutes is the local API's endpoint table.
var localRoutes = []localRoute{
	{localPathBinding, "POST", "BindingRequest", "BindingAnswer"},
	{localPathKeyPackages, "GET, POST", "GET: query `client`; POST: PublishRequest", "KeyPackageList"},
	{localPathMessages, "GET", "query `client`, `after`, `limit`, `wait`", "MessageList"},
	{localPathAck, "POST", "AckRequest", "AckAnswer"},
	{localPathClaim, "POST", "ClaimRequest", "KeyPackageList"},
}

// ServeHTTP answers the local API's paths and passes any other request to
// next. Order: path, early data, authenticated user, method, body, then
// the operation, which checks the client URI against the user.
func (h *LocalAPI) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	i := slices.IndexFunc(localRoutes, func(rt localRoute) bool { return rt.path == r.URL.Path })
	if i < 0 {
		return next.ServeHTTP(w, r)
	}
	allow := localRoutes[i].methods
	var user string
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		user = repl.ReplaceAll(h.User, "")
	}
	x := &exchange{w: w, r: r}
	defer x.release()
	if !h.ready(x) {
		return nil
	}
	switch {
	case r.TLS != nil && !r.TLS.HandshakeComplete:
		h.refuse(x, user, moh.Errorf(moh.CodeTooEarly, "request sent as TLS early data; retry after the handshake"))
	case user == "":
		h.refuse(x, user, moh.Errorf(moh.CodeForbidden, "no authenticated user"))
	case !slices.Contains(strings.Split(allow, ", "), r.Method):
		w.Header().Set("Allow", allow)
		h.refuse(x, user, moh.Errorf(moh.CodeMethodNotAllowed, "method %s is not allowed here", r.Method))
	case r.Method == http.MethodGet:
		h.serveGet(x, user)
	default:
		h.servePost(x, user)
	}
	return nil
}

// serveGet answers GET /key_packages and GET /messages; their parameters
// are in the query.
func (h *LocalAPI) serveGet(x *exchange, user string) {
	// URL.Query drops a pair it cannot decode (a bad %-escape, a ';'):
	// the request would run with that parameter's default, such as no
	// wait or a cursor of 0, instead of being refused.
	q, err := url.ParseQuery(x.r.URL.RawQuery)
	if err != nil {
		h.refuse(x, user, moh.Errorf(moh.CodeMalformed, "the query does not decode: %v", err))
		return
	}
	client := []byte(q.Get("client"))
	ctx := x.r.Context()
	var answer wire.Marshaler
	switch x.r.URL.Path {
	case localPathKeyPackages:
		var list []localapi.KeyPackageEntry
		list, err = h.api.ListKeyPackages(ctx, user, client)
		answer = &localapi.KeyPackageList{KeyPackages: list}
	case localPathMessages:
		var after, limit, wait uint64
		if after, err = queryUint(q.Get("after"), "after", 0, 1<<63-1); err != nil {
			break
		}
		if limit, err = queryUint(q.Get("limit"), "limit", 1, store.MaxFetchMessages); err != nil {
			break
		}
		if wait, err = queryUint(q.Get("wait"), "wait", 0, 1<<31); err != nil {
			break
		}
		d := min(time.Duration(wait)*time.Second, time.Duration(h.MaxWait))
		var msgs []localapi.Message
		msgs, err = h.fetch(ctx, user, client, after, int(limit), d)
		if err == nil && len(msgs) > 0 {
			// The list is held until the client has read it: within the
			// process's budget of such lists (answers.go).
			var release func()
			if release, err = holdAnswer(ctx, msgs); err == nil {
				defer release()
			}
		}
		answer = &localapi.MessageList{Messages: msgs}
	}
	h.answer(x, user, answer, err)
}

// fetch is API.Fetch, with a wait that also ends when the handler stops
// and that takes a place among the long polls (pollSlots).
func (h *LocalAPI) fetch(ctx context.Context, user string, client []byte, after uint64, limit int, wait time.Duration) ([]localapi.Message, error) {
	if wait > 0 {
		if !h.polls.acquire(user) {
			// Over a bound: the messages there are, at once, else a
			// refusal that tells the client when to poll again (an
			// empty list would have it poll again at once).
			msgs, err := h.api.Fetch(ctx, user, client, after, limit, 0)
			if err != nil || len(msgs) > 0 {
				return msgs, err
			}
			return nil, admission.RetryLater(moh.Errorf(moh.CodeRateLimited,
				"too many long polls waiting (at most %d per user, %d in all); retry after %d s",
				h.polls.maxPerUser, h.polls.max, admission.RetrySeconds(longPollRetryAfter)), longPollRetryAfter)
		}
		defer h.polls.release(user)
		h.exitWatch()
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(h.stopping, cancel)()
	}
	return h.api.Fetch(ctx, user, client, after, limit, wait)
}

// exitWatch makes sure that, while long polls wait, one goroutine of the
// handler checks every exitCheckInterval whether the process is exiting,
// and then calls stop, which ends every poll. A caller has taken a place
// in polls: the goroutine ends after a check that finds none taken (under
// watching.mu, so a poll that takes one after that check starts it again).
func (h *LocalAPI) exitWatch() {
	w := h.watching
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running {
		return
	}
	w.running = true
	go func() {
		tick := time.NewTicker(exitCheckInterval)
		defer tick.Stop()
		for {
			if h.exiting() {
				h.stop()
				return
			}
			select {
			case <-h.stopping.Done():
				return
			case <-tick.C:
			}
			w.mu.Lock()
			if h.polls.waiting() == 0 {
				w.running = false
				w.mu.Unlock()
				return
			}
			w.mu.Unlock()
		}
	}()
}

// pollSlots counts the long polls waiting, per user and in all, against
// their bounds.
type pollSlots struct {
	max, maxPerUser int
	mu              sync.Mutex
	total           int
	users           map[string]int // only users with polls
}

// acquire takes a place for a poll of user and reports whether one was
// free; a true acquire is followed by one release.
func (p *pollSlots) acquire(user string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.total >= p.max || p.users[user] >= p.maxPerUser {
		return false
	}
	p.total++
	p.users[user]++
	return true
}

// release frees the place of a poll of user.
func (p *pollSlots) release(user string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total--
	if p.users[user]--; p.users[user] <= 0 {
		delete(p.users, user)
	}
}

// waiting reports how many polls hold a place.
func (p *pollSlots) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// servePost answers POST /binding, /key_packages, /claim_key_packages and
// /messages/ack.
func (h *LocalAPI) servePost(x *exchange, user string) {
	body, err := h.readBody(x)
	if err != nil {
		h.refuse(x, user, err)
		return
	}
	ctx := x.r.Context()
	var answer wire.Marshaler
	switch x.r.URL.Path {
	case localPathBinding:
		var req localapi.BindingRequest
		if err = wire.Unmarshal(body, &req, "BindingRequest"); err == nil {
			b, ierr := h.api.IssueBinding(user, &req)
			err = ierr
			if b != nil {
				answer = &localapi.BindingAnswer{Binding: *b}
			}
		}
	case localPathKeyPackages:
		var req localapi.PublishRequest
		if err = wire.Unmarshal(body, &req, "PublishRequest"); err == nil {
			var list []localapi.KeyPackageEntry
			list, err = h.api.PublishKeyPackages(ctx, user, &req)
			answer = &localapi.KeyPackageList{KeyPackages: list}
		}
	case localPathClaim:
		var req localapi.ClaimRequest
		if err = wire.Unmarshal(body, &req, "ClaimRequest"); err == nil {
			var list []localapi.KeyPackageEntry
			list, err = h.api.ClaimKeyPackages(ctx, user, &req)
			answer = &localapi.KeyPackageList{KeyPackages: list}
		}
	case localPathAck:
		var req localapi.AckRequest
		if err = wire.Unmarshal(body, &req, "AckRequest"); err == nil {
			var n uint64
			n, err = h.api.Ack(ctx, user, &req)
			answer = &localapi.AckAnswer{Deleted: n}
		}
	}
	h.answer(x, user, answer, err)
}

// readBody reads a POST body: application/octet-stream, at most MaxBody
// bytes, within the gateway's body deadline and memory budget, starting
// with protocol_version 1.
func (h *LocalAPI) readBody(x *exchange) ([]byte, error) {
	if x.r.ContentLength > h.MaxBody {
		x.closeAfter()
		return nil, moh.Errorf(moh.CodeTooLarge, "body of %d bytes exceeds the %d byte limit", x.r.ContentLength, h.MaxBody)
	}
	if err := checkContentType(x.r, contentType); err != nil {
		return nil, err
	}
	body, err := x.read(h.MaxBody, true)
	if err != nil {
		return nil, err
	}
	if err := moh.CheckVersion(body); err != nil {
		return nil, err
	}
	return body, nil
}

// answer writes the encoded answer, or the refusal of err.
func (h *LocalAPI) answer(x *exchange, user string, answer wire.Marshaler, err error) {
	if err != nil {
		h.refuse(x, user, err)
		return
	}
	body, err := wire.Marshal(answer)
	if err != nil {
		h.refuse(x, user, fmt.Errorf("encoding the answer: %w", err))
		return
	}
	writeAnswer(x.w, http.StatusOK, body)
}

// refuse writes the DSResponse error answer of err with its status and
// logs it: at debug level for a refused request, at error level for a
// failure of the gateway (backend_unavailable, or an error without a
// code), whose cause is logged and never sent.
func (h *LocalAPI) refuse(x *exchange, user string, err error) {
	var peerErr *peerClaimError
	if errors.As(err, &peerErr) && moh.DSErrorOf(err).Code == moh.CodeBackendUnavailable {
		// Another provider failed a claim (unreachable, or a refusal of
		// the exchange): any user can make this happen for any target,
		// so it is a sampled warning, with no stack trace.
		if c := h.sampled.Check(zapcore.WarnLevel, "claiming KeyPackages from another provider failed"); c != nil {
			fields := []zap.Field{zap.String("peer", peerErr.peer), zap.String("user", user), zap.String("remote_ip", remoteIP(x.r)), zap.Error(peerErr.err)}
			var coded *moh.Error
			if errors.As(err, &coded) && coded.Err != nil {
				fields = append(fields, zap.NamedError("cause", coded.Err))
			}
			c.Write(fields...)
		}
		h.refuseAt(x, user, err, zapcore.DebugLevel)
		return
	}
	level := zapcore.DebugLevel
	var coded *moh.Error
	if isCoded := errors.As(err, &coded) || errors.Is(err, wire.ErrMalformed); !isCoded || moh.DSErrorOf(err).Code == moh.CodeBackendUnavailable {
		level = zapcore.ErrorLevel
	}
	h.refuseAt(x, user, err, level)
}

// refuseAt is refuse, logging at level.
func (h *LocalAPI) refuseAt(x *exchange, user string, err error, level zapcore.Level) {
	dsErr := moh.DSErrorOf(err)
	var coded *moh.Error
	errors.As(err, &coded)
	if c := h.logger.Check(level, "refused local api request"); c != nil {
		fields := []zap.Field{zap.String("path", x.r.URL.Path), zap.String("code", dsErr.Code.String()),
			zap.String("user", user), zap.String("remote_ip", remoteIP(x.r)), zap.Error(err)}
		if coded != nil && coded.Err != nil {
			fields = append(fields, zap.NamedError("cause", coded.Err))
		}
		c.Write(fields...)
	}
	setRefusalHeaders(x.w.Header(), err)
	writeAnswer(x.w, statusOf(dsErr.Code), moh.EncodeError(dsErr))
}

// queryUint parses an optional decimal query parameter in lo..hi; absent
// means 0 (for limit: the default).
func queryUint(s, name string, lo, hi uint64) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v < lo || v > hi {
		return 0, moh.Errorf(moh.CodeMalformed, "query parameter %s must be a decimal number in %d..%d", name, lo, hi)
	}
	return v, nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*LocalAPI)(nil)
	_ caddy.Validator             = (*LocalAPI)(nil)
	_ caddy.CleanerUpper          = (*LocalAPI)(nil)
	_ caddyhttp.MiddlewareHandler = (*LocalAPI)(nil)
)
