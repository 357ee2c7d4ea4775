package storetest_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

const brokenEnv = "STORETEST_BROKEN_MODE"

// broken wraps a correct store and breaks one promise of the contract.
type broken struct {
	store.Store
	mode string

	mu     sync.Mutex
	seen   map[string]bool
	loaded map[string]*mls.GroupState
	infos  map[string][]byte
	keys   map[string][]byte
	// checks counts racyOnce's checks per key.
	checks map[string]int
}

// racyOnce is a check-then-set with a window between check and set. A
// caller that finds key new keeps the window open until another caller
// has checked key too (racyWindow), so that concurrent callers of one key
// both find it new however the scheduler runs them: a window of a fixed
// length let goroutines started a millisecond apart on a loaded machine
// pass the contract's concurrency test one after the other.
func (b *broken) racyOnce(key string) bool {
	b.mu.Lock()
	seen := b.seen[key]
	b.mu.Unlock()
	if !seen {
		b.racyWindow(key)
	} else {
		b.countCheck(key)
	}
	b.mu.Lock()
	b.seen[key] = true
	b.mu.Unlock()
	return !seen
}

// countCheck counts a check of key and returns the checks so far.
func (b *broken) countCheck(key string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.checks == nil {
		b.checks = map[string]int{}
	}
	b.checks[key]++
	return b.checks[key]
}

// racyWindow counts a check of key, and returns once another caller has
// checked key too, or after 30 s (a caller left alone: the subtests that
// race these checks run several callers per key, so only a hang waits
// that long).
func (b *broken) racyWindow(key string) {
	if b.countCheck(key) >= 2 {
		return
	}
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Microsecond) {
		b.mu.Lock()
		n := b.checks[key]
		b.mu.Unlock()
		if n >= 2 {
			return
		}
	}
}

func (b *broken) Reserve(ctx context.Context, sender string, id []byte, d [32]byte, exp time.Time) (store.Reservation, error) {
	switch b.mode {
	case "reserve-always-new":
		return store.Reservation{Status: store.ReplayNew}, nil
	case "reserve-racy":
		if _, err := b.Store.Reserve(ctx, sender, id, d, exp); err != nil {
			return store.Reservation{}, err
		}
		if b.racyOnce(sender + "\x00" + string(id)) {
			return store.Reservation{Status: store.ReplayNew}, nil
		}
		return store.Reservation{Status: store.ReplayInProgress}, nil
	case "conflict-as-in-progress":
		r, err := b.Store.Reserve(ctx, sender, id, d, exp)
		if r.Status == store.ReplayConflict {
			r.Status = store.ReplayInProgress
		}
		return r, err
	}
	return b.Store.Reserve(ctx, sender, id, d, exp)
}

func (b *broken) Complete(ctx context.Context, sender string, id []byte, d [32]byte, a store.Answer) error {
	if b.mode == "complete-drops-answer" {
		return nil
	}
	return b.Store.Complete(ctx, sender, id, d, a)
}

func (b *broken) Release(ctx context.Context, sender string, id []byte, d [32]byte) error {
	if b.mode == "release-noop" {
		return nil
	}
	return b.Store.Release(ctx, sender, id, d)
}

func (b *broken) MarkSpent(ctx context.Context, key []byte, exp time.Time) (bool, error) {
	switch b.mode {
	case "spent-always-first":
		return true, nil
	case "spent-racy":
		return b.racyOnce(string(key)), nil
	}
	return b.Store.MarkSpent(ctx, key, exp)
}

func (b *broken) SeenSignature(ctx context.Context, d [32]byte, exp time.Time) (bool, error) {
	if b.mode == "seen-ignores-expiry" {
		first, err := b.Store.SeenSignature(ctx, d, exp)
		b.mu.Lock()
		defer b.mu.Unlock()
		if err == nil && first && b.seen[string(d[:])] {
			return false, nil
		}
		b.seen[string(d[:])] = true
		return first, err
	}
	return b.Store.SeenSignature(ctx, d, exp)
}

func (b *broken) DeleteExpired(ctx context.Context, now time.Time) (int64, error) {
	if b.mode == "sweep-noop" {
		return 0, nil
	}
	return b.Store.DeleteExpired(ctx, now)
}

