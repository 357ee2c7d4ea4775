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
// The app has no options: a config that does not name it gets an empty
// one from the first gateway's ctx.App, which Caddy starts with the
// config's other apps, so the JSON and the Caddyfile do not mention it.
type App struct {
	mu sync.Mutex
	// gateways are the gateways of this config, in the order they
	// provisioned.
	gateways []*Gateway
	// started is set from Start to Stop.
	started bool
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appID,
		New: func() caddy.Module { return new(App) },
	}
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
		if err := g.commit(); err != nil {
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
// parts, in the order the gateways provisioned. When the provider
// service refuses one (service.Apply), those already put in force are
// taken back, and the error makes Caddy reject the config.
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, g := range a.gateways {
		if err := g.commit(); err != nil {
			for j := i; j >= 0; j-- {
				a.gateways[j].uncommit()
			}
			return err
		}
	}
	a.started = true
	return nil
}

// Stop takes back the options of the config's gateways, newest first:
// where they are in force, those of the newest gateway left (the running
// config's) are put back. Caddy stops the app when the config is unloaded
// (after the next one started), when the process exits, and when another
// app of the config failed to start after this one started.
func (a *App) Stop() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.started = false
	for i := len(a.gateways) - 1; i >= 0; i-- {
		a.gateways[i].uncommit()
	}
	return nil
}

// Interface guards.
var (
	_ caddy.App    = (*App)(nil)
	_ caddy.Module = (*App)(nil)
)
