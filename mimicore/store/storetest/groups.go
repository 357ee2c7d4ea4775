package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Clock is a settable clock for the group tests, which need to move time
// past store.WelcomeTreeLifetime. It is safe for concurrent use.
type Clock struct{ ms atomic.Int64 }

// NewClock returns a clock set to the wall clock's now.
func NewClock() *Clock {
	c := &Clock{}
	c.ms.Store(time.Now().UnixMilli())
	return c
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time { return time.UnixMilli(c.ms.Load()) }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.ms.Add(d.Milliseconds()) }

// RunGroupTests runs the contract tests of store.GroupStore as subtests of
// t. open must return a fresh, empty store whose clock is clock.Now and
// close it with t.Cleanup.
func RunGroupTests(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	plain := func(t *testing.T) store.Store { return open(t, NewClock()) }
	t.Run("CreateLoad", func(t *testing.T) { testGroupCreateLoad(t, plain) })
	t.Run("CommitChain", func(t *testing.T) { testGroupCommitChain(t, plain) })
	t.Run("CommitConflict", func(t *testing.T) { testGroupCommitConflict(t, plain) })
	t.Run("RacingCommits", func(t *testing.T) { testGroupRacingCommits(t, plain) })
	t.Run("FailuresAlone", func(t *testing.T) { testGroupFailuresAlone(t, plain) })
	t.Run("WelcomeTrees", func(t *testing.T) { testGroupWelcomeTrees(t, open) })
	t.Run("Joiners", func(t *testing.T) { testGroupJoiners(t, plain) })
	t.Run("Proposals", func(t *testing.T) { testGroupProposals(t, plain) })
	t.Run("GroupInfo", func(t *testing.T) { testGroupInfo(t, plain) })
	t.Run("Delete", func(t *testing.T) { testGroupDelete(t, plain) })
	t.Run("CommitDelete", func(t *testing.T) { testGroupCommitDelete(t, plain) })
	t.Run("ReInit", func(t *testing.T) { testGroupReInit(t, plain) })
	t.Run("Hubs", func(t *testing.T) { testGroupHubs(t, plain) })
	t.Run("ForgetHub", func(t *testing.T) { testForgetGroupHub(t, plain) })
	t.Run("Fanout", func(t *testing.T) { testGroupFanout(t, plain) })
	t.Run("FanoutLimits", func(t *testing.T) { testGroupFanoutLimits(t, plain) })
	t.Run("ProposalFanout", func(t *testing.T) { testGroupProposalFanout(t, plain) })
	t.Run("DeliverDedup", func(t *testing.T) { testGroupDeliverDedup(t, open) })
	t.Run("GroupLog", func(t *testing.T) { testGroupLog(t, open) })
	t.Run("GroupLogInvalid", func(t *testing.T) { testGroupLogInvalid(t, plain) })
	t.Run("GroupLogWatch", func(t *testing.T) { testGroupLogWatch(t, plain) })
}

const hub = "hub.example"

// SameState fails unless got is want: the same encoding (GroupContext,
// transcript values, tree) and tree hash, and the same members found by
// their signature keys.
func SameState(tb testing.TB, what string, got, want *mls.GroupState) {
	tb.Helper()
	a, err := got.MarshalBinary()
	if err != nil {
		tb.Fatalf("%s: encoding state: %v", what, err)
	}
	b, err := want.MarshalBinary()
	if err != nil {
		tb.Fatalf("%s: encoding state: %v", what, err)
	}
	if !bytes.Equal(a, b) {
		tb.Fatalf("%s: state at epoch %d differs from the one stored at epoch %d", what, got.Epoch(), want.Epoch())
	}
	ha, err := got.Tree().TreeHash()
	if err != nil || !bytes.Equal(ha, want.TreeHash()) {
		tb.Fatalf("%s: tree hash differs (%v)", what, err)
	}
	if got.MemberCount() != want.MemberCount() {
		tb.Fatalf("%s: %d members, want %d", what, got.MemberCount(), want.MemberCount())
	}
	for _, i := range want.Tree().Members() {
		l, _ := want.Member(i)
		if j, ok := got.LeafBySignatureKey(l.SignatureKey()); !ok || j != i {
			tb.Fatalf("%s: member %d not found by its signature key", what, i)
		}
	}
}

func wantLoad(t *testing.T, s store.Store, what string, want *mls.GroupState) {
	t.Helper()
	got, err := s.LoadGroup(ctx(), want.GroupID())
	noErr(t, what+": LoadGroup", err)
	SameState(t, what, got, want)
}

func commitEpoch(t *testing.T, s store.Store, c store.EpochCommit) {
	t.Helper()
	noErr(t, fmt.Sprintf("CommitEpoch to epoch %d", c.Next.Epoch()), commitErr(s.CommitEpoch(ctx(), c)))
}

