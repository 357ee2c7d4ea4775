package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// RelayStream is Relay for attachment uploads and downloads, whose bodies
// and answers are streamed rather than held: it posts body (size bytes,
// or of unknown length when size is negative) to path of the DS of
// provider domain, with the request headers in header (such as Range),
// and returns the hub's answer unread. The caller closes its Body. The
// fetcher's bound on one exchange (FetchPolicy.Timeout) applies to
// connecting and to the answer's headers, not to the bodies; ctx bounds
// the whole.
func (f *KeyFetcher) RelayStream(ctx context.Context, domain, path string, body io.Reader, size int64, header http.Header) (*http.Response, error) {
	if f.closed() {
		return nil, fmt.Errorf("relaying to %s: %w", domain, ErrFetcherClosed)
	}
	if !strings.HasPrefix(path, "/") {
		return nil, errors.New("relaying: path must start with /")
	}
	authority, err := f.Discover(ctx, domain)
	if err != nil {
		return nil, fmt.Errorf("discovering %s: %w", domain, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+authority+path, body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	// The fetcher's transport and its policy, without its bound on the
	// whole exchange: an attachment may take minutes. ctx bounds it.
	c := &http.Client{Transport: f.client.Transport, CheckRedirect: f.client.CheckRedirect}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("relaying to %s: %w", authority, err)
	}
	return resp, nil
}
