package caddymodule

import (
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

func init() {
	caddy.RegisterModule(Gateway{})
}

// Default limits.
const (
	defaultMaxBody = 1<<20 + 64<<10
	// maxPublishedKeys bounds key_overlap / key_rotation, so that the
	// keys published at once (2 + overlap/rotation) fit the 16 a peer
	// accepts (moh.MaxVerifyKeys).
	maxPublishedKeys = moh.MaxVerifyKeys - 1
	// maxMaxBody caps max_body: MoH messages other than attachments are
	// small, and attachments are streamed outside this limit.
	maxMaxBody = 64 << 20
	// keyPackageRate and keyPackageBurst bound how fast one peer claims
	// one local user's KeyPackages (group_key_packages,
	// connection_key_packages): 30 a minute after a burst of 60, more
	// than a user added to groups by hand needs, too few to drain a
	// client's 256 KeyPackages in a moment.
	keyPackageRate  = 0.5
	keyPackageBurst = 60
	// maxQueueMessages and maxQueueBytes cap queue_max_messages and
	// queue_max_bytes.
	maxQueueMessages = 10_000_000
	maxQueueBytes    = 64 << 30
)

// Gateway is the MIMI over HTTPS gateway of one provider: discovery, the
// provider's verification keys, and the MoH endpoints. It answers the paths
// it owns and hands every other request to the next handler.
type Gateway struct {
	// Providers are the provider domains this gateway answers for: the
	// recipient of every provider-signed request must be one of them, and
	// the first one names the data directory. Required.
	Providers []string `json:"providers,omitempty"`

	// DSDomain is the DS authority, `host` or `host:port`, published at
	// /.well-known/mimi/ds-domain. Required.
	DSDomain string `json:"ds_domain,omitempty"`

	// DataDir holds the gateway's signing keys (`keys/`) and its SQLite
	// store (`mimi.db`).
	// Default: `<caddy data dir>/mimi/<first provider>`.
	DataDir string `json:"data_dir,omitempty"`

	// Store chooses where the provider's state lives: SQLite in DataDir
	// (the default) or a PostgreSQL database that several gateways of the
	// provider share (store.go). Changing it needs a restart of Caddy.
	Store *StoreConfig `json:"store,omitempty"`

	// KeySecret, a placeholder such as `{env.MIMI_KEY_SECRET}` or the
	// value itself, is the 32-byte secret, in hex or base64, under which
	// the provider's signing keys are sealed in the store, so that every
	// gateway of the provider signs with the same keys. Required with
	// store postgres; with SQLite it moves the keys from files in
	// DataDir/keys into the database. Every gateway of a provider needs
	// the same one: a wrong secret stops the gateway at startup. Create it
	// with `openssl rand -base64 32`. Default: none, keys in files.
	KeySecret string `json:"key_secret,omitempty"`

	// KeySecretFile is a file holding the key secret, instead of
	// KeySecret.
	KeySecretFile string `json:"key_secret_file,omitempty"`

	// MaxBody is the largest request body accepted on the MoH endpoints, in
	// bytes; larger bodies are answered 413 too_large. Default: 1 MiB +
	// 64 KiB, so that a payload of 1 MiB fits with its envelope; at most
	// 64 MiB (attachments are streamed and limited separately).
	MaxBody int64 `json:"max_body,omitempty"`

	// QueueMaxMessages and QueueMaxBytes bound each local client's queue
	// that the Delivery Service delivers to (docs/protocol.md §5.4.2): a
	// message that would leave a queue over either bound is refused for
	// that client alone, and logged. Default: 10,000 messages and 256 MiB;
	// at most 10,000,000 messages and 64 GiB; the bytes at least the
	// largest message accepted, MaxBody or 1 MiB, whichever is smaller.
	QueueMaxMessages int   `json:"queue_max_messages,omitempty"`
	QueueMaxBytes    int64 `json:"queue_max_bytes,omitempty"`

	// KeyRotation is how long a signing key signs before a new one takes
	// over; the retired key is still published for KeyOverlap. Default: 30d.
	KeyRotation caddy.Duration `json:"key_rotation,omitempty"`

	// KeyOverlap is how long a retired key stays valid after its successor
	// took over. It must exceed the 24 h that peers may cache keys.
	// Default: 48h. KeyRotation+KeyOverlap is at most 90 days.
	KeyOverlap caddy.Duration `json:"key_overlap,omitempty"`

	// KeyScheme is the signature scheme of new signing keys: `ed25519` or
	// `ecdsa_secp256r1_sha256`. Default: ed25519.
	KeyScheme string `json:"key_scheme,omitempty"`

	// TrustedTLSProxies lists the source addresses (CIDR prefixes) of
	// TLS-terminating proxies in front of Caddy. Requests from them are
	// accepted without TLS 1.3 on the connection; any other request that
	// did not arrive over TLS 1.3 is answered 403. Default: none.
	TrustedTLSProxies []string `json:"trusted_tls_proxies,omitempty"`

	// Federation sets how peers' keys are fetched.
	Federation *Federation `json:"federation,omitempty"`

	// Delivery chooses where messages for this provider's own clients
	// go: the local queues, or the legacy backend (docs/protocol.md §11).
	// Default: the local queues.
	Delivery *Delivery `json:"delivery,omitempty"`

	// RateLimits are the named rate-limit zones (policy.go). Default: none.
	RateLimits []*RateLimitZone `json:"rate_limits,omitempty"`

	// RelayLimit bounds how fast this gateway relays its clients'
	// requests to groups' hubs, per client address and per hub
	// (relaylimit.go). It is always on. Default: 50 requests per second
	// after a burst of 100 per client address, 500 per second after a
	// burst of 1000 per hub.
	RelayLimit *RelayLimit `json:"relay_limit,omitempty"`

	// PrivacyPass configures Privacy Pass redemption: which endpoints
	// need a token, and whose. Default: no token is ever asked for.
	PrivacyPass *PrivacyPass `json:"privacy_pass,omitempty"`

	// Issuer runs a Privacy Pass issuer on this gateway. Default: off.
	Issuer *TokenIssuer `json:"issuer,omitempty"`

	// Peers restricts the provider domains that may send provider
	// requests. Default: every provider whose signature verifies.
	Peers *PeerList `json:"peers,omitempty"`

	// MutualTLS requires peers' provider requests to come with a TLS
	// client certificate that names their DS authority, and presents this
	// gateway's certificate to peers (mtls.go). Default: off.
	MutualTLS *MutualTLS `json:"mutual_tls,omitempty"`

	// UncheckedClientBindings switches off the Delivery Service's check of
	// client bindings (docs/protocol.md §5.6): leaves without a valid
	// binding of the provider named in their client URI are then accepted
	// into groups. It exists only to replay recorded third-party MLS
	// transcripts, whose leaves carry no bindings; never set it on a
	// gateway that serves clients, since any client could then claim any
	// client URI. Default: false, every leaf that enters or changes a group
	// is checked.
	UncheckedClientBindings bool `json:"unchecked_client_bindings,omitempty"`

	// MaxKeyPackageLifetime is the longest total lifetime (not_after -
	// not_before, RFC 9420 §7.2) of a key_package leaf that enters a
	// group hosted here: the KeyPackage of an Add, the creator's leaf of
	// create_group. A longer one is refused 400 invalid_mls
	// (docs/protocol.md §5.4.1); the mimi_local handlers of the config
	// that serve from DataDir apply it to the KeyPackages they publish
	// and claim from peers. Default: 366d (mls.DefaultMaxLifetime);
	// at least 1h, at most 3650d. A negative value (Caddyfile
	// `unlimited`) accepts any length: like UncheckedClientBindings it is
	// only for replaying recorded third-party transcripts.
	MaxKeyPackageLifetime caddy.Duration `json:"max_key_package_lifetime,omitempty"`

	// Attachments configures attachment uploads, downloads, deletes and
	// copies (attachments.go). Default: on, with the local backend under
	// data_dir/attachments.
	Attachments *Attachments `json:"attachments,omitempty"`

	svc *service.Service
	// svcHeld is set while this config holds svc in servicePool.
	svcHeld bool
	// stopHubWatch ends the watch that drops from g.ds.Hubs the hubs
	// that other processes forget (watchHubForgets); nil before it.
	stopHubWatch func()
	// svcConfig is the config recorded in serviceHolders for svc.
	svcConfig <-chan struct{}
	// dirEntry records in gatewayDirs that this config serves Providers
	// from DataDir, for mimi_local handlers without data_dir; nil when
	// not recorded.
	dirEntry *dirEntry
	policy   *admission.Policy
	origin   *admission.Origin // pooled in originPool under originKey
	issuer   *admission.Issuer
	routes   map[string]*route
	inbound  *provider.Inbound
	ds       *ds.Service
	// processProvider is ds.ProcessProvider, kept once: a method value
	// made per request would allocate on the provider hot path.
	processProvider provider.Processor
	// claimRetryAfter is the Retry-After value, in whole seconds, of a
	// 429 of the KeyPackage claim limit (claimRetryAfterSeconds).
	claimRetryAfter string
	proxies         []netip.Prefix
	logger          *zap.Logger
	// sampled logs failures that a flood of requests could repeat.
	sampled *zap.Logger
	// originKey is the origin's key in originPool, "" when none is held.
	originKey string
	// claimZoneKey is the key in limitZonePool of the KeyPackage claim
	// limit's zone (ds.KeyPackageLimits), "" when none is held.
	claimZoneKey string
	// relay is the relay limit, its zones held in limitZonePool.
	relay *relayLimiter
	// peerCerts checks peers' client certificates; nil unless mutual TLS
	// is required (mtls.go).
	peerCerts *provider.CertVerifier
	// senderStarted is set while this config holds the data directory's
	// federation sender in senderPool.
	senderStarted bool
	// sender is the data directory's federation sender.
	sender *federation.Sender
	// backend is the legacy backend, nil for the local queues; svcOpts
	// and fetch are the service's options and the fetch policy: this
	// config's options for the pooled parts, put in force by commit.
	backend *federation.Backend
	svcOpts service.Options
	fetch   provider.FetchPolicy
	// committed is set while this config is recorded in commits.
	committed bool
	// svcOpened is set when this gateway opened svc, with its options.
	svcOpened bool
	// keysLive is set, under commits.mu, once this config's signing key
	// options may be in force on svc: Caddy runs the config (App.running),
	// or no config ran when it started, or the gateway was provisioned
	// without a config. Until then, commit keeps the key options in force.
	keysLive bool
	// app is the mimi app of this config, which puts the options in
	// force when Caddy starts the config; nil when provisioned without a
	// config.
	app *App
	// sweeper is the data directory's attachment sweeper, nil when
	// attachments are disabled; sweeperHeld is set while this config
	// holds it in sweeperPool.
	sweeper     *sweeper
	sweeperHeld bool
}

// Federation configures the fetching of peer providers' verification keys.
// The defaults are the production policy: public addresses on port 443,
// the system's roots.
type Federation struct {
	// AllowPrivateAddresses permits peers on loopback, private, link-local
	// and ULA addresses. For examples and tests on one machine only.
	AllowPrivateAddresses bool `json:"allow_private_addresses,omitempty"`

	// AllowedPorts lists ports besides 443 that peer URLs may use.
	AllowedPorts []int `json:"allowed_ports,omitempty"`

	// Resolve maps a peer host name to a fixed `ip:port` to dial instead of
	// resolving it, for every port the URL names (static federation links).
	// Names are case-insensitive and a final dot is ignored.
	Resolve map[string]string `json:"resolve,omitempty"`

	// RootCAFiles are PEM files whose certificates replace the system roots
	// when verifying peers' TLS certificates.
	RootCAFiles []string `json:"root_ca_files,omitempty"`

	// TrustPKICAs names certificate authorities of Caddy's pki app (such as
	// `local`, the CA behind `tls internal`) whose roots replace the system
	// roots for peer TLS, together with RootCAFiles. For private
	// federations and examples on one machine.
	TrustPKICAs []string `json:"trust_pki_cas,omitempty"`

	// Timeout bounds each exchange with a peer: a discovery and key
	// fetch, each outbox send and KeyPackage claim, and the connection
	// and TLS handshake of a relayed request, whose answer is waited for
	// up to 30 s, or Timeout when longer (for a relayed attachment
	// stream, the answer's headers only). Default: 5s; positive.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// MaxBackoff caps the wait before a destination that failed is tried
	// again by the outbox's sender. Default: 5m; 1s to 1h.
	MaxBackoff caddy.Duration `json:"max_backoff,omitempty"`

	// GiveUpAfter is the age at which an outbox message that could not be
	// delivered is dropped, counted and logged. Default: 72h; at most
	// 6 days, below the 7 days receivers remember delivered messages, so
	// that a message is never delivered twice.
	GiveUpAfter caddy.Duration `json:"give_up_after,omitempty"`

	// MaxBacklogMessages and MaxBacklogBytes bound the outbox's backlog
	// for each destination: a message that would pass either is not
	// written (the Delivery Service still accepts the request, the other
	// destinations get their copies), and it is counted
	// (caddy_mimi_outbox_dropped_total, reason backlog_full) and logged.
	// Defaults: 100000 messages and 1GiB; at most 100000000 and 1TiB, the
	// bytes at least 2MiB (two of the largest messages). 0 means the
	// default.
	MaxBacklogMessages int   `json:"max_backlog_messages,omitempty"`
	MaxBacklogBytes    int64 `json:"max_backlog_bytes,omitempty"`
}

// Bounds of the federation's max_backlog_messages and max_backlog_bytes.
const (
	maxBacklogMessages = 100_000_000
	maxBacklogBytes    = 1 << 40
	minBacklogBytes    = 2 << 20
)

// CaddyModule returns the Caddy module information.
func (Gateway) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mimi",
		New: func() caddy.Module { return new(Gateway) },
	}
}

