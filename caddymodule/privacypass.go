package caddymodule

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// Limits of the issuer directory fetch.
const (
	maxDirectoryBody        = 64 << 10
	defaultDirectoryTimeout = 5 * time.Second
	defaultDirectoryRefresh = time.Hour
	minDirectoryRefresh     = time.Minute
)

// Context modes of the privacy_pass block.
const (
	contextRandom = "random"
	contextWindow = "window"
)

// validate checks the privacy_pass options that need no file or network.
func (pp *PrivacyPass) validate(haveIssuer bool) error {
	if pp.IssuerName == "" {
		return errors.New("issuer_name is required")
	}
	if err := provider.ValidateAuthority(pp.IssuerName); err != nil {
		return fmt.Errorf("issuer_name %q: %w", pp.IssuerName, err)
	}
	for _, o := range pp.OriginInfo {
		if o == "" || len(o) > 255 {
			return fmt.Errorf("origin_info %q is not an origin name", o)
		}
		for _, c := range []byte(o) {
			if c <= ' ' || c > '~' || c == ',' {
				return fmt.Errorf("origin_info %q is not an origin name", o)
			}
		}
	}
	for _, k := range pp.TokenKeys {
		if k.Type != 1 && k.Type != 2 {
			return fmt.Errorf("token_key type %d is not 1 or 2", k.Type)
		}
		if k.File == "" {
			return errors.New("token_key: the key file is required")
		}
	}
	if pp.IssuerDirectory != "" {
		u, err := url.Parse(pp.IssuerDirectory)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
			return fmt.Errorf("issuer_directory %q is not an https URL", pp.IssuerDirectory)
		}
	}
	if len(pp.TokenKeys) == 0 && pp.IssuerDirectory == "" && !haveIssuer {
		return errors.New("token_key or issuer_directory is required (or an issuer block to use its keys)")
	}
	if r := time.Duration(pp.DirectoryRefresh); r != 0 && (r < minDirectoryRefresh || pp.IssuerDirectory == "") {
		return fmt.Errorf("directory_refresh %s: needs issuer_directory and at least %s", r, minDirectoryRefresh)
	}
	if lt := time.Duration(pp.Lifetime); lt != 0 && (lt < time.Second || lt > 24*time.Hour) {
		return fmt.Errorf("lifetime %s is outside 1s..24h", lt)
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

// originState is the Privacy Pass origin of a gateway, and what is needed
// to rebuild it when the issuer directory publishes other keys.
type originState struct {
	current atomic.Pointer[privacypass.Origin]
	cfg     privacypass.OriginConfig // Keys holds the key-file keys only
	dirURL  string
	dirPol  provider.FetchPolicy
	dirIDs  string // fingerprint of the directory keys in use
	every   time.Duration
	logger  *zap.Logger
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

// provision returns the Origin state of the configuration: keys from files,
// from the issuer directory, or from the gateway's own issuer, and the
// store as spent-token record. With an issuer directory it refreshes the
// keys in the background. The state is shared through originPool; release
// it with originPool.Delete of the returned key.
func (pp *PrivacyPass) provision(ctx caddy.Context, g *Gateway) (*originState, string, error) {
	s := &originState{dirURL: pp.IssuerDirectory, every: time.Duration(pp.DirectoryRefresh), logger: g.logger}
	if s.every == 0 {
		s.every = defaultDirectoryRefresh
	}
	var keys []*privacypass.Key
	for _, kf := range pp.TokenKeys {
		k, err := privacypass.ReadKeyFile(kf.File)
		if err != nil {
			return nil, "", fmt.Errorf("token_key %s: %w", kf.File, err)
		}
		if int(k.Type()) != kf.Type {
			return nil, "", fmt.Errorf("token_key %s: the file holds a type %s key, not type %d", kf.File, k.Type(), kf.Type)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 && pp.IssuerDirectory == "" && g.policy != nil && g.policy.issuer != nil {
		keys = g.policy.issuer.keys
	}
	s.cfg = privacypass.OriginConfig{
		IssuerName: pp.IssuerName,
		OriginInfo: pp.OriginInfo,
		Keys:       keys,
		Lifetime:   time.Duration(pp.Lifetime),
		Grease:     pp.Grease,
		Spent:      g.state.store,
	}
	if len(s.cfg.OriginInfo) == 0 {
		s.cfg.OriginInfo = []string{g.DSDomain}
	}
	if pp.Context == contextWindow {
		s.cfg.Mode = privacypass.ContextWindow
		secret := make([]byte, 32)
		rand.Read(secret)
		if pp.Secret != "" {
			v, err := caddy.NewReplacer().ReplaceOrErr(pp.Secret, true, true)
			if err != nil {
				// The error names the placeholder, never its value.
				return nil, "", fmt.Errorf("secret: %w", err)
			}
			if len(v) < 32 {
				return nil, "", fmt.Errorf("secret is %d bytes; at least 32 are required", len(v))
			}
			secret = []byte(v)
		}
		// A secret made here (none configured) is kept for the life of
		// this config, so rebuilding the origin after a directory change
		// keeps its outstanding challenges valid.
		s.cfg.Secret = secret
	}
	// A reload with the same settings finds the running origin, so
	// challenges minted before the reload (context random) stay valid.
	poolKey, err := pp.poolKey(g, s.cfg)
	if err != nil {
		return nil, "", err
	}
	v, _, err := originPool.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		var dirKeys []*privacypass.Key
		if s.dirURL != "" {
			var err error
			if s.dirPol, err = g.Federation.fetchPolicy(ctx); err != nil {
				return nil, err
			}
			if dirKeys, err = fetchDirectoryKeys(ctx, s.dirURL, s.dirPol, g.logger); err != nil {
				return nil, err
			}
		}
		if err := s.install(dirKeys); err != nil {
			return nil, err
		}
		if s.dirURL != "" {
			loopCtx, cancel := context.WithCancel(context.Background())
			s.cancel = cancel
			s.done.Add(1)
			go s.refreshLoop(loopCtx)
		}
		return s, nil
	})
	if err != nil {
		return nil, "", err
	}
	return v.(*originState), poolKey, nil
}

// originPool shares origins across config reloads, keyed by data
// directory and every setting that shapes the origin (see poolKey).
var originPool = caddy.NewUsagePool()

// poolKey identifies an origin: the data directory (whose store records
// spent tokens), the privacy_pass settings, the keys read from files and a
// digest of the configured secret (never the secret itself).
func (pp *PrivacyPass) poolKey(g *Gateway, cfg privacypass.OriginConfig) (string, error) {
	settings, err := json.Marshal(pp)
	if err != nil {
		return "", fmt.Errorf("encoding settings: %w", err)
	}
	secret := "generated"
	if pp.Secret != "" {
		d := sha256.Sum256(cfg.Secret)
		secret = hex.EncodeToString(d[:])
	}
	return strings.Join([]string{g.DataDir, string(settings), strings.Join(cfg.OriginInfo, ","), secret,
		hex.EncodeToString([]byte(keyIDs(cfg.Keys)))}, "\x00"), nil
}

// Destruct implements caddy.Destructor: it stops the refresh loop when the
// last config using the origin is unloaded.
func (s *originState) Destruct() error {
	s.stop()
	return nil
}

// install builds an Origin with the key-file keys and dirKeys and makes it
// current.
func (s *originState) install(dirKeys []*privacypass.Key) error {
	cfg := s.cfg
	cfg.Keys = append(slices.Clone(s.cfg.Keys), dirKeys...)
	if len(cfg.Keys) == 0 {
		return errors.New("no usable token key")
	}
	o, err := privacypass.NewOrigin(cfg)
	if err != nil {
		return err
	}
	s.current.Store(o)
	s.dirIDs = keyIDs(dirKeys)
	ids := make([]string, len(cfg.Keys))
	for i, k := range cfg.Keys {
		id := k.ID()
		ids[i] = fmt.Sprintf("%s:%x", k.Type(), id[:8])
	}
	s.logger.Info("privacy pass origin ready", zap.String("issuer_name", cfg.IssuerName),
		zap.Strings("origin_info", cfg.OriginInfo), zap.Strings("token_key_ids", ids),
		zap.String("context", cfg.Mode.String()))
	return nil
}

// keyIDs is a fingerprint of a key list.
func keyIDs(keys []*privacypass.Key) string {
	var b strings.Builder
	for _, k := range keys {
		id := k.ID()
		b.Write(id[:])
	}
	return b.String()
}

// refreshLoop fetches the issuer directory every s.every until ctx ends.
func (s *originState) refreshLoop(ctx context.Context) {
	defer s.done.Done()
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.refresh(ctx); err != nil && ctx.Err() == nil {
				s.logger.Warn("refreshing the issuer directory; keeping the current keys",
					zap.String("issuer_directory", s.dirURL), zap.Error(err))
			}
		}
	}
}