func testGroupCreateLoad(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	for _, n := range []int{1, 2, 7} {
		id := randBytes(t, 16)
		g := NewGroup(t, id, n)
		noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
		wantLoad(t, s, fmt.Sprintf("%d members", n), g.State)
		h, err := s.GroupHub(ctx(), id)
		noErr(t, "GroupHub", err)
		if h != hub {
			t.Fatalf("hub = %q, want %q", h, hub)
		}
		other := NewGroup(t, id, 1)
		wantErr(t, "CreateGroup of an id in use", s.CreateGroup(ctx(), store.GroupCreation{Hub: "other.example", State: other.State}), store.ErrGroupExists)
		wantLoad(t, s, "after a refused create", g.State)
	}
	_, err := s.LoadGroup(ctx(), randBytes(t, 16))
	wantErr(t, "LoadGroup of an unknown group", err, store.ErrNotFound)
	_, err = s.GroupHub(ctx(), randBytes(t, 16))
	wantErr(t, "GroupHub of an unknown group", err, store.ErrNotFound)

	g := NewGroup(t, randBytes(t, 16), 1)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"nil state", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: nil})},
		{"empty hub", s.CreateGroup(ctx(), store.GroupCreation{Hub: "", State: g.State})},
		{"long group id", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: NewGroup(t, bytes.Repeat([]byte{1}, store.MaxIDSize+1), 1).State})},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, "CreateGroup", tc.err, store.ErrInvalid) })
	}
	_, err = s.LoadGroup(ctx(), nil)
	wantErr(t, "LoadGroup of an empty id", err, store.ErrInvalid)
}

// testGroupCommitChain follows a group through adds that grow the tree,
// updates, and removes that truncate it: after each commit the loaded
// state is the committed one.
func testGroupCommitChain(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 1)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	steps := []struct {
		name      string
		proposals func() []*mls.Proposal
	}{
		{"add 5", func() []*mls.Proposal { return Adds(t, 5) }},
		{"update", func() []*mls.Proposal { return nil }},
		{"remove 4 and 5", func() []*mls.Proposal { return []*mls.Proposal{Remove(4), Remove(5)} }},
		{"add 1", func() []*mls.Proposal { return Adds(t, 1) }},
		{"remove all but the creator", func() []*mls.Proposal {
			return []*mls.Proposal{Remove(1), Remove(2), Remove(3), Remove(4)}
		}},
		{"update alone", func() []*mls.Proposal { return nil }},
		{"add 9", func() []*mls.Proposal { return Adds(t, 9) }},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			var c store.EpochCommit
			g, c = g.Commit(t, step.proposals()...)
			commitEpoch(t, s, c)
			wantLoad(t, s, step.name, g.State)
		})
	}
}

func testGroupCommitConflict(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 3)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	win, c1 := g.Commit(t)
	_, c2 := g.Commit(t, Remove(1))
	commitEpoch(t, s, c1)
	err := commitErr(s.CommitEpoch(ctx(), c2))
	wantErr(t, "second commit of an epoch", err, store.ErrEpochConflict)
	wantErr(t, "second commit of an epoch", err, store.ErrConflict)
	wantErr(t, "the same commit again", commitErr(s.CommitEpoch(ctx(), c1)), store.ErrEpochConflict)
	wantLoad(t, s, "after the refused commit", win.State)

	// A commit on the right epoch number but another history.
	other := NewGroup(t, g.State.GroupID(), 3)
	for other.State.Epoch() < win.State.Epoch() {
		other, _ = other.Commit(t)
	}
	_, c3 := other.Commit(t)
	if c3.Base.Epoch() != win.State.Epoch() {
		t.Fatalf("built a rival at epoch %d, want %d", c3.Base.Epoch(), win.State.Epoch())
	}
	wantErr(t, "commit on another state of the same epoch", commitErr(s.CommitEpoch(ctx(), c3)), store.ErrEpochConflict)
	wantLoad(t, s, "after the rival commit", win.State)

	_, c4 := NewGroup(t, randBytes(t, 16), 1).Commit(t)
	wantErr(t, "commit of an unknown group", commitErr(s.CommitEpoch(ctx(), c4)), store.ErrNotFound)

	next, c5 := win.Commit(t)
	_, skip := next.Commit(t)
	for _, tc := range []struct {
		name string
		c    store.EpochCommit
	}{
		{"no base", store.EpochCommit{Next: c5.Next}},
		{"no next", store.EpochCommit{Base: c5.Base}},
		{"next is the base", store.EpochCommit{Base: c5.Base, Next: c5.Base}},
		{"skips an epoch", store.EpochCommit{Base: c5.Base, Next: skip.Next}},
		{"another group", store.EpochCommit{Base: c4.Base, Next: c5.Next}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, "CommitEpoch", commitErr(s.CommitEpoch(ctx(), tc.c)), store.ErrInvalid) })
	}
	commitEpoch(t, s, c5)
	wantLoad(t, s, "after the next commit", next.State)
}

// testGroupRacingCommits starts rival commits of one epoch at the same
// instant, round after round: exactly one wins each round, and the group
// holds the winner's state.
func testGroupRacingCommits(t *testing.T, open func(t *testing.T) store.Store) {
	const rivals, rounds = 8, 6
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 4)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	for round := range rounds {
		nexts := make([]*Group, rivals)
		commits := make([]store.EpochCommit, rivals)
		for i := range rivals {
			nexts[i], commits[i] = g.Commit(t)
		}
		errs := make([]error, rivals)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range rivals {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = commitErr(s.CommitEpoch(ctx(), commits[i]))
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: commits %d and %d both won epoch %d", round, winner, i, g.State.Epoch())
			case err == nil:
				winner = i
			case !errors.Is(err, store.ErrEpochConflict):
				t.Fatalf("round %d: commit %d: got %v, want ErrEpochConflict", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no commit won", round)
		}
		g = nexts[winner]
		wantLoad(t, s, fmt.Sprintf("round %d", round), g.State)
	}
}