// Provision sets defaults, refuses options in which the gateway differs
// from a gateway of its config on the same data directory where both
// set one part they share (dirconflict.go), builds the routes and the
// admission policy, and opens the provider's service on first use; the options it changes
// on the parts pooled across configs (a running service, sender,
// rate-limit zones, sweeper, origin) are put in force when Caddy starts
// the config (App).
func (g *Gateway) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	g.sampled = sampled(g.logger)
	for i, p := range g.Providers {
		g.Providers[i] = normalizeHost(p)
	}
	if err := g.Federation.normalizeResolve(); err != nil {
		return err
	}
	if err := g.Validate(); err != nil {
		return err
	}
	if g.MaxBody == 0 {
		g.MaxBody = defaultMaxBody
	}
	if g.DataDir == "" {
		g.DataDir = filepath.Join(caddy.AppDataDir(), "mimi", g.Providers[0])
	}
	dir, err := poolDataDir(g.DataDir)
	if err != nil {
		return fmt.Errorf("mimi: %w", err)
	}
	g.DataDir = dir
	for _, c := range g.TrustedTLSProxies {
		p, err := parsePrefix(c)
		if err != nil {
			return fmt.Errorf("trusted_tls_proxies: %w", err)
		}
		g.proxies = append(g.proxies, p)
	}
	scheme, err := parseScheme(g.KeyScheme)
	if err != nil {
		return err
	}
	fetch, err := g.Federation.fetchPolicy(ctx)
	if err != nil {
		return err
	}
	if err := g.provisionMutualTLS(ctx, &fetch); err != nil {
		return err
	}
	storeOpts, keySecret, err := g.storeOptions()
	if err != nil {
		return err
	}
	svcOpts := service.Options{
		DataDir:   g.DataDir,
		Store:     storeOpts,
		KeySecret: keySecret,
		Keys: provider.KeyRingOptions{
			Scheme:      scheme,
			RotateEvery: time.Duration(g.KeyRotation),
			Overlap:     time.Duration(g.KeyOverlap),
		},
		Fetch:  fetch,
		Logger: g.logger,
	}
	backend, err := g.Delivery.backend()
	if err != nil {
		return err
	}
	app, err := mimiApp(ctx)
	if err != nil {
		return err
	}
	if app != nil {
		// Before the service is opened: options the gateways of this
		// config on this data directory must agree on (dirconflict.go).
		if err := app.poolConflict(pooledOptions{g: g, svc: svcOpts, backend: backend}); err != nil {
			return err
		}
	}
	// Recorded before the service is opened, so that a mimi_local of the
	// running config does not join a service this config opens until
	// Caddy starts this config (serviceHolders).
	g.svcConfig = configOf(ctx)
	serviceHolders.hold(g.DataDir, g.svcConfig)
	svc, loaded, err := loadService(svcOpts)
	if err != nil {
		serviceHolders.release(g.DataDir, g.svcConfig)
		return fmt.Errorf("mimi: opening the provider service in %s: %w", g.DataDir, err)
	}
	g.svc, g.svcHeld = svc, true
	if !loaded {
		// A service this config opened serves this config alone, and
		// may serve its requests before the mimi app starts (Caddy
		// starts a config's apps in no set order, the http app's
		// servers possibly first): its outbox bounds are this config's
		// from the start, as the new sender's policy and backend are,
		// not the defaults, under which a fanout to a destination whose
		// backlog passed the default bound would be dropped.
		svc.Store().SetOutboxLimits(g.Federation.outboxLimits())
	}
	if loaded {
		// What only a restart changes (the store, the key secret) is
		// refused here, before Caddy starts anything of this config,
		// rather than by Apply in the mimi app's Start.
		if err := svc.Check(svcOpts); err != nil {
			return fmt.Errorf("mimi: reconfiguring the provider service in %s: %w", g.DataDir, err)
		}
	}
	g.dirEntry = gatewayDirs.register(configOf(ctx), g.Providers, g.DataDir, time.Duration(g.MaxKeyPackageLifetime))
	register(ctx.GetMetricsRegistry(), g.logger, storeStats{}, outboxStats{}, hubConflicts)
	g.ds = &ds.Service{
		Groups:    ds.StoreGroups{Store: g.svc.Store()},
		Joiners:   ds.StoreJoiners{Store: g.svc.Store()},
		Seen:      g.svc.Store(),
		Store:     g.svc.Store(),
		Providers: g.Providers,
		// Bindings of the provider's own clients are checked with its own
		// key ring; other providers' keys are fetched by the service (its
		// current fetcher, charged to the request's client address).
		Bindings: &binding.Checker{Domains: g.Providers, Local: g.svc.Keys(), Remote: g.svc,
			Unchecked: g.UncheckedClientBindings},
		MaxKeyPackageLifetime: time.Duration(g.MaxKeyPackageLifetime),
		// Accepted commits and messages go to the local clients' queues
		// and to the outbox for other providers, in the write that
		// accepts them. A full queue is logged, sampled: a client that
		// stopped fetching could otherwise flood the log.
		QueueLimits: store.QueueLimits{MaxMessages: g.QueueMaxMessages, MaxBytes: g.QueueMaxBytes},
		Hubs:        new(ds.HubCache),
		Members:     new(ds.MemberViews),
		// A peer's message for a group whose recorded hub is another
		// provider is logged (sampled) and counted.
		Logger:      g.sampled,
		HubConflict: func(request string) { hubConflicts.WithLabelValues(g.DataDir, request).Inc() },
	}
	addHubCache(g.ds.Hubs)
	g.stopHubWatch = watchHubForgets(g.svc.Store(), g.ds.Hubs)
	if g.UncheckedClientBindings {
		g.logger.Warn("client binding check is off: any client may claim any client URI; only for replaying third-party transcripts")
	}
	g.ds.DeliverToBackend = backend != nil
	if err := g.provisionAttachments(ctx); err != nil {
		return err
	}
	g.processProvider = g.ds.ProcessProvider
	g.inbound = &provider.Inbound{
		Verifier: &provider.Verifier{Domains: g.Providers, Keys: g.svc},
		Replay:   g.svc.Store(),
	}
	if err := g.provisionPolicy(ctx, fetch); err != nil {
		return err
	}
	zone, zoneKey, err := acquireClaimZone(g.DataDir, claimZonePeers)
	if err != nil {
		return fmt.Errorf("mimi: %w", err)
	}
	g.claimZoneKey = zoneKey
	g.ds.KeyPackageLimits = zone
	g.claimRetryAfter = strconv.Itoa(claimRetryAfterSeconds(zone))
	if g.relay, err = acquireRelayLimiter(g.DataDir, g.RelayLimit); err != nil {
		return fmt.Errorf("mimi: %w", err)
	}
	// Last, so that a failed provision leaves no sender running.
	sender, err := g.startSender(g.svc, backend)
	if err != nil {
		return fmt.Errorf("mimi: starting the federation sender: %w", err)
	}
	g.senderStarted = true
	g.sender, g.backend, g.svcOpts, g.fetch = sender, backend, svcOpts, fetch
	g.ds.Outbound, g.ds.PeerUp = sender.Outbound, sender.PeerUp
	g.svcOpened = !loaded
	// The pooled service, sender, rate-limit zones, sweeper and origin
	// take this config's options when Caddy starts it (the mimi app,
	// app.go), so that a config Caddy rejects after this Provision never
	// changes the running gateway; without a config to start (a handler
	// provisioned on its own), at once.
	if app == nil {
		return g.commit(true)
	}
	if err := app.enlist(g); err != nil {
		return err
	}
	g.app = app
	return nil
}