// refresh fetches the issuer directory once and installs a new Origin if
// its keys changed. On failure the current keys stay.
func (s *originState) refresh(ctx context.Context) error {
	keys, err := fetchDirectoryKeys(ctx, s.dirURL, s.dirPol, s.logger)
	if err != nil {
		return err
	}
	if keyIDs(keys) == s.dirIDs {
		return nil
	}
	return s.install(keys)
}

// stop ends the refresh loop.
func (s *originState) stop() {
	if s != nil && s.cancel != nil {
		s.cancel()
		s.done.Wait()
	}
}

// redeem checks the PrivateToken credential of r and spends the token, or
// returns the refusal: 401 token_required with a fresh challenge, or 503
// when the double-spend store failed.
func (p *policy) redeem(r *http.Request, ep *endpointPlan) error {
	if p.origin == nil {
		return errors.New("privacy pass: no origin configured")
	}
	origin := p.origin.current.Load()
	auth := r.Header.Get("Authorization")
	var err error
	if auth == "" {
		err = privacypass.ErrMissing
	} else {
		_, err = origin.Redeem(r.Context(), auth)
	}
	if err == nil {
		ep.tokens.accepted.Inc()
		return nil
	}
	reason := privacypass.ReasonOf(err)
	switch reason {
	case privacypass.ReasonMissing:
		ep.tokens.missing.Inc()
	case privacypass.ReasonStoreUnavailable:
		ep.tokens.unavailable.Inc()
		p.logger.Error("recording a spent privacy pass token failed; the token was not redeemed",
			zap.String("endpoint", ep.name), zap.Error(err))
		return &moh.Error{Code: moh.CodeBackendUnavailable, Message: "token store unavailable; retry later", Err: err}
	case "":
		// Not from the privacy pass package: an internal failure.
		ep.tokens.unavailable.Inc()
		return fmt.Errorf("redeeming token: %w", err)
	default:
		ep.tokens.refused.Inc()
	}
	if c := p.logger.Check(zapcore.DebugLevel, "refused privacy pass token"); c != nil {
		c.Write(zap.String("endpoint", ep.name), zap.String("reason", string(reason)),
			zap.String("remote_ip", remoteIP(r)))
	}
	challenge, cerr := origin.WWWAuthenticate()
	if cerr != nil {
		return fmt.Errorf("minting privacy pass challenge: %w", cerr)
	}
	msg := "a Privacy Pass token is required"
	if reason != privacypass.ReasonMissing {
		msg = "the Privacy Pass token was refused: " + string(reason)
	}
	return &policyError{
		err:    &moh.Error{Code: moh.CodeTokenRequired, Message: msg, Err: err},
		header: "WWW-Authenticate", value: challenge,
	}
}

