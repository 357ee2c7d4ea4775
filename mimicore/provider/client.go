package provider

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// maxAnswerBody caps the answers a Client reads.
const maxAnswerBody = 16 << 20

// Signer returns the key that signs requests now.
type Signer interface {
	Current(now time.Time) (*PrivateKey, error)
}

// Client sends provider-signed requests to peer providers: it discovers the
// peer's DS, signs the request with the current key and decodes the answer.
// It shares the fetch policy (addresses, ports, TLS roots) of a KeyFetcher.
type Client struct {
	// Sender is this provider's domain.
	Sender string
	// Keys signs the requests.
	Keys Signer
	// Fetcher supplies discovery and the HTTP transport.
	Fetcher *KeyFetcher
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Answer is a peer's answer to a provider request.
type Answer struct {
	Status   int
	Response moh.DSResponse
	Raw      []byte
	// RetryAfter is the answer's Retry-After in delta-seconds (RFC 9110
	// §10.2.3), 0 when it has none or another form (a date).
	RetryAfter time.Duration
}

// Err returns the DSError of an error answer, or nil.
func (a *Answer) Err() error {
	if a.Response.Type == moh.ResponseError {
		return &a.Response.Error
	}
	return nil
}

// Send signs a request of typ carrying payload for recipient, posts it and
// returns the decoded answer. The request gets a fresh 16-byte request_id; a
// retry of the same bytes can be made with Post.
func (c *Client) Send(ctx context.Context, recipient string, typ moh.ProviderRequestType, payload []byte) (*Answer, error) {
	raw, err := c.Sign(recipient, typ, payload)
	if err != nil {
		return nil, err
	}
	return c.Post(ctx, recipient, typ, raw)
}

// Sign builds and signs a request without sending it.
func (c *Client) Sign(recipient string, typ moh.ProviderRequestType, payload []byte) ([]byte, error) {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	t := now()
	key, err := c.Keys.Current(t)
	if err != nil {
		return nil, fmt.Errorf("signing %s request: %w", typ, err)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	req := &moh.ProviderRequest{
		RequestType: typ,
		Sender:      []byte(c.Sender),
		Recipient:   []byte(recipient),
		Timestamp:   unixSeconds(t),
		RequestID:   id,
		Payload:     payload,
	}
	return SignRequest(req, key)
}

// Post sends an already signed request to recipient's DS.
func (c *Client) Post(ctx context.Context, recipient string, typ moh.ProviderRequestType, raw []byte) (*Answer, error) {
	if c.Fetcher.closed() {
		return nil, fmt.Errorf("posting %s to %s: %w", typ, recipient, ErrFetcherClosed)
	}
	// The cached discovery (an hour, a failure a minute): a GET of the
	// recipient's discovery endpoint per request would double the
	// requests of every delivery and claim.
	authority, err := c.Fetcher.Authority(ctx, recipient)
	if err != nil {
		return nil, fmt.Errorf("discovering %s: %w", recipient, err)
	}
	// Whether the request got a connection: a dial that timed out ends
	// as the request's own timeout (the client's deadline comes first),
	// not as a dial error, and only this tells the two apart.
	var connected atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { connected.Store(true) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+authority+"/"+typ.String(), bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.Fetcher.client.Do(req)
	if err != nil {
		if !connected.Load() {
			return nil, fmt.Errorf("posting %s to %s: %w: %w", typ, authority, ErrNotConnected, err)
		}
		return nil, fmt.Errorf("posting %s to %s: %w", typ, authority, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading answer of %s: %w", authority, err)
	}
	if len(body) > maxAnswerBody {
		return nil, errors.New("answer exceeds 16 MiB")
	}
	a := &Answer{Status: resp.StatusCode, Raw: body, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	if err := wire.Unmarshal(body, &a.Response, "DSResponse"); err != nil {
		return a, fmt.Errorf("answer of %s (status %d): %w", authority, resp.StatusCode, err)
	}
	if a.Status == http.StatusUnauthorized && a.Response.Type == moh.ResponseError && c.Fetcher.policy.GetClientCertificate != nil &&
		(a.Response.Error.Code == moh.CodeCertRequired || a.Response.Error.Code == moh.CodeBadCertificate) {
		c.Fetcher.retireConnection(ctx, authority)
	}
	return a, nil
}

// retireConnection takes the connection to authority that its next
// request would use out of use, once the requests in flight on it end: it
// sends a GET of the discovery path marked Connection: close, whose answer
// is ignored (over HTTP/2 the connection then takes no new request).
//
// Post calls it when a peer refused the client certificate of the
// connection a request went over. The certificate is the one presented at
// the connection's handshake, and a peer checks it at every request
// (docs/protocol.md §4.4): a connection opened before this gateway had a
// certificate, or kept alive past the expiry of the one it presented,
// would be refused for as long as traffic keeps it open, while a new
// connection presents the certificate of the moment
// (FetchPolicy.GetClientCertificate).
func (f *KeyFetcher) retireConnection(ctx context.Context, authority string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+authority+"/.well-known/mimi/ds-domain", nil)
	if err != nil {
		return
	}
	req.Close = true
	resp, err := f.client.Do(req)
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
}

// maxRetryAfter bounds the Retry-After an Answer keeps: a day, beyond
// which a peer's value is not a wait anybody acts on.
const maxRetryAfter = 24 * time.Hour

// retryAfter parses a Retry-After value of delta-seconds, capped at
// maxRetryAfter; another form (an HTTP date) or none is 0.
func retryAfter(v string) time.Duration {
	if v == "" || len(v) > 10 {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0
	}
	return min(time.Duration(n)*time.Second, maxRetryAfter)
}
