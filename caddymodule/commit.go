package caddymodule

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// A gateway's options for the parts pooled across configs (the provider
// service, the federation sender, the outbox limits, the attachment
// sweeper, the Privacy Pass origin, the rate-limit zones) are put in
// force when Caddy starts its config: the mimi app's Start (app.go).
// Caddy provisions a new config while the old one runs, and may still
// reject it after its gateways provisioned: a later module's Provision
// fails, and then no app of the config starts; or an app's Start fails
// (the http app cannot bind a port), possibly after the mimi app started.
// It then stops the apps it started, cleans the new config up and keeps
// the old one running. So each pooled part keeps the live gateways that
// committed their options to it, oldest first, and when the newest is
// uncommitted (by the app's Stop, or its Cleanup when Caddy did not stop
// the app) the options of the newest one left are put back: a rejected
// config's options are in force at most from the start of its mimi app
// to its Stop, and only when an app started after it failed. The
// rate-limit zones keep that order themselves (admission.Policy.Commit
// and Uncommit).
//
// The signing key options are the exception: a changed key_scheme, or a
// key_rotation or key_overlap that makes the signing key due, makes a key
// that signs and is published at once, and putting the running config's
// options back makes another one. So a gateway's key options are put in
// force only once Caddy runs its config (keysLive, App.running); until
// then its commit, and putting its options back, keep those in force on
// the service (serviceOptions).
//
// A config may hold a directory's service with no gateway on it: its
// only mimi module there is a mimi_local handler with data_dir, which
// opens the service with the defaults or joins it as it is. When a
// gateway commits its options to such a service, the options it had are
// kept (a serviceBase) for as long as a mimi_local of another config
// holds the service, and put back when the last gateway is cleaned up
// first: its config was rejected while the mimi_local-only config runs.
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
	// locals is, per data directory, the mimi_local handlers that
	// joined its service and hold it.
	locals map[string][]*LocalAPI
	// bases is, per data directory, what the service had before its
	// first gateway committed, while mimi_local handlers of other
	// configs hold it.
	bases map[string]*serviceBase
	// limits is, per open service, the outbox limits a gateway last set
	// on its store (none: the defaults).
	limits map[*service.Service]store.OutboxLimits
}{dirs: commitOrder{}, sweepers: commitOrder{}, origins: commitOrder{},
	locals: map[string][]*LocalAPI{}, bases: map[string]*serviceBase{}, limits: map[*service.Service]store.OutboxLimits{}}

// serviceBase is what a data directory's service had when a gateway
// committed its options to it while only mimi_local handlers held it:
// its options and outbox limits, and those handlers (of configs other
// than the gateway's) that still hold it.
type serviceBase struct {
	opts    service.Options
	limits  store.OutboxLimits
	holders []*LocalAPI
}

// joinedLocal records that h, a mimi_local handler, holds the service of
// its data directory.
func joinedLocal(h *LocalAPI) {
	commits.mu.Lock()
	defer commits.mu.Unlock()
	commits.locals[h.DataDir] = append(commits.locals[h.DataDir], h)
}

// releasedLocal records that h no longer holds the service of its data
// directory: when it was the last mimi_local of the configs that ran
// before the directory's gateways, their options stay in force.
func releasedLocal(h *LocalAPI) {
	commits.mu.Lock()
	defer commits.mu.Unlock()
	dir := h.DataDir
	if l := slices.DeleteFunc(commits.locals[dir], func(x *LocalAPI) bool { return x == h }); len(l) > 0 {
		commits.locals[dir] = l
	} else {
		delete(commits.locals, dir)
	}
	if b := commits.bases[dir]; b != nil {
		b.holders = slices.DeleteFunc(b.holders, func(x *LocalAPI) bool { return x == h })
		if len(b.holders) == 0 {
			delete(commits.bases, dir)
		}
	}
}

