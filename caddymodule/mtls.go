package caddymodule

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

// MutualTLS turns on mutual TLS between providers (docs/protocol.md §4.4):
// the gateway presents a certificate when it sends to peers, and requires
// every provider-signed request (/deliver_message, /connection_request,
// /connection_key_packages, /group_key_packages) to come over a connection
// whose client certificate names the DS authority of the request's sender,
// chained to the configured roots.
//
// The certificate is checked by the gateway itself, after the request's
// signature verified, not by Caddy's TLS stack: Go's server-side
// verification insists on the clientAuth extended key usage, which public
// WebPKI certificates no longer carry, so Caddy's `require_and_verify`
// would refuse peers presenting their ordinary server certificates. The
// site's connection policy must therefore only ask for a certificate:
// `tls { client_auth { mode request } }`; without it no peer sends one and
// every provider request is refused certificate_required.
type MutualTLS struct {
	// PresentOnly presents this gateway's certificate to peers without
	// requiring theirs: the first step of turning mutual TLS on across a
	// federation. Default: false, peers' certificates are required. It
	// checks no peer certificate, so it is refused together with
	// RootCAFiles, TrustPKICAs or SystemRoots, which would go unused.
	PresentOnly bool `json:"present_only,omitempty"`

	// RootCAFiles are PEM files of the roots that peers' client
	// certificates must chain to. Default: the system roots, when neither
	// RootCAFiles nor TrustPKICAs is set.
	RootCAFiles []string `json:"root_ca_files,omitempty"`

	// TrustPKICAs names certificate authorities of Caddy's pki app (such as
	// `local`, the CA behind `tls internal`) whose roots peers'
	// certificates may chain to, together with RootCAFiles. For private
	// federations and examples on one machine.
	TrustPKICAs []string `json:"trust_pki_cas,omitempty"`

	// SystemRoots also trusts the system roots when RootCAFiles or
	// TrustPKICAs are set. Default: false (they replace the system roots).
	SystemRoots bool `json:"system_roots,omitempty"`

	// CertificateFile and KeyFile are PEM files of the certificate chain
	// and private key this gateway presents to peers, read when the
	// configuration loads. Default: the certificate Caddy manages for the
	// host of ds_domain (the site that serves this gateway), looked up at
	// each handshake so that renewals apply at once.
	CertificateFile string `json:"certificate_file,omitempty"`
	KeyFile         string `json:"key_file,omitempty"`
}

// validate checks the options that need no files.
func (m *MutualTLS) validate() error {
	if m == nil {
		return nil
	}
	if (m.CertificateFile == "") != (m.KeyFile == "") {
		return errors.New("mimi: mutual_tls certificate: both a certificate file and a key file are needed")
	}
	if m.PresentOnly && (len(m.RootCAFiles) > 0 || len(m.TrustPKICAs) > 0 || m.SystemRoots) {
		return errors.New("mimi: mutual_tls present_only: root_ca, trust_pki_ca and system_roots choose the roots of peers' certificates, " +
			"which present_only does not check; remove them, or remove present_only to require peers' certificates")
	}
	if m.SystemRoots && len(m.RootCAFiles) == 0 && len(m.TrustPKICAs) == 0 {
		return errors.New("mimi: mutual_tls system_roots: the system roots are the default; it only adds to root_ca or trust_pki_ca")
	}
	return nil
}

// provisionMutualTLS sets the certificate the fetcher's transport presents
// to peers in fetch, and the verifier of peers' certificates, when mutual
// TLS is configured.
func (g *Gateway) provisionMutualTLS(ctx caddy.Context, fetch *provider.FetchPolicy) error {
	m := g.MutualTLS
	g.peerCerts = nil
	if m == nil {
		return nil
	}
	if m.CertificateFile == "" {
		// Caddy's certificates are looked up in the tls app's cache, which
		// exists once the app is loaded (the http app loads it, unless the
		// gateway runs outside a Caddy server).
		if _, err := ctx.App("tls"); err != nil {
			return fmt.Errorf("mimi: mutual_tls: loading the tls app for Caddy's certificate of %s: %w", dsHost(g.DSDomain), err)
		}
	}
	get, err := g.clientCertificate(m)
	if err != nil {
		return err
	}
	fetch.GetClientCertificate = get
	if m.PresentOnly {
		return nil
	}
	roots, err := m.roots(ctx)
	if err != nil {
		return err
	}
	g.peerCerts = &provider.CertVerifier{Roots: roots}
	return nil
}

// clientCertificate returns the GetClientCertificate of the fetcher's
// transport: the configured files, or Caddy's certificate for the DS host.
// When no certificate can be presented, the handshake goes on without one
// (the peer decides) and the reason is logged.
func (g *Gateway) clientCertificate(m *MutualTLS) (func(*tls.CertificateRequestInfo) (*tls.Certificate, error), error) {
	if m.CertificateFile != "" {
		cert, err := tls.LoadX509KeyPair(m.CertificateFile, m.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mimi: mutual_tls certificate: %w", err)
		}
		return func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if err := cri.SupportsCertificate(&cert); err != nil {
				g.noClientCertificate(m.CertificateFile, err)
				return new(tls.Certificate), nil
			}
			return &cert, nil
		}, nil
	}
	host := dsHost(g.DSDomain)
	return func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		var last error
		for _, c := range caddytls.AllMatchingCertificates(host) {
			cert := c.Certificate
			if last = cri.SupportsCertificate(&cert); last == nil {
				return &cert, nil
			}
		}
		if last == nil {
			last = errors.New("no certificate for it in Caddy's cache (serve the ds_domain host on this Caddy, or name certificate files)")
		}
		g.noClientCertificate(host, last)
		return new(tls.Certificate), nil
	}, nil
}

