// Package client is a MIMI client: one MLS client of one user, talking to
// its own provider's gateway. It keeps the client's MLS state on disk,
// gets a client binding and publishes KeyPackages through the gateway's
// local client API (docs/protocol.md §10), and runs groups through the
// Delivery Service's endpoints (§5): it creates groups, adds and removes
// users and clients, updates its leaf, joins externally, sends
// application messages, and fetches, processes and acknowledges what the
// gateway queued for it. The tests, the examples and cmd/mimictl build on
// it.
//
// A Client owns its state directory while it is open: Open and Init take a
// lock on it, and every change is written to disk (a temporary file,
// fsync, rename) before the call that made it returns, and, for an
// application message, before the message leaves.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// maxAnswer caps the answers a Client reads: a MessageList is at most 4
// MiB of messages, a ratchet tree of a large group a few MiB.
const maxAnswer = 32 << 20

// DefaultCipherSuite is the MLS cipher suite of a client whose InitOptions
// name none.
const DefaultCipherSuite = mls.X25519AES128GCMSHA256Ed25519

// Config says where a client's gateway is and how to reach it.
type Config struct {
	// Gateway is the base URL of the gateway's MoH endpoints, e.g.
	// "https://a.example:8443". Required.
	Gateway string
	// Local is the base URL of the gateway's local client API, e.g.
	// "https://a.example:8443/local". Required.
	Local string
	// Authorize adds the local API's credentials to a request (see
	// BasicAuth); nil sends none. It is not called for the MoH endpoints,
	// whose requests the client signs.
	Authorize func(*http.Request)
	// HTTPClient sends the requests; nil means a client that refuses TLS
	// below 1.3 and verifies certificates with the system roots. Long
	// polls last up to the wait given to Receive: a Timeout must be
	// longer.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// LockWait is how long Open, OpenContext and Init wait for a state
	// directory another Client (of this process or another) holds,
	// trying again every 100ms; after it they fail with ErrInUse. Zero
	// (or less) fails at once.
	LockWait time.Duration
	// MaxRetryWait is the longest wait a refusal's Retry-After (429
	// rate_limited, 503 backend_unavailable) may ask for that the client
	// waits out by itself, holding the Client, before it sends again a
	// request that is safe to repeat (see Error.RetryAfter), at most
	// twice. A refusal asking for longer, or for more than what is left
	// of the call's context, is returned at once. Zero means
	// DefaultMaxRetryWait; negative, the client never waits.
	MaxRetryWait time.Duration
}

// DefaultMaxRetryWait is the MaxRetryWait of a Config that sets none.
const DefaultMaxRetryWait = 5 * time.Minute

// maxRetries is how many times the client sends a request that is safe
// to repeat again after refusals whose Retry-After it waited out.
const maxRetries = 2

// BasicAuth returns a Config.Authorize that sends HTTP basic credentials.
func BasicAuth(user, password string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(user, password) }
}

// NewHTTPClient returns an HTTP client that speaks only TLS 1.3 and
// verifies the gateway's certificate against roots (nil: the system
// roots).
func NewHTTPClient(roots *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots}
	tr.ForceAttemptHTTP2 = true
	return &http.Client{Transport: tr}
}

// Client is one MLS client with its state directory open. Its methods are
// safe for concurrent use; they run one at a time.
type Client struct {
	cfg    Config
	dir    string
	http   *http.Client
	unlock func() error

	mu      sync.Mutex
	rec     *record
	signer  crypto.Signer
	sigPub  []byte
	binding *binding.ClientBinding
	members map[string]*group // by group id, loaded on first use
	closed  bool
}

// InitOptions describe the client Init creates.
type InitOptions struct {
	// ClientURI is the client's URI, mimi://<provider>/d/<user>/<device>;
	// the local API issues bindings only for the authenticated user's
	// clients. Required.
	ClientURI string
	// CipherSuite is the suite of the client's KeyPackages and of the
	// groups it creates; zero means DefaultCipherSuite.
	CipherSuite mls.CipherSuite
	// KeyPackages is how many single-use KeyPackages to publish, besides
	// one last-resort KeyPackage; zero means 10, negative none.
	KeyPackages int
}