func (b *broken) ListSigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	keys, err := b.Store.ListSigningKeys(ctx)
	if b.mode == "keys-unsorted" {
		slices.Reverse(keys)
	}
	if b.mode == "sealed-dropped" {
		for i := range keys {
			keys[i].Sealed = nil
		}
	}
	return keys, err
}

func (b *broken) AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error) {
	if b.mode == "lease-always-won" {
		return true, nil
	}
	return b.Store.AcquireLease(ctx, name, holder, now, ttl)
}

func (b *broken) ReleaseLease(ctx context.Context, name, holder string) error {
	if b.mode == "lease-release-noop" {
		return nil
	}
	return b.Store.ReleaseLease(ctx, name, holder)
}

func (b *broken) OutboxClaim(ctx context.Context, destination, holder string, now time.Time, ttl time.Duration, limit int) ([]store.OutboxEntry, bool, error) {
	if b.mode == "outbox-claim-always-won" {
		entries, err := b.Store.OutboxPending(ctx, destination, 0, limit)
		return entries, err == nil, err
	}
	return b.Store.OutboxClaim(ctx, destination, holder, now, ttl, limit)
}

func (b *broken) OutboxRelease(ctx context.Context, destination, holder string, ids []uint64) (int, error) {
	switch b.mode {
	case "outbox-release-keeps-lease":
		return b.Store.OutboxDelivered(ctx, destination, ids)
	case "outbox-release-keeps-messages":
		return 0, b.Store.ReleaseLease(ctx, store.OutboxLeaseName(destination), holder)
	}
	return b.Store.OutboxRelease(ctx, destination, holder, ids)
}

func (b *broken) AddTokenChallenges(ctx context.Context, cs []store.TokenChallenge) error {
	if b.mode == "challenges-partial" {
		var valid []store.TokenChallenge
		for _, c := range cs {
			if len(c.Digest) == store.TokenChallengeDigestSize {
				valid = append(valid, c)
			}
		}
		cs = valid
	}
	return b.Store.AddTokenChallenges(ctx, cs)
}

func (b *broken) LookupTokenChallenge(ctx context.Context, digest []byte) (store.TokenChallenge, error) {
	c, err := b.Store.LookupTokenChallenge(ctx, digest)
	if b.mode == "challenges-any" && errors.Is(err, store.ErrNotFound) {
		return store.TokenChallenge{Digest: digest, TokenType: 2, Expires: time.Now().Add(time.Hour)}, nil
	}
	return c, err
}

func (b *broken) InsertSigningKey(ctx context.Context, k store.SigningKey) error {
	if b.mode == "insert-overwrites" {
		_ = b.Store.DeleteSigningKey(ctx, k.KeyID)
	}
	return b.Store.InsertSigningKey(ctx, k)
}

func (b *broken) ReplacePeerKeys(ctx context.Context, domain string, keys []store.PeerKey) error {
	if b.mode == "peer-keys-merge" {
		old, err := b.Store.ListPeerKeys(ctx, domain)
		if err != nil {
			return err
		}
		for _, o := range old {
			if !slices.ContainsFunc(keys, func(k store.PeerKey) bool { return string(k.KeyID) == string(o.KeyID) }) {
				keys = append(keys, o)
			}
		}
	}
	return b.Store.ReplacePeerKeys(ctx, domain, keys)
}

func (b *broken) LookupPeerFailure(ctx context.Context, domain string) (store.PeerFailure, error) {
	f, err := b.Store.LookupPeerFailure(ctx, domain)
	if b.mode == "failure-reason-lost" {
		f.Reason = ""
	}
	return f, err
}

func (b *broken) CreateGroup(ctx context.Context, c store.GroupCreation) error {
	if b.mode == "create-drops-members" {
		c.Members = nil
	}
	err := b.Store.CreateGroup(ctx, c)
	if b.mode == "create-overwrites" && errors.Is(err, store.ErrGroupExists) {
		_ = b.Store.DeleteGroup(ctx, c.State.GroupID())
		return b.Store.CreateGroup(ctx, c)
	}
	return err
}

