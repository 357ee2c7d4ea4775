// Package localapi implements the gateway's local client API (PROFILE §9,
// docs/protocol.md §10): how the provider's own clients, or its legacy
// backend acting for them, get client bindings, publish KeyPackages, and
// fetch and acknowledge their queued messages.
//
// The API does not authenticate anyone: the HTTP layer names the
// authenticated user (from whatever authentication runs in front of it),
// and every operation checks that the client URI it acts for names one of
// the provider's domains and that user. Errors are *moh.Error values with
// the DSError code to answer; an error of the store is wrapped in a
// backend_unavailable error whose cause is for logs only.
//
// The package does not depend on Caddy.
package localapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Defaults and bounds of Config.
const (
	// DefaultBindingLifetime is the longest validity of an issued binding
	// when Config.MaxBindingLifetime is zero.
	DefaultBindingLifetime = 30 * 24 * time.Hour
	// DefaultMaxWait caps a long poll when Config.MaxWait is zero.
	DefaultMaxWait = 60 * time.Second
	// DefaultMaxKeyPackagesPerClient bounds the KeyPackages one client
	// has available when Config.MaxKeyPackagesPerClient is zero.
	DefaultMaxKeyPackagesPerClient = store.MaxKeyPackagesPerClient
	// DefaultMaxKeyPackagesPerUser bounds the KeyPackages the clients of
	// one user have available together when Config.MaxKeyPackagesPerUser
	// is zero: four clients at the bound of one.
	DefaultMaxKeyPackagesPerUser = 4 * DefaultMaxKeyPackagesPerClient
)

// Store is what the API keeps its state in: the KeyPackage directory and
// the message queues.
type Store interface {
	store.KeyPackages
	store.Queues
}

// Keys are the provider's own signing and verification keys;
// *provider.KeyRing implements it.
type Keys interface {
	binding.SigningKeys
	binding.LocalKeys
}

var _ Keys = (*provider.KeyRing)(nil) // interface guard

// Config configures an API.
type Config struct {
	// Domains are the provider's own domains; a client URI must name one
	// of them. Required.
	Domains []string
	// Store holds KeyPackages and queues. Required.
	Store Store
	// Keys signs bindings and verifies the bindings of published
	// KeyPackages. Required.
	Keys Keys
	// MaxBindingLifetime caps the validity of an issued binding, from
	// now. Default DefaultBindingLifetime.
	MaxBindingLifetime time.Duration
	// MaxKeyPackageLifetime answers the longest total lifetime
	// (not_after - not_before, in whole seconds) of a KeyPackage's leaf
	// (RFC 9420 §7.2): a publish of a longer one is refused malformed,
	// and a longer one a peer answers a claim with is dropped. It is
	// asked at each publish and claim, so that it can follow the
	// Delivery Service's (ds.Service.MaxKeyPackageLifetime, which refuses
	// to add such a KeyPackage to a group) where that is set up after the
	// API. Nil, or an answer of zero, means mls.DefaultMaxLifetime; a
	// negative answer accepts any length.
	MaxKeyPackageLifetime func() time.Duration
	// Suites are the cipher suites a published KeyPackage may use.
	// Default: every suite package mls implements.
	Suites []mls.CipherSuite
	// MaxKeyPackagesPerClient bounds the KeyPackages one client URI has
	// available (published, not yet claimed, replaced or expired),
	// last-resort ones included; a publish that would pass it is refused
	// whole, quota_exceeded. Default and most DefaultMaxKeyPackagesPerClient
	// (MaxPublish, the most a KeyPackageList carries).
	MaxKeyPackagesPerClient int
	// MaxKeyPackagesPerUser bounds, in the same way, the KeyPackages of
	// all the client URIs of one user of one provider domain
	// (mimi://<provider>/d/<user>/...) together, however many client
	// URIs the user makes up. Default DefaultMaxKeyPackagesPerUser.
	MaxKeyPackagesPerUser int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Peers claims KeyPackages of other providers' users and clients
	// (their connection_key_packages and group_key_packages). Nil answers
	// such claims not_implemented.
	Peers PeerKeyPackages
	// ClaimLimits bounds how fast one user claims the KeyPackages of one
	// target user (ClaimKeyPackages); nil means no bound.
	ClaimLimits ClaimLimiter
	// RemoteClaimLimits bounds how fast one user claims KeyPackages of
	// other providers' users, whatever the targets: each such claim is
	// a signed request of this provider to the target's provider, which
	// limits this provider's requests as a whole. Nil means no bound.
	RemoteClaimLimits RemoteClaimLimiter
	// PublishLimits bounds how fast one user publishes KeyPackages,
	// counted in KeyPackages, whatever the client URIs: every KeyPackage
	// a claim hands out, and the store keeps after it, entered through a
	// publish. Nil means no bound.
	PublishLimits PublishLimiter
	// Logger logs what the API drops without refusing the request (a
	// peer's KeyPackage the answer cannot carry); nil logs nothing.
	Logger *zap.Logger
}

