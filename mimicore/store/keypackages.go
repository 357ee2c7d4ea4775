package store

import (
	"context"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Limits of KeyPackages and Queues on client URIs.
const (
	// MaxClientURISize bounds a client URI (PROFILE §3: a mimi: URI
	// naming the provider, the user and the device).
	MaxClientURISize = 512
)

// Limits of KeyPackages; a larger value is ErrInvalid, except
// MaxKeyPackagesPerClient (ErrTooManyKeyPackages, unless KeyPackageLimits
// sets another bound).
const (
	// MaxKeyPackageSize bounds one encoded KeyPackage. It holds a
	// post-quantum KeyPackage: 64 of them, the largest key_packages
	// answer, fit in MaxAnswerSize with the answer's framing.
	MaxKeyPackageSize = 16 << 10
	// MaxKeyPackagesPerClient bounds the packages a client has available
	// at once, over all its suites, last-resort packages included, when
	// KeyPackageLimits.PerClient is zero. It is also the most one
	// PublishKeyPackages call may carry.
	MaxKeyPackagesPerClient = 256
	// ClaimedKeyPackageRetention is how long a package stays readable by
	// KeyPackageByRef after it left the client's available packages
	// (claimed, or a last-resort package that a claim handed out replaced
	// by a newer one), unless
	// its NotAfter comes first: as long as a Welcome's joiner may fetch
	// welcome_info, which the DS authenticates with the key of the
	// KeyPackage the Welcome added (PROFILE §5: key_package_signature).
	ClaimedKeyPackageRetention = WelcomeTreeLifetime
	// MaxClaimClients bounds the clients of one ClaimKeyPackagesByPrefix
	// or ClaimKeyPackages: the client_ids of one group_key_packages
	// request.
	MaxClaimClients = 64
)

// ErrTooManyKeyPackages reports a PublishKeyPackages that would leave a
// client more available packages than KeyPackageLimits.PerClient. It wraps
// ErrConflict.
var ErrTooManyKeyPackages = fmt.Errorf("client would have too many KeyPackages: %w", ErrConflict)

// ErrTooManyUserKeyPackages reports a PublishKeyPackages that would leave
// the clients of a user more available packages, together, than
// KeyPackageLimits.PerUser. It wraps ErrConflict.
var ErrTooManyUserKeyPackages = fmt.Errorf("user would have too many KeyPackages: %w", ErrConflict)

// KeyPackageLimits bounds what a PublishKeyPackages leaves available. A
// package counts from its publish until it is claimed (single-use),
// replaced (last resort) or expired, whatever its suite: last-resort
// packages count too, and one that replaces the client's previous one for
// its suite takes that one's place.
type KeyPackageLimits struct {
	// PerClient bounds the client's available packages, at most
	// MaxKeyPackagesPerClient; zero means MaxKeyPackagesPerClient. Past
	// it: ErrTooManyKeyPackages.
	PerClient int
	// UserPrefix is the prefix the URIs of all the clients of the
	// client's user start with (mimi://<provider>/d/<user>/), which the
	// client's URI must start with too; 1..MaxClientURISize bytes, or
	// empty with PerUser zero.
	UserPrefix string
	// PerUser bounds the available packages of all the clients whose URI
	// starts with UserPrefix, together; zero means no such bound. Past
	// it: ErrTooManyUserKeyPackages.
	PerUser int
}

// KeyPackage is one KeyPackage a local client published.
type KeyPackage struct {
	// Client is the URI of the client that published it,
	// 1..MaxClientURISize bytes.
	Client string
	// Suite is its MLS cipher suite, 1..65535.
	Suite uint16
	// Ref is its KeyPackageRef (RFC 9420 §5.2), computed by the caller
	// from KeyPackage; 1..MaxIDSize bytes. Refs are unique in the store.
	Ref []byte
	// KeyPackage is the encoded KeyPackage, 1..MaxKeyPackageSize bytes.
	// The store does not parse it: the caller validated it.
	KeyPackage []byte
	// NotAfter is the end of its lifetime (the KeyPackage's own
	// not_after, or earlier): from then on it behaves as absent.
	NotAfter time.Time
	// LastResort marks the client's package of last resort for Suite: a
	// claim returns it when no single-use package is left, and never
	// consumes it.
	LastResort bool
	// Claimed is set on packages read back that have left the client's
	// available packages (KeyPackageByRef only). PublishKeyPackages
	// ignores it.
	Claimed bool
}

// KeyPackages is the KeyPackage directory of the provider's own clients
// (PROFILE §9, local client API; issue 10 serves it to peers). Each client
// has, per cipher suite, single-use packages and at most one last-resort
// package.
//
// A package is available from its PublishKeyPackages until it is claimed
// (single-use), replaced (last resort) or expired (NotAfter). A claimed
// package, or a replaced one that a claim handed out, is never available
// again, not even when the same bytes are published again (its Ref is
// kept until its NotAfter, so its init key is never handed out twice): it
// stays readable by KeyPackageByRef for ClaimedKeyPackageRetention (or
// until NotAfter), then DeleteExpired removes its bytes, keeping its Ref
// and NotAfter, and after NotAfter its Ref. A last-resort package that no
// claim handed out is deleted when it is replaced (no Welcome can name it),
// so its bytes may be published again as a new package.
//
// Each write (PublishKeyPackages, ClaimKeyPackage, ClaimKeyPackages) is one
// operation of the backend's write path as package store describes: a
// claim is one
// conditional UPDATE ... WHERE ref = (SELECT ... LIMIT 1) RETURNING, which
// SQLite serialises with its single writer and PostgreSQL with row locks
// (FOR UPDATE SKIP LOCKED in the subquery lets concurrent claims for one
// client take different packages rather than queue; a claim that finds
// every single-use package left locked waits for them before it falls
// back to the last-resort package), so a group of claims
// can share one transaction (a pgx Batch) or be pipelined. Lookups do not
// go through the write path.
type KeyPackages interface {
	// PublishKeyPackages makes kps available for client, all or none of
	// them: every package must name client (or leave Client empty),
	// its Ref must be unique in the call, and at most one per suite may be
	// LastResort (ErrInvalid otherwise). A new last-resort package for a
	// suite replaces the client's previous one, which it deletes unless a
	// claim handed it out. A Ref already stored is
	// ErrConflict (one claimed, or replaced after a claim handed it
	// out, until its NotAfter), except a package identical to one still available
	// (same client, suite, bytes, NotAfter and LastResort), which is left
	// as it is, so a client may retry a publish. When the client would
	// then have more packages available than lim.PerClient, the call
	// fails with ErrTooManyKeyPackages and stores nothing; when the
	// clients of lim.UserPrefix would have more than lim.PerUser, with
	// ErrTooManyUserKeyPackages. The counts and the writes are one
	// write, so concurrent publishes for one user (on any gateway of the
	// store) never leave more than the bounds between them. The same
	// write deletes the packages under the bound (the user's, or without
	// a PerUser the client's) that expired unclaimed, as DeleteExpired
	// would, so the store holds no more of them than the bound however
	// short-lived they are. Invalid limits are ErrInvalid.
	PublishKeyPackages(ctx context.Context, client string, kps []KeyPackage, lim KeyPackageLimits) error

	// ClaimKeyPackage hands out one available package of client for
	// suite: a single-use package, which it removes from the available
	// packages in the same write, the one with the earliest NotAfter
	// first; or, when none is left, the client's last-resort package,
	// which stays available, recorded in the same write as handed out. Two claims never get the same single-use
	// package, whether or not they run at once. No package is
	// ErrNotFound. Suite 0 means any suite: the lowest suite with a
	// single-use package, else the lowest with a last-resort one (a
	// peer's request names no suite, PROFILE §4).
	ClaimKeyPackage(ctx context.Context, client string, suite uint16) (KeyPackage, error)

	// ClaimKeyPackagesByPrefix claims, as ClaimKeyPackage does, one
	// package of suite for each client whose URI starts with
	// clientPrefix and that has one available, at most MaxClaimClients
	// clients in URI byte order, all in one write: the KeyPackages of
	// every client of a user (a prefix such as mimi://a.example/d/bob/),
	// for adding the user to a group. It returns them ordered by client;
	// no client with a package is an empty list. The prefix is
	// 1..MaxClientURISize bytes; suite 0 means any suite, per client as
	// ClaimKeyPackage chooses.
	ClaimKeyPackagesByPrefix(ctx context.Context, clientPrefix string, suite uint16) ([]KeyPackage, error)

	// ClaimKeyPackages makes the claims of one request, each as
	// ClaimKeyPackage makes it, and writes the request's replay log entry
	// (c.Replay), all in one write: all of it is durable, or none. With
	// c.Clients it returns one KeyPackage per client, in order, the
	// zero KeyPackage but for Client for a client without an available
	// package; with c.Prefix, what ClaimKeyPackagesByPrefix returns. An
	// alive replay log entry of the record's key fails the write with an
	// error wrapping ErrConflict, and nothing is claimed. An invalid
	// claim or record is ErrInvalid.
	ClaimKeyPackages(ctx context.Context, c KeyPackageClaim) ([]KeyPackage, error)

	// ListKeyPackages returns client's available packages, ordered by
	// suite, then NotAfter, then Ref; none is an empty list, not an error.
	ListKeyPackages(ctx context.Context, client string) ([]KeyPackage, error)

	// KeyPackageByRef returns the package with ref, available or (with
	// Claimed set) claimed or replaced within ClaimedKeyPackageRetention;
	// otherwise ErrNotFound.
	KeyPackageByRef(ctx context.Context, ref []byte) (KeyPackage, error)
}

// KeyPackageClaim is the claims of one request (ClaimKeyPackages): those
// of a peer's group_key_packages or connection_key_packages request
// (docs/protocol.md §4.2), written with its answer.
type KeyPackageClaim struct {
	// Clients are the clients that each claim one package, in this
	// order: 1..MaxClaimClients client URIs, none named twice. Exactly one
	// of Clients and Prefix is set.
	Clients []string
	// Prefix claims instead one package of each client whose URI starts
	// with it, as ClaimKeyPackagesByPrefix does.
	Prefix string
	// Suite is the suite claimed; 0 means any, per client as
	// ClaimKeyPackage chooses.
	Suite uint16
	// Replay, when not nil, returns the replay log entry of the request
	// that makes the claims, whose answer reports them: it is given the
	// claims' outcome, as ClaimKeyPackages returns it, and the entry it
	// returns is written in the same write (ReplayRecord); nil writes
	// none. It runs inside the write, perhaps more than once (the last
	// run is the one that committed), so it only computes; its error
	// fails the write.
	Replay func(claimed []KeyPackage) (*ReplayRecord, error)
	// Usable, when not nil, says whether a package the claim would hand
	// out can still enter a group: the store does not decode packages,
	// so the caller decides (UsableKeyPackages), for instance on one
	// stored before the Delivery Service's maximum lifetime was what it
	// is now. A single-use package it refuses is claimed all the same,
	// in the same write (it never becomes usable: consuming it is
	// dropping it), but not handed out: the claim takes the client's
	// next package instead, as ClaimKeyPackage would. A last-resort
	// package it refuses is not handed out and stays available, for the
	// client to replace; the client then has no package to hand out
	// (with Suite 0, no other suite's last-resort package is tried). It
	// runs inside the write, perhaps more than once, so it only computes.
	Usable func(KeyPackage) bool
}

// UsableKeyPackages returns a KeyPackageClaim.Usable for a claim at now:
// it accepts a package whose bytes decode as a KeyPackage whose leaf
// lifetime has not ended (now <= not_after, in seconds) and is at most
// maxLifetime long in total (mls.Lifetime.CheckMaxLifetime; zero or less
// means no maximum), as a Delivery Service with that maximum checks the
// KeyPackage of an Add. The packages were checked so when published, but
// under the maximum of then: this drops those the current one refuses.
func UsableKeyPackages(now time.Time, maxLifetime time.Duration) func(KeyPackage) bool {
	sec := uint64(max(now.Unix(), 0))
	return func(kp KeyPackage) bool {
		var p mls.KeyPackage
		if wire.Unmarshal(kp.KeyPackage, &p, "KeyPackage") != nil {
			return false
		}
		lt := p.LeafNode.Lifetime
		return sec <= lt.NotAfter && lt.CheckMaxLifetime(maxLifetime) == nil
	}
}
