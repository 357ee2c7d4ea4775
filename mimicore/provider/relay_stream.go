package provider

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// RelayStream is Relay for attachment uploads and downloads, whose bodies
// and answers are streamed rather than held: it posts body (size bytes,
// or of unknown length when size is negative) to path of the DS of
// provider domain, with the request headers in header (such as Range),
// and returns the hub's answer unread. The caller closes its Body.
// Connecting is bounded by FetchPolicy.Timeout, the wait for the answer's
// headers once the body is sent by FetchPolicy.RelayTimeout (the hub may
// take longer than a key fetch to store an upload or copy an
// attachment), not the bodies; ctx bounds the whole.
func (f *KeyFetcher) RelayStream(ctx context.Context, domain, path string, body io.Reader, size int64, header http.Header) (*http.Response, error) {
	req, authority, err := f.relayRequest(ctx, domain, path, body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	for k, v := range header {
		if k != "Content-Type" {
			req.Header[k] = v
		}
	}
	// Relay's transport and its policy, without its bound on the whole
	// exchange: an attachment may take minutes. ctx bounds it.
	c := &http.Client{Transport: f.relay.Transport, CheckRedirect: f.relay.CheckRedirect}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("relaying to %s: %w", authority, err)
	}
	return resp, nil
}
