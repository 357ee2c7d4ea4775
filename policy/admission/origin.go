package admission

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// Limits of the issuer directory fetch.
const (
	// MaxDirectoryBody bounds the issuer directory document.
	MaxDirectoryBody = 64 << 10
	// DefaultDirectoryTimeout bounds one directory fetch when the fetch
	// policy sets no timeout.
	DefaultDirectoryTimeout = 5 * time.Second
	// DefaultDirectoryRefresh is how often the directory is fetched again
	// by default.
	DefaultDirectoryRefresh = time.Hour
	// MinDirectoryRefresh is the shortest refresh interval accepted.
	MinDirectoryRefresh = time.Minute
)

// OriginConfig configures an Origin: the privacypass origin and, optionally,
// an issuer directory whose type 2 keys it accepts besides Keys.
type OriginConfig struct {
	// OriginConfig is the origin itself. Keys are the keys read from
	// files (or the gateway's own issuer's); Spent is the double-spend
	// record, required.
	privacypass.OriginConfig
	// DirectoryURL is the https URL of the issuer's
	// /.well-known/private-token-issuer-directory; "" for none. It is
	// fetched by NewOrigin (a failure fails it) and again every
	// DirectoryRefresh (a failure keeps the current keys).
	DirectoryURL string
	// DirectoryRefresh is how often DirectoryURL is fetched again.
	// Default: DefaultDirectoryRefresh; at least MinDirectoryRefresh.
	DirectoryRefresh time.Duration
	// Fetch bounds the directory fetch: addresses, ports, resolve map,
	// roots and timeout (default DefaultDirectoryTimeout). Redirects are
	// not followed and TLS 1.2 is accepted, as RFC 9578 allows.
	// Origin.Reconfigure replaces it.
	Fetch provider.FetchPolicy
	// Logger receives the origin's logs; nil: none. Origin.Reconfigure
	// replaces it.
	Logger *zap.Logger
}

// Validate checks the settings that need no key, file or network: issuer
// name, origin names, directory URL and refresh, lifetime. Errors name the
// option as the Caddyfile does. NewOrigin also needs a key: Keys or a
// DirectoryURL.
func (c *OriginConfig) Validate() error {
	if c.IssuerName == "" {
		return errors.New("issuer_name is required")
	}
	if err := provider.ValidateAuthority(c.IssuerName); err != nil {
		return fmt.Errorf("issuer_name %q: %w", c.IssuerName, err)
	}
	for _, o := range c.OriginInfo {
		if err := ValidOriginInfo(o); err != nil {
			return err
		}
	}
	if c.DirectoryURL != "" {
		if err := ValidDirectoryURL(c.DirectoryURL); err != nil {
			return err
		}
	}
	if r := c.DirectoryRefresh; r != 0 && (r < MinDirectoryRefresh || c.DirectoryURL == "") {
		return fmt.Errorf("directory_refresh %s: needs issuer_directory and at least %s", r, MinDirectoryRefresh)
	}
	if lt := c.Lifetime; lt != 0 && (lt < time.Second || lt > 24*time.Hour) {
		return fmt.Errorf("lifetime %s is outside 1s..24h", lt)
	}
	return nil
}

// Origin is the Privacy Pass origin of a gateway: the current
// privacypass.Origin, rebuilt when the issuer directory publishes other
// keys. It is safe for concurrent use.
type Origin struct {
	current atomic.Pointer[privacypass.Origin]
	cfg     privacypass.OriginConfig // Keys holds the configured keys only
	dirURL  string
	every   time.Duration
	// opts are the options a reload may change in place (Reconfigure).
	opts atomic.Pointer[originOptions]

	mu     sync.Mutex // serialises installs
	dirIDs string     // fingerprint of the directory keys in use
	// fetches numbers directory fetches in the order they start; dirSeq
	// (guarded by mu) is the number of the fetch whose keys are in use,
	// so that a slow fetch cannot replace the keys of one started later.
	fetches atomic.Uint64
	dirSeq  uint64

	unknownMu   sync.Mutex // guards lastUnknown
	lastUnknown time.Time  // last refresh for a token under an unknown key

	cancel    context.CancelFunc
	done      sync.WaitGroup
	closeOnce sync.Once
}

// originOptions are an Origin's options that Reconfigure replaces.
type originOptions struct {
	fetch  provider.FetchPolicy
	logger *zap.Logger
}