// PeerKeyPackages claims KeyPackages from another provider for one of this
// provider's users (docs/protocol.md §4.2).
type PeerKeyPackages interface {
	// ClaimUser claims one KeyPackage of each client of the user userURI
	// of provider peer, for requester (a user URI of this provider).
	ClaimUser(ctx context.Context, requester, peer string, userURI []byte) ([][]byte, error)
	// ClaimClient claims one KeyPackage of the client clientURI of
	// provider peer; none is an empty list.
	ClaimClient(ctx context.Context, requester, peer string, clientURI []byte) ([][]byte, error)
}

// ClaimLimiter bounds how fast one authenticated user claims the
// KeyPackages of one target user, as ds.KeyPackageLimiter bounds a peer
// provider's claims: each claim spends one.
type ClaimLimiter interface {
	// AllowClaim spends one claim of user for the KeyPackages of
	// targetUser (a user URI, of this provider or another) and answers
	// nil, or answers the refusal (rate_limited) when none is left.
	AllowClaim(user, targetUser string) error
}

// RemoteClaimLimiter bounds how fast one authenticated user claims
// KeyPackages of other providers' users and clients, across all targets.
type RemoteClaimLimiter interface {
	// AllowRemoteClaim spends one remote claim of user and answers nil,
	// or answers the refusal (rate_limited) when none is left.
	AllowRemoteClaim(user string) error
}

// PublishLimiter bounds how fast one authenticated user publishes
// KeyPackages, across all of the user's client URIs.
type PublishLimiter interface {
	// AllowPublish spends n KeyPackages of user's publish budget and
	// answers nil, or spends nothing and answers the refusal
	// (rate_limited) when fewer than n are left.
	AllowPublish(user string, n int) error
	// ReturnPublish gives back n KeyPackages that AllowPublish spent of
	// user's publish budget, for a publish refused afterwards (by the
	// store's quotas or its replay check), so that it costs nothing.
	ReturnPublish(user string, n int)
}

// API is the local client API over one provider's store and keys. It is
// safe for concurrent use.
type API struct {
	cfg     Config
	issuer  binding.Issuer
	checker binding.Checker
}