func (b *broken) CommitEpoch(ctx context.Context, c store.EpochCommit) (store.Delivered, error) {
	if b.mode == "post-ignores-leave" && c.Fanout.Group != nil {
		p := *c.Fanout.Group
		p.Leave = nil
		c.Fanout.Group = &p
	}
	if b.mode == "commit-ignores-pending" {
		// Checked against whatever is pending now, not what the
		// caller saw.
		if p, err := b.Store.PendingProposals(ctx, c.Base.GroupID(), c.Base.Epoch()); err == nil {
			c.Pending = len(p)
		}
	}
	if b.mode == "commit-drops-reinit" {
		c.ReInit = nil
	}
	d, err := b.Store.CommitEpoch(ctx, c)
	if b.mode == "commit-ignores-conflict" && errors.Is(err, store.ErrEpochConflict) {
		return store.Delivered{}, nil
	}
	return d, err
}

func (b *broken) Deliver(ctx context.Context, id []byte, epoch uint64, f store.Fanout) (store.Delivered, error) {
	if b.mode == "post-ignores-except" && f.Group != nil {
		p := *f.Group
		p.Except = ""
		f.Group = &p
	}
	if b.mode == "deliver-ignores-dedup" {
		f.Dedup, f.DedupExpires = nil, time.Time{}
	}
	return b.Store.Deliver(ctx, id, epoch, f)
}

func (b *broken) DedupRecorded(ctx context.Context, key []byte) (bool, error) {
	if b.mode == "dedup-recorded-never" {
		return false, nil
	}
	return b.Store.DedupRecorded(ctx, key)
}

func (b *broken) LoadGroup(ctx context.Context, id []byte) (*mls.GroupState, error) {
	g, err := b.Store.LoadGroup(ctx, id)
	if b.mode == "load-stale" && err == nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		if old, ok := b.loaded[string(id)]; ok {
			return old, nil
		}
		b.loaded[string(id)] = g
	}
	return g, err
}

func (b *broken) WelcomeTree(ctx context.Context, id []byte, epoch uint64) (mls.RatchetTree, error) {
	rt, err := b.Store.WelcomeTree(ctx, id, epoch)
	if b.mode == "welcome-tree-current" && err == nil {
		g, err := b.Store.LoadGroup(ctx, id)
		if err != nil {
			return nil, err
		}
		return g.Tree().RatchetTree(), nil
	}
	return rt, err
}

func (b *broken) JoinerKey(ctx context.Context, id []byte, epoch uint64, ref []byte) ([]byte, error) {
	key, err := b.Store.JoinerKey(ctx, id, epoch, ref)
	k := fmt.Sprintf("%x/%d/%x", id, epoch, ref)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mode == "joiner-outlives-tree" && errors.Is(err, store.ErrNotFound) {
		if old, ok := b.keys[k]; ok {
			return old, nil
		}
	}
	if err == nil {
		b.keys[k] = key
	}
	return key, err
}

func (b *broken) GroupInfo(ctx context.Context, id []byte) (uint64, []byte, error) {
	epoch, gi, err := b.Store.GroupInfo(ctx, id)
	if b.mode == "group-info-outlives-epoch" && errors.Is(err, store.ErrNotFound) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if old, ok := b.infos[string(id)]; ok {
			return epoch, old, nil
		}
	}
	if err == nil {
		b.mu.Lock()
		b.infos[string(id)] = gi
		b.mu.Unlock()
	}
	return epoch, gi, err
}

func (b *broken) PendingProposals(ctx context.Context, id []byte, epoch uint64) ([]store.PendingProposal, error) {
	ps, err := b.Store.PendingProposals(ctx, id, epoch)
	if b.mode == "proposals-any-epoch" && errors.Is(err, store.ErrEpochConflict) {
		return nil, nil
	}
	return ps, err
}

func (b *broken) ClaimKeyPackage(ctx context.Context, client string, suite uint16) (store.KeyPackage, error) {
	if b.mode == "claim-keeps" {
		kps, err := b.Store.ListKeyPackages(ctx, client)
		if err != nil {
			return store.KeyPackage{}, err
		}
		for _, kp := range kps {
			if kp.Suite == suite {
				return kp, nil
			}
		}
		return store.KeyPackage{}, store.ErrNotFound
	}
	return b.Store.ClaimKeyPackage(ctx, client, suite)
}

// PublishKeyPackages in mode publish-ignores-user-bound publishes without
// the bound per user.
func (b *broken) PublishKeyPackages(ctx context.Context, client string, kps []store.KeyPackage, lim store.KeyPackageLimits) error {
	if b.mode == "publish-ignores-user-bound" {
		lim.UserPrefix, lim.PerUser = "", 0
	}
	return b.Store.PublishKeyPackages(ctx, client, kps, lim)
}