// claimRetryAfterSeconds is the Retry-After, in whole seconds and at
// least 1, of a claim that zone, the KeyPackage claim limit, refused: its
// refill interval (1/rate), the longest wait for the token the refused
// claim lacked. It is one value for the limit, not the wait of the
// refused bucket, because a byte-identical retry is answered from the
// replay record, which keeps the answer but not the time.
func claimRetryAfterSeconds(zone *ratelimit.Zone) int {
	rate, _ := zone.Limits()
	if rate <= 0 || math.IsInf(rate, 1) {
		return 1
	}
	return admission.RetrySeconds(time.Duration(math.Ceil(float64(time.Second) / rate)))
}

// sampled returns logger with a sampler: of each message, the first 10
// lines of every second, then one in 100. A gateway makes one, g.sampled,
// and derives the loggers of its parts from it (Named and With share its
// counters).
func sampled(logger *zap.Logger) *zap.Logger {
	return logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return newSampler(c, time.Second, 10, 100)
	}))
}

// Validate checks the configuration; every error names the bad option.
func (g *Gateway) Validate() error {
	if len(g.Providers) == 0 {
		return errors.New("mimi: provider: at least one provider domain is required")
	}
	for _, p := range g.Providers {
		if !moh.ValidFQDN([]byte(p)) {
			return fmt.Errorf("mimi: provider: %q is not a lowercase DNS name without a port", p)
		}
	}
	if g.DSDomain == "" {
		return errors.New("mimi: ds_domain: the DS authority (host or host:port) is required")
	}
	if err := provider.ValidateAuthority(g.DSDomain); err != nil {
		return fmt.Errorf("mimi: ds_domain: %w", err)
	}
	if g.QueueMaxMessages < 0 || g.QueueMaxMessages > maxQueueMessages {
		return fmt.Errorf("mimi: queue_max_messages: %d is outside 1..%d", g.QueueMaxMessages, maxQueueMessages)
	}
	if g.QueueMaxBytes < 0 || g.QueueMaxBytes > maxQueueBytes {
		return fmt.Errorf("mimi: queue_max_bytes: %d is outside 1..%d bytes", g.QueueMaxBytes, int64(maxQueueBytes))
	}
	if g.MaxBody < 0 || g.MaxBody > maxMaxBody {
		return fmt.Errorf("mimi: max_body: %d is outside 1..%d bytes", g.MaxBody, maxMaxBody)
	}
	if g.QueueMaxBytes != 0 {
		// A message larger than the bound never fits a queue, not even an
		// empty one: every local recipient would miss it for good.
		largest := g.MaxBody
		if largest == 0 {
			largest = defaultMaxBody
		}
		largest = min(largest, store.MaxQueuedMessageSize)
		if g.QueueMaxBytes < largest {
			return fmt.Errorf("mimi: queue_max_bytes: %d is below %d bytes, the largest message the gateway accepts (max_body, at most 1 MiB)", g.QueueMaxBytes, largest)
		}
	}
	if lt := time.Duration(g.MaxKeyPackageLifetime); lt > 0 && (lt < time.Hour || lt > maxKeyPackageLifetime) {
		return fmt.Errorf("mimi: max_key_package_lifetime: %s is outside 1h..3650d", lt)
	}
	if g.KeyRotation < 0 || g.KeyOverlap < 0 {
		return errors.New("mimi: key_rotation and key_overlap must be positive")
	}
	rot, ovl := time.Duration(g.KeyRotation), time.Duration(g.KeyOverlap)
	if rot == 0 {
		rot = provider.DefaultRotateEvery
	}
	if ovl == 0 {
		ovl = provider.DefaultOverlap
	}
	if rot < time.Hour {
		return fmt.Errorf("mimi: key_rotation: %s is shorter than one hour", rot)
	}
	if ovl <= 24*time.Hour {
		return fmt.Errorf("mimi: key_overlap: %s must exceed the 24h peers may cache keys", ovl)
	}
	if ovl >= maxPublishedKeys*rot {
		// 2 + overlap/rotation keys are published at once, and peers
		// refuse a key list longer than moh.MaxVerifyKeys.
		return fmt.Errorf("mimi: key_overlap: %s must be shorter than %d times key_rotation (%s), or peers refuse the key list", ovl, maxPublishedKeys, rot)
	}
	if rot+ovl > provider.MaxKeyLifetime {
		return fmt.Errorf("mimi: key_rotation + key_overlap: %s exceeds the 90 day key lifetime", rot+ovl)
	}
	if _, err := parseScheme(g.KeyScheme); err != nil {
		return err
	}
	if err := g.MutualTLS.validate(); err != nil {
		return err
	}
	if err := g.validateStore(); err != nil {
		return err
	}
	for _, c := range g.TrustedTLSProxies {
		if _, err := parsePrefix(c); err != nil {
			return fmt.Errorf("mimi: trusted_tls_proxies: %w", err)
		}
	}
	if err := g.Delivery.validate(); err != nil {
		return err
	}
	if err := g.validatePolicy(); err != nil {
		return err
	}
	if err := g.Attachments.validate(); err != nil {
		return err
	}
	if err := g.validateAttachmentStorage(); err != nil {
		return err
	}
	if f := g.Federation; f != nil {
		if f.Timeout < 0 {
			return fmt.Errorf("mimi: federation timeout: %s is negative", time.Duration(f.Timeout))
		}
		if f.MaxBackoff != 0 && (time.Duration(f.MaxBackoff) < time.Second || time.Duration(f.MaxBackoff) > time.Hour) {
			return fmt.Errorf("mimi: federation max_backoff: %s is outside 1s..1h", time.Duration(f.MaxBackoff))
		}
		if f.GiveUpAfter != 0 && (time.Duration(f.GiveUpAfter) < time.Minute || time.Duration(f.GiveUpAfter) > 6*24*time.Hour) {
			return fmt.Errorf("mimi: federation give_up_after: %s is outside 1m..144h (receivers remember delivered messages for 7 days)", time.Duration(f.GiveUpAfter))
		}
		if f.MaxBacklogMessages < 0 || f.MaxBacklogMessages > maxBacklogMessages {
			return fmt.Errorf("mimi: federation max_backlog_messages: %d is outside 1..%d", f.MaxBacklogMessages, maxBacklogMessages)
		}
		if f.MaxBacklogBytes != 0 && (f.MaxBacklogBytes < minBacklogBytes || f.MaxBacklogBytes > maxBacklogBytes) {
			return fmt.Errorf("mimi: federation max_backlog_bytes: %d is outside %d..%d bytes", f.MaxBacklogBytes, minBacklogBytes, int64(maxBacklogBytes))
		}
		for _, p := range f.AllowedPorts {
			if p < 1 || p > 65535 {
				return fmt.Errorf("mimi: federation allowed_ports: %d is not a port", p)
			}
		}
		for host, addr := range f.Resolve {
			if !moh.ValidFQDN([]byte(host)) {
				return fmt.Errorf("mimi: federation resolve: %q is not a host name", host)
			}
			if _, err := netip.ParseAddrPort(addr); err != nil {
				return fmt.Errorf("mimi: federation resolve %s: %q is not ip:port", host, addr)
			}
		}
	}
	return nil
}