// testGroupFailuresAlone mixes, at the same instant, writes that fail
// (stale commits, creates of ids in use, proposals for an old epoch) with
// writes that succeed: each gets its own answer, and the failures change
// nothing.
func testGroupFailuresAlone(t *testing.T, open func(t *testing.T) store.Store) {
	const groups = 6
	s := open(t)
	gs := make([]*Group, groups)
	stale := make([]store.EpochCommit, groups)
	for i := range gs {
		gs[i] = NewGroup(t, randBytes(t, 16), 2)
		noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: gs[i].State}))
		before := gs[i]
		var c store.EpochCommit
		gs[i], c = before.Commit(t)
		_, stale[i] = before.Commit(t) // a rival that loses to c
		commitEpoch(t, s, c)
	}
	type result struct {
		name string
		err  error
		want error
	}
	results := make([]result, 0, 4*groups)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := make(chan struct{})
	run := func(name string, want error, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := f()
			mu.Lock()
			results = append(results, result{name, err, want})
			mu.Unlock()
		}()
	}
	nexts := make([]*Group, groups)
	for i := range gs {
		var c store.EpochCommit
		nexts[i], c = gs[i].Commit(t)
		old := gs[i].State.Epoch() - 1
		id := gs[i].State.GroupID()
		run(fmt.Sprint("commit ", i), nil, func() error { return commitErr(s.CommitEpoch(ctx(), c)) })
		run(fmt.Sprint("stale commit ", i), store.ErrEpochConflict, func() error { return commitErr(s.CommitEpoch(ctx(), stale[i])) })
		run(fmt.Sprint("create in use ", i), store.ErrGroupExists, func() error {
			return s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: NewGroup(t, id, 1).State})
		})
		run(fmt.Sprint("old proposal ", i), store.ErrEpochConflict, func() error {
			return s.AddProposal(ctx(), id, old, store.PendingProposal{Ref: []byte("ref"), Message: []byte("m")})
		})
	}
	close(start)
	wg.Wait()
	for _, r := range results {
		if (r.want == nil) != (r.err == nil) || (r.want != nil && !errors.Is(r.err, r.want)) {
			t.Errorf("%s: got %v, want %v", r.name, r.err, r.want)
		}
	}
	for i := range nexts {
		wantLoad(t, s, fmt.Sprint("group ", i), nexts[i].State)
		ps, err := s.PendingProposals(ctx(), nexts[i].State.GroupID(), nexts[i].State.Epoch())
		noErr(t, "PendingProposals", err)
		if len(ps) != 0 {
			t.Fatalf("group %d: %d proposals pending after refused adds", i, len(ps))
		}
	}
}

// ratchetTree returns g's tree in wire form, encoded.
func encodeTree(t *testing.T, rt mls.RatchetTree) []byte {
	t.Helper()
	b, err := wire.Marshal(&rt)
	noErr(t, "encoding ratchet tree", err)
	return b
}

func wantWelcomeTree(t *testing.T, s store.Store, what string, want *mls.GroupState) {
	t.Helper()
	got, err := s.WelcomeTree(ctx(), want.GroupID(), want.Epoch())
	noErr(t, what+": WelcomeTree", err)
	if !bytes.Equal(encodeTree(t, got), encodeTree(t, want.Tree().RatchetTree())) {
		t.Fatalf("%s: the tree kept for epoch %d differs from that epoch's tree", what, want.Epoch())
	}
}

func noWelcomeTree(t *testing.T, s store.Store, what string, id []byte, epoch uint64) {
	t.Helper()
	_, err := s.WelcomeTree(ctx(), id, epoch)
	wantErr(t, what, err, store.ErrNotFound)
}

// wantJoiners fails unless every joiner of c is found with its key.
func wantJoiners(t *testing.T, s store.Store, what string, c store.EpochCommit) {
	t.Helper()
	if len(c.Joiners) == 0 {
		t.Fatalf("%s: the commit has no joiners to look up", what)
	}
	for i, j := range c.Joiners {
		key, err := s.JoinerKey(ctx(), c.Next.GroupID(), c.Next.Epoch(), j.Ref)
		noErr(t, fmt.Sprintf("%s: JoinerKey of joiner %d", what, i), err)
		if !bytes.Equal(key, j.SignatureKey) {
			t.Fatalf("%s: joiner %d's key is %x, want %x", what, i, key, j.SignatureKey)
		}
	}
}

// noJoiners fails unless no joiner of c is found any more.
func noJoiners(t *testing.T, s store.Store, what string, c store.EpochCommit) {
	t.Helper()
	for i, j := range c.Joiners {
		_, err := s.JoinerKey(ctx(), c.Next.GroupID(), c.Next.Epoch(), j.Ref)
		wantErr(t, fmt.Sprintf("%s: joiner %d", what, i), err, store.ErrNotFound)
	}
}