// New returns the API of cfg.
func New(cfg Config) (*API, error) {
	if len(cfg.Domains) == 0 || cfg.Store == nil || cfg.Keys == nil {
		return nil, errors.New("local api: domains, store and keys are required")
	}
	if cfg.MaxBindingLifetime < 0 {
		return nil, fmt.Errorf("local api: negative binding lifetime %s", cfg.MaxBindingLifetime)
	}
	if cfg.MaxBindingLifetime == 0 {
		cfg.MaxBindingLifetime = DefaultBindingLifetime
	}
	if cfg.MaxKeyPackagesPerClient < 0 || cfg.MaxKeyPackagesPerClient > MaxPublish || cfg.MaxKeyPackagesPerUser < 0 {
		return nil, fmt.Errorf("local api: KeyPackage bounds %d per client (want 0..%d), %d per user",
			cfg.MaxKeyPackagesPerClient, MaxPublish, cfg.MaxKeyPackagesPerUser)
	}
	if cfg.MaxKeyPackagesPerClient == 0 {
		cfg.MaxKeyPackagesPerClient = DefaultMaxKeyPackagesPerClient
	}
	if cfg.MaxKeyPackagesPerUser == 0 {
		cfg.MaxKeyPackagesPerUser = DefaultMaxKeyPackagesPerUser
	}
	for _, s := range cfg.Suites {
		if !s.Supported() {
			return nil, fmt.Errorf("local api: cipher suite %d is not implemented", uint16(s))
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	cfg.Domains = slices.Clone(cfg.Domains)
	return &API{
		cfg:     cfg,
		issuer:  binding.Issuer{Domains: cfg.Domains, Keys: cfg.Keys, Now: cfg.Now},
		checker: binding.Checker{Domains: cfg.Domains, Local: cfg.Keys},
	}, nil
}

// Authorize checks that user may act for clientURI: the URI is a client
// URI (malformed otherwise) that names one of the provider's domains and
// whose user part is user, byte for byte (forbidden otherwise). An empty
// user is forbidden.
func (a *API) Authorize(user string, clientURI []byte) error {
	if user == "" {
		return moh.Errorf(moh.CodeForbidden, "no authenticated user")
	}
	prov, u, _, err := moh.ParseClientURI(clientURI)
	if err != nil {
		return moh.Errorf(moh.CodeMalformed, "client_uri is not a client URI")
	}
	if !slices.Contains(a.cfg.Domains, string(prov)) {
		return moh.Errorf(moh.CodeForbidden, "client_uri names another provider")
	}
	if string(u) != user {
		return moh.Errorf(moh.CodeForbidden, "client_uri names another user")
	}
	return nil
}

// IssueBinding issues a client binding of req.ClientURI to
// req.SignatureKey for user. Its not_after is req.NotAfter capped at now +
// MaxBindingLifetime (0 asks for the cap) and at the signing key's end; a
// not_after that is not after the current second is malformed (a binding
// must outlive the second it is issued in).
func (a *API) IssueBinding(user string, req *BindingRequest) (*binding.ClientBinding, error) {
	if err := a.Authorize(user, req.ClientURI); err != nil {
		return nil, err
	}
	now := a.cfg.Now()
	limit := now.Add(a.cfg.MaxBindingLifetime)
	notAfter := limit
	if req.NotAfter != 0 {
		if req.NotAfter <= uint64(now.Unix()) {
			return nil, moh.Errorf(moh.CodeMalformed, "not_after %d is not after now (%d)", req.NotAfter, now.Unix())
		}
		if req.NotAfter < uint64(limit.Unix()) {
			notAfter = time.Unix(int64(req.NotAfter), 0)
		}
	}
	b, err := a.issuer.Issue(req.ClientURI, req.SignatureKey, notAfter)
	if err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "issuing the binding: %w", err)
	}
	return b, nil
}