// ClaimKeyPackages in mode claim-then-record commits the claims on their
// own, then records the replay entry in a write of its own.
func (b *broken) ClaimKeyPackages(ctx context.Context, c store.KeyPackageClaim) ([]store.KeyPackage, error) {
	if b.mode != "claim-then-record" || c.Replay == nil {
		return b.Store.ClaimKeyPackages(ctx, c)
	}
	replay := c.Replay
	c.Replay = nil
	kps, err := b.Store.ClaimKeyPackages(ctx, c)
	if err != nil {
		return nil, err
	}
	r, err := replay(kps)
	if err != nil || r == nil {
		return kps, err
	}
	if _, err := b.Store.RecordReplay(ctx, r.Sender, r.RequestID, r.Digest, r.Answer, r.Expires); err != nil {
		return nil, err
	}
	return kps, nil
}

func (b *broken) OutboxAdd(ctx context.Context, w store.OutboxWrite) ([]uint64, error) {
	if b.mode == "outbox-add-ignores-dedup" {
		w.Dedup, w.DedupExpires = nil, time.Time{}
	}
	return b.Store.OutboxAdd(ctx, w)
}

func (b *broken) SetOutboxLimits(l store.OutboxLimits) {
	if b.mode == "outbox-unbounded" {
		return
	}
	b.Store.SetOutboxLimits(l)
}

func (b *broken) OutboxReset(ctx context.Context, destination string) (int, error) {
	if b.mode == "outbox-reset-one-write" {
		// One write of the reset, as if the loop stopped after it.
		pending, err := b.Store.OutboxPending(ctx, destination, 0, 500)
		if err != nil {
			return 0, err
		}
		ids := make([]uint64, 0, len(pending))
		for _, e := range pending {
			ids = append(ids, e.ID)
		}
		return b.Store.OutboxDelivered(ctx, destination, ids)
	}
	return b.Store.OutboxReset(ctx, destination)
}

func (b *broken) Append(ctx context.Context, d store.Delivery) ([]store.Appended, error) {
	if b.mode == "append-first-only" && len(d.Recipients) > 1 {
		first := d
		first.Recipients = d.Recipients[:1]
		out, err := b.Store.Append(ctx, first)
		if err != nil {
			return nil, err
		}
		for range d.Recipients[1:] {
			out = append(out, out[0])
		}
		return out, nil
	}
	return b.Store.Append(ctx, d)
}

func (b *broken) Ack(ctx context.Context, client string, upTo uint64) (int, error) {
	n, err := b.Store.Ack(ctx, client, upTo)
	if b.mode == "ack-clamps" && errors.Is(err, store.ErrInvalid) {
		return 0, nil
	}
	return n, err
}

func (b *broken) WatchQueue(client string, after uint64) (<-chan struct{}, func()) {
	if b.mode == "watch-early" {
		ch := make(chan struct{})
		close(ch)
		return ch, func() {}
	}
	return b.Store.WatchQueue(client, after)
}

func (b *broken) Close() error {
	if b.mode == "close-noop" {
		return nil
	}
	return b.Store.Close()
}

func (b *broken) ReserveAttachment(ctx context.Context, a store.Attachment, q store.AttachmentQuota) error {
	if b.mode == "attach-quota-racy" && q.GroupBytes > 0 {
		// Check, then write without the check: two reservations can both
		// see the room that only one of them fits. The window stays open
		// until another reservation found the same usage (racyWindow),
		// however the scheduler runs them: a sleep of 5 ms let racers
		// that a loaded machine ran 5 ms apart pass one after the other.
		// A group's first reservation, which the contract's race
		// (QuotaRace) makes alone, needs no window.
		u, err := b.Store.GroupAttachmentUsage(ctx, a.GroupID)
		if err != nil {
			return err
		}
		if u.Bytes+a.Size > q.GroupBytes {
			return store.ErrQuota
		}
		if u.Count > 0 {
			b.racyWindow(fmt.Sprintf("quota\x00%x\x00%d", a.GroupID, u.Bytes))
		}
		q.GroupBytes = 0
	}
	return b.Store.ReserveAttachment(ctx, a, q)
}

