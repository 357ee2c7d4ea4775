package ds

import (
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestDeleteGroupAtomic fails the write of delete_group where it records
// the deleted id, the step between the commit that removes every other
// member and the deletion: the request is backend_unavailable and the
// group stays as it was, at its epoch with all its members, so the
// committer's retry of the same request deletes it rather than getting
// stale_epoch for a commit stored without its deletion.
func TestDeleteGroupAtomic(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	gid := []byte("group deleted once")
	h.mustDo(t, "create_group", createBody(t, alice, gid))
	res := commit(t, alice.m, addProps(bob), nil, nil)
	h.mustDo(t, "add_users", commitBody(t, moh.AddUsers, alice, alice.m, res))
	adopt(t, res, alice)
	join(t, res, bob)
	h.wantEpoch(t, gid, 1, 2)

	res = commit(t, alice.m, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: bob.m.LeafIndex()}}, nil, nil)
	del := commitBody(t, moh.DeleteGroup, alice, alice.m, res)
	stop := h.failWrites(t, "BEFORE INSERT ON deleted_groups")
	if _, err := h.do(t, del); codeOf(err) != moh.CodeBackendUnavailable {
		t.Fatalf("delete_group with its write failing: %v, want backend_unavailable", err)
	}
	h.wantEpoch(t, gid, 1, 2)
	if _, err := h.st.GroupHub(t.Context(), gid); err != nil {
		t.Fatalf("the group's hub record after the failed delete_group: %v", err)
	}
	stop()

	h.mustDo(t, "delete_group retried", del)
	if _, err := h.st.LoadGroup(t.Context(), gid); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted group loads: %v", err)
	}
	if _, err := h.do(t, createBody(t, alice, gid)); codeOf(err) != moh.CodeGroupExists {
		t.Fatalf("create_group with the deleted group's id: %v, want group_exists", err)
	}
}