// testGroupWelcomeTrees checks that the tree of a Welcome's epoch is kept
// as it was while later commits change, grow and shrink the tree, for
// store.WelcomeTreeEpochs epochs or store.WelcomeTreeLifetime, whichever
// ends first, and the keys of its joiners exactly as long.
func testGroupWelcomeTrees(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	t.Run("Epochs", func(t *testing.T) {
		s := open(t, NewClock())
		g := NewGroup(t, randBytes(t, 16), 1)
		id := g.State.GroupID()
		noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
		noWelcomeTree(t, s, "epoch 0 had no Welcome", id, 0)
		var c store.EpochCommit
		g, c = g.Commit(t, Adds(t, 6)...)
		commitEpoch(t, s, c)
		w1, c1 := g.State, c
		wantWelcomeTree(t, s, "the current epoch", w1)
		wantJoiners(t, s, "the current epoch", c1)
		g, c = g.Commit(t, Remove(5), Remove(6)) // truncates the tree
		commitEpoch(t, s, c)
		g, c = g.Commit(t, Adds(t, 5)...) // grows it again
		commitEpoch(t, s, c)
		w3, c3 := g.State, c
		noWelcomeTree(t, s, "epoch 2 had no Welcome", id, 2)
		wantWelcomeTree(t, s, "epoch 1 after two commits", w1)
		wantWelcomeTree(t, s, "epoch 3", w3)
		for g.State.Epoch() < w1.Epoch()+store.WelcomeTreeEpochs-1 {
			props := []*mls.Proposal(nil)
			if g.State.Epoch()%10 == 0 {
				props = []*mls.Proposal{Remove(uint32(1 + g.State.Epoch()%3))}
				props = append(props, Adds(t, 1)...)
			}
			g, c = g.Commit(t, props...)
			c.Welcome, c.Joiners = false, nil // keep the count of Welcome epochs small
			commitEpoch(t, s, c)
		}
		wantWelcomeTree(t, s, fmt.Sprintf("epoch 1 at epoch %d", g.State.Epoch()), w1)
		wantWelcomeTree(t, s, fmt.Sprintf("epoch 3 at epoch %d", g.State.Epoch()), w3)
		wantJoiners(t, s, fmt.Sprintf("epoch 1 at epoch %d", g.State.Epoch()), c1)
		g, c = g.Commit(t)
		commitEpoch(t, s, c)
		noWelcomeTree(t, s, fmt.Sprintf("epoch 1 at epoch %d", g.State.Epoch()), id, 1)
		noJoiners(t, s, fmt.Sprintf("epoch 1 at epoch %d", g.State.Epoch()), c1)
		wantWelcomeTree(t, s, fmt.Sprintf("epoch 3 at epoch %d", g.State.Epoch()), w3)
		wantJoiners(t, s, fmt.Sprintf("epoch 3 at epoch %d", g.State.Epoch()), c3)
		g, c = g.Commit(t)
		commitEpoch(t, s, c)
		wantJoiners(t, s, fmt.Sprintf("epoch 3 at epoch %d", g.State.Epoch()), c3)
		g, c = g.Commit(t)
		commitEpoch(t, s, c)
		noWelcomeTree(t, s, fmt.Sprintf("epoch 3 at epoch %d", g.State.Epoch()), id, 3)
		noJoiners(t, s, fmt.Sprintf("epoch 3 at epoch %d", g.State.Epoch()), c3)
		noWelcomeTree(t, s, "an epoch not reached", id, g.State.Epoch()+1)
		wantLoad(t, s, "the current state", g.State)
	})
	t.Run("Lifetime", func(t *testing.T) {
		clock := NewClock()
		s := open(t, clock)
		g := NewGroup(t, randBytes(t, 16), 1)
		noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
		var c store.EpochCommit
		g, c = g.Commit(t, Adds(t, 3)...)
		commitEpoch(t, s, c)
		w1, c1 := g.State, c
		clock.Advance(store.WelcomeTreeLifetime / 2)
		g, c = g.Commit(t, Adds(t, 2)...)
		commitEpoch(t, s, c)
		w2, c2 := g.State, c
		g, c = g.Commit(t)
		commitEpoch(t, s, c)
		clock.Advance(store.WelcomeTreeLifetime/2 - time.Second)
		wantWelcomeTree(t, s, "epoch 1 a second before its end", w1)
		wantJoiners(t, s, "epoch 1 a second before its end", c1)
		clock.Advance(time.Second)
		noWelcomeTree(t, s, "epoch 1 at its end", w1.GroupID(), w1.Epoch())
		noJoiners(t, s, "epoch 1 at its end", c1)
		wantWelcomeTree(t, s, "epoch 2 half way", w2)
		wantJoiners(t, s, "epoch 2 half way", c2)
		n, err := s.DeleteExpired(ctx(), clock.Now())
		noErr(t, "DeleteExpired", err)
		if n == 0 {
			t.Fatal("DeleteExpired removed nothing of an expired Welcome tree")
		}
		wantWelcomeTree(t, s, "epoch 2 after the sweep", w2)
		wantJoiners(t, s, "epoch 2 after the sweep", c2)
		noJoiners(t, s, "epoch 1 after the sweep", c1)
		clock.Advance(store.WelcomeTreeLifetime / 2)
		noWelcomeTree(t, s, "epoch 2 at its end", w2.GroupID(), w2.Epoch())
		noJoiners(t, s, "epoch 2 at its end", c2)
		g, c = g.Commit(t)
		commitEpoch(t, s, c)
		wantLoad(t, s, "the current state", g.State)
	})
}