// PublishKeyPackages validates req's KeyPackages and makes them available
// for req.ClientURI, all or none, then answers the client's available
// packages. Each KeyPackage must decode exactly, verify as RFC 9420 §10.1
// requires at the current time, have a lifetime at most
// MaxKeyPackageLifetime long, use an allowed cipher suite, carry a
// BasicCredential whose identity is req.ClientURI and a valid client
// binding; at most one per suite may be last-resort (flagged, or carrying
// the last_resort extension, mls.ExtLastResort). The first refusal
// names the entry's index. A valid publish then spends its KeyPackages of
// the user's publish budget (Config.PublishLimits): past it the refusal
// is rate_limited, and nothing is stored or spent. A publish the store
// then refuses (quota_exceeded, replay) is given its KeyPackages back:
// only what is stored costs budget.
func (a *API) PublishKeyPackages(ctx context.Context, user string, req *PublishRequest) ([]KeyPackageEntry, error) {
	if err := a.Authorize(user, req.ClientURI); err != nil {
		return nil, err
	}
	now := a.cfg.Now()
	kps := make([]store.KeyPackage, len(req.KeyPackages))
	lastResort := map[mls.CipherSuite]bool{}
	for i, e := range req.KeyPackages {
		kp, notAfter, err := a.checkKeyPackage(ctx, req.ClientURI, e.KeyPackage, now)
		if err != nil {
			return nil, entryError(i, err)
		}
		// A KeyPackage carrying the last_resort extension is the
		// client's last-resort one whatever its entry's flag says
		// (PROFILE §4): a client whose MLS library marks its last-resort
		// KeyPackage so must not see it used up by the first claim.
		_, ext := kp.Extensions.Find(mls.ExtLastResort)
		last := e.LastResort || ext
		if last {
			if lastResort[kp.CipherSuite] {
				return nil, moh.Errorf(moh.CodeMalformed, "key package %d: a second last-resort KeyPackage for suite %d", i, uint16(kp.CipherSuite))
			}
			lastResort[kp.CipherSuite] = true
		}
		ref, err := kp.Ref()
		if err != nil {
			return nil, moh.Errorf(moh.CodeMalformed, "key package %d: computing its reference: %w", i, err)
		}
		for _, prev := range kps[:i] {
			if bytes.Equal(prev.Ref, ref) {
				return nil, moh.Errorf(moh.CodeMalformed, "key package %d: published twice in one request", i)
			}
		}
		kps[i] = store.KeyPackage{
			Client:     string(req.ClientURI),
			Suite:      uint16(kp.CipherSuite),
			Ref:        ref,
			KeyPackage: e.KeyPackage,
			NotAfter:   notAfter,
			LastResort: last,
		}
	}
	// The client URIs of the user at this provider domain, as a peer's
	// connection_key_packages claims them; Authorize parsed it.
	prov, _, _, _ := moh.ParseClientURI(req.ClientURI)
	lim := store.KeyPackageLimits{
		PerClient:  a.cfg.MaxKeyPackagesPerClient,
		UserPrefix: moh.ClientURI(string(prov), user, ""),
		PerUser:    a.cfg.MaxKeyPackagesPerUser,
	}
	if len(kps) > lim.PerClient {
		// The store would refuse it whatever the client holds: it is
		// refused before it spends the publish budget.
		return nil, moh.Errorf(moh.CodeQuotaExceeded, "the client would have more than %d available KeyPackages", lim.PerClient)
	}
	if a.cfg.PublishLimits != nil {
		if err := a.cfg.PublishLimits.AllowPublish(user, len(kps)); err != nil {
			return nil, err
		}
	}
	if err := a.cfg.Store.PublishKeyPackages(ctx, string(req.ClientURI), kps, lim); err != nil {
		if a.cfg.PublishLimits != nil && storeRefused(err) {
			// Nothing was stored: the refusal costs nothing of the
			// publish rate, whose 429 would otherwise follow the
			// client's next, valid, publish. Any other error leaves
			// the budget spent, since the write may yet commit.
			a.cfg.PublishLimits.ReturnPublish(user, len(kps))
		}
		switch {
		case errors.Is(err, store.ErrTooManyKeyPackages):
			return nil, moh.Errorf(moh.CodeQuotaExceeded, "the client would have more than %d available KeyPackages", lim.PerClient)
		case errors.Is(err, store.ErrTooManyUserKeyPackages):
			return nil, moh.Errorf(moh.CodeQuotaExceeded, "your clients would have more than %d available KeyPackages together", lim.PerUser)
		case errors.Is(err, store.ErrConflict):
			return nil, moh.Errorf(moh.CodeReplay, "a KeyPackage was published before and claimed, or handed out and replaced")
		}
		return nil, storeError("publishing key packages", err)
	}
	return a.list(ctx, string(req.ClientURI))
}

// storeRefused reports whether err is the store's refusal of a publish,
// which stored nothing: a quota (ErrTooManyKeyPackages,
// ErrTooManyUserKeyPackages) or the replay check, all of which wrap
// store.ErrConflict.
func storeRefused(err error) bool {
	return errors.Is(err, store.ErrConflict)
}

// entryError names entry i of a publish in the refusal err. The client
// sees only the message of the refusal's *moh.Error (moh.DSErrorOf), not
// the context wrapped around it, so the index goes into that message; the
// refusal's cause stays for the log.
func entryError(i int, err error) error {
	var e *moh.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("key package %d: %w", i, err)
	}
	return &moh.Error{Code: e.Code, Message: fmt.Sprintf("key package %d: %s", i, e.Message), Err: e.Err}
}

