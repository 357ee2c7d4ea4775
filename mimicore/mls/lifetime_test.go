package mls

import (
	"crypto"
	"errors"
	"testing"
	"time"
)

// TestLifetimeContains checks Lifetime.Contains at and around its bounds,
// with and without skew, near 2^64, and for an empty lifetime.
func TestLifetimeContains(t *testing.T) {
	const top = 1<<64 - 1
	for _, tc := range []struct {
		name      string
		lt        Lifetime
		now, skew uint64
		want      bool
	}{
		{"inside", Lifetime{100, 200}, 150, 0, true},
		{"at not_before", Lifetime{100, 200}, 100, 0, true},
		{"at not_after", Lifetime{100, 200}, 200, 0, true},
		{"before, no skew", Lifetime{100, 200}, 99, 0, false},
		{"after, no skew", Lifetime{100, 200}, 201, 0, false},
		{"before, within skew", Lifetime{100, 200}, 70, 30, true},
		{"before, beyond skew", Lifetime{100, 200}, 69, 30, false},
		{"after, within skew", Lifetime{100, 200}, 230, 30, true},
		{"after, beyond skew", Lifetime{100, 200}, 231, 30, false},
		{"empty", Lifetime{201, 199}, 200, 30, false},
		{"whole range", Lifetime{0, top}, top, 300, true},
		{"skew past zero", Lifetime{0, 10}, 5, top, true},
		{"skew past 2^64", Lifetime{top - 10, top}, top - 20, top, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.lt.Contains(tc.now, tc.skew); got != tc.want {
				t.Fatalf("%+v.Contains(%d, %d) = %v, want %v", tc.lt, tc.now, tc.skew, got, tc.want)
			}
		})
	}
}

// TestApplyCommitAddLifetime checks that ApplyCommitWith refuses a commit
// adding a KeyPackage outside its lifetime at opts.Now, whether the Add
// comes by value or by reference, from a member or from a
// new_member_proposal, and that ApplyCommit, without a clock, does not.
func TestApplyCommitAddLifetime(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	now := time.Unix(1_790_000_000, 0)
	sec := uint64(now.Unix())
	opts := ApplyOptions{Now: now, Skew: 300 * time.Second}
	expired := Lifetime{NotBefore: sec - 86400, NotAfter: sec - 301}
	valid := Lifetime{NotBefore: sec - 86400, NotAfter: sec - 300}
	for _, tc := range []struct {
		name    string
		lt      Lifetime
		how     string // "value", "member" or "new member": who proposes the Add
		refused bool
	}{
		{"by value, expired", expired, "value", true},
		{"by value, valid", valid, "value", false},
		{"by reference from a member, expired", expired, "member", true},
		{"by reference from a member, valid", valid, "member", false},
		{"new_member_proposal, expired", expired, "new member", true},
		{"new_member_proposal, valid", valid, "new member", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			kp, signer := keyPackageWithLifetime(t, cs, tc.lt)
			add := &Proposal{Type: ProposalAdd, KeyPackage: kp}
			var props []ProposalOrRef
			var resolve ProposalResolver
			if tc.how == "value" {
				props = []ProposalOrRef{{Type: ProposalByValue, Proposal: add}}
			} else {
				sender, sig := Sender{Type: SenderMember, Index: 1}, tg.signers[1]
				if tc.how == "new member" {
					sender, sig = Sender{Type: SenderNewMemberProposal}, signer
				}
				pm := reencode(t, tg.proposal(t, sender, sig, add))
				ac := pm.PublicMessage.AuthenticatedContent()
				ref, err := cs.ProposalRef(ac)
				if err != nil {
					t.Fatal(err)
				}
				props = []ProposalOrRef{{Type: ProposalByReference, Ref: ref}}
				resolve = func([]byte) (*AuthenticatedContent, error) { return ac, nil }
			}
			msg := reencode(t, tg.commit(t, 0, props, false, resolve))
			if _, _, err := tg.g.ApplyCommit(msg, resolve); err != nil {
				t.Fatalf("without a clock: %v", err)
			}
			o := opts
			o.Resolve = resolve
			_, _, err := tg.g.ApplyCommitWith(msg, o)
			t.Log(err)
			if tc.refused != (err != nil) || (err != nil && !errors.Is(err, ErrInvalidProposal)) {
				t.Fatalf("ApplyCommitWith: %v, want refused %v with ErrInvalidProposal", err, tc.refused)
			}
		})
	}
}