// testGroupJoiners checks the lookups of JoinerKey that find nothing and
// the joiners CommitEpoch refuses, which write nothing.
func testGroupJoiners(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 1)
	id := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	first := g.State

	// Refused commits: nothing is written, and the epoch is still free.
	next, c := g.Commit(t, Adds(t, 2)...)
	other := store.Joiner{Ref: []byte("another ref"), SignatureKey: []byte("another key")}
	for _, tc := range []struct {
		name string
		edit func(c *store.EpochCommit)
	}{
		{"without a Welcome", func(c *store.EpochCommit) { c.Welcome = false }},
		{"a ref twice", func(c *store.EpochCommit) { c.Joiners = append(c.Joiners, c.Joiners[0]) }},
		{"an empty ref", func(c *store.EpochCommit) { c.Joiners = append(c.Joiners, store.Joiner{SignatureKey: []byte("k")}) }},
		{"an empty key", func(c *store.EpochCommit) { c.Joiners = append(c.Joiners, store.Joiner{Ref: []byte("r")}) }},
		{"a ref too long", func(c *store.EpochCommit) {
			c.Joiners = append(c.Joiners, store.Joiner{Ref: make([]byte, store.MaxIDSize+1), SignatureKey: []byte("k")})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := c
			bad.Joiners = append([]store.Joiner(nil), c.Joiners...)
			tc.edit(&bad)
			wantErr(t, "CommitEpoch", commitErr(s.CommitEpoch(ctx(), bad)), store.ErrInvalid)
			wantLoad(t, s, "after the refused commit", first)
		})
	}

	commitEpoch(t, s, c)
	wantJoiners(t, s, "the commit's joiners", c)
	for _, tc := range []struct {
		name  string
		id    []byte
		epoch uint64
		ref   []byte
	}{
		{"epoch 0 (created, no Welcome)", id, 0, c.Joiners[0].Ref},
		{"an epoch not reached", id, 2, c.Joiners[0].Ref},
		{"an epoch beyond any", id, 1 << 63, c.Joiners[0].Ref},
		{"a ref not added", id, 1, other.Ref},
		{"an unknown group", randBytes(t, 16), 1, c.Joiners[0].Ref},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.JoinerKey(ctx(), tc.id, tc.epoch, tc.ref)
			wantErr(t, "JoinerKey", err, store.ErrNotFound)
		})
	}

	// An epoch with a Welcome but no joiners recorded keeps its tree and
	// finds no joiner.
	g = next
	next, c = g.Commit(t, Adds(t, 1)...)
	ref := c.Joiners[0].Ref
	c.Joiners = nil
	commitEpoch(t, s, c)
	wantWelcomeTree(t, s, "a Welcome without joiners", next.State)
	_, err := s.JoinerKey(ctx(), id, next.State.Epoch(), ref)
	wantErr(t, "JoinerKey of a Welcome without joiners", err, store.ErrNotFound)
}

func testGroupProposals(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 3)
	id, epoch := g.State.GroupID(), g.State.Epoch()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	var want []store.PendingProposal
	for i := range 3 {
		p := store.PendingProposal{Ref: randBytes(t, 32), Message: randBytes(t, 100+i)}
		noErr(t, "AddProposal", s.AddProposal(ctx(), id, epoch, p))
		want = append(want, store.PendingProposal{Ref: bytes.Clone(p.Ref), Message: bytes.Clone(p.Message)})
		p.Message[0]++ // the store must have copied it
	}
	noErr(t, "AddProposal of a pending ref", s.AddProposal(ctx(), id, epoch,
		store.PendingProposal{Ref: want[1].Ref, Message: []byte("other")}))
	wantProposals := func(what string, want []store.PendingProposal) {
		t.Helper()
		got, err := s.PendingProposals(ctx(), id, epoch)
		noErr(t, what+": PendingProposals", err)
		if len(got) != len(want) {
			t.Fatalf("%s: %d proposals pending, want %d", what, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i].Ref, want[i].Ref) || !bytes.Equal(got[i].Message, want[i].Message) {
				t.Fatalf("%s: proposal %d differs (order or content)", what, i)
			}
			got[i].Message[0]++ // nor may it hand out its own memory
		}
	}
	wantProposals("after three adds", want)
	wantProposals("read again", want)

	_, err := s.PendingProposals(ctx(), id, epoch+1)
	wantErr(t, "PendingProposals of another epoch", err, store.ErrEpochConflict)
	wantErr(t, "AddProposal for another epoch", s.AddProposal(ctx(), id, epoch-1, want[0]), store.ErrEpochConflict)
	wantErr(t, "AddProposal for an unknown group", s.AddProposal(ctx(), randBytes(t, 16), 0, want[0]), store.ErrNotFound)
	_, err = s.PendingProposals(ctx(), randBytes(t, 16), 0)
	wantErr(t, "PendingProposals of an unknown group", err, store.ErrNotFound)
	for _, tc := range []struct {
		name string
		p    store.PendingProposal
	}{
		{"empty ref", store.PendingProposal{Message: []byte("m")}},
		{"empty message", store.PendingProposal{Ref: []byte("r")}},
		{"long ref", store.PendingProposal{Ref: make([]byte, store.MaxIDSize+1), Message: []byte("m")}},
		{"long message", store.PendingProposal{Ref: []byte("r"), Message: make([]byte, store.MaxProposalSize+1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, "AddProposal", s.AddProposal(ctx(), id, epoch, tc.p), store.ErrInvalid)
		})
	}
	for i := len(want); i < store.MaxPendingProposals; i++ {
		noErr(t, "AddProposal", s.AddProposal(ctx(), id, epoch, store.PendingProposal{Ref: randBytes(t, 32), Message: []byte("m")}))
	}
	err = s.AddProposal(ctx(), id, epoch, store.PendingProposal{Ref: randBytes(t, 32), Message: []byte("m")})
	wantErr(t, "AddProposal past the limit", err, store.ErrConflict)

	// The commit is stored only with the number of proposals it was
	// checked against: one added meanwhile is not dropped unseen.
	base := g.State
	g, c := g.Commit(t)
	for _, n := range []int{0, store.MaxPendingProposals - 1} {
		c.Pending = n
		wantErr(t, fmt.Sprintf("CommitEpoch checked against %d of the pending proposals", n),
			commitErr(s.CommitEpoch(ctx(), c)), store.ErrProposalsChanged)
		wantLoad(t, s, "after a commit refused for its pending proposals", base)
		got, err := s.PendingProposals(ctx(), id, epoch)
		noErr(t, "PendingProposals after a refused commit", err)
		if len(got) != store.MaxPendingProposals {
			t.Fatalf("%d proposals pending after a refused commit, want %d", len(got), store.MaxPendingProposals)
		}
	}
	c.Pending = store.MaxPendingProposals + 1
	wantErr(t, "CommitEpoch with too many pending", commitErr(s.CommitEpoch(ctx(), c)), store.ErrInvalid)
	c.Pending = store.MaxPendingProposals
	commitEpoch(t, s, c)
	_, err = s.PendingProposals(ctx(), id, epoch)
	wantErr(t, "PendingProposals of the ended epoch", err, store.ErrEpochConflict)
	got, err := s.PendingProposals(ctx(), id, g.State.Epoch())
	noErr(t, "PendingProposals of the new epoch", err)
	if len(got) != 0 {
		t.Fatalf("%d proposals of the ended epoch still pending", len(got))
	}
	noErr(t, "AddProposal in the new epoch", s.AddProposal(ctx(), id, g.State.Epoch(), want[0]))
}

