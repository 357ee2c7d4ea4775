package caddymodule

import (
	"net/http"
	"runtime"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// goid identifies the calling goroutine by the header of its stack trace
// ("goroutine N").
func goid() string {
	b := make([]byte, 64)
	b = b[:runtime.Stack(b, false)]
	for i := len("goroutine "); i < len(b); i++ {
		if b[i] == ' ' {
			return string(b[:i])
		}
	}
	return string(b)
}

func testExchange(serve func(g *Gateway, x *exchange)) *exchange {
	return &exchange{rt: &route{endpoint: &endpoint{name: "test", serve: serve}}}
}

func TestWorkerPoolRunsOnWorker(t *testing.T) {
	p := newWorkerPool(2)
	g := &Gateway{logger: zap.NewNop()}
	caller := goid()
	var ran []string
	for range 3 {
		p.serve(g, testExchange(func(*Gateway, *exchange) { ran = append(ran, goid()) }))
	}
	if len(ran) != 3 {
		t.Fatalf("served %d of 3", len(ran))
	}
	for _, id := range ran {
		if id == caller {
			t.Fatal("served on the caller's goroutine with a worker idle")
		}
	}
	if ran[0] != ran[1] || ran[1] != ran[2] {
		t.Fatalf("sequential requests ran on %v, want one worker reused", ran)
	}
	if p.started != 1 {
		t.Fatalf("%d workers started, want 1", p.started)
	}
}

// TestWorkerPoolFull: with every worker busy, a request runs on its own
// goroutine at once rather than waiting for a worker.
func TestWorkerPoolFull(t *testing.T) {
	p := newWorkerPool(1)
	g := &Gateway{logger: zap.NewNop()}
	busy, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		p.serve(g, testExchange(func(*Gateway, *exchange) {
			close(busy)
			<-release
		}))
	})
	<-busy
	caller := goid()
	var on string
	p.serve(g, testExchange(func(*Gateway, *exchange) { on = goid() }))
	if on != caller {
		t.Fatalf("ran on %s with the pool full, want the caller's goroutine %s", on, caller)
	}
	close(release)
	wg.Wait()
	if n := p.started; n != 1 {
		t.Fatalf("%d workers started, want at most 1", n)
	}
}

// TestWorkerPoolPanic: a panic on a worker is logged with its stack and
// raised again on the request's goroutine; the worker survives it.
// http.ErrAbortHandler, the server's way to abort a response, is raised
// again without a log.
func TestWorkerPoolPanic(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	g := &Gateway{logger: zap.New(core)}
	p := newWorkerPool(1)
	for _, v := range []any{"boom", http.ErrAbortHandler} {
		got := func() (got any) {
			defer func() { got = recover() }()
			p.serve(g, testExchange(func(*Gateway, *exchange) { panic(v) }))
			return nil
		}()
		if got != v {
			t.Fatalf("panic %v raised as %v", v, got)
		}
	}
	if n := logs.FilterMessage("panic serving mimi request").Len(); n != 1 {
		t.Fatalf("%d panic logs, want 1 (none for http.ErrAbortHandler)", n)
	}
	entry := logs.All()[0]
	if _, ok := entry.ContextMap()["stack"]; !ok {
		t.Fatal("the panic log has no stack")
	}
	ok := false
	p.serve(g, testExchange(func(*Gateway, *exchange) { ok = true }))
	if !ok || p.started != 1 {
		t.Fatalf("after the panics: served %v, %d workers started, want the same worker", ok, p.started)
	}
}