// Init creates the client state in dir, which must not hold a client
// yet: a signature key, a client binding for it from the local API, and
// the published KeyPackages. The state is written before the KeyPackages
// are published, so a failed publish can be retried with Publish.
func Init(ctx context.Context, dir string, cfg Config, opts InitOptions) (*Client, error) {
	if _, _, _, err := moh.ParseClientURI([]byte(opts.ClientURI)); err != nil {
		return nil, fmt.Errorf("initialising client: %w", err)
	}
	cs := opts.CipherSuite
	if cs == 0 {
		cs = DefaultCipherSuite
	}
	if !cs.Supported() {
		return nil, fmt.Errorf("initialising client: cipher suite %d is not supported", uint16(cs))
	}
	// The state directory's entry, and those of the parents created with
	// it, are synced: after a crash, an Init that returned leaves its
	// directory in place.
	if err := mkdirDurable(dir); err != nil {
		return nil, fmt.Errorf("initialising client: %w", err)
	}
	c, err := newClient(ctx, dir, cfg)
	if err != nil {
		return nil, fmt.Errorf("initialising client: %w", err)
	}
	fail := func(err error) (*Client, error) {
		c.Close()
		return nil, fmt.Errorf("initialising client: %w", err)
	}
	// A directory an Init failed in before writing the state (a refused
	// binding, say) may be used again.
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil {
		return fail(fmt.Errorf("%s already holds a client", dir))
	}
	if err := mkdirDurable(filepath.Join(dir, groupsDir)); err != nil {
		return fail(err)
	}
	signer, pub, err := cs.GenerateSignatureKey()
	if err != nil {
		return fail(err)
	}
	raw, err := exportSigner(signer)
	if err != nil {
		return fail(err)
	}
	issued := uint64(max(c.now().Unix(), 0))
	var answer localapi.BindingAnswer
	if err := c.postLocal(ctx, "/binding", &localapi.BindingRequest{ClientURI: []byte(opts.ClientURI), SignatureKey: pub}, &answer); err != nil {
		return fail(fmt.Errorf("getting a client binding: %w", err))
	}
	bind, err := wire.Marshal(&answer.Binding)
	if err != nil {
		return fail(err)
	}
	rec := &record{clientURI: []byte(opts.ClientURI), suite: cs, sigKey: raw, binding: bind, bindingIssued: issued}
	if err := c.adopt(rec); err != nil {
		return fail(err)
	}
	if err := c.saveRecord(rec); err != nil {
		return fail(err)
	}
	n := opts.KeyPackages
	if n == 0 {
		n = 10
	}
	if n > 0 {
		if err := c.Publish(ctx, n, true); err != nil {
			return fail(err)
		}
	}
	return c, nil
}

// Open opens the client state Init created in dir; it is OpenContext
// with a context that is never done.
func Open(dir string, cfg Config) (*Client, error) {
	return OpenContext(context.Background(), dir, cfg)
}