func wantGroupInfo(t *testing.T, s store.Store, what string, id []byte, epoch uint64, want []byte) {
	t.Helper()
	e, gi, err := s.GroupInfo(ctx(), id)
	noErr(t, what+": GroupInfo", err)
	if e != epoch || !bytes.Equal(gi, want) {
		t.Fatalf("%s: GroupInfo of epoch %d (%d bytes), want epoch %d (%d bytes)", what, e, len(gi), epoch, len(want))
	}
	gi[0]++ // the store must not hand out its own memory
}

// testGroupInfo checks that the GroupInfo stored with an epoch is served
// for that epoch only, and that a refused commit leaves it as it was.
func testGroupInfo(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 2)
	id := g.State.GroupID()
	gi0 := randBytes(t, 300)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State, GroupInfo: gi0}))
	gi0copy := bytes.Clone(gi0)
	gi0[0]++ // the store must have copied it
	wantGroupInfo(t, s, "created", id, g.State.Epoch(), gi0copy)

	next, c := g.Commit(t)
	c.GroupInfo = randBytes(t, 400)
	_, rival := g.Commit(t)
	rival.GroupInfo = randBytes(t, 400)
	commitEpoch(t, s, c)
	wantErr(t, "rival commit", commitErr(s.CommitEpoch(ctx(), rival)), store.ErrEpochConflict)
	wantGroupInfo(t, s, "after a commit with one, and a refused rival", id, next.State.Epoch(), c.GroupInfo)

	next2, c2 := next.Commit(t)
	commitEpoch(t, s, c2)
	_, _, err := s.GroupInfo(ctx(), id)
	wantErr(t, "GroupInfo after a commit without one", err, store.ErrNotFound)

	big := make([]byte, store.MaxGroupInfoSize+1)
	_, c3 := next2.Commit(t)
	c3.GroupInfo = big
	wantErr(t, "CommitEpoch with a GroupInfo too large", commitErr(s.CommitEpoch(ctx(), c3)), store.ErrInvalid)
	wantErr(t, "CreateGroup with a GroupInfo too large",
		s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: NewGroup(t, randBytes(t, 16), 1).State, GroupInfo: big}), store.ErrInvalid)
	wantLoad(t, s, "after the refused commit", next2.State)

	plain := NewGroup(t, randBytes(t, 16), 1)
	noErr(t, "CreateGroup without a GroupInfo", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: plain.State}))
	_, _, err = s.GroupInfo(ctx(), plain.State.GroupID())
	wantErr(t, "GroupInfo of a group created without one", err, store.ErrNotFound)
	_, _, err = s.GroupInfo(ctx(), randBytes(t, 16))
	wantErr(t, "GroupInfo of an unknown group", err, store.ErrNotFound)
}

func testGroupDelete(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	id := randBytes(t, 16)
	g := NewGroup(t, id, 1)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	g, c := g.Commit(t, Adds(t, 2)...)
	commitEpoch(t, s, c)
	added := c
	wantJoiners(t, s, "before the delete", added)
	noErr(t, "AddProposal", s.AddProposal(ctx(), id, g.State.Epoch(), store.PendingProposal{Ref: []byte("r"), Message: []byte("m")}))
	wantLoad(t, s, "before the delete", g.State) // and cached, if the store caches
	noErr(t, "DeleteGroup", s.DeleteGroup(ctx(), id))
	_, err := s.LoadGroup(ctx(), id)
	wantErr(t, "LoadGroup after delete", err, store.ErrNotFound)
	_, err = s.GroupHub(ctx(), id)
	wantErr(t, "GroupHub after delete", err, store.ErrNotFound)
	noWelcomeTree(t, s, "WelcomeTree after delete", id, g.State.Epoch())
	noJoiners(t, s, "JoinerKey after delete", added)
	_, err = s.PendingProposals(ctx(), id, g.State.Epoch())
	wantErr(t, "PendingProposals after delete", err, store.ErrNotFound)
	_, next := g.Commit(t)
	wantErr(t, "CommitEpoch after delete", commitErr(s.CommitEpoch(ctx(), next)), store.ErrNotFound)
	wantErr(t, "DeleteGroup again", s.DeleteGroup(ctx(), id), store.ErrNotFound)

	// The id stays taken: no new group has it, and no other provider can
	// claim to host it.
	wantErr(t, "CreateGroup again", s.CreateGroup(ctx(), store.GroupCreation{Hub: "other.example",
		State: NewGroup(t, id, 3).State}), store.ErrGroupExists)
	wantErr(t, "RecordGroupHub of the deleted id", s.RecordGroupHub(ctx(), id, "far.example"), store.ErrGroupExists)
	_, err = s.LoadGroup(ctx(), id)
	wantErr(t, "LoadGroup after the refusals", err, store.ErrNotFound)
	_, err = s.GroupHub(ctx(), id)
	wantErr(t, "GroupHub after the refusals", err, store.ErrNotFound)
	wantErr(t, "DeleteGroup after the refusals", s.DeleteGroup(ctx(), id), store.ErrNotFound)
}

