package ds

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// TestKeyPackageLifetime checks that a commit adding a KeyPackage whose
// leaf lifetime does not contain the DS clock, give or take MaxClockSkew,
// is refused invalid_mls and changes nothing (docs/protocol.md §5.4.1,
// commits, step 2), while one within it is accepted: members refuse an
// Add outside its lifetime (RFC 9420 §7.3), so a hub that fanned such a
// commit out would leave them behind its epoch.
func TestKeyPackageLifetime(t *testing.T) {
	h, sec := clockedHarness(t)
	// The lifetimes' lengths are TestKeyPackageMaxLifetime's.
	h.svc.MaxKeyPackageLifetime = -1
	skew := uint64(MaxClockSkew / time.Second)
	const day = 24 * 3600

	alice := h.newTClient(t, "alice", "phone", false)
	gid := []byte("lifetime group")
	h.mustDo(t, "create_group", createBody(t, alice, gid))
	epoch := uint64(0)

	for i, tc := range []struct {
		name     string
		lifetime mls.Lifetime
		accepted bool
	}{
		{"expired long ago", mls.Lifetime{NotBefore: sec - 30*day, NotAfter: sec - day}, false},
		{"expired just beyond the tolerance", mls.Lifetime{NotBefore: sec - 30*day, NotAfter: sec - skew - 1}, false},
		{"expired within the tolerance", mls.Lifetime{NotBefore: sec - 30*day, NotAfter: sec - skew + 1}, true},
		{"expired at the edge of the tolerance", mls.Lifetime{NotBefore: sec - 30*day, NotAfter: sec - skew}, true},
		{"not yet valid, long before", mls.Lifetime{NotBefore: sec + day, NotAfter: sec + 30*day}, false},
		{"not yet valid, just beyond the tolerance", mls.Lifetime{NotBefore: sec + skew + 1, NotAfter: sec + 30*day}, false},
		{"not yet valid, within the tolerance", mls.Lifetime{NotBefore: sec + skew, NotAfter: sec + 30*day}, true},
		{"empty lifetime around the clock", mls.Lifetime{NotBefore: sec + 1, NotAfter: sec - 1}, false},
		{"valid", mls.Lifetime{NotBefore: sec - day, NotAfter: sec + 30*day}, true},
		{"valid, ts-mls's default", mls.Lifetime{NotBefore: 0, NotAfter: 1<<63 - 1}, true},
		{"valid, up to the last second", mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			joiner := h.newTClientEdit(t, fmt.Sprintf("joiner%d", i), "phone", false, func(leaf *mls.LeafNode) {
				leaf.Lifetime = tc.lifetime
			})
			before := h.snapshot(t, gid)
			res := commit(t, alice.m, addProps(joiner), nil, nil)
			_, err := h.do(t, commitBody(t, moh.AddUsers, alice, alice.m, res))
			if err == nil {
				// Followed even when it should have been refused, so
				// that the next cases start from the stored epoch.
				adopt(t, res, alice)
				epoch++
			}
			t.Log(err)
			switch {
			case tc.accepted && err != nil:
				t.Fatalf("answer %v, want ok", err)
			case !tc.accepted && codeOf(err) != moh.CodeInvalidMLS:
				t.Fatalf("answer %v, want invalid_mls", err)
			case !tc.accepted && !h.snapshot(t, gid).equal(before):
				t.Fatal("the refusal changed the stored group")
			}
			h.wantEpoch(t, gid, epoch, alice.m.State().MemberCount())
		})
	}
}

