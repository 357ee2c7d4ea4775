package caddymodule

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// A gateway's options for the parts pooled across configs (the provider
// service, the federation sender, the outbox limits, the attachment
// sweeper, the Privacy Pass origin, the rate-limit zones) are in force
// from the end of its Provision on. Caddy provisions a new config while
// the old one runs, and may still reject it after its gateways
// provisioned: a later handler's Provision fails, or an app's Start (the
// http app cannot bind a port). It then cleans the new config up and keeps
// the old one running. So each pooled part keeps the live gateways that
// committed their options to it, oldest first, and the Cleanup of the
// newest puts back the options of the newest one left: a rejected
// config's options are in force only between its Provision and its
// Cleanup. The rate-limit zones keep that order themselves
// (admission.Policy.Commit and Close).
var commits = struct {
	mu sync.Mutex
	// dirs orders, per data directory, the gateways whose options the
	// service, the sender and the outbox limits have.
	dirs commitOrder
	// sweepers orders, per data directory, the gateways that hold the
	// attachment sweeper.
	sweepers commitOrder
	// origins orders, per originPool key, the gateways that hold the
	// origin.
	origins commitOrder
}{dirs: commitOrder{}, sweepers: commitOrder{}, origins: commitOrder{}}

// commitOrder is, per pool key, the live gateways that committed their
// options to the part pooled under it, oldest first.
type commitOrder map[string][]*Gateway

// push records g as the newest gateway of key.
func (o commitOrder) push(key string, g *Gateway) { o[key] = append(o[key], g) }

// remove drops g from key's gateways, and returns the gateway whose
// options must be put back: the newest one left when g was the newest,
// nil otherwise.
func (o commitOrder) remove(key string, g *Gateway) *Gateway {
	l := o[key]
	i := slices.Index(l, g)
	if i < 0 {
		return nil
	}
	l = slices.Delete(l, i, i+1)
	if len(l) == 0 {
		delete(o, key)
		return nil
	}
	o[key] = l
	if i == len(l) {
		return l[len(l)-1]
	}
	return nil
}

// commit puts g's options in force on the pooled parts it holds, and
// records g as their newest gateway. opened says the service was just
// opened with g's options, which need no applying. An error of the
// service's Apply is returned (the config is refused) before anything
// else changes; g is recorded all the same, so that its Cleanup puts back
// the running config's options, of which Apply may have changed some.
func (g *Gateway) commit(opened bool) error {
	commits.mu.Lock()
	defer commits.mu.Unlock()
	g.committed = true
	commits.dirs.push(g.DataDir, g)
	if !opened {
		if err := g.svc.Apply(g.svcOpts); err != nil {
			return fmt.Errorf("mimi: reconfiguring the provider service in %s: %w", g.DataDir, err)
		}
	}
	g.applyDataDir(false) //nolint:errcheck // without the service, nothing fails
	if g.sweeper != nil {
		commits.sweepers.push(g.DataDir, g)
		g.applySweeper()
	}
	if g.origin != nil {
		commits.origins.push(g.originKey, g)
		g.applyOrigin()
	}
	if err := g.policy.Commit(); err != nil {
		g.logger.Error("applying the rate-limit zones' settings", zap.Error(err))
	}
	return nil
}

// uncommit drops g from the pooled parts' gateways; where g's options are
// in force, it puts back those of the newest gateway left, a config that
// still runs. Call it before g releases the parts.
func (g *Gateway) uncommit() {
	if !g.committed {
		return
	}
	g.committed = false
	commits.mu.Lock()
	defer commits.mu.Unlock()
	if n := commits.dirs.remove(g.DataDir, g); n != nil {
		if err := n.applyDataDir(true); err != nil {
			n.logger.Error("restoring the running config's options", zap.String("data_dir", n.DataDir), zap.Error(err))
		}
	}
	if g.sweeper != nil {
		if n := commits.sweepers.remove(g.DataDir, g); n != nil {
			n.applySweeper()
		}
	}
	if g.origin != nil {
		if n := commits.origins.remove(g.originKey, g); n != nil {
			n.applyOrigin()
		}
	}
}

// applyDataDir puts g's options in force on its data directory's service
// (when applyService is set), federation sender and outbox limits; an
// error of the service's Apply is returned once the rest is set.
func (g *Gateway) applyDataDir(applyService bool) error {
	var err error
	if applyService {
		if err = g.svc.Apply(g.svcOpts); err != nil {
			err = fmt.Errorf("mimi: reconfiguring the provider service in %s: %w", g.DataDir, err)
		}
	}
	var limits store.OutboxLimits
	if f := g.Federation; f != nil {
		g.sender.SetPolicy(federation.Policy{MaxBackoff: time.Duration(f.MaxBackoff), GiveUpAfter: time.Duration(f.GiveUpAfter)})
		limits = store.OutboxLimits{MaxMessages: f.MaxBacklogMessages, MaxBytes: f.MaxBacklogBytes}
	} else {
		g.sender.SetPolicy(federation.Policy{})
	}
	g.svc.Store().SetOutboxLimits(limits)
	g.sender.SetBackend(g.backend)
	return err
}

// applySweeper makes the attachment sweeper sweep with g's attachment
// service: its retention and backend.
func (g *Gateway) applySweeper() { g.sweeper.current.Store(g.ds.Attachments) }

// applyOrigin makes the pooled origin fetch the issuer directory under g's
// fetch policy and log to g's logger; its keys, challenges and spent
// tokens stay.
func (g *Gateway) applyOrigin() { g.origin.Reconfigure(g.fetch, g.sampled) }