// OpenContext opens the client state Init created in dir. When another
// Client holds dir, it waits up to cfg.LockWait for it, or until ctx is
// done, and fails with ErrInUse.
func OpenContext(ctx context.Context, dir string, cfg Config) (*Client, error) {
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
		return nil, fmt.Errorf("opening client: no client state in %s (Init creates it): %w", dir, err)
	}
	c, err := newClient(ctx, dir, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening client: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err == nil {
		var rec *record
		if rec, err = decodeRecord(data); err == nil {
			// The hold is an absolute time: opening never extends it,
			// and brings one further ahead than the longest wait a
			// refusal can ask for (MaxRetryAfter: the clock was set back
			// since it was recorded, the file was damaged) back to it.
			// Config.MaxRetryWait bounds waits within a call, not this.
			now := c.now()
			broughtBack := false
			if limit := now.Add(MaxRetryAfter).UTC(); rec.republishAfter.After(limit) {
				rec.republishAfter, broughtBack = limit, true
			}
			if !now.Before(rec.republishAfter) {
				rec.republishAfter = time.Time{}
			}
			if err = c.adopt(rec); err == nil && broughtBack {
				// Kept as brought back: a Client opened later would
				// otherwise bring the time stored back anew, from its
				// own opening, and hold the republish past the end
				// this one reports (RepublishHeld).
				if err = c.saveRecord(rec); err != nil {
					err = fmt.Errorf("keeping the republish hold brought back: %w", err)
				}
			}
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("opening client: %w", err)
	}
	c.removeOrphans()
	return c, nil
}

// newClient checks cfg and locks dir, waiting up to cfg.LockWait for it.
func newClient(ctx context.Context, dir string, cfg Config) (*Client, error) {
	for name, u := range map[string]string{"gateway": cfg.Gateway, "local API": cfg.Local} {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			return nil, fmt.Errorf("the %s URL %q is not an http(s) URL", name, u)
		}
	}
	unlock, err := lockDirWait(ctx, filepath.Join(dir, lockName), cfg.LockWait)
	if err != nil {
		return nil, err
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = NewHTTPClient(nil)
	}
	return &Client{cfg: cfg, dir: dir, http: hc, unlock: unlock, members: make(map[string]*group)}, nil
}

// adopt makes rec the client's record and parses its keys.
func (c *Client) adopt(rec *record) error {
	signer, err := rec.suite.ParseSignaturePrivateKey(rec.sigKey)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	b, err := binding.Decode(rec.binding)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	pub, err := signaturePublicKey(signer)
	if err != nil {
		return err
	}
	c.rec, c.signer, c.sigPub, c.binding = rec, signer, pub, b
	return nil
}

// removeOrphans deletes group files no group names any more: left behind
// by a crash between writing a group's file and the record that names it,
// or between dropping a group from the record and deleting its file. It
// also deletes the temporary files of writes a crash interrupted (in the
// groups directory they are orphans too): they hold keys, the signature
// key and KeyPackage or epoch secrets, that the client may have deleted
// since. Kept messages (outbox) of groups no longer named go too.
func (c *Client) removeOrphans() {
	if entries, err := os.ReadDir(c.dir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), tmpPrefix) && e.Type().IsRegular() {
				os.Remove(filepath.Join(c.dir, e.Name()))
			}
		}
	}
	used := make(map[string]bool)
	for _, g := range c.rec.groups {
		used[filepath.Base(groupPath(c.dir, g.file))] = true
	}
	// The kept messages are named like their groups' files.
	for _, sub := range []string{groupsDir, outboxDir} {
		entries, err := os.ReadDir(filepath.Join(c.dir, sub))
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !used[e.Name()] {
				os.Remove(filepath.Join(c.dir, sub, e.Name()))
			}
		}
	}
}

// Close releases the state directory. The state is already on disk.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.unlock()
}

// URI returns the client's URI.
func (c *Client) URI() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.rec.clientURI)
}

// Dir returns the client's state directory.
func (c *Client) Dir() string { return c.dir }

// CipherSuite returns the client's MLS cipher suite.
func (c *Client) CipherSuite() mls.CipherSuite {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec.suite
}

// BindingNotAfter returns the end of the client binding's validity.
func (c *Client) BindingNotAfter() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Unix(int64(c.binding.NotAfter), 0).UTC()
}

