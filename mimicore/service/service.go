// Package service owns one provider's long-lived state and background work:
// the durable store, the signing key ring, the fetcher of peers' keys, the
// key rotation and expiry sweep loops, and any worker a later feature
// starts (outbox delivery, retention sweepers, queue delivery).
//
// # Why a Caddy-free service in a UsagePool, not a Caddy app
//
// Caddy builds every app of a config anew on each reload, and provisions
// and starts the new config before it stops the old one. A caddy.App
// instance is therefore not "once per provider across reloads": two exist
// for a while on every reload, and the SQLite file, the key directory and
// the loops would still need a pool keyed by provider to be opened once.
// The options are configured in the handler's Caddyfile directive anyway.
// So the handler module keeps a Service per data directory in a
// caddy.UsagePool, which is exactly once per provider, and hands each new
// config's options to it with Apply. The package does not import Caddy,
// so it is tested, and could be run, without it.
//
// # Lifecycle
//
//   - Open creates or opens the data directory, the store and the key ring,
//     and starts the rotation and sweep loops. The first config that names
//     the data directory calls it (UsagePool.LoadOrNew).
//   - Apply brings every later config's options to the open service: a new
//     key scheme signs at once, new rotation and overlap values move the
//     next rotation, a new fetch policy replaces the fetcher, a new sweep
//     interval or logger is used from then on. The caller applies a new
//     config's options while the old config may still be serving requests.
//     One service serves every config, so the options applied last win:
//     applying the old config's options again puts them back, except that
//     a key made for the new key options stays (caddymodule therefore
//     applies a config's key options only once Caddy runs it), and two
//     handlers naming one data directory must agree.
//   - Go starts a worker the service owns: it runs until Close.
//   - Close stops every loop and worker, waits for them, and closes the
//     fetcher and the store. The UsagePool calls it (Destruct) when the
//     last config using the data directory is cleaned up; Destruct is
//     Close, so a Service goes into a caddy.UsagePool as is.
package service

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// DefaultSweepEvery is how often expired records are deleted when
// Options.SweepEvery is zero.
const DefaultSweepEvery = 5 * time.Minute

// KeysDir is the directory of the signing keys inside the data directory.
const KeysDir = "keys"

// Options configures a Service. Zero fields take the defaults.
type Options struct {
	// DataDir is the directory that holds the signing keys (in KeysDir)
	// and the SQLite database (sqlitestore.DefaultFileName). It is created
	// 0700 when missing; an existing one, and its KeysDir, are set to 0700
	// (the change is logged), since they hold private keys. Required. It
	// identifies the service: Apply refuses another one.
	DataDir string

	// Keys sets the signing keys' scheme, rotation interval and overlap;
	// see provider.KeyRingOptions for the defaults. Keys.Metadata,
	// Keys.Sealer and Keys.Leases are ignored: the service records the
	// keys in its store, sealed under KeySecret when it is set. A changed
	// Keys.Scheme makes a key of the new scheme sign at once; changed
	// durations move the next rotation.
	Keys provider.KeyRingOptions

	// Store chooses the store. Default: SQLite in DataDir. Apply refuses
	// another one: changing the store needs a restart.
	Store StoreOptions

	// KeySecret, when set, keeps the signing keys in the store, sealed
	// under it (provider.KeySealer; provider.KeySecretSize bytes), instead
	// of in files in DataDir/KeysDir, so that every gateway on one
	// database signs as one provider; the key ring then reloads the store
	// every provider.StoreReloadEvery. Required with a PostgreSQL store.
	// Apply refuses another one.
	KeySecret []byte

	// Fetch bounds how peers' verification keys are fetched; see
	// provider.FetchPolicy for the defaults. Fetch.Cache is ignored: the
	// service's store caches the fetched keys. A changed policy replaces
	// the fetcher.
	Fetch provider.FetchPolicy

	// SweepEvery is the interval between deletions of expired records
	// (replay entries, seen signatures, spent tokens, cached peer keys).
	// Default DefaultSweepEvery. A change applies from the next sweep.
	SweepEvery time.Duration

	// Logger receives the service's logs: rotations, sweeps, worker
	// panics, permission changes. Default: no logging. Apply replaces it,
	// so the logs follow the newest config.
	Logger *zap.Logger
}

