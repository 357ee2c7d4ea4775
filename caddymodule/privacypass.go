package caddymodule

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"syscall"
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
)

// sharedAddressSpace is the carrier-grade NAT range of RFC 6598, never a
// public issuer.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

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

// provision builds the Origin: keys from files, from the issuer directory,
// or from the gateway's own issuer, and the store as spent-token record.
func (pp *PrivacyPass) provision(ctx caddy.Context, g *Gateway) (*privacypass.Origin, error) {
	var keys []*privacypass.Key
	for _, kf := range pp.TokenKeys {
		k, err := privacypass.ReadKeyFile(kf.File)
		if err != nil {
			return nil, fmt.Errorf("token_key %s: %w", kf.File, err)
		}
		if int(k.Type()) != kf.Type {
			return nil, fmt.Errorf("token_key %s: the file holds a type %s key, not type %d", kf.File, k.Type(), kf.Type)
		}
		keys = append(keys, k)
	}
	if pp.IssuerDirectory != "" {
		dk, err := fetchDirectoryKeys(ctx, pp.IssuerDirectory, g.Federation, g.logger)
		if err != nil {
			return nil, err
		}
		keys = append(keys, dk...)
	}
	if len(keys) == 0 && g.policy != nil && g.policy.issuer != nil {
		keys = g.policy.issuer.keys
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable token key")
	}
	cfg := privacypass.OriginConfig{
		IssuerName: pp.IssuerName,
		OriginInfo: pp.OriginInfo,
		Keys:       keys,
		Lifetime:   time.Duration(pp.Lifetime),
		Grease:     pp.Grease,
		Spent:      g.state.store,
	}
	if len(cfg.OriginInfo) == 0 {
		cfg.OriginInfo = []string{g.DSDomain}
	}
	if pp.Context == contextWindow {
		cfg.Mode = privacypass.ContextWindow
		if pp.Secret != "" {
			secret, err := caddy.NewReplacer().ReplaceOrErr(pp.Secret, true, true)
			if err != nil {
				// The error names the placeholder, never its value.
				return nil, fmt.Errorf("secret: %w", err)
			}
			if len(secret) < 32 {
				return nil, fmt.Errorf("secret is %d bytes; at least 32 are required", len(secret))
			}
			cfg.Secret = []byte(secret)
		}
	}
	o, err := privacypass.NewOrigin(cfg)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		id := k.ID()
		ids[i] = fmt.Sprintf("%s:%x", k.Type(), id[:8])
	}
	g.logger.Info("privacy pass origin ready", zap.String("issuer_name", pp.IssuerName),
		zap.Strings("origin_info", cfg.OriginInfo), zap.Strings("token_key_ids", ids),
		zap.String("context", cfg.Mode.String()))
	return o, nil
}

// redeem checks the PrivateToken credential of r and spends the token, or
// returns the refusal: 401 token_required with a fresh challenge, or 503
// when the double-spend store failed.
func (p *policy) redeem(r *http.Request, ep *endpointPlan) error {
	if p.origin == nil {
		return errors.New("privacy pass: no origin configured")
	}
	auth := r.Header.Get("Authorization")
	var err error
	if auth == "" {
		err = privacypass.ErrMissing
	} else {
		_, err = p.origin.Redeem(r.Context(), auth)
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
	challenge, cerr := p.origin.WWWAuthenticate()
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
func fetchDirectoryKeys(ctx caddy.Context, dirURL string, fed *Federation, logger *zap.Logger) ([]*privacypass.Key, error) {
	pol, err := fed.fetchPolicy(ctx)
	if err != nil {
		return nil, err
	}
	client, timeout := directoryClient(pol)
	reqCtx, cancel := context.WithTimeout(ctx, timeout)
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

// directoryClient is an HTTP client bound like provider.KeyFetcher's: the
// address check runs on the dialed address (no DNS rebinding), redirects
// are not followed, and every phase has a timeout.
func directoryClient(pol provider.FetchPolicy) (*http.Client, time.Duration) {
	timeout := defaultDirectoryTimeout
	if pol.Timeout > 0 {
		timeout = pol.Timeout
	}
	control := func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("address refused: %v", err)
		}
		if port := int(ap.Port()); port != 443 && !slices.Contains(pol.AllowedPorts, port) {
			return fmt.Errorf("address refused: port %d is not allowed", port)
		}
		if a := ap.Addr().Unmap(); !pol.AllowPrivate && (!a.IsGlobalUnicast() || a.IsPrivate() || a.IsLoopback() ||
			a.IsLinkLocalUnicast() || sharedAddressSpace.Contains(a) || a.Is4() && a.As4()[0] == 0) {
			return fmt.Errorf("address refused: %s is not a public address", a)
		}
		return nil
	}
	dialer := &net.Dialer{Timeout: timeout, Control: control}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if fixed, ok := pol.Resolve[host]; ok {
				addr = fixed
			}
			return dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pol.RootCAs},
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 16 << 10,
		DisableKeepAlives:      true,
	}
	return &http.Client{
		Transport:     transport,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, timeout
}