// checkKeyPackage decodes and checks one KeyPackage of client, and
// answers when it stops being handed out: the end of its lifetime, or of
// its binding when that comes first, which must be after now.
func (a *API) checkKeyPackage(ctx context.Context, client, enc []byte, now time.Time) (*mls.KeyPackage, time.Time, error) {
	var kp mls.KeyPackage
	if err := wire.Unmarshal(enc, &kp, "KeyPackage"); err != nil {
		return nil, time.Time{}, moh.Errorf(moh.CodeMalformed, "does not decode as a KeyPackage")
	}
	if !a.suiteAllowed(kp.CipherSuite) {
		return nil, time.Time{}, moh.Errorf(moh.CodeForbidden, "cipher suite %d is not accepted here", uint16(kp.CipherSuite))
	}
	if err := kp.VerifyAt(uint64(now.Unix())); err != nil {
		// Verify's text names the failed RFC 9420 check; it holds no
		// secret.
		return nil, time.Time{}, moh.Errorf(moh.CodeMalformed, "%s", err.Error())
	}
	if err := kp.LeafNode.Lifetime.CheckMaxLifetime(a.maxLifetime()); err != nil {
		return nil, time.Time{}, moh.Errorf(moh.CodeMalformed, "its %v", err)
	}
	cred := kp.LeafNode.Credential
	if cred.Type != mls.CredentialBasic || !bytes.Equal(cred.Identity, client) {
		return nil, time.Time{}, moh.Errorf(moh.CodeForbidden, "the leaf's credential is not a BasicCredential of client_uri")
	}
	bound, err := a.checker.CheckLeafNode(ctx, &kp.LeafNode, now, provider.LookupOptions{})
	if err != nil {
		var be *binding.Error
		if errors.As(err, &be) {
			return nil, time.Time{}, be.DSError()
		}
		return nil, time.Time{}, moh.Errorf(moh.CodeBackendUnavailable, "checking the client binding: %w", err)
	}
	notAfter := time.Unix(int64(min(kp.LeafNode.Lifetime.NotAfter, maxUnix)), 0)
	if bound != nil && bound.NotAfter.Before(notAfter) {
		notAfter = bound.NotAfter
	}
	if !notAfter.After(now) {
		// Its lifetime, or its binding's, ends in the current second:
		// it passed the checks above (both include their last second),
		// but it is handed out only before notAfter, so it would be
		// stored dead, and as a last-resort one replace a live one.
		return nil, time.Time{}, moh.Errorf(moh.CodeMalformed,
			"it is available only until %d, not after the current time", notAfter.Unix())
	}
	return &kp, notAfter, nil
}

// maxLifetime answers Config.MaxKeyPackageLifetime, with its default:
// negative for no maximum.
func (a *API) maxLifetime() time.Duration {
	var lt time.Duration
	if a.cfg.MaxKeyPackageLifetime != nil {
		lt = a.cfg.MaxKeyPackageLifetime()
	}
	if lt == 0 {
		return mls.DefaultMaxLifetime
	}
	return lt
}

// maxUnix bounds the lifetimes taken from KeyPackages (RFC 9420 allows
// any uint64) to a time Go and the store represent.
const maxUnix = 1 << 40

func (a *API) suiteAllowed(cs mls.CipherSuite) bool {
	if len(a.cfg.Suites) == 0 {
		return cs.Supported()
	}
	return slices.Contains(a.cfg.Suites, cs)
}

// ListKeyPackages answers the available KeyPackages of clientURI.
func (a *API) ListKeyPackages(ctx context.Context, user string, clientURI []byte) ([]KeyPackageEntry, error) {
	if err := a.Authorize(user, clientURI); err != nil {
		return nil, err
	}
	return a.list(ctx, string(clientURI))
}

func (a *API) list(ctx context.Context, client string) ([]KeyPackageEntry, error) {
	kps, err := a.cfg.Store.ListKeyPackages(ctx, client)
	if err != nil {
		return nil, storeError("listing key packages", err)
	}
	out := make([]KeyPackageEntry, len(kps))
	for i, kp := range kps {
		out[i] = KeyPackageEntry{LastResort: kp.LastResort, KeyPackage: kp.KeyPackage}
	}
	return out, nil
}