// TestLifetimeSpan checks Lifetime.Span and SpanAtMost at the limit, one
// second over it, near 2^64 and for a lifetime whose not_after precedes
// its not_before.
func TestLifetimeSpan(t *testing.T) {
	const top = 1<<64 - 1
	const limit = 366 * 24 * time.Hour
	lim := uint64(limit / time.Second)
	for _, tc := range []struct {
		name   string
		lt     Lifetime
		span   uint64
		ok     bool
		atMost bool
	}{
		{"zero", Lifetime{}, 0, true, true},
		{"at the limit", Lifetime{1000, 1000 + lim}, lim, true, true},
		{"one second over", Lifetime{1000, 1001 + lim}, lim + 1, true, false},
		{"at the limit below 2^64", Lifetime{top - lim, top}, lim, true, true},
		{"one second over below 2^64", Lifetime{top - lim - 1, top}, lim + 1, true, false},
		{"whole range", Lifetime{0, top}, top, true, false},
		{"2^63 - 1 seconds", Lifetime{0, 1<<63 - 1}, 1<<63 - 1, true, false},
		{"reversed", Lifetime{top, 0}, 0, false, true},
		{"reversed by one", Lifetime{lim + 1, lim}, 0, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			span, ok := tc.lt.Span()
			if span != tc.span || ok != tc.ok {
				t.Fatalf("%+v.Span() = %d, %v, want %d, %v", tc.lt, span, ok, tc.span, tc.ok)
			}
			if got := tc.lt.SpanAtMost(limit); got != tc.atMost {
				t.Fatalf("%+v.SpanAtMost(%s) = %v, want %v", tc.lt, limit, got, tc.atMost)
			}
		})
	}
	t.Run("limit with a fraction of a second", func(t *testing.T) {
		if !(Lifetime{0, lim}).SpanAtMost(limit+time.Second-1) || (Lifetime{0, lim + 1}).SpanAtMost(limit+time.Second-1) {
			t.Fatal("a fraction of a second of the limit counted")
		}
	})
	t.Run("negative limit", func(t *testing.T) {
		if !(Lifetime{5, 5}).SpanAtMost(-time.Second) || (Lifetime{5, 6}).SpanAtMost(-time.Second) {
			t.Fatal("a negative limit is not zero")
		}
	})
}

// TestApplyCommitAddMaxLifetime checks that ApplyCommitWith refuses a
// commit adding a KeyPackage whose total lifetime is longer than
// opts.MaxLifetime, by value or by reference, without a clock too, and
// that it accepts one exactly that long, and any without MaxLifetime.
func TestApplyCommitAddMaxLifetime(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	const limit = 366 * 24 * time.Hour
	lim := uint64(limit / time.Second)
	const top = 1<<64 - 1
	for _, tc := range []struct {
		name    string
		lt      Lifetime
		byRef   bool
		refused bool
	}{
		{"at the limit", Lifetime{1_790_000_000, 1_790_000_000 + lim}, false, false},
		{"one second over", Lifetime{1_790_000_000, 1_790_000_001 + lim}, false, true},
		{"one second over, by reference", Lifetime{1_790_000_000, 1_790_000_001 + lim}, true, true},
		{"at the limit, by reference", Lifetime{1_790_000_000, 1_790_000_000 + lim}, true, false},
		{"2^64 - 1 seconds", Lifetime{0, top}, false, true},
		{"reversed", Lifetime{top, 0}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := buildTestGroup(t, cs, 2, nil)
			kp, _ := keyPackageWithLifetime(t, cs, tc.lt)
			add := &Proposal{Type: ProposalAdd, KeyPackage: kp}
			props := []ProposalOrRef{{Type: ProposalByValue, Proposal: add}}
			var resolve ProposalResolver
			if tc.byRef {
				pm := reencode(t, tg.proposal(t, Sender{Type: SenderMember, Index: 1}, tg.signers[1], add))
				ac := pm.PublicMessage.AuthenticatedContent()
				ref, err := cs.ProposalRef(ac)
				if err != nil {
					t.Fatal(err)
				}
				props = []ProposalOrRef{{Type: ProposalByReference, Ref: ref}}
				resolve = func([]byte) (*AuthenticatedContent, error) { return ac, nil }
			}
			msg := reencode(t, tg.commit(t, 0, props, false, resolve))
			if _, _, err := tg.g.ApplyCommitWith(msg, ApplyOptions{Resolve: resolve}); err != nil {
				t.Fatalf("without MaxLifetime: %v", err)
			}
			_, _, err := tg.g.ApplyCommitWith(msg, ApplyOptions{Resolve: resolve, MaxLifetime: limit})
			t.Log(err)
			if tc.refused != (err != nil) || (err != nil && !errors.Is(err, ErrInvalidProposal)) {
				t.Fatalf("ApplyCommitWith: %v, want refused %v with ErrInvalidProposal", err, tc.refused)
			}
		})
	}
}

// keyPackageWithLifetime returns a KeyPackage of a new joiner whose leaf
// has lifetime lt, signed anew, and the joiner's signer.
func keyPackageWithLifetime(t *testing.T, cs CipherSuite, lt Lifetime) (*KeyPackage, crypto.Signer) {
	t.Helper()
	kp, signer := newTestKeyPackage(t, cs, "joiner")
	kp.LeafNode.Lifetime = lt
	if err := kp.LeafNode.Sign(cs, signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := kp.Sign(signer); err != nil {
		t.Fatal(err)
	}
	return kp, signer
}
