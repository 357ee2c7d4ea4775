package ds

import (
	"context"
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// proposalMeanwhile is the harness's real store, except that the first
// read of a group's pending proposals runs meanwhile before it returns:
// another request, served in full between a commit's check of the pending
// proposals and its write, at a point fixed by the code rather than by
// timing.
type proposalMeanwhile struct {
	Store
	meanwhile func()
}

func (p *proposalMeanwhile) PendingProposals(ctx context.Context, gid []byte, epoch uint64) ([]store.PendingProposal, error) {
	pending, err := p.Store.PendingProposals(ctx, gid, epoch)
	if f := p.meanwhile; f != nil {
		p.meanwhile = nil
		f()
	}
	return pending, err
}

// TestProposalDuringCommit checks that a self-remove kept while a commit of
// its epoch is being checked is not dropped by that commit (step 4 of
// docs/protocol.md §5.4.1: a commit covers every proposal pending in its
// epoch): the commit, which does not cover it, is refused and the
// proposal stays pending for the next one; a commit that does cover it (a
// Remove of the same leaf by value) is still accepted. An external join is
// refused commit_conflict, as while any proposal is pending.
func TestProposalDuringCommit(t *testing.T) {
	cases := []struct {
		name   string
		typ    moh.RequestType
		remove bool     // alice's commit removes bob's leaf by value
		want   moh.Code // 0: accepted
	}{
		{"update_client, not covering it", moh.UpdateClient, false, moh.CodeForbidden},
		{"remove_users, removing the leaf", moh.RemoveUsers, true, 0},
		{"external_join of alice's tablet", moh.ExternalJoin, false, moh.CodeCommitConflict},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			alice, bob, gid, b, self := h.selfRemovePending(t, "proposal during commit "+c.name)
			var props []*mls.Proposal
			if c.remove {
				props = append(props, &mls.Proposal{Type: mls.ProposalRemove, Removed: b})
			}
			var req []byte
			if c.typ == moh.ExternalJoin {
				tablet := h.newTClient(t, "alice", "tablet", false)
				gi, err := alice.m.GroupInfo()
				if err != nil {
					t.Fatal(err)
				}
				ext, m, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: tablet.c.kp.LeafNode, Signer: tablet.c.signer})
				if err != nil {
					t.Fatal(err)
				}
				mgi, err := m.GroupInfo()
				if err != nil {
					t.Fatal(err)
				}
				req = encode(t, &moh.DSRequest{Body: moh.RequestBody{Type: moh.ExternalJoin, GroupUpdate: moh.MLSGroupUpdate{
					Commit: *ext, PartialGroupInfo: moh.PartialGroupInfo{Extensions: mgi.Extensions, Signature: mgi.Signature}}}})
			} else {
				req = commitBody(t, c.typ, alice, alice.m, commit(t, alice.m, props, nil, nil))
			}
			h.svc.Store = &proposalMeanwhile{Store: h.st, meanwhile: func() {
				h.mustDo(t, "bob's self_remove_client", signed(t, bob, b,
					moh.RequestBody{Type: moh.SelfRemoveClient, Message: *self}))
			}}
			_, err := h.do(t, req)
			wantCode(t, "the commit", err, c.want)
			if c.want != 0 {
				h.wantEpoch(t, gid, 1, 3)
				if p := h.snapshot(t, gid).pending; len(p) != 1 {
					t.Fatalf("%d proposals pending after the refused commit, want bob's", len(p))
				}
				return
			}
			h.wantEpoch(t, gid, 2, 2)
		})
	}
}

// membersUnknownMeanwhile is unknownMembers (a group created before the
// store recorded its local members) that also refuses a proposal's post
// without them, and whose first refusal of a commit runs meanwhile before
// it returns: another request served in full between the commit's write
// refused for want of the members and its write again with them.
type membersUnknownMeanwhile struct {
	unknownMembers
	meanwhile func()
}

func (m *membersUnknownMeanwhile) CommitEpoch(ctx context.Context, c store.EpochCommit) (store.Delivered, error) {
	d, err := m.unknownMembers.CommitEpoch(ctx, c)
	if f := m.meanwhile; f != nil && errors.Is(err, store.ErrGroupMembersUnknown) {
		m.meanwhile = nil
		f()
	}
	return d, err
}

func (m *membersUnknownMeanwhile) AddProposal(ctx context.Context, gid []byte, epoch uint64, p store.PendingProposal) error {
	if err := m.refuse(p.Fanout); err != nil {
		return err
	}
	return m.Store.AddProposal(ctx, gid, epoch, p)
}

// TestProposalDuringSeededCommit checks that a commit written again with
// its group's local members (store.ErrGroupMembersUnknown) is checked
// again against a self-remove kept meanwhile, as on its first write
// (TestProposalDuringCommit), rather than refused commit_conflict: a
// commit that covers the proposal is accepted, one that does not is
// refused forbidden and the proposal stays pending. Before, both were
// answered commit_conflict, and the committer retried a valid commit in
// vain until the epoch's proposals stopped changing.
func TestProposalDuringSeededCommit(t *testing.T) {
	cases := []struct {
		name   string
		typ    moh.RequestType
		remove bool     // alice's commit removes bob's leaf by value
		want   moh.Code // 0: accepted
	}{
		{"update_client, not covering it", moh.UpdateClient, false, moh.CodeForbidden},
		{"remove_users, removing the leaf", moh.RemoveUsers, true, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			alice, bob, gid, b, self := h.selfRemovePending(t, "proposal during seeded commit "+c.name)
			var props []*mls.Proposal
			if c.remove {
				props = append(props, &mls.Proposal{Type: mls.ProposalRemove, Removed: b})
			}
			req := commitBody(t, c.typ, alice, alice.m, commit(t, alice.m, props, nil, nil))
			m := &membersUnknownMeanwhile{unknownMembers: unknownMembers{Store: h.st, seeded: map[string][]string{}}}
			m.meanwhile = func() {
				h.mustDo(t, "bob's self_remove_client", signed(t, bob, b,
					moh.RequestBody{Type: moh.SelfRemoveClient, Message: *self}))
			}
			h.svc.Store = m
			_, err := h.do(t, req)
			if m.meanwhile != nil {
				t.Fatal("the commit's first write was not refused for want of the members")
			}
			wantCode(t, "the commit", err, c.want)
			if c.want != 0 {
				h.wantEpoch(t, gid, 1, 3)
				if p := h.snapshot(t, gid).pending; len(p) != 1 {
					t.Fatalf("%d proposals pending after the refused commit, want bob's", len(p))
				}
				return
			}
			h.wantEpoch(t, gid, 2, 2)
		})
	}
}