// RenewBinding gets the client a new client binding for its signature key
// from the local API (POST /binding, with the longest validity the gateway
// grants) and stores it. The client renews its binding by itself when less
// than a third of its validity is left, before it publishes KeyPackages,
// creates or joins a group, commits, or receives; RenewBinding is for
// renewing at a time of the caller's choice. KeyPackages published before
// carry the previous binding and are available at the gateway until it
// expires: a renewal that gets a binding outlasting the previous one
// publishes fresh ones carrying it to replace them (see republish),
// keeping the private keys of the old ones until they expire. When that
// publish fails, the renewal is kept, the publish is retried by the next
// operation, and RenewBinding returns the error; when the gateway refused
// it with a Retry-After, the operations try it again only once that wait
// is over, also those of a Client opened later from the state directory
// (see RepublishHeld). The client's leaf in a group gets the new binding
// with the client's next commit in that group (Update, Add, Remove).
func (c *Client) RenewBinding(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("renewing the client binding: client closed")
	}
	if err := c.renewBinding(ctx); err != nil {
		return err
	}
	if err := c.republishNoting(ctx); err != nil {
		return fmt.Errorf("the client binding was renewed, but (retried at the next operation): %w", err)
	}
	return nil
}

// renewBinding gets and stores a new binding. c.mu is held.
func (c *Client) renewBinding(ctx context.Context) error {
	issued := uint64(max(c.now().Unix(), 0))
	var answer localapi.BindingAnswer
	if err := c.postLocal(ctx, "/binding", &localapi.BindingRequest{ClientURI: c.rec.clientURI, SignatureKey: c.sigPub}, &answer); err != nil {
		return fmt.Errorf("renewing the client binding: %w", err)
	}
	if answer.Binding.NotAfter < issued {
		return fmt.Errorf("renewing the client binding: the gateway answered one that expired at %d", answer.Binding.NotAfter)
	}
	bind, err := wire.Marshal(&answer.Binding)
	if err != nil {
		return fmt.Errorf("renewing the client binding: %w", err)
	}
	b, err := binding.Decode(bind)
	if err != nil {
		return fmt.Errorf("renewing the client binding: %w", err)
	}
	rec := c.rec.clone()
	rec.binding, rec.bindingIssued = bind, issued
	// The KeyPackages published under the previous binding are claimable
	// only until it expires: replace them (republish), once the new
	// binding is stored, when it outlasts the previous one. A gateway
	// caps a binding at the end of the key that signs it, so a renewal
	// while that key still signs may answer one that ends when the
	// previous one does: the KeyPackages carrying that one last as long
	// as new ones would. A republish still due stays due.
	rec.republishDue = rec.republishDue || (len(rec.keyPackages) > 0 && b.NotAfter > c.binding.NotAfter)
	if err := c.saveRecord(rec); err != nil {
		return fmt.Errorf("renewing the client binding: %w", err)
	}
	c.binding = b
	return nil
}

// bindingDue reports whether the binding is to be renewed: less than a
// third of its validity is left, or when it was issued is not known.
// c.mu is held.
func (c *Client) bindingDue() bool {
	now, issued, end := c.now().Unix(), int64(c.rec.bindingIssued), int64(c.binding.NotAfter)
	return issued <= 0 || issued >= end || now > end-(end-issued)/3
}

// freshBinding renews the binding when it is due, before an operation
// that signs a leaf with it. A failed renewal is an error only when the
// binding has expired (the gateway would refuse the leaf); otherwise the
// operation goes on with the current one, and the next operation tries
// again. It then publishes the KeyPackages a renewal, of this operation or
// an earlier one, is yet to replace (republish); a failure there fails
// nothing, the next operation tries again, or, after a refusal with
// Retry-After, the first one after that wait (recorded in the state, so
// also of a Client opened later; RenewBinding tries at once). c.mu is
// held.
func (c *Client) freshBinding(ctx context.Context) error {
	if c.bindingDue() {
		err := c.renewBinding(ctx)
		if err != nil && c.now().Unix() > int64(c.binding.NotAfter) {
			return fmt.Errorf("the client binding expired at %s: %w", time.Unix(int64(c.binding.NotAfter), 0).UTC().Format(time.RFC3339), err)
		}
	}
	// A republish that fails (it is recorded as due) is tried again by
	// the next operation, or, when the gateway asked for a wait (a 429 of
	// the user's publish rate), by the first operation after it; the
	// operation goes on.
	if c.now().Before(c.rec.republishAfter) {
		return nil
	}
	_ = c.republishNoting(ctx)
	return nil
}

