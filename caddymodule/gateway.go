package caddymodule

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

func init() {
	caddy.RegisterModule(Gateway{})
}

// Default limits.
const (
	defaultMaxBody = 1 << 20
	// maxMaxBody caps max_body: MoH messages other than attachments are
	// small, and attachments are streamed outside this limit.
	maxMaxBody = 64 << 20
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

	// MaxBody is the largest request body accepted on the MoH endpoints, in
	// bytes; larger bodies are answered 413 too_large. Default: 1 MiB; at
	// most 64 MiB (attachments are streamed and limited separately).
	MaxBody int64 `json:"max_body,omitempty"`

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

	// RateLimits are the named rate-limit zones (policy.go). Default: none.
	RateLimits []*RateLimitZone `json:"rate_limits,omitempty"`

	// PrivacyPass configures Privacy Pass redemption: which endpoints
	// need a token, and whose. Default: no token is ever asked for.
	PrivacyPass *PrivacyPass `json:"privacy_pass,omitempty"`

	// Issuer runs a Privacy Pass issuer on this gateway. Default: off.
	Issuer *TokenIssuer `json:"issuer,omitempty"`

	// Peers restricts the provider domains that may send provider
	// requests. Default: every provider whose signature verifies.
	Peers *PeerList `json:"peers,omitempty"`

	policy     *policy
	state      *sharedState
	fetcher    *provider.KeyFetcher
	inbound    *provider.Inbound
	processors map[moh.ProviderRequestType]provider.Processor
	proxies    []netip.Prefix
	logger     *zap.Logger
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
	Resolve map[string]string `json:"resolve,omitempty"`

	// RootCAFiles are PEM files whose certificates replace the system roots
	// when verifying peers' TLS certificates.
	RootCAFiles []string `json:"root_ca_files,omitempty"`

	// TrustPKICAs names certificate authorities of Caddy's pki app (such as
	// `local`, the CA behind `tls internal`) whose roots replace the system
	// roots for peer TLS, together with RootCAFiles. For private
	// federations and examples on one machine.
	TrustPKICAs []string `json:"trust_pki_cas,omitempty"`

	// Timeout bounds one discovery and key fetch. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Gateway) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mimi",
		New: func() caddy.Module { return new(Gateway) },
	}
}