// ClaimKeyPackages claims, for an authenticated user, one KeyPackage of
// req.CipherSuite of the target client, or of every client of the target
// user that has one (at most store.MaxClaimClients), as a group operation
// that adds them needs: a single-use package is handed out once, a
// last-resort one stays. Any authenticated user may claim the packages of
// any user of the provider, as a peer provider may through
// group_key_packages, as fast as Config.ClaimLimits allows per user and
// target user (a client URI counts as its user). A package whose lifetime
// is longer than MaxKeyPackageLifetime (stored under a longer maximum) or
// has ended is not handed out: a single-use one is consumed and the
// client's next taken, a last-resort one skipped. A target of another
// provider is claimed from that provider (Config.Peers), as fast as
// Config.RemoteClaimLimits also allows per user across all targets; a
// client or user without a package is an empty list.
func (a *API) ClaimKeyPackages(ctx context.Context, user string, req *ClaimRequest) ([]KeyPackageEntry, error) {
	if user == "" {
		return nil, moh.Errorf(moh.CodeForbidden, "no authenticated user")
	}
	cs := mls.CipherSuite(req.CipherSuite)
	if !a.suiteAllowed(cs) {
		return nil, moh.Errorf(moh.CodeForbidden, "cipher suite %d is not accepted here", req.CipherSuite)
	}
	prov, u, err := moh.ParseUserURI(req.Target)
	byUser := err == nil
	if !byUser {
		if prov, u, _, err = moh.ParseClientURI(req.Target); err != nil {
			return nil, moh.Errorf(moh.CodeMalformed, "target is neither a user URI nor a client URI")
		}
	}
	if a.cfg.ClaimLimits != nil {
		if err := a.cfg.ClaimLimits.AllowClaim(user, moh.UserURI(string(prov), string(u))); err != nil {
			return nil, err
		}
	}
	if !slices.Contains(a.cfg.Domains, string(prov)) {
		if a.cfg.RemoteClaimLimits != nil {
			if err := a.cfg.RemoteClaimLimits.AllowRemoteClaim(user); err != nil {
				return nil, err
			}
		}
		return a.claimRemote(ctx, user, string(prov), req, byUser)
	}
	// Only packages a Delivery Service would still add are handed out:
	// one stored under a longer maximum than today's, or whose lifetime
	// ended, is dropped (store.KeyPackageClaim.Usable).
	c := store.KeyPackageClaim{Suite: req.CipherSuite, Usable: store.UsableKeyPackages(a.cfg.Now(), a.maxLifetime())}
	if byUser {
		c.Prefix = moh.ClientURI(string(prov), string(u), "")
	} else {
		c.Clients = []string{string(req.Target)}
	}
	kps, err := a.cfg.Store.ClaimKeyPackages(ctx, c)
	if err != nil {
		return nil, storeError("claiming key packages", err)
	}
	out := make([]KeyPackageEntry, 0, len(kps))
	for _, kp := range kps {
		if kp.Ref != nil { // not the zero KeyPackage of a client without one
			out = append(out, KeyPackageEntry{LastResort: kp.LastResort, KeyPackage: kp.KeyPackage})
		}
	}
	return out, nil
}

// claimRemote claims the KeyPackages of another provider's user or client
// through that provider, for user as a user of this provider's first
// domain. Only KeyPackages of the requested suite are answered: a peer's
// request names no suite, so it may hand out others, which are dropped
// (and consumed; a client that wants them back publishes more), as are,
// with a warning, one of a size no KeyPackageEntry holds and one whose
// lifetime is longer than MaxKeyPackageLifetime.
func (a *API) claimRemote(ctx context.Context, user, peer string, req *ClaimRequest, byUser bool) ([]KeyPackageEntry, error) {
	if a.cfg.Peers == nil {
		return nil, moh.Errorf(moh.CodeNotImplemented, "KeyPackages of another provider's users are claimed through federation, which this gateway does not do")
	}
	requester := moh.UserURI(a.cfg.Domains[0], user)
	var raw [][]byte
	var err error
	if byUser {
		raw, err = a.cfg.Peers.ClaimUser(ctx, requester, peer, req.Target)
	} else {
		raw, err = a.cfg.Peers.ClaimClient(ctx, requester, peer, req.Target)
	}
	if err != nil {
		return nil, err
	}
	out := []KeyPackageEntry{}
	limit := a.maxLifetime()
	for i, enc := range raw {
		if len(enc) == 0 || len(enc) > MaxKeyPackageLen {
			// A KeyPackageEntry holds 1..MaxKeyPackageLen bytes: one
			// entry outside would make the whole answer undecodable.
			a.cfg.Logger.Warn("skipped a peer's KeyPackage outside the size a KeyPackageEntry holds",
				zap.String("peer", peer), zap.ByteString("target", req.Target), zap.Int("index", i),
				zap.Int("size", len(enc)), zap.Int("max", MaxKeyPackageLen))
			continue
		}
		var kp mls.KeyPackage
		if wire.Unmarshal(enc, &kp, "KeyPackage") != nil || uint16(kp.CipherSuite) != req.CipherSuite {
			continue
		}
		if lt := kp.LeafNode.Lifetime; lt.CheckMaxLifetime(limit) != nil {
			// A Delivery Service with the same maximum would refuse
			// the commit that adds it.
			a.cfg.Logger.Warn("skipped a peer's KeyPackage whose lifetime is longer than accepted",
				zap.String("peer", peer), zap.ByteString("target", req.Target), zap.Int("index", i),
				zap.Uint64("not_before", lt.NotBefore), zap.Uint64("not_after", lt.NotAfter),
				zap.Duration("max", limit))
			continue
		}
		out = append(out, KeyPackageEntry{KeyPackage: enc})
	}
	return out, nil
}

