package provider

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// AuthorityTTL is how long Authority reuses a discovery answer: the
// max-age that discovery answers carry (docs/protocol.md §2.2).
const AuthorityTTL = time.Hour

// discovered is a cached discovery answer, or failure.
type discovered struct {
	authority string
	err       error
	until     time.Time
}

// Authority returns the DS authority that domain's discovery names
// (docs/protocol.md §2.2), from a cache: an answer is reused for
// AuthorityTTL, a failure for FetchPolicy.MinInterval (then it fails at
// once, wrapping ErrFetchFailed), and every key fetch refreshes it. One
// discovery per domain is in flight at a time; it outlives the request
// that started it, but not the fetcher. Meant for senders whose signature
// verified, so the cost of a discovery is bounded by real peers; it
// spends no fetch budget.
func (f *KeyFetcher) Authority(ctx context.Context, domain string) (string, error) {
	now := f.now()
	f.mu.Lock()
	d, ok := f.authorities[domain]
	f.mu.Unlock()
	if ok && now.Before(d.until) {
		return d.authority, d.err
	}
	v, err, _ := f.group.Do("authority\x00"+domain, func() (any, error) {
		if f.closed() {
			return nil, ErrFetcherClosed
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.policy.Timeout)
		defer cancel()
		stop := context.AfterFunc(f.closing, cancel)
		defer stop()
		authority, err := f.Discover(dctx, domain)
		if f.closed() {
			return nil, fmt.Errorf("discovering %s: %w", domain, ErrFetcherClosed)
		}
		if err != nil {
			err = fmt.Errorf("%w: discovering %s: %v", ErrFetchFailed, domain, err)
		}
		f.noteAuthority(domain, authority, err, f.now())
		return authority, err
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// noteAuthority caches a discovery outcome for domain. A full cache drops
// its expired entries, or all of them: it only saves discoveries.
func (f *KeyFetcher) noteAuthority(domain, authority string, err error, now time.Time) {
	until := now.Add(AuthorityTTL)
	if err != nil {
		until = now.Add(f.policy.MinInterval)
		if errors.Is(err, ErrFetcherClosed) {
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.authorities == nil {
		f.authorities = make(map[string]discovered)
	}
	if len(f.authorities) >= f.policy.MaxPeers {
		for d, e := range f.authorities {
			if !now.Before(e.until) {
				delete(f.authorities, d)
			}
		}
		if len(f.authorities) >= f.policy.MaxPeers {
			clear(f.authorities)
		}
	}
	f.authorities[domain] = discovered{authority: authority, err: err, until: until}
}

// peerClient is the KeyFetcher's HTTP client: HTTPClient over TLS 1.3,
// presenting p.GetClientCertificate's certificate to peers that ask.
func (p FetchPolicy) peerClient() *http.Client {
	c := p.HTTPClient(tls.VersionTLS13)
	if p.GetClientCertificate != nil {
		c.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = p.GetClientCertificate
	}
	return c
}

// relayClient is Relay's client: peer, with its own transport whose wait
// for the answer's headers, like the whole exchange, is bounded by
// p.RelayTimeout rather than p.Timeout (a hub answers a DS operation only
// once it has done it); dialing and the TLS handshake keep p.Timeout.
func (p FetchPolicy) relayClient(peer *http.Client) *http.Client {
	t := peer.Transport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = p.RelayTimeout
	return &http.Client{Transport: t, Timeout: p.RelayTimeout, CheckRedirect: peer.CheckRedirect}
}