// testGroupCommitDelete checks a CommitEpoch with Delete set (a
// delete_group commit): the commit's fan-out is delivered and the group
// deleted, its id kept, in one write; a refused one (another commit won
// its epoch, a proposal arrived) neither commits nor deletes.
func testGroupCommitDelete(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	remote := map[string][]string{"c.example": {fanCarol}}

	// Refused: the epoch moved on, or a proposal is pending that the
	// commit was not checked against.
	_, stale := g.Commit(t, Remove(1))
	stale.Delete = true
	g1, c1 := g.Commit(t)
	commitEpoch(t, s, c1)
	_, err := s.CommitEpoch(ctx(), stale)
	wantErr(t, "a deleting commit of a past epoch", err, store.ErrEpochConflict)
	noErr(t, "AddProposal", s.AddProposal(ctx(), gid, g1.State.Epoch(), store.PendingProposal{Ref: []byte("r"), Message: []byte("m")}))
	g2, del := g1.Commit(t, Remove(1))
	del.Delete = true
	del.Fanout = fanoutOf(gid, "delete", []string{fanBob}, remote, "c.example")
	_, err = s.CommitEpoch(ctx(), del)
	wantErr(t, "a deleting commit not checked against a proposal", err, store.ErrProposalsChanged)
	wantLoad(t, s, "after the refused deleting commits", g1.State)
	wantMsgs(t, "bob's queue after the refused deleting commits", fetch(t, s, fanBob, 0, store.FetchLimit{}))
	wantOutbox(t, s, "c.example")

	del.Pending = 1
	d, err := s.CommitEpoch(ctx(), del)
	noErr(t, "CommitEpoch with Delete", err)
	if len(d.Local) != 1 || len(d.Outbox) != 1 {
		t.Fatalf("Delivered = %+v, want the commit's fan-out", d)
	}
	wantMsgs(t, "bob's queue", fetch(t, s, fanBob, 0, store.FetchLimit{}), 1, "delete")
	wantOutbox(t, s, "c.example", "delete>"+fanCarol)
	_, err = s.LoadGroup(ctx(), gid)
	wantErr(t, "LoadGroup after the deleting commit", err, store.ErrNotFound)
	_, err = s.GroupHub(ctx(), gid)
	wantErr(t, "GroupHub after the deleting commit", err, store.ErrNotFound)
	_, _, err = s.GroupInfo(ctx(), gid)
	wantErr(t, "GroupInfo after the deleting commit", err, store.ErrNotFound)
	_, next := g2.Commit(t)
	wantErr(t, "CommitEpoch after the deleting commit", commitErr(s.CommitEpoch(ctx(), next)), store.ErrNotFound)
	wantErr(t, "DeleteGroup after the deleting commit", s.DeleteGroup(ctx(), gid), store.ErrNotFound)
	wantErr(t, "CreateGroup of the deleted id", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub,
		State: NewGroup(t, gid, 1).State}), store.ErrGroupExists)
	wantErr(t, "RecordGroupHub of the deleted id", s.RecordGroupHub(ctx(), gid, "far.example"), store.ErrGroupExists)
}

func testGroupHubs(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	id := randBytes(t, 16)
	noErr(t, "RecordGroupHub", s.RecordGroupHub(ctx(), id, "far.example"))
	noErr(t, "RecordGroupHub again", s.RecordGroupHub(ctx(), id, "far.example"))
	wantErr(t, "RecordGroupHub with another hub", s.RecordGroupHub(ctx(), id, "other.example"), store.ErrGroupExists)
	h, err := s.GroupHub(ctx(), id)
	noErr(t, "GroupHub", err)
	if h != "far.example" {
		t.Fatalf("hub = %q, want far.example", h)
	}
	_, err = s.LoadGroup(ctx(), id)
	wantErr(t, "LoadGroup of a group hosted elsewhere", err, store.ErrNotFound)
	wantErr(t, "CreateGroup of a group hosted elsewhere", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: NewGroup(t, id, 1).State}), store.ErrGroupExists)

	hosted := NewGroup(t, randBytes(t, 16), 1)
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: hosted.State}))
	wantErr(t, "RecordGroupHub of a hosted group", s.RecordGroupHub(ctx(), hosted.State.GroupID(), hub), store.ErrGroupExists)
	wantErr(t, "RecordGroupHub with an empty hub", s.RecordGroupHub(ctx(), randBytes(t, 16), ""), store.ErrInvalid)

	noErr(t, "DeleteGroup of a group hosted elsewhere", s.DeleteGroup(ctx(), id))
	_, err = s.GroupHub(ctx(), id)
	wantErr(t, "GroupHub after delete", err, store.ErrNotFound)
	// Only the ids of groups hosted here stay taken.
	noErr(t, "RecordGroupHub after the delete", s.RecordGroupHub(ctx(), id, "other.example"))
}