// republishNoting runs republish and, when the gateway refused it with a
// Retry-After, records in the client record when the operations may try
// it again (republishAfter): a Client opened later from the state holds
// off until then too. c.mu is held.
func (c *Client) republishNoting(ctx context.Context) error {
	err := c.republish(ctx)
	if d, ok := RetryAfterOf(err); ok {
		rec := c.rec.clone()
		rec.republishAfter = c.now().Add(d).UTC()
		if serr := c.saveRecord(rec); serr != nil {
			return fmt.Errorf("%w (and recording the wait: %v)", err, serr)
		}
	}
	return err
}

// RepublishHeld returns how long the operations still hold off the
// republish of KeyPackages that a renewal of the binding made due (see
// RenewBinding), after the gateway refused it with a Retry-After; 0 when
// no republish is due or none is held. The hold is kept in the state
// directory: a Client opened from it later holds off until the same time
// (at most MaxRetryAfter from its opening).
func (c *Client) RepublishHeld() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.rec.republishDue {
		return 0
	}
	return max(c.rec.republishAfter.Sub(c.now()), 0)
}

// userURI returns the user URI of the client.
func (c *Client) userURI() string {
	return userOf(c.rec.clientURI)
}

// userOf returns the user URI of a client URI, "" when it is not one.
func userOf(clientURI []byte) string {
	prov, user, _, err := moh.ParseClientURI(clientURI)
	if err != nil {
		return ""
	}
	return moh.UserURI(string(prov), string(user))
}

// now returns the client's clock.
func (c *Client) now() time.Time {
	if c.cfg.Now != nil {
		return c.cfg.Now()
	}
	return time.Now()
}

// saveRecord writes rec to disk and makes it the client's record. A
// republish hold that is over is dropped.
func (c *Client) saveRecord(rec *record) error {
	if !rec.republishAfter.IsZero() && !c.now().Before(rec.republishAfter) {
		r := *rec
		r.republishAfter = time.Time{}
		rec = &r
	}
	data, err := wire.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encoding client record: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(c.dir, stateFile), data); err != nil {
		return err
	}
	c.rec = rec
	return nil
}

// exportSigner returns the private key of a signer GenerateSignatureKey
// made, in the encoding ParseSignaturePrivateKey reads.
func exportSigner(signer crypto.Signer) ([]byte, error) {
	switch k := signer.(type) {
	case ed25519.PrivateKey:
		return k.Seed(), nil
	case *ecdsa.PrivateKey:
		raw, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("exporting signature key: %w", err)
		}
		return raw, nil
	default:
		return nil, fmt.Errorf("exporting signature key: signer of type %T", signer)
	}
}

// signaturePublicKey returns the MLS encoding of signer's public key.
func signaturePublicKey(signer crypto.Signer) ([]byte, error) {
	switch k := signer.Public().(type) {
	case ed25519.PublicKey:
		return bytes.Clone(k), nil
	case *ecdsa.PublicKey:
		pub, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("encoding signature key: %w", err)
		}
		return pub, nil
	default:
		return nil, fmt.Errorf("encoding signature key: public key of type %T", k)
	}
}

// Error is a refusal by the gateway: the HTTP status and the DSError it
// answered.
type Error struct {
	// Op is what the client asked, e.g. "group_operation add_users" or
	// "local /binding".
	Op string
	// Status is the HTTP status.
	Status int
	// Code and Message are the DSError's. Code is 0 when the answer was not
	// a DSError (something in front of the gateway answered, such as the
	// authentication handler of the local API); Message then says so.
	Code    moh.Code
	Message string
	// RetryAfter is the wait the answer's Retry-After header asked for
	// (RFC 9110 §10.2.3: delta-seconds, or an HTTP-date taken against
	// the answer's Date), at most MaxRetryAfter; 0 when the answer had
	// none, or a malformed one. A gateway sends it with 429 rate_limited
	// and with some 503 backend_unavailable answers.
	RetryAfter time.Duration
}