// StoreOptions chooses the service's store.
type StoreOptions struct {
	// Postgres, when set, is the connection string (URL or key=value) of
	// a PostgreSQL database to use instead of SQLite: several gateways of
	// one provider share it (package pgstore). It needs a store opener
	// registered as PostgresStore (RegisterStore), which the cluster build
	// has (ClusterPackage).
	Postgres string
	// MaxConns is the most connections to Postgres. Default
	// DefaultMaxConns.
	MaxConns int32
}

// withDefaults fills in the zero fields of o and checks the rest.
func (o Options) withDefaults() (Options, error) {
	if o.DataDir == "" {
		return o, errors.New("empty data directory")
	}
	abs, err := filepath.Abs(o.DataDir)
	if err != nil {
		return o, fmt.Errorf("data directory: %w", err)
	}
	o.DataDir = abs
	if o.SweepEvery < 0 {
		return o, fmt.Errorf("negative sweep interval %s", o.SweepEvery)
	}
	if o.SweepEvery == 0 {
		o.SweepEvery = DefaultSweepEvery
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Store.MaxConns < 0 {
		return o, fmt.Errorf("negative store pool size %d", o.Store.MaxConns)
	}
	if o.Store.Postgres != "" && len(o.KeySecret) == 0 {
		return o, errors.New("a PostgreSQL store needs a key secret: the gateways sharing it sign with keys sealed in it")
	}
	if len(o.KeySecret) != 0 && len(o.KeySecret) != provider.KeySecretSize {
		return o, fmt.Errorf("key secret is %d bytes, want %d", len(o.KeySecret), provider.KeySecretSize)
	}
	o.Keys.Metadata, o.Keys.Sealer, o.Keys.Leases = nil, nil, nil
	o.Fetch.Cache = nil
	return o, nil
}

// Service is one provider's long-lived state and background work. Its
// methods are safe for concurrent use.
type Service struct {
	dir   string
	store store.Store
	keys  *provider.KeyRing

	fetcher    atomic.Pointer[fetcherRef]
	logger     atomic.Pointer[zap.Logger]
	sweepEvery atomic.Int64 // a time.Duration

	// rotateWake and sweepWake make the loops recompute their timers
	// after Apply; each holds at most one pending wake-up.
	rotateWake chan struct{}
	sweepWake  chan struct{}

	ctx     context.Context // cancelled by Close; the loops' and workers' context
	cancel  context.CancelFunc
	workers sync.WaitGroup

	mu     sync.Mutex // serialises Apply, Go and the start of Close
	opts   Options    // the options in effect, defaults filled in
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// Open opens the data directory's store and key ring, builds the fetcher
// and starts the rotation and sweep loops. ctx bounds the opening only;
// the service runs until Close.
func Open(ctx context.Context, opts Options) (*Service, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("opening service: %w", err)
	}
	logger := opts.Logger.With(zap.String("data_dir", opts.DataDir))
	if err := prepareDataDir(opts.DataDir, logger); err != nil {
		return nil, fmt.Errorf("opening service: %w", err)
	}
	db, err := openStore(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("opening service: %w", err)
	}
	keyOpts := opts.Keys
	keyOpts.Metadata = db
	if opts.KeySecret != nil {
		if keyOpts.Sealer, err = provider.NewKeySealer(opts.KeySecret); err != nil {
			return nil, errors.Join(fmt.Errorf("opening service: %w", err), db.Close())
		}
		keyOpts.Leases = db
	}
	keys, err := provider.OpenKeyRing(ctx, filepath.Join(opts.DataDir, KeysDir), keyOpts, time.Now())
	if err != nil {
		return nil, errors.Join(fmt.Errorf("opening service: signing keys: %w", err), db.Close())
	}
	s := &Service{
		dir:        opts.DataDir,
		store:      db,
		keys:       keys,
		rotateWake: make(chan struct{}, 1),
		sweepWake:  make(chan struct{}, 1),
		opts:       opts,
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.logger.Store(logger)
	if w, ok := db.(store.WakeErrorLogger); ok {
		w.SetWakeErrorLog(func(err error) {
			s.log().Warn("woke every waiting client: could not tell which ones a group post concerns", zap.Error(err))
		})
	}
	s.sweepEvery.Store(int64(opts.SweepEvery))
	s.fetcher.Store(s.newFetcher(opts.Fetch))
	s.workers.Add(2)
	go s.rotateLoop()
	go s.sweepLoop()
	keysAt := "files"
	if keys.Shared() {
		keysAt = "store, sealed"
	}
	logger.Info("opened provider service", zap.Stringer("store", opts.Store), zap.String("signing_keys", keysAt))
	return s, nil
}

// Apply makes opts the options in effect, without a restart:
//
//   - a changed Keys.Scheme creates a key of the new scheme that signs from
//     now on; the previous key stays published until its not_after;
//   - changed Keys.RotateEvery or Keys.Overlap apply from the next
//     rotation, which the rotation loop recomputes at once (see
//     provider.KeyRing.SetOptions);
//   - a changed Fetch policy builds a new fetcher over the same cache and
//     swaps it in; the old one is closed once the calls made through the
//     service (VerificationKey) have returned;
//   - SweepEvery and Logger are used from now on.
//
// opts.DataDir must name the directory the service was opened with.
// Invalid options are refused: nothing changes, except that a failure to
// write the new key leaves the new key options in effect, so the rotation
// loop retries. Apply after Close fails with store.ErrClosed.
func (s *Service) Apply(opts Options) error {
	opts, err := opts.withDefaults()
	if err != nil {
		return fmt.Errorf("applying options: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(opts); err != nil {
		return fmt.Errorf("applying options: %w", err)
	}
	logger := opts.Logger.With(zap.String("data_dir", s.dir))
	// Checked before anything changes, so invalid key options change
	// nothing.
	keysBefore := s.keys.Options()
	if err := s.keys.SetOptions(opts.Keys); err != nil {
		return fmt.Errorf("applying options: %w", err)
	}
	s.logger.Store(logger)
	old := s.opts
	s.opts = opts
	if d := int64(opts.SweepEvery); s.sweepEvery.Swap(d) != d {
		wake(s.sweepWake)
	}
	if !samePolicy(old.Fetch, opts.Fetch) {
		prev := s.fetcher.Swap(s.newFetcher(opts.Fetch))
		prev.retire()
		logger.Info("replaced peer key fetcher", zap.Duration("fetch_timeout", opts.Fetch.Timeout))
	}
	if o := s.keys.Options(); o.Scheme != keysBefore.Scheme || o.RotateEvery != keysBefore.RotateEvery || o.Overlap != keysBefore.Overlap {
		now := time.Now()
		created, err := s.keys.Rotate(s.ctx, now)
		wake(s.rotateWake)
		if err != nil {
			return fmt.Errorf("applying options: rotating signing keys: %w", err)
		}
		if created {
			// The newest key, which in store mode signs only from its
			// not_before, once every gateway publishes it.
			if pub := s.keys.Published(now); len(pub) > 0 {
				logger.Info("rotated signing key for new options", zap.Binary("key_id", pub[0].KeyID),
					zap.String("scheme", schemeName(pub[0].Scheme)), zap.Time("signs_from", time.Unix(int64(pub[0].NotBefore), 0)))
			}
		}
		logger.Info("applied signing key options", zap.String("scheme", schemeName(o.Scheme)),
			zap.Duration("key_rotation", o.RotateEvery), zap.Duration("key_overlap", o.Overlap),
			zap.Time("next_rotation", s.keys.NextRotation()))
	}
	return nil
}

// Check reports an error when Apply would refuse opts for what only a
// restart changes: another data directory, store or key secret, or
// options without valid defaults; or when the service is closed. It
// changes nothing, so that a caller can refuse a configuration before it
// applies anything.
func (s *Service) Check(opts Options) error {
	opts, err := opts.withDefaults()
	if err != nil {
		return fmt.Errorf("checking options: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(opts); err != nil {
		return fmt.Errorf("checking options: %w", err)
	}
	return nil
}

// checkLocked is Check of opts, defaults filled in, with s.mu held.
func (s *Service) checkLocked(opts Options) error {
	if opts.DataDir != s.dir {
		return fmt.Errorf("data directory %s differs from the open %s; open another service for it", opts.DataDir, s.dir)
	}
	if s.closed {
		return store.ErrClosed
	}
	if opts.Store != s.opts.Store {
		return fmt.Errorf("the store of %s changed (%s, was %s); restart to change it", s.dir, opts.Store, s.opts.Store)
	}
	if subtle.ConstantTimeCompare(opts.KeySecret, s.opts.KeySecret) != 1 {
		return fmt.Errorf("the key secret of %s changed; restart to change it", s.dir)
	}
	return nil
}

// openStore opens the store that opts choose.
func openStore(ctx context.Context, opts Options) (store.Store, error) {
	if opts.Store.Postgres != "" {
		open, err := storeOpener(PostgresStore, "PostgreSQL")
		if err != nil {
			return nil, err
		}
		so := opts.Store
		if so.MaxConns == 0 {
			so.MaxConns = DefaultMaxConns
		}
		return open(ctx, so)
	}
	return sqlitestore.Open(ctx, filepath.Join(opts.DataDir, sqlitestore.DefaultFileName))
}

// String names the store for logs and errors, without the connection
// string, which may hold a password.
func (o StoreOptions) String() string {
	if o.Postgres == "" {
		return "sqlite"
	}
	n := o.MaxConns
	if n == 0 {
		n = DefaultMaxConns
	}
	return fmt.Sprintf("postgres (pool of %d)", n)
}

// Store returns the service's store. It stays the same for the service's
// life and is closed by Close.
func (s *Service) Store() store.Store { return s.store }

// Keys returns the provider's signing key ring. It stays the same for the
// service's life; Apply changes its options.
func (s *Service) Keys() *provider.KeyRing { return s.keys }

// Fetcher returns the current fetcher of peers' keys. Apply may replace it
// and then closes the old one, which may drop its idle connections: use
// the returned fetcher for the operation at hand, and hold the Service
// itself (a provider.KeySource, see VerificationKey) across requests.
func (s *Service) Fetcher() *provider.KeyFetcher { return s.fetcher.Load().f }

// VerificationKey implements provider.KeySource with the current fetcher,
// which a concurrent Apply does not close until the call returns. After
// Close it fails with store.ErrClosed.
func (s *Service) VerificationKey(ctx context.Context, domain string, keyID []byte, at time.Time) (*moh.VerificationKey, error) {
	r, err := s.acquireFetcher()
	if err != nil {
		return nil, err
	}
	defer r.release()
	return r.f.VerificationKey(ctx, domain, keyID, at)
}

// Options returns the options in effect, defaults filled in.
func (s *Service) Options() Options {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts
}

// Close stops the loops and every worker started with Go (their context
// is cancelled), waits for them to return, then closes the fetcher and the
// store. Every store write acknowledged before Close stays durable (the
// store's contract). Later calls return the first call's result.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.cancel()
		s.mu.Unlock()
		s.workers.Wait()
		s.fetcher.Load().retire()
		if err := s.store.Close(); err != nil {
			s.closeErr = fmt.Errorf("closing service: %w", err)
		}
		s.log().Debug("closed service")
	})
	return s.closeErr
}

// Destruct is Close, under the name caddy.UsagePool calls (the
// caddy.Destructor interface; the package does not import Caddy).
func (s *Service) Destruct() error { return s.Close() }

// log returns the logger of the newest options.
func (s *Service) log() *zap.Logger { return s.logger.Load() }

// wake leaves a wake-up in ch unless one is pending.
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// schemeName names a signature scheme as the key_scheme option does.
func schemeName(s moh.SignatureScheme) string {
	switch s {
	case moh.SchemeEd25519:
		return "ed25519"
	case moh.SchemeECDSAP256SHA256:
		return "ecdsa_secp256r1_sha256"
	}
	return fmt.Sprintf("0x%04x", uint16(s))
}

// VerificationKeyFrom implements provider.SourcedKeySource: like
// VerificationKey, with a fetch charged to the request's source.
func (s *Service) VerificationKeyFrom(ctx context.Context, domain string, keyID []byte, at time.Time, opts provider.LookupOptions) (*moh.VerificationKey, error) {
	r, err := s.acquireFetcher()
	if err != nil {
		return nil, err
	}
	defer r.release()
	return r.f.VerificationKeyFrom(ctx, domain, keyID, at, opts)
}

// Authority returns the DS authority that domain's discovery names, through
// the current fetcher's cache (provider.KeyFetcher.Authority), which a
// concurrent Apply does not close until the call returns. After Close it
// fails with store.ErrClosed.
func (s *Service) Authority(ctx context.Context, domain string) (string, error) {
	r, err := s.acquireFetcher()
	if err != nil {
		return "", err
	}
	defer r.release()
	return r.f.Authority(ctx, domain)
}
