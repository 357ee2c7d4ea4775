package main

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"time"

	"github.com/caddy-mimi/caddy-mimi/examples/loadtest/internal/dscommit"
	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
)

// The commit mode: MLS group commits through /group_operation
// (docs/protocol.md §5.4), update_client commits of one member of each of
// -c groups hosted on the receiver, each group with -recipients other
// members. A group's commits are accepted one epoch at a time, so the
// concurrency comes from the groups: worker w sends group w's commits in
// order, epoch after epoch. Each commit is made before the run, as a chain
// on the epoch the one before it leads to; the DS verifies it (client
// signature, membership, epoch, the update path and the GroupInfo),
// stores the group's new state and delivers the commit to the other
// members' queues.

// commitGroup is one group of the commit mode and its chain of signed
// commits, the next one to send at pos. Only its worker touches it during
// a run.
type commitGroup struct {
	chain [][]byte
	pos   int
}

// prepareCommit creates f.conc groups on the receiver, sends the first
// commit of each (not measured: it warms the group's state cache) and
// makes f.commits more per group.
func prepareCommit(ctx context.Context, t *target, f *benchFlags) (*prepared, error) {
	if f.commits < 1 {
		return nil, fmt.Errorf("-commits %d: want at least 1", f.commits)
	}
	ring, err := f.receiverRing(ctx)
	if err != nil {
		return nil, err
	}
	issuer := &binding.Issuer{Domains: []string{f.receiver}, Keys: ring}
	t0 := time.Now()
	groups := make([]*commitGroup, f.conc)
	errs := make([]error, f.conc)
	parallel(f.conc, runtime.GOMAXPROCS(0), func(g int) {
		groups[g], errs[g] = commitChain(ctx, t, f, issuer, g)
	})
	for g, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("group %d: %w", g, err)
		}
	}
	fmt.Printf("# commit: %d groups of 1 committer and %d other members on %s; %d update_client commits per group (%d bytes each) made and signed ahead of the run in %s\n",
		len(groups), f.recipients, f.receiver, f.commits, len(groups[0].chain[0]), time.Since(t0).Round(time.Millisecond))
	url := t.url(f.receiver, "/group_operation")
	return &prepared{mode: "commit", expected: http.StatusOK, cfg: runConfig{
		conc: f.conc, duration: f.duration,
		own: func(w int) (request, bool) {
			g := groups[w]
			if g.pos >= len(g.chain) {
				return request{}, false
			}
			g.pos++
			return request{method: http.MethodPost, url: url, body: g.chain[g.pos-1]}, true
		},
	}, shape: request{method: http.MethodPost, body: groups[0].chain[0], header: octetStream}}, nil
}

// commitChain creates group g (its clients named g<g>sender and
// g<g>recipient<i>), sends its committer's first update_client commit and
// makes the f.commits that follow it.
func commitChain(ctx context.Context, t *target, f *benchFlags, issuer *binding.Issuer, g int) (*commitGroup, error) {
	sender, m, err := hostedGroup(ctx, t, f, issuer, fmt.Sprintf("g%d", g))
	if err != nil {
		return nil, err
	}
	chain, err := dscommit.Chain(m, sender.signer, f.commits+1, time.Now())
	if err != nil {
		return nil, err
	}
	if err := postDS(ctx, t, f.receiver, chain[0]); err != nil {
		return nil, fmt.Errorf("first update_client: %w", err)
	}
	return &commitGroup{chain: chain[1:]}, nil
}
