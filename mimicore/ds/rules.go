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

// userPrefix returns what the identities of a user's clients begin with:
// "mimi://<provider>/d/<user>/" for a client URI; an identity that is not
// one (possible only with the binding check off) is a user of its own,
// matched whole.
func userPrefix(identity []byte) (prefix []byte, whole bool) {
	prov, user, _, err := moh.ParseClientURI(identity)
	if err != nil {
		return identity, true
	}
	return []byte(moh.ClientURI(string(prov), string(user), "")), false
}

// fewChanges is how many added or removed leaves a commit may have for the
// rules to check each with its own pass over the members (comparing in
// place, no allocation) rather than with one pass building a set.
const fewChanges = 4

// users returns the users of g's members.
func users(g *mls.GroupState) map[string]bool {
	out := make(map[string]bool)
	for _, i := range g.Tree().Members() {
		out[userOf(identity(g, i))] = true
	}
	return out
}

// hasUser reports whether a member of g is a client of the user of
// identity. It is one pass over the members without copying their
// credentials; a prefix match is confirmed by parsing, since an identity
// that is not a client URI may share the prefix.
func hasUser(g *mls.GroupState, identity []byte) bool {
	prefix, whole := userPrefix(identity)
	u := userOf(identity)
	for _, i := range g.Tree().Members() {
		v, _ := g.Member(i)
		if whole {
			if v.HasIdentity(prefix) {
				return true
			}
			continue
		}
		if v.IdentityHasPrefix(prefix) && userOf(v.Credential().Identity) == u {
			return true
		}
	}
	return false
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
		allowed := []mls.ProposalType{mls.ProposalAdd}
		if reinitializing(typ, base) {
			// The reinit PSK of RFC 9420 §11.2, which checkReInitPSK
			// checks against the store.
			allowed = append(allowed, mls.ProposalPSK)
		}
		if err := only(allowed...); err != nil {
			return err
		}
		if byValue[mls.ProposalAdd] == 0 {
			return forbid("the commit adds no one")
		}
		// A pass over the members per added client, comparing in place;
		// for many at once, one pass building the set of users.
		var all map[string]bool
		if len(info.Added) > fewChanges {
			all = users(base)
		}
		for _, a := range info.Added {
			id := identity(next, a.Leaf)
			present := all[userOf(id)]
			if all == nil {
				present = hasUser(base, id)
			}
			if typ == moh.AddUsers && present {
				return forbid("%s is already in the group: add clients of a present user with add_clients", userOf(id))
			}
			if typ == moh.AddClients && !present {
				return forbid("%s is not in the group: add new users with add_users", userOf(id))
			}
		}
	case moh.RemoveUsers:
		if err := only(mls.ProposalRemove); err != nil {
			return err
		}
		if len(removed) == 0 {
			return forbid("the commit removes no one")
		}
		var left map[string]bool
		if len(removed) > fewChanges {
			left = users(next)
		}
		for _, i := range removed {
			id := identity(base, i)
			if left != nil && left[userOf(id)] || left == nil && hasUser(next, id) {
				return forbid("the commit leaves a client of %s, a user it removes: remove_users removes all of a user's clients", userOf(id))
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
		if !hasUser(base, joiner) {
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
	type leafID struct {
		leaf uint32
		id   []byte
	}
	var changed []leafID
	for _, a := range info.Added {
		changed = append(changed, leafID{a.Leaf, identity(next, a.Leaf)})
	}
	if info.Committer.Type == mls.SenderNewMemberCommit {
		changed = append(changed, leafID{info.CommitterLeaf, identity(next, info.CommitterLeaf)})
	}
	if len(changed) == 0 {
		return nil
	}
	if len(changed) > fewChanges {
		ids := make(map[string]uint32, len(changed))
		for _, c := range changed {
			ids[string(c.id)] = c.leaf
		}
		for _, i := range next.Tree().Members() {
			if j, ok := ids[string(identity(next, i))]; ok && j != i {
				return moh.Errorf(moh.CodeForbidden, "%s: leaf %d and leaf %d would hold the same client", typ, i, j)
			}
		}
		return nil
	}
	// One pass over the members, comparing in place: no credential is
	// copied.
	for _, i := range next.Tree().Members() {
		v, _ := next.Member(i)
		for _, c := range changed {
			if c.leaf != i && v.HasIdentity(c.id) {
				return moh.Errorf(moh.CodeForbidden, "%s: leaf %d and leaf %d would hold the same client", typ, i, c.leaf)
			}
		}
	}
	return nil
}
