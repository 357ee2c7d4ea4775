package caddymodule

import (
	"errors"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(&gateApp{id: "mimi_test_start_gate", gate: startGate, fail: true})
	caddy.RegisterModule(&gateApp{id: "hold_mimi_test", gate: holdGate})
}

// The gates of the test apps: startGate holds apps.mimi_test_start_gate,
// whose Start then fails, so that Caddy rejects the config in its apps'
// Start; holdGate holds apps.hold_mimi_test (named to be decoded, and so
// provisioned, before the http app), whose Start then succeeds, so that
// a test sees a config's servers running while its mimi app has not
// started.
var (
	startGate = new(appGate)
	holdGate  = new(appGate)
)

// appGate holds the Start of a gateApp while armed: the Start reports on
// reached whether the mimi app of its config had started, and waits for
// release.
type appGate struct {
	mu      sync.Mutex
	reached chan gateReport
	release chan struct{}
}

// gateReport is what a gateApp's Start reports: its config's mimi app, and
// whether it had started.
type gateReport struct {
	mimi    *App
	started bool
}

// arm makes the next Starts report on a new reached channel and wait for
// release to be closed.
func (g *appGate) arm() (reached chan gateReport, release chan struct{}) {
	reached, release = make(chan gateReport, 1), make(chan struct{})
	g.mu.Lock()
	g.reached, g.release = reached, release
	g.mu.Unlock()
	return reached, release
}

// disarm lets Starts pass without reporting or waiting.
func (g *appGate) disarm() {
	g.mu.Lock()
	g.reached, g.release = nil, nil
	g.mu.Unlock()
}

// gateApp is a test app (apps.<id>) whose Start reports to its gate, waits
// for it, and then fails when fail is set.
type gateApp struct {
	id   string
	gate *appGate
	fail bool
	mimi *App
}

// CaddyModule returns the Caddy module information.
func (a *gateApp) CaddyModule() caddy.ModuleInfo {
	id, gate, fail := a.id, a.gate, a.fail
	return caddy.ModuleInfo{ID: caddy.ModuleID(id), New: func() caddy.Module { return &gateApp{id: id, gate: gate, fail: fail} }}
}

// Provision takes the mimi app of the config, to tell whether Caddy
// started it before this app.
func (a *gateApp) Provision(ctx caddy.Context) error {
	app, err := mimiApp(ctx)
	if err != nil {
		return err
	}
	a.mimi = app
	return nil
}

// Start reports whether the mimi app started, waits for the test, then
// fails when a.fail is set.
func (a *gateApp) Start() error {
	a.mimi.mu.Lock()
	started := a.mimi.started
	a.mimi.mu.Unlock()
	a.gate.mu.Lock()
	reached, release := a.gate.reached, a.gate.release
	a.gate.mu.Unlock()
	if reached != nil {
		reached <- gateReport{mimi: a.mimi, started: started}
		<-release
	}
	if a.fail {
		return errors.New("test start gate: start refused")
	}
	return nil
}

// Stop does nothing.
func (*gateApp) Stop() error { return nil }
