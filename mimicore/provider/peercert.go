package provider

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// maxVerifiedChains bounds the CertVerifier's cache of verified chains.
const maxVerifiedChains = 4096

// CertVerifier checks the TLS client certificate that came with a provider
// request when mutual TLS is required (docs/protocol.md §4.4): the chain
// the client sent must lead from a leaf that is valid now and allows TLS
// authentication (an extended key usage of serverAuth or clientAuth, or
// none) to one of Roots, and the leaf must name the host of the DS
// authority discovered from the request's sender, as a TLS client checks a
// server name (a DNS SAN equal to the host, or a wildcard in its left-most
// label).
//
// It is this gateway's own check, not the TLS stack's: Go's server-side
// verification insists on the clientAuth extended key usage, which public
// WebPKI certificates no longer carry, so the TLS layer only requests the
// certificate and the handler calls Verify. Verified chains are cached by
// the certificates' bytes until the earliest expiry in the chain, so a
// busy peer connection costs one chain verification, not one per request.
// It is safe for concurrent use.
type CertVerifier struct {
	// Roots are the trusted roots; nil means the system roots.
	Roots *x509.CertPool
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	verified map[[32]byte]time.Time // chain digest -> valid until
}

// Verify checks certs, the certificates the client presented (leaf first,
// as in tls.ConnectionState.PeerCertificates), against authority, a DS
// authority (host or host:port). Every failure is a *moh.Error:
// certificate_required when certs is empty, bad_certificate otherwise; its
// Message says which check failed, and its Err carries the details for
// the log.
func (v *CertVerifier) Verify(certs []*x509.Certificate, authority string) error {
	if len(certs) == 0 {
		return moh.Errorf(moh.CodeCertRequired, "mutual TLS is required: present a certificate that names your DS authority")
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	leaf := certs[0]
	key := chainKey(certs)
	if !v.cached(key, now) {
		until, err := v.verifyChain(certs, now)
		if err != nil {
			return err
		}
		v.remember(key, until, now)
	}
	host := authorityHost(authority)
	if err := leaf.VerifyHostname(host); err != nil {
		return &moh.Error{Code: moh.CodeBadCertificate,
			Message: "the client certificate does not name the DS authority of the sender",
			Err:     fmt.Errorf("client certificate for %s: %w", host, err)}
	}
	return nil
}

// verifyChain verifies certs' chain at now and returns the time until
// which the chain stays valid (the earliest NotAfter in it).
func (v *CertVerifier) verifyChain(certs []*x509.Certificate, now time.Time) (time.Time, error) {
	opts := x509.VerifyOptions{
		Roots:       v.Roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if len(certs) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	chains, err := certs[0].Verify(opts)
	if err != nil {
		return time.Time{}, &moh.Error{Code: moh.CodeBadCertificate, Message: chainMessage(err),
			Err: fmt.Errorf("verifying client certificate chain: %w", err)}
	}
	var until time.Time
	for _, chain := range chains {
		end := chain[0].NotAfter
		for _, c := range chain[1:] {
			if c.NotAfter.Before(end) {
				end = c.NotAfter
			}
		}
		if end.After(until) {
			until = end
		}
	}
	return until, nil
}

// chainMessage is the peer-visible reason of a chain verification failure.
func chainMessage(err error) string {
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.Expired:
			return "the client certificate chain is expired or not yet valid"
		case x509.IncompatibleUsage:
			return "the client certificate does not allow TLS server or client authentication"
		}
	}
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return "the client certificate does not chain to a trusted root"
	}
	return "the client certificate chain does not verify"
}

// cached reports whether the chain with digest key verified before and is
// still valid at now.
func (v *CertVerifier) cached(key [32]byte, now time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	until, ok := v.verified[key]
	return ok && !now.After(until)
}

// remember records that the chain with digest key verified and stays
// valid until until. A full cache drops its expired entries, or all of
// them: it only saves work.
func (v *CertVerifier) remember(key [32]byte, until, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.verified == nil {
		v.verified = make(map[[32]byte]time.Time)
	}
	if len(v.verified) >= maxVerifiedChains {
		for k, u := range v.verified {
			if now.After(u) {
				delete(v.verified, k)
			}
		}
		if len(v.verified) >= maxVerifiedChains {
			clear(v.verified)
		}
	}
	v.verified[key] = until
}

// chainKey digests the certificates of a chain, in order.
func chainKey(certs []*x509.Certificate) [32]byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range certs {
		l := len(c.Raw)
		n[0], n[1], n[2], n[3] = byte(l>>24), byte(l>>16), byte(l>>8), byte(l)
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// authorityHost is the host of a DS authority, without its port.
func authorityHost(authority string) string {
	if i := strings.LastIndexByte(authority, ':'); i >= 0 {
		return authority[:i]
	}
	return authority
}