// Error implements error.
func (e *Error) Error() string {
	if e.Code == 0 {
		return fmt.Sprintf("%s: %d %s: %s", e.Op, e.Status, http.StatusText(e.Status), e.Message)
	}
	return fmt.Sprintf("%s: %d %s: %s", e.Op, e.Status, e.Code, e.Message)
}

// RetryAfterOf returns the Retry-After of a gateway refusal in err's
// chain, and false when err holds none with a Retry-After.
func RetryAfterOf(err error) (time.Duration, bool) {
	var e *Error
	if errors.As(err, &e) && e.RetryAfter > 0 {
		return e.RetryAfter, true
	}
	return 0, false
}

// MaxRetryAfter bounds the wait a Retry-After header can ask for: a
// longer one is taken as this long.
const MaxRetryAfter = 24 * time.Hour

// parseRetryAfter returns the wait a Retry-After header value v asks
// for (RFC 9110 §10.2.3), at most MaxRetryAfter: delta-seconds (one or
// more digits), or an HTTP-date (the three forms of §5.6.7), taken
// against date, the answer's Date header, or now when that is missing
// or malformed (a date in the past asks for no wait). It reports false
// for a missing or malformed value.
func parseRetryAfter(v, date string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if strings.Trim(v, "0123456789") == "" {
		// More digits than a day of seconds has are over the bound.
		digits := strings.TrimLeft(v, "0")
		if len(digits) > 6 {
			return MaxRetryAfter, true
		}
		n, err := strconv.Atoi(v[len(v)-max(len(digits), 1):])
		if err != nil {
			return 0, false
		}
		return min(time.Duration(n)*time.Second, MaxRetryAfter), true
	}
	at, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	if d, err := http.ParseTime(date); err == nil {
		now = d
	}
	return min(max(at.Sub(now), 0), MaxRetryAfter), true
}