// Cleanup releases the policy and this config's hold on the provider's
// service, which closes when no config uses it any more. Where this
// config's options are in force on the pooled parts (Caddy rejected it
// after it provisioned), it first puts back those of the running config.
func (g *Gateway) Cleanup() error {
	// First, while the parts are held: where this config's options are
	// still in force, the running config's are put back. The mimi app's
	// Stop has done it, unless Caddy did not stop it (a config rejected
	// after its apps started, in Caddy's own setup that follows) or there
	// is none (a handler provisioned on its own).
	if g.app != nil {
		g.app.withdraw(g)
		g.app = nil
	}
	g.uncommit()
	gatewayDirs.release(g.dirEntry)
	g.dirEntry = nil
	policyErr := errors.Join(g.cleanupPolicy(), g.cleanupAttachments())
	if g.ds != nil {
		removeHubCache(g.ds.Hubs)
	}
	if g.stopHubWatch != nil {
		g.stopHubWatch()
		g.stopHubWatch = nil
	}
	if g.senderStarted {
		// Before the service: the sender uses its store.
		g.senderStarted = false
		if _, err := senderPool.Delete(g.DataDir); err != nil {
			policyErr = errors.Join(policyErr, err)
		}
	}
	if !g.svcHeld {
		return policyErr
	}
	// g.svc stays: requests of this config may still run (on a reload
	// Caddy cleans the old config up at once, while its requests go on;
	// only when the process exits does it wait for them first), and get
	// an answer from the service, or an error from the closed one.
	g.svcHeld = false
	deleted, err := servicePool.Delete(g.DataDir)
	// After the Delete: until then a mimi_local of the running config
	// must not join what may be this config's service.
	serviceHolders.release(g.DataDir, g.svcConfig)
	if deleted {
		closedService(g.svc)
		if c := g.logger.Check(zapcore.DebugLevel, "closed provider service"); c != nil {
			c.Write(zap.String("data_dir", g.DataDir))
		}
	}
	return errors.Join(policyErr, err)
}