// fetchDirectoryKeys fetches an issuer directory and returns the keys an
// origin can verify with: type 2 (public verification). The fetch follows
// the federation policy: public addresses on port 443 unless it allows
// private addresses or other ports, its resolve map and roots, no
// redirects, a bounded body and a timeout.
func fetchDirectoryKeys(ctx context.Context, dirURL string, pol provider.FetchPolicy, logger *zap.Logger) ([]*privacypass.Key, error) {
	// Issuers are not MIMI peers: TLS 1.2 is accepted, as RFC 9578 allows.
	if pol.Timeout <= 0 {
		pol.Timeout = defaultDirectoryTimeout
	}
	client := pol.HTTPClient(tls.VersionTLS12)
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
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDirectoryBody+1))
	if err != nil {
		return nil, fmt.Errorf("issuer_directory: reading %s: %w", dirURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("issuer_directory: %s answered status %d", dirURL, resp.StatusCode)
	}
	if len(body) > maxDirectoryBody {
		return nil, fmt.Errorf("issuer_directory: %s is larger than %d bytes", dirURL, maxDirectoryBody)
	}
	dir, err := privacypass.ParseDirectory(body)
	if err != nil {
		return nil, fmt.Errorf("issuer_directory: %s: %w", dirURL, err)
	}
	all, err := dir.Keys()
	if err != nil {
		return nil, fmt.Errorf("issuer_directory: %s: %w", dirURL, err)
	}
	keys := slices.DeleteFunc(all, func(k *privacypass.Key) bool { return k.Type() != privacypass.TypeBlindRSA })
	if len(keys) == 0 {
		return nil, fmt.Errorf("issuer_directory: %s lists no type 2 key", dirURL)
	}
	if skipped := len(all) - len(keys); skipped > 0 {
		logger.Info("skipped privately verifiable keys of the issuer directory", zap.Int("count", skipped))
	}
	return keys, nil
}