// NewOrigin builds the origin of cfg. With a DirectoryURL it fetches the
// directory once (ctx bounds that fetch) and then refreshes it every
// DirectoryRefresh in the background until Close.
func NewOrigin(ctx context.Context, cfg OriginConfig) (*Origin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Keys) == 0 && cfg.DirectoryURL == "" {
		return nil, errors.New("token_key or issuer_directory is required (or an issuer block to use its keys)")
	}
	o := &Origin{cfg: cfg.OriginConfig, dirURL: cfg.DirectoryURL, every: cfg.DirectoryRefresh}
	o.cfg.Keys = slices.Clone(cfg.Keys)
	if o.every == 0 {
		o.every = DefaultDirectoryRefresh
	}
	o.Reconfigure(cfg.Fetch, cfg.Logger)
	var dirKeys []*privacypass.Key
	if o.dirURL != "" {
		var err error
		opts := o.opts.Load()
		o.dirSeq = o.fetches.Add(1)
		if dirKeys, err = FetchDirectoryKeys(ctx, o.dirURL, opts.fetch, opts.logger); err != nil {
			return nil, err
		}
	}
	if err := o.install(dirKeys); err != nil {
		return nil, err
	}
	if o.dirURL != "" {
		loopCtx, cancel := context.WithCancel(context.Background())
		o.cancel = cancel
		o.done.Add(1)
		go o.refreshLoop(loopCtx)
	}
	return o, nil
}

// Reconfigure makes fetch the policy of the issuer directory's later
// fetches and logger (nil: none) the origin's logger, in place: an origin
// kept across configuration reloads takes the new configuration's fetch
// policy and logger, and keeps its keys, the challenges it sent and the
// state of its refreshes. It is safe to call while the origin is in use.
func (o *Origin) Reconfigure(fetch provider.FetchPolicy, logger *zap.Logger) {
	if logger == nil {
		logger = zap.NewNop()
	}
	o.opts.Store(&originOptions{fetch: fetch, logger: logger})
}

// logger is the origin's current logger.
func (o *Origin) logger() *zap.Logger { return o.opts.Load().logger }

// Current returns the origin in use now. Take it once per request: a
// refresh may replace it.
func (o *Origin) Current() *privacypass.Origin { return o.current.Load() }

// Close stops the refresh loop and waits for it. It is idempotent.
func (o *Origin) Close() error {
	o.closeOnce.Do(func() {
		if o.cancel != nil {
			o.cancel()
			o.done.Wait()
		}
	})
	return nil
}

// Destruct is Close, so that an *Origin can be held in a caddy.UsagePool
// directly.
func (o *Origin) Destruct() error { return o.Close() }

// Refresh fetches the issuer directory once and installs a new origin if
// its keys changed. On failure the current keys stay. A fetch whose keys
// arrive after those of a fetch started later (the periodic refresh and
// RefreshForUnknownKey may overlap) is dropped: it may predate a
// rotation the later one saw. Without a DirectoryURL it does nothing.
func (o *Origin) Refresh(ctx context.Context) error {
	if o.dirURL == "" {
		return nil
	}
	opts := o.opts.Load()
	seq := o.fetches.Add(1)
	keys, err := FetchDirectoryKeys(ctx, o.dirURL, opts.fetch, opts.logger)
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if seq < o.dirSeq {
		opts.logger.Debug("dropping an issuer directory fetched before the one in use",
			zap.String("issuer_directory", o.dirURL))
		return nil
	}
	if keyIDs(keys) == o.dirIDs {
		o.dirSeq = seq
		return nil
	}
	if err := o.installLocked(keys); err != nil {
		return err
	}
	o.dirSeq = seq
	return nil
}

// RefreshForUnknownKey fetches the issuer directory once more because a
// token names a key this origin does not hold: the issuer may have added
// it since the last refresh, and another gateway of the provider, whose
// refresh came later, may have advertised it in a challenge (RFC 9578 §4:
// refetch when verification fails). It fetches at most once per
// MinDirectoryRefresh, so that tokens under made-up keys cannot make the
// gateway fetch more often, and reports whether the keys changed: the
// caller then redeems the token once more under Current. The fetch is not
// cancelled with ctx (only bounded by the fetch policy's timeout): a
// client that hangs up at once must not spend the minute's fetch without
// it taking place. Without a DirectoryURL it does nothing and reports
// false.
func (o *Origin) RefreshForUnknownKey(ctx context.Context) bool {
	if o.dirURL == "" {
		return false
	}
	o.unknownMu.Lock()
	if now := time.Now(); o.lastUnknown.IsZero() || now.Sub(o.lastUnknown) >= MinDirectoryRefresh {
		o.lastUnknown = now
	} else {
		o.unknownMu.Unlock()
		return false
	}
	o.unknownMu.Unlock()
	before := o.Current()
	if err := o.Refresh(context.WithoutCancel(ctx)); err != nil {
		o.logger().Warn("refreshing the issuer directory for a token under an unknown key; keeping the current keys",
			zap.String("issuer_directory", o.dirURL), zap.Error(err))
		return false
	}
	return o.Current() != before
}

// install builds an origin with the configured keys and dirKeys (see
// withDirectoryKeys) and makes it current.
func (o *Origin) install(dirKeys []*privacypass.Key) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.installLocked(dirKeys)
}

