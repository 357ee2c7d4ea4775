package ds

import (
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// userOf returns the user a leaf's identity belongs to: the user URI of a
// client URI. An identity that is not a client URI (possible only with the
// binding check off, replaying third-party transcripts) is a user of its
// own.
func userOf(identity []byte) string {
	prov, user, _, err := moh.ParseClientURI(identity)
	if err != nil {
		return "\x00" + string(identity)
	}
	return moh.UserURI(string(prov), string(user))
}

// identity returns the identity of leaf i of g, nil when it is blank.
func identity(g *mls.GroupState, i uint32) []byte {
	l, ok := g.Member(i)
	if !ok || l.IsBlank() {
		return nil
	}
	return l.Credential().Identity
}

// users returns the users of g's members.
func users(g *mls.GroupState) map[string]bool {
	out := make(map[string]bool)
	for _, i := range g.Tree().Members() {
		out[userOf(identity(g, i))] = true
	}
	return out
}

// checkRules applies DS -03's rules of each commit-carrying request type
// (docs/protocol.md §5.2) to a commit that passed RFC 9420 validation:
// which proposals it may carry by value, and whose clients it may add or
// remove. Proposals covered by reference are the pending proposals the
// Delivery Service kept (self-removes), which any member commit covers. A
// refusal is forbidden: the sender is authenticated, the operation is not
// allowed.
//
// Every rule reads the users of the group, which costs a pass over the
// members' identities; the RFC 9420 validation before it already costs
// more.
func checkRules(typ moh.RequestType, base, next *mls.GroupState, info *mls.CommitInfo) error {
	forbid := func(format string, args ...any) error {
		return moh.Errorf(moh.CodeForbidden, "%s: "+format, append([]any{typ}, args...)...)
	}
	byValue := make(map[mls.ProposalType]int)
	var removed []uint32 // leaves removed by value
	for _, p := range info.Proposals {
		if p.Ref != nil {
			continue
		}
		byValue[p.Proposal.Type]++
		if p.Proposal.Type == mls.ProposalRemove {
			removed = append(removed, p.Proposal.Removed)
		}
	}
	only := func(allowed ...mls.ProposalType) error {
		for t := range byValue {
			ok := false
			for _, a := range allowed {
				ok = ok || t == a
			}
			if !ok {
				return forbid("the commit carries a proposal of type %d, which this request type does not allow", uint16(t))
			}
		}
		return nil
	}
	committer := identity(base, info.Committer.Index)
	if info.Committer.Type == mls.SenderMember && info.Path != nil &&
		string(identity(next, info.CommitterLeaf)) != string(committer) {
		// A leaf's client URI never changes: a new device is a new leaf.
		return forbid("the committer's UpdatePath changes its leaf's client URI")
	}
	switch typ {
	case moh.AddUsers, moh.AddClients:
		if err := only(mls.ProposalAdd); err != nil {
			return err
		}
		if byValue[mls.ProposalAdd] == 0 {
			return forbid("the commit adds no one")
		}
		present := users(base)
		for _, a := range info.Added {
			u := userOf(identity(next, a.Leaf))
			if typ == moh.AddUsers && present[u] {
				return forbid("%s is already in the group: add clients of a present user with add_clients", u)
			}
			if typ == moh.AddClients && !present[u] {
				return forbid("%s is not in the group: add new users with add_users", u)
			}
		}
	case moh.RemoveUsers:
		if err := only(mls.ProposalRemove); err != nil {
			return err
		}
		if len(removed) == 0 {
			return forbid("the commit removes no one")
		}
		gone := make(map[string]bool)
		for _, i := range removed {
			gone[userOf(identity(base, i))] = true
		}
		for _, i := range next.Tree().Members() {
			if u := userOf(identity(next, i)); gone[u] {
				return forbid("the commit leaves leaf %d of %s, a user it removes: remove_users removes all of a user's clients", i, u)
			}
		}
	case moh.RemoveClients:
		if err := only(mls.ProposalRemove); err != nil {
			return err
		}
		if len(removed) == 0 {
			return forbid("the commit removes no one")
		}
		own := userOf(committer)
		for _, i := range removed {
			if userOf(identity(base, i)) != own {
				return forbid("leaf %d is not a client of the sender's user: remove other users with remove_users", i)
			}
		}
	case moh.UpdateClient:
		if err := only(); err != nil {
			return err
		}
		if info.Path == nil {
			return forbid("the commit has no UpdatePath")
		}
	case moh.DeleteGroup:
		if err := only(mls.ProposalRemove); err != nil {
			return err
		}
		if next.MemberCount() != 1 {
			return forbid("the commit leaves %d members besides the committer", next.MemberCount()-1)
		}
	case moh.ReInitializeGroup:
		if err := only(mls.ProposalReInit); err != nil {
			return err
		}
		if byValue[mls.ProposalReInit] != 1 {
			return forbid("the commit carries no ReInit proposal")
		}
	case moh.ExternalJoin:
		if err := only(mls.ProposalExternalInit, mls.ProposalRemove, mls.ProposalPSK); err != nil {
			return err
		}
		joiner := identity(next, info.CommitterLeaf)
		if !users(base)[userOf(joiner)] {
			return forbid("the joiner's user is not in the group: new users are added with add_users")
		}
		for _, i := range removed {
			if string(identity(base, i)) != string(joiner) {
				return forbid("an external commit may remove only the joiner's own old leaf")
			}
		}
	default:
		return forbid("not a commit-carrying request type")
	}
	return checkUniqueClients(typ, next, info)
}

// checkUniqueClients refuses a commit that leaves two leaves with one
// client URI (docs/protocol.md §1.1): it checks the leaves the commit
// added and an external commit's joiner. A member's UpdatePath keeps its
// leaf's client URI (checkRules), so it cannot make a duplicate, and an
// update_client costs no pass over the members.
func checkUniqueClients(typ moh.RequestType, next *mls.GroupState, info *mls.CommitInfo) error {
	changed := make(map[string]uint32)
	for _, a := range info.Added {
		changed[string(identity(next, a.Leaf))] = a.Leaf
	}
	if info.Committer.Type == mls.SenderNewMemberCommit {
		changed[string(identity(next, info.CommitterLeaf))] = info.CommitterLeaf
	}
	if len(changed) == 0 {
		return nil
	}
	for _, i := range next.Tree().Members() {
		if j, ok := changed[string(identity(next, i))]; ok && j != i {
			return moh.Errorf(moh.CodeForbidden, "%s: leaf %d and leaf %d would hold the same client", typ, i, j)
		}
	}
	return nil
}
