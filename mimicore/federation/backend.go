package federation

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Headers and constants of a delivery to the legacy backend
// (docs/protocol.md §11).
const (
	// HeaderDeliveryID names the delivery: the same for every attempt
	// of one outbox message, so the backend drops duplicates by it.
	HeaderDeliveryID = "Mimi-Delivery-Id"
	// HeaderTimestamp is the attempt's time, in Unix seconds.
	HeaderTimestamp = "Mimi-Timestamp"
	// HeaderSignature is "v1=" and the hex HMAC-SHA256 of the attempt
	// (BackendSignature).
	HeaderSignature = "Mimi-Signature"
	// BackendSignatureLabel starts the bytes the HMAC covers.
	BackendSignatureLabel = "mimi-backend-v1"
	// MinBackendKeySize is the shortest HMAC key accepted.
	MinBackendKeySize = 32
	// DefaultBackendTimeout bounds one attempt when Backend.Timeout is
	// zero.
	DefaultBackendTimeout = 10 * time.Second
	// maxBackendAnswer is how much of an answer's body is read (and
	// ignored) so that the connection can be reused.
	maxBackendAnswer = 64 << 10
)

// BackendMessage is the JSON body of a delivery to the legacy backend
// (docs/protocol.md §11), its fields in this order.
type BackendMessage struct {
	// GroupID is the MLS group id, base64 (RFC 4648 §4, padded).
	GroupID []byte `json:"group_id"`
	// Sender is the provider domain of the group's hub, which sent the
	// message: a peer for what arrived by deliver_message, this provider
	// for a group hosted here.
	Sender string `json:"sender"`
	// Recipients are the client URIs of this provider's clients that get
	// the message, 1..store.MaxOutboxRecipients.
	Recipients []string `json:"recipients"`
	// Message is the RFC 9420 MLSMessage, base64.
	Message []byte `json:"message"`
}

// BackendBody encodes the body of a delivery of outbox message e to the
// legacy backend: BackendMessage as JSON, without white space.
func BackendBody(e store.OutboxMessage) ([]byte, error) {
	b, err := json.Marshal(BackendMessage{GroupID: e.GroupID, Sender: e.Sender, Recipients: e.Recipients, Message: e.Message})
	if err != nil {
		return nil, fmt.Errorf("encoding a backend delivery: %w", err)
	}
	return b, nil
}

// BackendDeliveryID is the delivery id of body: the first 16 bytes of its
// SHA-256, in lowercase hex. Every attempt of one outbox message has the
// same body, hence the same id.
func BackendDeliveryID(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:16])
}

// BackendSignature is the Mimi-Signature value of an attempt: "v1=" and the
// lowercase hex HMAC-SHA256 under key of BackendSignatureLabel, the
// timestamp in decimal, the delivery id and the body, the first three
// each followed by a line feed.
func BackendSignature(key []byte, timestamp int64, deliveryID string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(BackendSignatureLabel + "\n" + strconv.FormatInt(timestamp, 10) + "\n" + deliveryID + "\n"))
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// Backend is the legacy backend delivery target: an HTTP(S) URL that gets
// each message for this provider's own clients as a signed POST
// (docs/protocol.md §11). It is safe for concurrent use once built.
type Backend struct {
	// URL is the backend's endpoint, http or https. Required.
	URL string
	// Key is the HMAC-SHA256 key shared with the backend, at least
	// MinBackendKeySize bytes. Required. It is never logged.
	Key []byte
	// Client sends the requests; nil means a client that follows no
	// redirect, with the system's roots. Its Timeout, if any, applies
	// besides Timeout.
	Client *http.Client
	// Timeout bounds one attempt, answer included. Default
	// DefaultBackendTimeout.
	Timeout time.Duration
	// Now is the clock of the timestamps; nil means time.Now.
	Now func() time.Time
}

// Check reports a backend that cannot be used: a URL CheckBackendURL
// refuses, or a short key. The errors never show the key, nor the URL.
func (b *Backend) Check() error {
	if err := CheckBackendURL(b.URL); err != nil {
		return err
	}
	if len(b.Key) < MinBackendKeySize {
		return fmt.Errorf("backend key is %d bytes, want at least %d", len(b.Key), MinBackendKeySize)
	}
	return nil
}

// CheckBackendURL reports a legacy backend URL that cannot be used: not
// http or https with a host, or carrying user information, a query or a
// fragment (the URL is logged with every failed attempt, and the backend
// authenticates requests by their HMAC, so it must hold no secret). The
// error does not repeat the URL.
func CheckBackendURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("backend URL is not an http or https URL with a host")
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return errors.New("backend URL has user information, a query or a fragment: it is logged, so it must hold no secret (the backend authenticates by the HMAC)")
	}
	return nil
}

// defaultBackendClient follows no redirect: a 3xx is an answer.
var defaultBackendClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// Post sends outbox message e to the backend once and returns the
// answer's status, or an error when no answer came.
func (b *Backend) Post(ctx context.Context, e store.OutboxMessage) (int, error) {
	body, err := BackendBody(e)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, orDefault(b.Timeout, DefaultBackendTimeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("posting to the backend: %w", err)
	}
	now := time.Now
	if b.Now != nil {
		now = b.Now
	}
	ts := now().Unix()
	id := BackendDeliveryID(body)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderDeliveryID, id)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderSignature, BackendSignature(b.Key, ts, id, body))
	cl := b.Client
	if cl == nil {
		cl = defaultBackendClient
	}
	resp, err := cl.Do(req)
	if err != nil {
		// The URL is the operator's; the error names it, never the key.
		return 0, fmt.Errorf("posting to the backend: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBackendAnswer))
	return resp.StatusCode, nil
}

// errNoBackend fails the messages for the backend while none is
// configured: they wait, and are given up at the give-up age.
var errNoBackend = errors.New("no legacy backend is configured (delivery backend)")

// backendOutcome sorts a backend's answer: done (2xx), to retry (no answer,
// 3xx, 401, 403, 408, 429, 5xx), or refused for good (any other 4xx). A
// 401 or 403 is an authentication failure (the backend does not hold the
// gateway's key yet, during a key rotation): it is retried until the key
// matches or the message reaches the give-up age.
func backendOutcome(status int) (done, retry bool) {
	switch {
	case status >= 200 && status < 300:
		return true, false
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests,
		status == http.StatusUnauthorized, status == http.StatusForbidden:
		return false, true
	case status >= 400 && status < 500:
		return false, false
	}
	return false, true
}