// Fetch answers the messages of clientURI's queue (its personal messages
// and its groups' logs, store.Queues) after the cursor after, at most
// limit of them (0: store.DefaultFetchMessages). When there are none it
// waits up to wait for one to arrive, and answers what arrived, or an
// empty list when wait passes or ctx ends first (the caller's request
// ended: the answer goes nowhere). An after beyond the last sequence
// number the store gave is malformed.
func (a *API) Fetch(ctx context.Context, user string, clientURI []byte, after uint64, limit int, wait time.Duration) ([]Message, error) {
	if err := a.Authorize(user, clientURI); err != nil {
		return nil, err
	}
	client := string(clientURI)
	fl := store.FetchLimit{Messages: limit}
	if wait <= 0 {
		return a.fetch(ctx, client, after, fl)
	}
	// Watch first, then fetch, then wait: a message appended in between
	// is either fetched or wakes the watch.
	ready, stop := a.cfg.Store.WatchQueue(client, after)
	defer stop()
	msgs, err := a.waitFetch(ctx, client, after, fl)
	if err != nil || len(msgs) > 0 {
		return msgs, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ready:
		return a.waitFetch(ctx, client, after, fl)
	case <-timer.C:
		return []Message{}, nil
	case <-ctx.Done():
		return []Message{}, nil
	}
}

// waitFetch is fetch for a poll that may wait: when ctx ends while the
// store reads (the caller stops waiting polls, as on a process exit),
// the answer is the empty list a poll ended by ctx gets, not the store's
// cancellation as an internal error.
func (a *API) waitFetch(ctx context.Context, client string, after uint64, fl store.FetchLimit) ([]Message, error) {
	msgs, err := a.fetch(ctx, client, after, fl)
	if err != nil && ctx.Err() != nil {
		var refused *moh.Error
		if !errors.As(err, &refused) || refused.Code != moh.CodeMalformed {
			return []Message{}, nil
		}
	}
	return msgs, err
}

func (a *API) fetch(ctx context.Context, client string, after uint64, fl store.FetchLimit) ([]Message, error) {
	qm, err := a.cfg.Store.Fetch(ctx, client, after, fl)
	if err != nil {
		if errors.Is(err, store.ErrInvalid) {
			return nil, moh.Errorf(moh.CodeMalformed, "after %d is beyond the queue's last message", after)
		}
		return nil, storeError("fetching messages", err)
	}
	out := make([]Message, len(qm))
	for i, m := range qm {
		out[i] = Message{
			Seq: m.Seq, Arrived: unixSeconds(m.Arrived), Expires: unixSeconds(m.Expires),
			GroupID: m.GroupID, Sender: []byte(m.Sender), Message: m.Message,
		}
	}
	return out, nil
}

// Ack acknowledges the messages of req.ClientURI's queue up to and
// including req.UpTo (its personal messages are deleted, its groups' log
// messages no longer answered to it) and answers how many it
// acknowledged; acknowledging again acknowledges nothing. An up_to beyond
// the last sequence number the store gave is malformed.
func (a *API) Ack(ctx context.Context, user string, req *AckRequest) (uint64, error) {
	if err := a.Authorize(user, req.ClientURI); err != nil {
		return 0, err
	}
	n, err := a.cfg.Store.Ack(ctx, string(req.ClientURI), req.UpTo)
	if err != nil {
		if errors.Is(err, store.ErrInvalid) {
			return 0, moh.Errorf(moh.CodeMalformed, "up_to %d is beyond the queue's last message", req.UpTo)
		}
		return 0, storeError("acknowledging messages", err)
	}
	return uint64(n), nil
}

// storeError wraps a failure of the store as backend_unavailable; the
// answer says "internal error", the cause is for the log.
func storeError(doing string, err error) error {
	return moh.Errorf(moh.CodeBackendUnavailable, doing+": %w", err)
}

func unixSeconds(t time.Time) uint64 {
	if t.IsZero() || t.Unix() < 0 {
		return 0
	}
	return uint64(t.Unix())
}