// noClientCertificate logs, sampled, that a peer asked for a certificate
// and none could be presented.
func (g *Gateway) noClientCertificate(source string, err error) {
	if c := g.sampled.Check(zapcore.WarnLevel, "presenting no client certificate to a peer"); c != nil {
		c.Write(zap.String("certificate", source), zap.Error(err))
	}
}

// roots returns the pool peers' certificates must chain to, nil for the
// system roots.
func (m *MutualTLS) roots(ctx caddy.Context) (*x509.CertPool, error) {
	if len(m.RootCAFiles) == 0 && len(m.TrustPKICAs) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	if m.SystemRoots {
		sys, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("mimi: mutual_tls system_roots: %w", err)
		}
		pool = sys
	}
	for _, file := range m.RootCAFiles {
		pemBytes, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("mimi: mutual_tls root_ca: %w", err)
		}
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("mimi: mutual_tls root_ca: %s holds no PEM certificate", file)
		}
	}
	if len(m.TrustPKICAs) > 0 {
		app, err := ctx.App("pki")
		if err != nil {
			return nil, fmt.Errorf("mimi: mutual_tls trust_pki_ca: loading pki app: %w", err)
		}
		for _, id := range m.TrustPKICAs {
			ca, err := app.(*caddypki.PKI).GetCA(ctx, id)
			if err != nil {
				return nil, fmt.Errorf("mimi: mutual_tls trust_pki_ca: %w", err)
			}
			pool.AddCert(ca.RootCertificate())
		}
	}
	return pool, nil
}

// checkPeerCertificate requires, when mutual TLS is on, that the
// connection of v's request carries a client certificate that names the
// DS authority discovered from v's sender (docs/protocol.md §4, check 7a).
// A refusal is logged with its reason, sampled, and answered with a
// certificate_required or bad_certificate DSError; a failed discovery of
// the sender's DS is backend_unavailable, so the peer retries.
func (g *Gateway) checkPeerCertificate(ctx context.Context, x *exchange, v *provider.Verified) error {
	if g.peerCerts == nil {
		return nil
	}
	sender := string(v.Request.Sender)
	var certs []*x509.Certificate
	if x.r.TLS != nil {
		certs = x.r.TLS.PeerCertificates
	}
	var authority string
	var err error
	if len(certs) == 0 {
		err = g.peerCerts.Verify(nil, "")
	} else {
		if authority, err = g.svc.Authority(ctx, sender); err != nil {
			return &moh.Error{Code: moh.CodeBackendUnavailable,
				Message: "the sender's DS authority cannot be discovered now; retry later",
				Err:     fmt.Errorf("checking the client certificate of %s: %w", sender, err)}
		}
		err = g.peerCerts.Verify(certs, authority)
	}
	if err != nil {
		if c := g.sampled.Check(zapcore.WarnLevel, "refused provider request: client certificate"); c != nil {
			dsErr := moh.DSErrorOf(err)
			fields := []zap.Field{zap.String("endpoint", x.rt.name), zap.String("sender_provider", sender),
				zap.String("remote_ip", remoteIP(x.r)), zap.String("code", dsErr.Code.String()),
				zap.ByteString("reason", dsErr.Message)}
			if cause := errors.Unwrap(err); cause != nil {
				fields = append(fields, zap.NamedError("cause", cause))
			}
			if authority != "" {
				fields = append(fields, zap.String("ds_authority", authority))
			}
			if len(certs) == 0 {
				fields = append(fields, zap.String("hint", "the peer sent no certificate; if none ever does, check that the site asks for one (tls { client_auth { mode request } }) and that TLS terminates at Caddy"))
			} else {
				fields = append(fields, zap.Strings("certificate_dns_names", certs[0].DNSNames))
			}
			c.Write(fields...)
		}
		return err
	}
	return nil
}

// dsHost is the host of a DS authority, without its port.
func dsHost(authority string) string {
	if i := strings.LastIndexByte(authority, ':'); i >= 0 {
		return authority[:i]
	}
	return authority
}

// unmarshalMutualTLS parses the mutual_tls block:
//
//	mutual_tls {
//		present_only
//		root_ca      <pem_file>
//		trust_pki_ca <ca_id>
//		system_roots
//		certificate  <cert_file> <key_file>
//	}
//
// root_ca and trust_pki_ca may repeat; the block may be empty.
func unmarshalMutualTLS(d *caddyfile.Dispenser) (*MutualTLS, error) {
	m := new(MutualTLS)
	for opt, err := range caddyopts.Block(d, "mutual_tls", "root_ca", "trust_pki_ca") {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "present_only", "system_roots":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			if opt == "present_only" {
				m.PresentOnly = true
			} else {
				m.SystemRoots = true
			}
		case "root_ca", "trust_pki_ca":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			if opt == "root_ca" {
				m.RootCAFiles = append(m.RootCAFiles, v)
			} else {
				m.TrustPKICAs = append(m.TrustPKICAs, v)
			}
		case "certificate":
			if !d.AllArgs(&m.CertificateFile, &m.KeyFile) {
				return nil, d.ArgErr()
			}
		default:
			return nil, d.Errf("unrecognized mutual_tls option '%s'", opt)
		}
	}
	if err := m.validate(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return m, nil
}
