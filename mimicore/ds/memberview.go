package ds

import (
	"cmp"
	"slices"
	"sync"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// MaxMemberViews bounds the groups a MemberViews holds.
const MaxMemberViews = 4096

// MemberViews remembers, per hosted group, how the members of its current
// state split into local clients (told by their identity's prefix) and
// remote ones: what a post needs besides the store's record of the local
// members. A post to a state seen before costs O(remote members) instead
// of a pass over every leaf, and the view of the state an accepted commit
// made is derived from its base's with the leaves the commit added and
// removed (a member keeps its identity otherwise, checkRules), so a commit
// stream in a large group never passes over all its members. The zero
// value is ready; it is safe for concurrent use. It holds at most
// MaxMemberViews groups, forgetting an arbitrary one when full.
type MemberViews struct {
	mu    sync.Mutex
	views map[string]*memberView // by group id
}

// memberView is the split of one state's members. It is never changed
// once stored, only replaced.
type memberView struct {
	state  *mls.GroupState
	remote []remoteLeaf // in leaf order
	local  int
}

// remoteLeaf is a member that is not a local client, with its identity.
type remoteLeaf struct {
	leaf uint32
	id   []byte
}

// get returns the view of g when it is the one held for g's group.
func (mv *MemberViews) get(g *mls.GroupState) *memberView {
	if mv == nil {
		return nil
	}
	mv.mu.Lock()
	defer mv.mu.Unlock()
	if v := mv.views[string(g.GroupID())]; v != nil && v.state == g {
		return v
	}
	return nil
}

// put holds v for its group.
func (mv *MemberViews) put(v *memberView) {
	if mv == nil {
		return
	}
	mv.mu.Lock()
	defer mv.mu.Unlock()
	id := string(v.state.GroupID())
	if mv.views == nil {
		mv.views = make(map[string]*memberView)
	}
	if _, ok := mv.views[id]; !ok && len(mv.views) >= MaxMemberViews {
		for k := range mv.views {
			delete(mv.views, k)
			break
		}
	}
	mv.views[id] = v
}

// memberView returns the view of g: held, or made by a pass over g's
// members and held.
func (s *Service) memberView(g *mls.GroupState) *memberView {
	if v := s.Members.get(g); v != nil {
		return v
	}
	prefixes := s.localPrefixes()
	v := &memberView{state: g}
	for _, i := range g.Tree().Members() {
		leaf, _ := g.Member(i)
		if slices.ContainsFunc(prefixes, leaf.IdentityHasPrefix) {
			v.local++
			continue
		}
		v.remote = append(v.remote, remoteLeaf{i, leaf.Credential().Identity})
	}
	s.Members.put(v)
	return v
}

// advanceView holds the view of next, the state an accepted commit made of
// base, derived from base's view when it is held.
func (s *Service) advanceView(base, next *mls.GroupState, info *mls.CommitInfo) {
	v := s.Members.get(base)
	if v == nil {
		return
	}
	nv := &memberView{state: next, local: v.local, remote: slices.Clone(v.remote)}
	for _, r := range info.Removed {
		if i := slices.IndexFunc(nv.remote, func(l remoteLeaf) bool { return l.leaf == r }); i >= 0 {
			nv.remote = slices.Delete(nv.remote, i, i+1)
		} else if _, ok := base.Member(r); ok {
			nv.local--
		}
	}
	added := make([]uint32, 0, len(info.Added)+1)
	for _, a := range info.Added {
		added = append(added, a.Leaf)
	}
	if info.Committer.Type == mls.SenderNewMemberCommit {
		added = append(added, info.CommitterLeaf)
	}
	prefixes := s.localPrefixes()
	for _, a := range added {
		leaf, ok := next.Member(a)
		if !ok {
			continue
		}
		if slices.ContainsFunc(prefixes, leaf.IdentityHasPrefix) {
			nv.local++
			continue
		}
		nv.remote = append(nv.remote, remoteLeaf{a, leaf.Credential().Identity})
	}
	slices.SortFunc(nv.remote, func(a, b remoteLeaf) int { return cmp.Compare(a.leaf, b.leaf) })
	s.Members.put(nv)
}