// testForgetGroupHub checks ForgetGroupHub: it deletes the hub record of
// a group hosted elsewhere, and nothing else (the queued messages of the
// group stay), so that another hub can be recorded; it leaves a hosted
// group as it is.
func testForgetGroupHub(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	id := randBytes(t, 16)
	noErr(t, "RecordGroupHub", s.RecordGroupHub(ctx(), id, "wrong.example"))
	client := "mimi://here.example/u/alice/phone"
	_, err := s.Append(ctx(), store.Delivery{Recipients: []string{client}, GroupID: id, Sender: "wrong.example", Message: []byte("welcome")})
	noErr(t, "Append", err)

	h, err := s.ForgetGroupHub(ctx(), id)
	noErr(t, "ForgetGroupHub", err)
	if h != "wrong.example" {
		t.Fatalf("ForgetGroupHub = %q, want wrong.example", h)
	}
	_, err = s.GroupHub(ctx(), id)
	wantErr(t, "GroupHub after ForgetGroupHub", err, store.ErrNotFound)
	_, err = s.ForgetGroupHub(ctx(), id)
	wantErr(t, "ForgetGroupHub again", err, store.ErrNotFound)
	msgs, err := s.Fetch(ctx(), client, 0, store.FetchLimit{})
	noErr(t, "Fetch", err)
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Message, []byte("welcome")) {
		t.Fatalf("queue after ForgetGroupHub holds %d messages, want the one queued before", len(msgs))
	}
	noErr(t, "RecordGroupHub of the real hub", s.RecordGroupHub(ctx(), id, "real.example"))
	if h, err := s.GroupHub(ctx(), id); err != nil || h != "real.example" {
		t.Fatalf("GroupHub = %q, %v, want real.example", h, err)
	}

	hosted := NewGroup(t, randBytes(t, 16), 1)
	hid := hosted.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: hosted.State}))
	_, err = s.ForgetGroupHub(ctx(), hid)
	wantErr(t, "ForgetGroupHub of a hosted group", err, store.ErrGroupExists)
	if h, err := s.GroupHub(ctx(), hid); err != nil || h != hub {
		t.Fatalf("hub of the hosted group after ForgetGroupHub: %q, %v", h, err)
	}
	wantLoad(t, s, "hosted group after ForgetGroupHub", hosted.State)

	_, err = s.ForgetGroupHub(ctx(), nil)
	wantErr(t, "ForgetGroupHub of an empty id", err, store.ErrInvalid)
	_, err = s.ForgetGroupHub(ctx(), randBytes(t, 16))
	wantErr(t, "ForgetGroupHub of an unknown id", err, store.ErrNotFound)
}

// testReopenGroups checks that a group, its Welcome trees and its pending
// proposals survive closing and reopening the store, and that the state
// loaded after the restart commits onward.
func testReopenGroups(t *testing.T, open func() (store.Store, error)) {
	s, err := open()
	noErr(t, "opening store", err)
	g := NewGroup(t, randBytes(t, 16), 1)
	id := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	g, c := g.Commit(t, Adds(t, 9)...)
	commitEpoch(t, s, c)
	w, wc := g.State, c
	for range 3 {
		g, c = g.Commit(t)
		c.GroupInfo = []byte(fmt.Sprint("group info of epoch ", c.Next.Epoch()))
		commitEpoch(t, s, c)
	}
	p := store.PendingProposal{Ref: []byte("ref"), Message: []byte("message")}
	noErr(t, "AddProposal", s.AddProposal(ctx(), id, g.State.Epoch(), p))
	far := randBytes(t, 16)
	noErr(t, "RecordGroupHub", s.RecordGroupHub(ctx(), far, "far.example"))
	noErr(t, "Close", s.Close())

	for round := range 2 {
		s, err := open()
		noErr(t, "reopening store", err)
		wantLoad(t, s, fmt.Sprintf("round %d", round), g.State)
		wantWelcomeTree(t, s, fmt.Sprintf("round %d", round), w)
		wantJoiners(t, s, fmt.Sprintf("round %d", round), wc)
		wantGroupInfo(t, s, fmt.Sprintf("round %d", round), id, g.State.Epoch(),
			[]byte(fmt.Sprint("group info of epoch ", g.State.Epoch())))
		ps, err := s.PendingProposals(ctx(), id, g.State.Epoch())
		noErr(t, "PendingProposals", err)
		// Round 0 finds the proposal; round 1 finds it dropped by round
		// 0's commit.
		if want := 1 - round; len(ps) != want || (want == 1 && !bytes.Equal(ps[0].Message, p.Message)) {
			t.Fatalf("round %d: %d pending proposals after reopen, want %d", round, len(ps), want)
		}
		if h, err := s.GroupHub(ctx(), far); err != nil || h != "far.example" {
			t.Fatalf("round %d: hub after reopen: %q, %v", round, h, err)
		}
		loaded, err := s.LoadGroup(ctx(), id)
		noErr(t, "LoadGroup", err)
		// The state loaded after the restart is a base for the next
		// commit: the member's next epoch applies to it.
		g, c = g.Commit(t)
		next, _, err := loaded.ApplyCommit(g.LastCommit, nil)
		noErr(t, "ApplyCommit on the loaded state", err)
		SameState(t, "commit applied to the loaded state", next, c.Next)
		c.Base = loaded
		c.GroupInfo = []byte(fmt.Sprint("group info of epoch ", c.Next.Epoch()))
		c.Pending = len(ps)
		commitEpoch(t, s, c)
		noErr(t, "Close", s.Close())
	}
}

// commitErr is the error of a CommitEpoch, for the tests that check only
// that.
func commitErr(_ store.Delivered, err error) error { return err }
