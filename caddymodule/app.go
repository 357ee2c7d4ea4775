package caddymodule

import (
	"fmt"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(new(App))
}

// appID is the ID of App in Caddy's apps namespace.
const appID = "mimi"

// App is the mimi app (`apps.mimi`), which puts a config's gateway
// options in force on the parts pooled across configs (commit.go) when
// Caddy starts the config, not when it provisions it. Caddy provisions a
// new config while the old one runs, and may still reject it after its
// gateways provisioned: a module provisioned after them fails, or an
// app's Start. Caddy starts the apps of a config only once every module of
// it provisioned, and stops those it started when another app's Start
// fails; so each gateway hands its options to the app of its config
// (enlist), Start applies them, and Stop takes them back: where they are
// still in force (Caddy rejected the config after this app started), the
// running config's options are put back. On a reload that succeeds, the
// old config's app is stopped after the new one started, and its options
// are no longer in force: its Stop changes nothing.
//
// The signing key options (key_scheme, key_rotation, key_overlap) wait
// longer: applying them may make a signing key, which signs and is
// published at once and which no Stop can take back. Start keeps the
// running config's key options in force, and the new config's are
// applied (running) only once Caddy runs it: when it has swapped it in
// for the old config, whose mimi app it then stops, with
// caddy.ActiveContext naming the new one. A config started while no
// config runs, or while the running one has no mimi app (then no gateway
// or mimi_local of it holds a provider service, so none runs with key
// options this config could change), applies them in Start.
//
// The app has no options: a config that does not name it gets an empty
// one from the first gateway's or mimi_local's ctx.App, which Caddy starts
// with the config's other apps, so the JSON and the Caddyfile do not
// mention it.
type App struct {
	mu sync.Mutex
	// gateways are the gateways of this config, in the order they
	// provisioned.
	gateways []*Gateway
	// started is set from Start to Stop.
	started bool
	// live is set once the config runs (see running), or from Start when
	// it replaces no config with a mimi app: the gateways' signing key
	// options are in force.
	live bool
	// config identifies the app's config (configOf).
	config <-chan struct{}
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appID,
		New: func() caddy.Module { return new(App) },
	}
}

// Provision records the app's config, to tell it from the one Caddy runs
// (caddy.ActiveContext).
func (a *App) Provision(ctx caddy.Context) error {
	a.config = configOf(ctx)
	return nil
}

// mimiApp returns the mimi app of ctx's config, or nil when ctx belongs to
// no config: a handler provisioned on its own, under caddy.NewContext of a
// bare caddy.Context (how handlers are unit-tested), which no Caddy starts.
// caddy.Context.App dereferences the missing config there, and that panic
// is the only sign of it Caddy gives (AppIfConfigured answers
// ErrNotConfigured alike with and without a config).
func mimiApp(ctx caddy.Context) (app *App, err error) {
	if v, err := ctx.AppIfConfigured(appID); err == nil {
		return v.(*App), nil
	}
	defer func() {
		if r := recover(); r != nil {
			app, err = nil, nil
		}
	}()
	v, err := ctx.App(appID)
	if err != nil {
		return nil, fmt.Errorf("mimi: loading the mimi app: %w", err)
	}
	a, ok := v.(*App)
	if !ok {
		return nil, fmt.Errorf("mimi: the %s app is a %T, not the mimi app", appID, v)
	}
	return a, nil
}

// enlist records g, provisioned, among the gateways of the config: its
// options are put in force when the app starts, or at once when it has
// already started (a handler provisioned once the config runs). An error
// of the service's Apply is returned; g is then not recorded, and its
// Cleanup puts back what Apply changed.
func (a *App) enlist(g *Gateway) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.started {
		if err := g.commit(a.live); err != nil {
			return err
		}
	}
	a.gateways = append(a.gateways, g)
	return nil
}

// poolConflict refuses p's gateway when an option of the parts pooled
// per data directory differs from that of a gateway of this config
// provisioned before it on the same directory (dirconflict.go).
func (a *App) poolConflict(p pooledOptions) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return poolConflict(p, a.gateways)
}

// withdraw forgets g, which is being cleaned up.
func (a *App) withdraw(g *Gateway) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gateways = slices.DeleteFunc(a.gateways, func(x *Gateway) bool { return x == g })
}

// Start puts the options of the config's gateways in force on the pooled
// parts, in the order the gateways provisioned; their signing key options
// only when no config with a mimi app runs (otherwise running does, once
// Caddy runs this config). When the provider service refuses one
// (service.Apply), those already put in force are taken back, and the
// error makes Caddy reject the config.
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	// Caddy swaps the config it runs (caddy.ActiveContext) only after
	// every app of the new one started, so this is the config being
	// replaced, if any.
	a.live = !hasApp(caddy.ActiveContext())
	for i, g := range a.gateways {
		if err := g.commit(a.live); err != nil {
			for j := i; j >= 0; j-- {
				a.gateways[j].uncommit()
			}
			return err
		}
	}
	a.started = true
	return nil
}

// hasApp reports whether ctx is a config's context whose config has a
// mimi app.
func hasApp(ctx caddy.Context) bool {
	if configOf(ctx) == nil {
		return false
	}
	v, err := ctx.AppIfConfigured(appID)
	if err != nil {
		return false
	}
	_, ok := v.(*App)
	return ok
}

// running puts the signing key options of the config's gateways in force,
// once Caddy runs the config; a stopped app, or one whose key options are
// in force, changes nothing. A key option changed by the config makes one
// key here, of which a failure is logged (the key ring keeps the new
// options and its rotation loop tries again).
func (a *App) running() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.started || a.live {
		return
	}
	a.live = true
	for _, g := range a.gateways {
		g.releaseKeys()
	}
}

// Stop takes back the options of the config's gateways, newest first:
// where they are in force, those of the newest gateway left (the running
// config's) are put back. Caddy stops the app when the config is unloaded
// (after the next one started), when the process exits, and when another
// app of the config failed to start after this one started.
//
// When Caddy runs another config then, this one was replaced by it
// (Caddy clears caddy.ActiveContext before it stops the apps of an exiting
// process, and stops a rejected config's apps while the running one, which
// is already live, stays active), and that config's signing key options
// are put in force (running).
func (a *App) Stop() error {
	a.mu.Lock()
	a.started = false
	for i := len(a.gateways) - 1; i >= 0; i-- {
		a.gateways[i].uncommit()
	}
	a.mu.Unlock()
	active := caddy.ActiveContext()
	if c := configOf(active); c == nil || c == a.config || !hasApp(active) {
		return nil
	}
	v, _ := active.AppIfConfigured(appID)
	if next := v.(*App); next != a {
		next.running()
	}
	return nil
}

// Interface guards.
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Module      = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