func (b *broken) LookupAttachment(ctx context.Context, group []byte, tokenHash [32]byte) (store.Attachment, error) {
	a, err := b.Store.LookupAttachment(ctx, group, tokenHash)
	if b.mode == "attach-lookup-any-group" && errors.Is(err, store.ErrNotFound) {
		for _, g := range [][]byte{[]byte("attachment group 1"), []byte("attachment group 2")} {
			if a, err := b.Store.LookupAttachment(ctx, g, tokenHash); err == nil {
				return a, nil
			}
		}
	}
	return a, err
}

func (b *broken) DeleteAttachment(ctx context.Context, group []byte, tokenHash [32]byte, uploader string) (store.Attachment, bool, error) {
	a, last, err := b.Store.DeleteAttachment(ctx, group, tokenHash, uploader)
	if b.mode == "attach-delete-always-last" && err == nil {
		last = true
	}
	return a, last, err
}

func (b *broken) ExpireAttachments(ctx context.Context, now time.Time, limit int) (int, error) {
	if b.mode == "attach-expire-noop" {
		return 0, nil
	}
	return b.Store.ExpireAttachments(ctx, now, limit)
}

func (b *broken) CommitAttachment(ctx context.Context, tokenHash [32]byte, exp time.Time, ans store.SignatureAnswer) error {
	if b.mode == "answer-dropped" {
		ans = store.SignatureAnswer{}
	}
	return b.Store.CommitAttachment(ctx, tokenHash, exp, ans)
}

func (b *broken) CopyAttachment(ctx context.Context, group []byte, tokenHash [32]byte, dst store.Attachment, q store.AttachmentQuota, ans store.SignatureAnswer) (store.Attachment, error) {
	if b.mode == "answer-apart" && ans.Body != nil {
		// The answer written by a write of its own, before the copy (an
		// upload of nothing that records it): a copy that fails leaves it.
		rec := store.Attachment{TokenHash: [32]byte(randomBytes(32)), GroupID: []byte("answer apart"), Object: fmt.Sprintf("%x", randomBytes(16)),
			ContentHash: []byte{1}, Uploader: dst.Uploader, Created: dst.Created, Expires: dst.Expires}
		if err := b.Store.ReserveAttachment(ctx, rec, store.AttachmentQuota{}); err != nil {
			return store.Attachment{}, err
		}
		if err := b.Store.CommitAttachment(ctx, rec.TokenHash, dst.Expires, ans); err != nil {
			return store.Attachment{}, err
		}
		ans = store.SignatureAnswer{}
	}
	return b.Store.CopyAttachment(ctx, group, tokenHash, dst, q, ans)
}

// randomBytes returns n random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// brokenModes maps each broken store to the subtest that must catch it.
var brokenModes = map[string]string{
	"reserve-always-new":            "Replay/Lifecycle",
	"reserve-racy":                  "Replay/ConcurrentSameKey",
	"conflict-as-in-progress":       "Replay/Lifecycle",
	"complete-drops-answer":         "Replay/Lifecycle",
	"release-noop":                  "Replay/Release",
	"spent-always-first":            "MarkSpent/FirstUseThenReplay",
	"spent-racy":                    "MarkSpent/Concurrent",
	"seen-ignores-expiry":           "SeenSignature/Expiry",
	"sweep-noop":                    "DeleteExpired",
	"keys-unsorted":                 "SigningKeys/InsertListRetireDelete",
	"insert-overwrites":             "SigningKeys/InsertConflicts",
	"peer-keys-merge":               "PeerKeys/ReplaceAndLookup",
	"failure-reason-lost":           "PeerKeys/Failures",
	"close-noop":                    "Close",
	"create-overwrites":             "Groups/CreateLoad",
	"commit-ignores-conflict":       "Groups/CommitConflict",
	"commit-drops-reinit":           "Groups/ReInit",
	"load-stale":                    "Groups/CommitChain",
	"welcome-tree-current":          "Groups/WelcomeTrees/Epochs",
	"joiner-outlives-tree":          "Groups/WelcomeTrees/Epochs",
	"proposals-any-epoch":           "Groups/Proposals",
	"commit-ignores-pending":        "Groups/Proposals",
	"group-info-outlives-epoch":     "Groups/GroupInfo",
	"create-drops-members":          "Groups/GroupLog",
	"post-ignores-leave":            "Groups/GroupLog",
	"post-ignores-except":           "Groups/GroupLogWatch",
	"deliver-ignores-dedup":         "Groups/DeliverDedup",
	"dedup-recorded-never":          "Groups/DeliverDedup",
	"claim-keeps":                   "KeyPackages/PublishListClaim",
	"claim-then-record":             "KeyPackages/ClaimWithReplay",
	"publish-ignores-user-bound":    "KeyPackages/UserLimit",
	"append-first-only":             "Queues/FanOut",
	"ack-clamps":                    "Queues/Cursors",
	"watch-early":                   "Queues/Watch",
	"attach-quota-racy":             "Attachments/QuotaRace",
	"attach-lookup-any-group":       "Attachments/PendingInvisibleThenCommitted",
	"attach-delete-always-last":     "Attachments/CopySharesObject",
	"attach-expire-noop":            "Attachments/Expire",
	"outbox-add-ignores-dedup":      "Queues/OutboxAdd",
	"outbox-unbounded":              "Queues/OutboxBound",
	"outbox-reset-one-write":        "Queues/OutboxResetLarge",
	"sealed-dropped":                "SharedKeys/SealedKeys",
	"lease-always-won":              "SharedKeys/Leases/Race",
	"lease-release-noop":            "SharedKeys/Leases/HoldRenewReleaseExpire",
	"outbox-claim-always-won":       "OutboxLeases/Claim",
	"outbox-release-keeps-lease":    "OutboxLeases/Claim",
	"outbox-release-keeps-messages": "OutboxLeases/Drainers",
	"challenges-partial":            "TokenChallenges/invalid",
	"challenges-any":                "TokenChallenges/add_and_look_up",
	"answer-dropped":                "Attachments/SignatureAnswer/Commit",
	"answer-apart":                  "Attachments/SignatureAnswer/Copy",
}