// TestKeyPackageMaxLifetime checks that the Delivery Service refuses,
// invalid_mls and changing nothing, a key_package leaf whose total
// lifetime (not_after - not_before) is longer than MaxKeyPackageLifetime
// (RFC 9420 §7.2, docs/protocol.md §5.4.1): the KeyPackage a commit adds,
// and the creator's leaf of create_group; one exactly that long is
// accepted. Every lifetime contains the DS clock.
func TestKeyPackageMaxLifetime(t *testing.T) {
	h, sec := clockedHarness(t)
	def := uint64(mls.DefaultMaxLifetime / time.Second)
	const day = 24 * 3600
	for i, tc := range []struct {
		name     string
		max      time.Duration // the Service's MaxKeyPackageLifetime
		lifetime mls.Lifetime
		accepted bool
	}{
		{"default, at the maximum", 0, mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec - 3600 + def}, true},
		{"default, one second over", 0, mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec - 3600 + def + 1}, false},
		{"default, mls-rs's 365 days", 0, mls.Lifetime{NotBefore: sec, NotAfter: sec + 365*day}, true},
		{"default, OpenMLS's 84 days and an hour", 0, mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec + 84*day}, true},
		{"default, a century", 0, mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec + 100*365*day}, false},
		{"default, ts-mls's 0 to 2^63-1", 0, mls.Lifetime{NotBefore: 0, NotAfter: 1<<63 - 1}, false},
		{"default, 0 to 2^64-1", 0, mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}, false},
		{"30 days, at the maximum", 30 * day * time.Second, mls.Lifetime{NotBefore: sec - day, NotAfter: sec + 29*day}, true},
		{"30 days, one second over", 30 * day * time.Second, mls.Lifetime{NotBefore: sec - day, NotAfter: sec + 29*day + 1}, false},
		{"unlimited, 0 to 2^64-1", -1, mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.svc.MaxKeyPackageLifetime = tc.max
			wantRefused := func(t *testing.T, err error, before, after snapshot) {
				t.Helper()
				t.Log(err)
				switch {
				case tc.accepted && err != nil:
					t.Fatalf("answer %v, want ok", err)
				case !tc.accepted && codeOf(err) != moh.CodeInvalidMLS:
					t.Fatalf("answer %v, want invalid_mls", err)
				case !tc.accepted && !after.equal(before):
					t.Fatal("the refusal changed the stored group")
				}
			}
			t.Run("add", func(t *testing.T) {
				alice := h.newTClientEdit(t, fmt.Sprintf("alice%d", i), "phone", false, func(leaf *mls.LeafNode) {
					leaf.Lifetime = mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec + day}
				})
				gid := []byte(fmt.Sprintf("max lifetime add %d", i))
				h.mustDo(t, "create_group", createBody(t, alice, gid))
				joiner := h.newTClientEdit(t, fmt.Sprintf("joiner%d", i), "phone", false, func(leaf *mls.LeafNode) {
					leaf.Lifetime = tc.lifetime
				})
				before := h.snapshot(t, gid)
				res := commit(t, alice.m, addProps(joiner), nil, nil)
				_, err := h.do(t, commitBody(t, moh.AddUsers, alice, alice.m, res))
				wantRefused(t, err, before, h.snapshot(t, gid))
				if !tc.accepted && len(h.queued(t, joiner)) != 0 {
					t.Fatal("the refused commit's Welcome was queued for the joiner")
				}
			})
			t.Run("create_group", func(t *testing.T) {
				creator := h.newTClientEdit(t, fmt.Sprintf("creator%d", i), "phone", false, func(leaf *mls.LeafNode) {
					leaf.Lifetime = tc.lifetime
				})
				gid := []byte(fmt.Sprintf("max lifetime create %d", i))
				_, err := h.do(t, createBody(t, creator, gid))
				wantRefused(t, err, snapshot{}, h.snapshot(t, gid))
			})
		})
	}
}

// TestCreateGroupLifetime checks that create_group refuses, invalid_mls
// and storing nothing, a creator's key_package leaf whose lifetime does
// not contain the DS clock, give or take MaxClockSkew, as a commit's Add
// is refused (docs/protocol.md §5.4.1, create_group): a joiner refuses a
// tree with a key_package leaf outside its lifetime (RFC 9420 §7.3).
func TestCreateGroupLifetime(t *testing.T) {
	h, sec := clockedHarness(t)
	// The lifetimes' lengths are TestKeyPackageMaxLifetime's.
	h.svc.MaxKeyPackageLifetime = -1
	skew := uint64(MaxClockSkew / time.Second)
	const day = 24 * 3600
	for i, tc := range []struct {
		name     string
		lifetime mls.Lifetime
		accepted bool
	}{
		{"expired long ago", mls.Lifetime{NotBefore: sec - 30*day, NotAfter: sec - day}, false},
		{"expired just beyond the tolerance", mls.Lifetime{NotBefore: sec - 30*day, NotAfter: sec - skew - 1}, false},
		{"expired at the edge of the tolerance", mls.Lifetime{NotBefore: sec - 30*day, NotAfter: sec - skew}, true},
		{"not yet valid, long before", mls.Lifetime{NotBefore: sec + day, NotAfter: sec + 30*day}, false},
		{"not yet valid, just beyond the tolerance", mls.Lifetime{NotBefore: sec + skew + 1, NotAfter: sec + 30*day}, false},
		{"not yet valid, at the edge of the tolerance", mls.Lifetime{NotBefore: sec + skew, NotAfter: sec + 30*day}, true},
		{"empty lifetime around the clock", mls.Lifetime{NotBefore: sec + 1, NotAfter: sec - 1}, false},
		{"valid", mls.Lifetime{NotBefore: sec - day, NotAfter: sec + 30*day}, true},
		{"valid, up to the last second", mls.Lifetime{NotBefore: 0, NotAfter: 1<<64 - 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			creator := h.newTClientEdit(t, fmt.Sprintf("creator%d", i), "phone", false, func(leaf *mls.LeafNode) {
				leaf.Lifetime = tc.lifetime
			})
			gid := []byte(fmt.Sprintf("lifetime create %d", i))
			_, err := h.do(t, createBody(t, creator, gid))
			t.Log(err)
			switch {
			case tc.accepted && err != nil:
				t.Fatalf("answer %v, want ok", err)
			case !tc.accepted && codeOf(err) != moh.CodeInvalidMLS:
				t.Fatalf("answer %v, want invalid_mls", err)
			case !tc.accepted && !h.snapshot(t, gid).equal(snapshot{}):
				t.Fatal("the refusal stored the group")
			}
		})
	}
}

// clockedHarness returns a harness whose DS clock stands still at the
// current second, set after the harness made its provider's key (which
// must be valid at that clock), and that second in Unix seconds, as
// lifetimes count it.
func clockedHarness(t *testing.T) (*harness, uint64) {
	t.Helper()
	h := newHarness(t)
	now := time.Now().Truncate(time.Second)
	h.svc.Now = func() time.Time { return now }
	return h, uint64(now.Unix())
}