// parseScheme reads a key_scheme value.
func parseScheme(s string) (moh.SignatureScheme, error) {
	switch s {
	case "", "ed25519":
		return moh.SchemeEd25519, nil
	case "ecdsa_secp256r1_sha256":
		return moh.SchemeECDSAP256SHA256, nil
	}
	return 0, fmt.Errorf("mimi: key_scheme: %q is not ed25519 or ecdsa_secp256r1_sha256", s)
}

// normalizeHost is a host name as the gateway compares it: lowercase
// (DNS names are case-insensitive) and without a final dot.
func normalizeHost(h string) string {
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// normalizeResolve rewrites the host names of Resolve as normalizeHost
// does, so that a name written in any case overrides the lowercase name
// peers are dialed by; two entries for one name are refused.
func (f *Federation) normalizeResolve() error {
	if f == nil || len(f.Resolve) == 0 {
		return nil
	}
	m := make(map[string]string, len(f.Resolve))
	for host, addr := range f.Resolve {
		h := normalizeHost(host)
		if _, dup := m[h]; dup {
			return fmt.Errorf("mimi: federation resolve: two entries for %s", h)
		}
		m[h] = addr
	}
	f.Resolve = m
	return nil
}

// parsePrefix reads a CIDR prefix or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR prefix", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// fetchPolicy turns the federation settings into a provider.FetchPolicy.
func (f *Federation) fetchPolicy(ctx caddy.Context) (provider.FetchPolicy, error) {
	var p provider.FetchPolicy
	if f == nil {
		return p, nil
	}
	p.AllowPrivate = f.AllowPrivateAddresses
	p.AllowedPorts = f.AllowedPorts
	p.Resolve = f.Resolve
	p.Timeout = time.Duration(f.Timeout)
	if len(f.RootCAFiles) > 0 || len(f.TrustPKICAs) > 0 {
		pool := x509.NewCertPool()
		for _, file := range f.RootCAFiles {
			pemBytes, err := os.ReadFile(file)
			if err != nil {
				return p, fmt.Errorf("mimi: federation root_ca: %w", err)
			}
			if !pool.AppendCertsFromPEM(pemBytes) {
				return p, fmt.Errorf("mimi: federation root_ca: %s holds no PEM certificate", file)
			}
		}
		if len(f.TrustPKICAs) > 0 {
			app, err := ctx.App("pki")
			if err != nil {
				return p, fmt.Errorf("mimi: federation trust_pki_ca: loading pki app: %w", err)
			}
			for _, id := range f.TrustPKICAs {
				ca, err := app.(*caddypki.PKI).GetCA(ctx, id)
				if err != nil {
					return p, fmt.Errorf("mimi: federation trust_pki_ca: %w", err)
				}
				pool.AddCert(ca.RootCertificate())
			}
		}
		p.RootCAs = pool
	}
	return p, nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Gateway)(nil)
	_ caddy.Validator             = (*Gateway)(nil)
	_ caddy.CleanerUpper          = (*Gateway)(nil)
	_ caddyhttp.MiddlewareHandler = (*Gateway)(nil)
)