func (o *Origin) installLocked(dirKeys []*privacypass.Key) error {
	cfg := o.cfg
	cfg.Keys = withDirectoryKeys(o.cfg.Keys, dirKeys)
	if len(cfg.Keys) == 0 {
		return errors.New("no usable token key")
	}
	var po *privacypass.Origin
	var err error
	if prev := o.current.Load(); prev != nil {
		// Challenges already sent stay valid under the new keys.
		po, err = prev.Rekeyed(cfg.Keys)
	} else {
		po, err = privacypass.NewOrigin(cfg)
	}
	if err != nil {
		return err
	}
	o.current.Store(po)
	o.dirIDs = keyIDs(dirKeys)
	ids := make([]string, len(cfg.Keys))
	for i, k := range cfg.Keys {
		id := k.ID()
		ids[i] = fmt.Sprintf("%s:%x", k.Type(), id[:8])
	}
	o.logger().Info("privacy pass origin ready", zap.String("issuer_name", cfg.IssuerName),
		zap.Strings("origin_info", cfg.OriginInfo), zap.Strings("token_key_ids", ids),
		zap.String("context", cfg.Mode.String()))
	return nil
}

// withDirectoryKeys returns the configured keys followed by the directory's
// keys that are neither configured nor listed earlier in the directory: the
// verifier refuses two keys of one id, and a directory may list a key
// token_key pins (as the README's example does) or list a key twice. The
// configured key is the one kept.
func withDirectoryKeys(configured, dirKeys []*privacypass.Key) []*privacypass.Key {
	keys := slices.Clone(configured)
	seen := make(map[[privacypass.KeyIDSize]byte]bool, len(configured)+len(dirKeys))
	for _, k := range configured {
		seen[k.ID()] = true
	}
	for _, k := range dirKeys {
		if id := k.ID(); !seen[id] {
			seen[id] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// keyIDs is a fingerprint of a key list: the ids and not-before times, in
// order, so that a directory that only moves a key's not-before or its
// place in the list is installed too.
func keyIDs(keys []*privacypass.Key) string {
	var b strings.Builder
	for _, k := range keys {
		id := k.ID()
		b.Write(id[:])
		var nb [8]byte
		if t := k.NotBefore(); !t.IsZero() {
			binary.BigEndian.PutUint64(nb[:], uint64(t.Unix()))
		}
		b.Write(nb[:])
	}
	return b.String()
}

// refreshLoop fetches the issuer directory every o.every until ctx ends.
func (o *Origin) refreshLoop(ctx context.Context) {
	defer o.done.Done()
	t := time.NewTicker(o.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := o.Refresh(ctx); err != nil && ctx.Err() == nil {
				o.logger().Warn("refreshing the issuer directory; keeping the current keys",
					zap.String("issuer_directory", o.dirURL), zap.Error(err))
			}
		}
	}
}

// FetchDirectoryKeys fetches an issuer directory and returns the keys an
// origin can verify with: type 2 (public verification); type 1 keys are
// private to the issuer and skipped. The fetch follows pol: public
// addresses on port 443 unless it allows private addresses or other ports,
// its resolve map and roots, no redirects, a body of at most
// MaxDirectoryBody and a timeout (DefaultDirectoryTimeout when pol sets
// none). Issuers are not MIMI peers: TLS 1.2 is accepted.
func FetchDirectoryKeys(ctx context.Context, dirURL string, pol provider.FetchPolicy, logger *zap.Logger) ([]*privacypass.Key, error) {
	if pol.Timeout <= 0 {
		pol.Timeout = DefaultDirectoryTimeout
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	client := pol.HTTPClient(tls.VersionTLS12)
	defer client.CloseIdleConnections()
	reqCtx, cancel := context.WithTimeout(ctx, pol.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, dirURL, nil)
	if err != nil {
		return nil, fmt.Errorf("issuer_directory: %w", err)
	}
	req.Header.Set("Accept", privacypass.MediaTypeIssuerDirectory+", application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("issuer_directory: fetching %s: %w", dirURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxDirectoryBody+1))
	if err != nil {
		return nil, fmt.Errorf("issuer_directory: reading %s: %w", dirURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("issuer_directory: %s answered status %d", dirURL, resp.StatusCode)
	}
	if len(body) > MaxDirectoryBody {
		return nil, fmt.Errorf("issuer_directory: %s is larger than %d bytes", dirURL, MaxDirectoryBody)
	}
	dir, err := privacypass.ParseDirectory(body)
	if err != nil {
		return nil, fmt.Errorf("issuer_directory: %s: %w", dirURL, err)
	}
	all, err := dir.Keys()
	if err != nil {
		return nil, fmt.Errorf("issuer_directory: %s: %w", dirURL, err)
	}
	keys := slices.DeleteFunc(slices.Clone(all), func(k *privacypass.Key) bool { return k.Type() != privacypass.TypeBlindRSA })
	if len(keys) == 0 {
		return nil, fmt.Errorf("issuer_directory: %s lists no type 2 key", dirURL)
	}
	if skipped := len(all) - len(keys); skipped > 0 {
		logger.Info("skipped privately verifiable keys of the issuer directory", zap.Int("count", skipped))
	}
	return keys, nil
}