func openSQLite(t *testing.T, opts ...sqlitestore.Option) store.Store {
	s, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "mimi.db"), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestBrokenStoreHelper runs the contract against a broken store when
// re-executed by TestContractCatchesBrokenStores.
func TestBrokenStoreHelper(t *testing.T) {
	mode := os.Getenv(brokenEnv)
	if mode == "" {
		t.Skip("helper for TestContractCatchesBrokenStores")
	}
	storetest.RunContractTests(t, func(t *testing.T) store.Store {
		return &broken{Store: openSQLite(t), mode: mode, seen: map[string]bool{}}
	})
	t.Run("Groups", func(t *testing.T) {
		storetest.RunGroupTests(t, func(t *testing.T, clock *storetest.Clock) store.Store {
			return &broken{Store: openSQLite(t, sqlitestore.WithClock(clock.Now)), mode: mode,
				seen: map[string]bool{}, loaded: map[string]*mls.GroupState{}, infos: map[string][]byte{},
				keys: map[string][]byte{}}
		})
	})
	withClock := func(t *testing.T, clock *storetest.Clock) store.Store {
		return &broken{Store: openSQLite(t, sqlitestore.WithClock(clock.Now)), mode: mode, seen: map[string]bool{}}
	}
	t.Run("KeyPackages", func(t *testing.T) { storetest.RunKeyPackageTests(t, withClock) })
	t.Run("Queues", func(t *testing.T) { storetest.RunQueueTests(t, withClock) })
	t.Run("SharedKeys", func(t *testing.T) {
		storetest.RunSharedKeyTests(t, func(t *testing.T) []store.Store {
			return []store.Store{&broken{Store: openSQLite(t), mode: mode, seen: map[string]bool{}}}
		})
	})
	t.Run("OutboxLeases", func(t *testing.T) {
		storetest.RunOutboxLeaseTests(t, func(t *testing.T) []store.Store {
			return []store.Store{&broken{Store: openSQLite(t), mode: mode, seen: map[string]bool{}}}
		})
	})
}

// TestContractCatchesBrokenStores proves that the contract tests can fail:
// each broken store must fail the subtest aimed at its defect.
func TestContractCatchesBrokenStores(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	for mode, subtest := range brokenModes {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenStoreHelper$/^"+subtestPattern(subtest)+"$", "-test.count=1")
			cmd.Env = append(os.Environ(), brokenEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("contract subtest %s passed a %s store:\n%s", subtest, mode, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestBrokenStoreHelper/"+subtest) {
				t.Fatalf("helper failed without failing %s (%v):\n%s", subtest, err, out)
			}
		})
	}
}

// subtestPattern anchors every level of a subtest name for -test.run.
func subtestPattern(name string) string { return strings.ReplaceAll(name, "/", "$/^") }