// Provision sets defaults and opens the shared state (keys, store).
func (g *Gateway) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	for i, p := range g.Providers {
		g.Providers[i] = strings.ToLower(strings.TrimSuffix(p, "."))
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
	policy, err := g.Federation.fetchPolicy(ctx)
	if err != nil {
		return err
	}
	g.state, err = loadState(g.DataDir, provider.KeyRingOptions{
		Scheme:      scheme,
		RotateEvery: time.Duration(g.KeyRotation),
		Overlap:     time.Duration(g.KeyOverlap),
	}, g.logger)
	if err != nil {
		return fmt.Errorf("opening gateway state in %s: %w", g.DataDir, err)
	}
	policy.Cache = g.state.store
	g.fetcher = provider.NewKeyFetcher(policy)
	g.inbound = &provider.Inbound{
		Verifier: &provider.Verifier{Domains: g.Providers, Keys: g.fetcher},
		Replay:   g.state.store,
	}
	g.processors = map[moh.ProviderRequestType]provider.Processor{}
	for _, typ := range []moh.ProviderRequestType{moh.DeliverMessage, moh.ConnectionRequest,
		moh.ConnectionKeyPackages, moh.GroupKeyPackages} {
		g.processors[typ] = notImplemented(typ)
	}
	return g.provisionPolicy(ctx)
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
	if g.MaxBody < 0 || g.MaxBody > maxMaxBody {
		return fmt.Errorf("mimi: max_body: %d is outside 1..%d bytes", g.MaxBody, maxMaxBody)
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
	if rot+ovl > provider.MaxKeyLifetime {
		return fmt.Errorf("mimi: key_rotation + key_overlap: %s exceeds the 90 day key lifetime", rot+ovl)
	}
	if _, err := parseScheme(g.KeyScheme); err != nil {
		return err
	}
	for _, c := range g.TrustedTLSProxies {
		if _, err := parsePrefix(c); err != nil {
			return fmt.Errorf("mimi: trusted_tls_proxies: %w", err)
		}
	}
	if err := g.validatePolicy(); err != nil {
		return err
	}
	if f := g.Federation; f != nil {
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

// Cleanup releases the shared state.
func (g *Gateway) Cleanup() error {
	policyErr := g.cleanupPolicy()
	if g.state == nil {
		return policyErr
	}
	deleted, err := statePool.Delete(g.DataDir)
	if deleted {
		if c := g.logger.Check(zapcore.DebugLevel, "closed gateway state"); c != nil {
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

// ServeHTTP routes the MoH paths and passes everything else to next.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	ep, ok := g.lookupEndpoint(r.URL.Path)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	if !g.overTLS13(r) {
		g.refuse(w, r, moh.Errorf(moh.CodeForbidden, "TLS 1.3 is required"))
		return nil
	}
	if !ep.allows(r.Method) {
		w.Header().Set("Allow", ep.allow())
		g.refuse(w, r, moh.Errorf(moh.CodeMethodNotAllowed, "method %s is not allowed here", r.Method))
		return nil
	}
	if !g.admitRequest(w, r) {
		return nil
	}
	ep.serve(g, w, r)
	return nil
}

// overTLS13 reports whether r arrived over a completed TLS 1.3 handshake, or
// from a declared TLS-terminating proxy.
func (g *Gateway) overTLS13(r *http.Request) bool {
	if r.TLS != nil && r.TLS.Version == tls.VersionTLS13 && r.TLS.HandshakeComplete {
		return true
	}
	if len(g.proxies) == 0 {
		return false
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range g.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// readBody reads a request body of at most max_body bytes after checking its
// content type. An empty body is allowed only where emptyOK.
func (g *Gateway) readBody(r *http.Request, emptyOK bool) ([]byte, error) {
	if r.ContentLength > g.MaxBody {
		return nil, moh.Errorf(moh.CodeTooLarge, "body of %d bytes exceeds the %d byte limit", r.ContentLength, g.MaxBody)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, g.MaxBody+1))
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "reading body: %w", err)
	}
	if int64(len(body)) > g.MaxBody {
		return nil, moh.Errorf(moh.CodeTooLarge, "body exceeds the %d byte limit", g.MaxBody)
	}
	if len(body) == 0 && emptyOK {
		return body, nil
	}
	if err := checkContentType(r); err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return nil, moh.Errorf(moh.CodeMalformed, "empty body")
	}
	return body, nil
}

// checkContentType requires the MoH media type on r.
func checkContentType(r *http.Request) error {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != contentType {
		return moh.Errorf(moh.CodeUnsupportedMedia, "content type must be %s", contentType)
	}
	return nil
}

// refuse writes the error answer for err and logs it: at debug level for
// refusals of the request, at error level for failures of the gateway.
func (g *Gateway) refuse(w http.ResponseWriter, r *http.Request, err error) {
	status, body := errorAnswer(err)
	setPolicyHeaders(w.Header(), err)
	writeRaw(w, status, body)
	var decided *policyError
	if errors.As(err, &decided) {
		return // the policy logged its decision with the zone and endpoint
	}
	// Refusals of bad or unwelcome requests are routine (debug); a failure
	// of the gateway itself is an error an operator must see.
	level := zapcore.DebugLevel
	if !isCoded(err) || (status >= 500 && status != http.StatusNotImplemented) {
		level = zapcore.ErrorLevel
	}
	if c := g.logger.Check(level, "refused mimi request"); c != nil {
		c.Write(zap.String("path", r.URL.Path), zap.Int("status", status),
			zap.String("remote_ip", remoteIP(r)), zap.Error(err))
	}
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Gateway)(nil)
	_ caddy.Validator             = (*Gateway)(nil)
	_ caddy.CleanerUpper          = (*Gateway)(nil)
	_ caddyhttp.MiddlewareHandler = (*Gateway)(nil)
)