// closedService forgets what was recorded of svc, which its last holder
// closed.
func closedService(svc *service.Service) {
	commits.mu.Lock()
	defer commits.mu.Unlock()
	delete(commits.limits, svc)
}

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
// records g as their newest gateway; its signing key options only when
// live is set (no config with a mimi app runs, or g's config runs: see
// releaseKeys). A service g opened (svcOpened) has g's options already.
// An error of the service's Apply is returned (the config is refused)
// before anything else changes; g is recorded all the same, so that
// uncommit puts back the running config's options, of which Apply may
// have changed some. commit does nothing when g is recorded already,
// except record live.
func (g *Gateway) commit(live bool) error {
	commits.mu.Lock()
	defer commits.mu.Unlock()
	if live {
		g.keysLive = true
	}
	if g.committed {
		return nil
	}
	g.committed = true
	opened := g.svcOpened
	if _, ok := commits.dirs[g.DataDir]; !ok && !opened {
		// The first gateway on a service that mimi_local handlers
		// hold: what it has now is put back if this gateway's config
		// is rejected while theirs runs.
		var holders []*LocalAPI
		for _, h := range commits.locals[g.DataDir] {
			if h.config != g.dirEntry.config {
				holders = append(holders, h)
			}
		}
		if len(holders) > 0 {
			commits.bases[g.DataDir] = &serviceBase{opts: g.svc.Options(), limits: commits.limits[g.svc], holders: holders}
		}
	}
	commits.dirs.push(g.DataDir, g)
	if !opened {
		if err := g.svc.Apply(g.serviceOptions()); err != nil {
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
	commits.mu.Lock()
	defer commits.mu.Unlock()
	if !g.committed {
		return
	}
	g.committed = false
	if n := commits.dirs.remove(g.DataDir, g); n != nil {
		if err := n.applyDataDir(true); err != nil {
			n.logger.Error("restoring the running config's options", zap.String("data_dir", n.DataDir), zap.Error(err))
		}
	} else if _, ok := commits.dirs[g.DataDir]; !ok {
		if b := commits.bases[g.DataDir]; b != nil {
			// The last gateway, cleaned up while a mimi_local of a
			// config that ran before it still holds the service.
			delete(commits.bases, g.DataDir)
			if err := g.svc.Apply(b.opts); err != nil {
				g.logger.Error("restoring the running config's options", zap.String("data_dir", g.DataDir), zap.Error(err))
			}
			g.svc.Store().SetOutboxLimits(b.limits)
			commits.limits[g.svc] = b.limits
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
	if err := g.policy.Uncommit(); err != nil {
		g.logger.Error("restoring the running config's rate-limit zones' settings", zap.Error(err))
	}
}

// applyDataDir puts g's options in force on its data directory's service
// (when applyService is set), federation sender and outbox limits; an
// error of the service's Apply is returned once the rest is set.
func (g *Gateway) applyDataDir(applyService bool) error {
	var err error
	if applyService {
		if err = g.svc.Apply(g.serviceOptions()); err != nil {
			err = fmt.Errorf("mimi: reconfiguring the provider service in %s: %w", g.DataDir, err)
		}
	}
	limits := g.Federation.outboxLimits()
	g.sender.SetPolicy(g.Federation.senderPolicy())
	g.svc.Store().SetOutboxLimits(limits)
	commits.limits[g.svc] = limits
	g.sender.SetBackend(g.backend)
	return err
}

// serviceOptions are the options of g to apply to its service: its own,
// except, until g's config runs (keysLive), the signing key options,
// which stay those in force. The caller holds commits.mu.
func (g *Gateway) serviceOptions() service.Options {
	opts := g.svcOpts
	if !g.keysLive {
		opts.Keys = g.svc.Options().Keys
	}
	return opts
}

// releaseKeys records that g's config runs, and puts g's signing key
// options in force on its service when g is the newest gateway of its
// data directory (the others of its config there have the same ones,
// dirconflict.go). A failure to make the key they call for is logged: the
// key ring keeps the options, and its rotation loop tries again.
func (g *Gateway) releaseKeys() {
	commits.mu.Lock()
	defer commits.mu.Unlock()
	if g.keysLive {
		return
	}
	g.keysLive = true
	l := commits.dirs[g.DataDir]
	if !g.committed || len(l) == 0 || l[len(l)-1] != g {
		return
	}
	if err := g.svc.Apply(g.svcOpts); err != nil {
		g.logger.Error("applying the signing key options of the running config", zap.String("data_dir", g.DataDir), zap.Error(err))
	}
}

// applySweeper makes the attachment sweeper sweep with g's attachment
// service: its retention and backend.
func (g *Gateway) applySweeper() { g.sweeper.current.Store(g.ds.Attachments) }

// applyOrigin makes the pooled origin fetch the issuer directory under g's
// fetch policy and log to g's logger; its keys, challenges and spent
// tokens stay.
func (g *Gateway) applyOrigin() { g.origin.Reconfigure(g.fetch, g.sampled) }

// outboxLimits are the outbox's backlog bounds of f (zero, the defaults,
// when f is nil).
func (f *Federation) outboxLimits() store.OutboxLimits {
	if f == nil {
		return store.OutboxLimits{}
	}
	return store.OutboxLimits{MaxMessages: f.MaxBacklogMessages, MaxBytes: f.MaxBacklogBytes}
}

// senderPolicy is the federation sender's policy of f: its backoff cap
// and give-up age (zero, the defaults, when f is nil).
func (f *Federation) senderPolicy() federation.Policy {
	if f == nil {
		return federation.Policy{}
	}
	return federation.Policy{MaxBackoff: time.Duration(f.MaxBackoff), GiveUpAfter: time.Duration(f.GiveUpAfter)}
}
