package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// MaxRelayAnswer caps the answer Relay reads and holds: the answers of
// /group_operation (docs/protocol.md §5.4), the endpoint relayed whole,
// are small (ok, a group id, an error of at most moh.MaxMessageLen). The
// answers that carry a ratchet tree (welcome_info, external_commit_info:
// a tree of tens of thousands of members exceeds 16 MiB, and of the 2^18
// leaves a tree may have it may come near 1 GiB) are relayed with
// RelayStream, never held.
const MaxRelayAnswer = 1 << 20

// Relayed is a peer DS's answer to a relayed client request.
type Relayed struct {
	// Status is the HTTP status of the answer.
	Status int
	// ContentType is the answer's Content-Type.
	ContentType string
	// Body is the answer's body, at most MaxRelayAnswer bytes.
	Body []byte
	// RetryAfter is the answer's Retry-After header when it is a delay
	// in whole seconds (RFC 9110 §10.2.3), as PROFILE §3 has a 429 carry
	// it; empty otherwise.
	RetryAfter string
}

// maxRetryAfterDigits bounds the Retry-After a relay passes on: a delay
// of up to 10^9 - 1 seconds.
const maxRetryAfterDigits = 9

// RetryAfterSeconds returns v, a peer's Retry-After header, when it is a
// delay in whole seconds (RFC 9110 §10.2.3) of at most nine digits, else
// "": what a relay passes on to its client.
func RetryAfterSeconds(v string) string {
	if v == "" || len(v) > maxRetryAfterDigits || strings.Trim(v, "0123456789") != "" {
		return ""
	}
	return v
}

// Relay posts body, a client's DSRequest, unchanged to path (such as
// "/group_operation") of the DS of provider domain, discovered as for
// keys, through the fetcher's transport and its address and TLS policy,
// and returns the answer unchanged, with its Retry-After (docs/protocol.md
// §9: followers relay their clients' requests to the group's hub). The
// whole exchange is bounded by FetchPolicy.RelayTimeout and ctx, dialing
// and the TLS handshake by FetchPolicy.Timeout.
func (f *KeyFetcher) Relay(ctx context.Context, domain, path string, body []byte) (*Relayed, error) {
	req, authority, err := f.relayRequest(ctx, domain, path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := f.relay.Do(req)
	if err != nil {
		return nil, fmt.Errorf("relaying to %s: %w", authority, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxRelayAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of %s: %w", authority, err)
	}
	if len(raw) > MaxRelayAnswer {
		return nil, fmt.Errorf("the answer of %s exceeds %d bytes", authority, MaxRelayAnswer)
	}
	return &Relayed{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: raw,
		RetryAfter: RetryAfterSeconds(resp.Header.Get("Retry-After"))}, nil
}

// relayRequest is the POST of body to path of the DS of provider domain,
// discovered as for keys, with the content type of DS requests; it also
// returns the DS authority.
func (f *KeyFetcher) relayRequest(ctx context.Context, domain, path string, body io.Reader) (*http.Request, string, error) {
	if f.closed() {
		return nil, "", fmt.Errorf("relaying to %s: %w", domain, ErrFetcherClosed)
	}
	if !strings.HasPrefix(path, "/") {
		return nil, "", errors.New("relaying: path must start with /")
	}
	authority, err := f.Authority(ctx, domain) // cached, as for Client.Post
	if err != nil {
		return nil, "", fmt.Errorf("discovering %s: %w", domain, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+authority+path, body)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	return req, authority, nil
}