// retryWait returns the wait err asks for before a request that is safe
// to repeat is sent again, and false when the client is not to wait for
// it: err is not a 429 or 503 refusal with a Retry-After, or asks for
// more than MaxRetryWait, or for more than ctx has left.
func (c *Client) retryWait(ctx context.Context, err error) (time.Duration, bool) {
	var e *Error
	if !errors.As(err, &e) || (e.Status != http.StatusTooManyRequests && e.Status != http.StatusServiceUnavailable) || e.RetryAfter <= 0 {
		return 0, false
	}
	limit := c.cfg.MaxRetryWait
	if limit == 0 {
		limit = DefaultMaxRetryWait
	}
	if e.RetryAfter > limit {
		return 0, false
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= e.RetryAfter {
		return 0, false
	}
	return e.RetryAfter, true
}

// sleep waits d, and reports false when ctx was done first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// repeatable runs attempt, which sends a request that is safe to repeat
// (a read, an acknowledgement), and runs it again, at most maxRetries
// times, after each refusal whose Retry-After the client waits out
// (retryWait). It returns the last attempt's error, the refusal when the
// wait was not waited out (too long, or ctx done).
func (c *Client) repeatable(ctx context.Context, attempt func() error) error {
	for n := 0; ; n++ {
		err := attempt()
		if err == nil || n == maxRetries {
			return err
		}
		d, ok := c.retryWait(ctx, err)
		if !ok || !sleep(ctx, d) {
			return err
		}
	}
}

// CodeOf returns the DSError code of a gateway refusal in err's chain, and
// false when err holds none.
func CodeOf(err error) (moh.Code, bool) {
	var e *Error
	if errors.As(err, &e) && e.Code != 0 {
		return e.Code, true
	}
	return 0, false
}

// refused reports whether err holds a refusal that says the request was
// not carried out: a DSError with a 4xx status. A 5xx DSError (a hub's
// backend_unavailable behind a relaying follower, which may have
// accepted) and any other failure (a connection reset, a proxy's 502 or
// 504) leave the outcome unknown.
func refused(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code != 0 && e.Status >= 400 && e.Status < 500
}

// answer is a gateway's answer to a request.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends req and returns the answer.
func (c *Client) do(req *http.Request) (*answer, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &transportError{err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, &transportError{fmt.Errorf("reading the answer: %w", err)}
	}
	if len(body) > maxAnswer {
		return nil, fmt.Errorf("the answer exceeds %d bytes", maxAnswer)
	}
	return &answer{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// transportError is a request that got no whole answer: the connection
// failed before or while the answer came, so the gateway may have done
// the request or not.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// isTransport reports whether err is a transportError.
func isTransport(err error) bool {
	var te *transportError
	return errors.As(err, &te)
}

// refusal decodes a non-200 answer as the gateway's DSResponse error,
// with the wait its Retry-After asks for.
func (c *Client) refusal(op string, a *answer) error {
	ra, _ := parseRetryAfter(a.header.Get("Retry-After"), a.header.Get("Date"), time.Now())
	var r moh.DSResponse
	if err := wire.Unmarshal(a.body, &r, "DSResponse"); err != nil || r.Type != moh.ResponseError {
		return &Error{Op: op, Status: a.status, Message: fmt.Sprintf("the answer (%d bytes) is not a DSError", len(a.body)), RetryAfter: ra}
	}
	return &Error{Op: op, Status: a.status, Code: r.Error.Code, Message: string(r.Error.Message), RetryAfter: ra}
}

// postDS posts a DSRequest to the gateway's path and returns its
// DSResponse; a refusal is an *Error.
func (c *Client) postDS(ctx context.Context, path, op string, body []byte) (*moh.DSResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.cfg.Gateway, "/")+path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	a, err := c.do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if a.status != http.StatusOK {
		return nil, c.refusal(op, a)
	}
	var r moh.DSResponse
	if err := wire.Unmarshal(a.body, &r, "DSResponse"); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if r.Type == moh.ResponseError {
		return nil, &Error{Op: op, Status: a.status, Code: r.Error.Code, Message: string(r.Error.Message)}
	}
	return &r, nil
}

// localRequest sends a request to the local API's path (with query for a
// GET, body for a POST) and decodes a 200 answer into out. A GET, and an
// acknowledgement (POST /messages/ack, which acknowledges nothing more
// when repeated), are sent again after a refusal whose Retry-After the
// client waits out (repeatable).
func (c *Client) localRequest(ctx context.Context, method, path string, query url.Values, body []byte, out wire.Unmarshaler) error {
	if method == http.MethodGet || path == "/messages/ack" {
		return c.repeatable(ctx, func() error { return c.localRequestOnce(ctx, method, path, query, body, out) })
	}
	return c.localRequestOnce(ctx, method, path, query, body, out)
}

// localRequestOnce is localRequest without retries.
func (c *Client) localRequestOnce(ctx context.Context, method, path string, query url.Values, body []byte, out wire.Unmarshaler) error {
	op := "local " + path
	u := strings.TrimSuffix(c.cfg.Local, "/") + path
	if query != nil {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	if c.cfg.Authorize != nil {
		c.cfg.Authorize(req)
	}
	a, err := c.do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if a.status != http.StatusOK {
		return c.refusal(op, a)
	}
	if err := wire.Unmarshal(a.body, out, op+" answer"); err != nil {
		return fmt.Errorf("%s: a 200 answer of %d bytes: %w", op, len(a.body), err)
	}
	return nil
}

// postLocal posts v to the local API's path and decodes the answer into
// out.
func (c *Client) postLocal(ctx context.Context, path string, v wire.Marshaler, out wire.Unmarshaler) error {
	body, err := wire.Marshal(v)
	if err != nil {
		return fmt.Errorf("local %s: %w", path, err)
	}
	return c.localRequest(ctx, http.MethodPost, path, nil, body, out)
}
